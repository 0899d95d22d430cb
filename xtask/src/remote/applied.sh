#!/bin/sh
# The migrations the database has. Runs inside the Postgres container:
#   docker compose … exec --no-TTY postgres sh -c <this script> applied.sh
# Prints the version of each migration applied successfully, one a line, oldest first; nothing
# when the database has none yet (no _sqlx_migrations table).
set -eu
query() {
	psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "$1"
}
if [ "$(query "select to_regclass('_sqlx_migrations') is not null")" = t ]; then
	query 'select version from _sqlx_migrations where success order by version'
fi
