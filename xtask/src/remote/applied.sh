#!/bin/sh
# The migrations the database has. Runs inside the Postgres container:
#   docker compose … exec --no-TTY postgres sh -c <this script> applied.sh
# Prints the version of each migration applied successfully, one a line, oldest first; nothing
# when the database has none yet (no _sqlx_migrations table). Fails when Postgres cannot be asked:
# "none" is never guessed from an error.
set -eu
# On a first start the image initialises the database with a temporary server on the socket alone
# and restarts: wait (bounded) for the real one, which listens on TCP.
tries=0
until pg_isready -q -h 127.0.0.1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"; do
	tries=$((tries + 1))
	if [ "$tries" -ge 30 ]; then
		echo "Postgres is not accepting connections after 30 s" >&2
		exit 1
	fi
	sleep 1
done
query() {
	psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "$1"
}
exists=$(query "select to_regclass('_sqlx_migrations') is not null")
if [ "$exists" = t ]; then
	query 'select version from _sqlx_migrations where success order by version'
fi
