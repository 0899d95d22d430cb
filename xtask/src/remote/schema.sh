#!/bin/sh
# What a rollback's schema check needs, in one round trip, run in the deploy directory:
#   sh schema.sh TARGET_IMAGE HEAD_LABEL CURRENT_IMAGE COMPATIBLE_LABEL PROJECT
# Prints three sections, each after a line `--- lattice ---`: the target image's HEAD_LABEL
# (its schema head), the current image's COMPATIBLE_LABEL (its backward-compatible migrations), and the
# versions of the applied migrations, one a line, as psql reads them in the compose project's
# running postgres container, or the swarm stack's Postgres task on this node (`psql failed` when
# they cannot be read; psql's message on stderr).
set -u
label() {
	docker image inspect --format "{{index .Config.Labels \"$2\"}}" "$1" 2>/dev/null || true
}

echo "--- lattice ---"
label "$1" "$2"
echo "--- lattice ---"
label "$3" "$4"
echo "--- lattice ---"
postgres=$(docker ps --quiet --filter "label=com.docker.compose.project=$5" \
	--filter label=com.docker.compose.service=postgres --filter label=com.docker.compose.oneoff=False | head -n 1)
if [ -z "$postgres" ]; then
	# A swarm stack's Postgres task, when it runs on this node.
	postgres=$(docker ps --quiet --filter "label=com.docker.swarm.service.name=$5_postgres" | head -n 1)
fi
# shellcheck disable=SC2016 # expanded by the container's shell, from its own environment
query='psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "select version from _sqlx_migrations where success order by version"'
if [ -z "$postgres" ]; then
	echo "no postgres container of $5 runs" >&2
	echo "psql failed"
elif ! docker exec "$postgres" sh -c "$query"; then
	echo "psql failed"
fi
