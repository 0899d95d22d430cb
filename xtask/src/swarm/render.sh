#!/bin/sh
# Renders a release's compose files into one file `docker stack deploy` takes, on the manager:
#   sh -c <this script> render.sh PROJECT RELEASE_DIR OUT [BOT_REPLICAS]
# Compose does the interpolation (.env, the release's image, the secret names), the merging and the
# `!reset`/`!override` tags; what the stack format does not take is left out of swarm.yml by
# `!reset`, except the top-level `name`, removed here. BOT_REPLICAS overrides the bot's replica
# count (0: Postgres alone, for a first deploy's migration). The rendered file holds no secret.
set -eu
project=$1 dir=$2 out=$3
if [ -n "${4:-}" ]; then
  LATTICE_BOT_REPLICAS=$4
  export LATTICE_BOT_REPLICAS
fi
docker compose -p "$project" --env-file .env --env-file "$dir/release.env" --env-file "$dir/secrets.env" \
  -f "$dir/base.yml" -f "$dir/prod.yml" -f "$dir/swarm.yml" config --no-normalize > "$out.new"
sed -i '/^name:/d' "$out.new"
mv "$out.new" "$out"
