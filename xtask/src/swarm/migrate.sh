#!/bin/sh
# Applies a release's migrations once, as a one-off Swarm job on the stack's network, before any
# bot task is updated:
#   sh -c <this script> migrate.sh PROJECT IMAGE RELEASE_DIR TIMEOUT
# Waits for Postgres (its task runs only once healthy), runs `lattice-bot migrate` as a
# replicated-job with the Postgres password as a Docker secret, prints the job's output and removes
# it. Exits non-zero when the migration failed or did not finish in TIMEOUT seconds; the services
# are not touched either way.
set -u
project=$1 image=$2 dir=$3 timeout=$4
job=${project}_migrate
setting() {
  v=$(sed -n "s/^[[:space:]]*$1=//p" .env | tail -n 1 | sed 's/^"\(.*\)"$/\1/')
  echo "${v:-$2}"
}
user=$(setting POSTGRES_USER lattice)
db=$(setting POSTGRES_DB lattice)
secret=$(sed -n 's/^LATTICE_SECRET_POSTGRES_PASSWORD=//p' "$dir/secrets.env")
start=$(date +%s)
late() { [ $(( $(date +%s) - start )) -ge "$timeout" ]; }
until docker service ps --filter desired-state=running --format '{{.CurrentState}}' "${project}_postgres" 2>/dev/null | grep -q '^Running'; do
  if late; then echo "Postgres (${project}_postgres) is not running after $timeout s" >&2; exit 1; fi
  sleep 2
done
docker service rm "$job" >/dev/null 2>&1 || true
docker service create --quiet --detach --name "$job" --mode replicated-job --restart-condition none \
  --network "${project}_default" --with-registry-auth \
  --secret "source=$secret,target=postgres_password" \
  --env POSTGRES_HOST=postgres --env "POSTGRES_USER=$user" --env "POSTGRES_DB=$db" \
  --env POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password --env RUST_LOG=info \
  "$image" migrate >/dev/null || exit 1
state=
while :; do
  state=$(docker service ps --format '{{.CurrentState}}' "$job" | head -n 1)
  case $state in
    Complete*) ok=1; break ;;
    Failed*|Rejected*) ok=0; break ;;
  esac
  if late; then ok=0; state="not finished after $timeout s"; break; fi
  sleep 1
done
docker service logs --raw "$job" 2>&1 | tail -n 40
docker service rm "$job" >/dev/null 2>&1
if [ "$ok" = 1 ]; then echo "migrations applied"; else echo "migration job: $state" >&2; exit 1; fi
