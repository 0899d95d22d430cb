#!/usr/bin/env bash
# Entrypoint of lattice-local/postgres:15: Debian's PostgreSQL 15 behind the official `postgres`
# image's contract, for machines that cannot pull that image.
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB (default: the user),
#   each also as *_FILE; POSTGRES_INITDB_ARGS; POSTGRES_HOST_AUTH_METHOD (default scram-sha-256);
#   /docker-entrypoint-initdb.d/*.sql|*.sh run once, after the first initdb.
# Data lives in $PGDATA (/var/lib/postgresql/data): initialised on the first start only; a start
# with existing data just starts. Postgres replaces this script (exec), so `docker stop` reaches it.
set -Eeuo pipefail

# VAR or VAR_FILE (the file's content), never both.
file_env() {
	local var=$1 default=${2:-}
	local file_var="${var}_FILE"
	if [ -n "${!var:-}" ] && [ -n "${!file_var:-}" ]; then
		echo "error: both $var and $file_var are set; set only one" >&2
		exit 1
	fi
	local value=$default
	if [ -n "${!var:-}" ]; then
		value=${!var}
	elif [ -n "${!file_var:-}" ]; then
		value=$(<"${!file_var}")
	fi
	export "$var"="$value"
	unset "$file_var"
}

init_database() {
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
		cat >&2 <<-'EOF'
			error: the database is not initialised and POSTGRES_PASSWORD is not set.
			       Set POSTGRES_PASSWORD (remote connections use it, scram-sha-256),
			       or POSTGRES_HOST_AUTH_METHOD=trust to allow connections without one (never in production).
		EOF
		exit 1
	fi

	# The password goes to initdb through a private file, never through argv.
	local pwfile
	pwfile=$(mktemp)
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	local -a extra_args=()
	read -r -a extra_args <<<"${POSTGRES_INITDB_ARGS:-}"
	initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
		"${extra_args[@]}" -D "$PGDATA"
	rm -f "$pwfile"

	echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
	printf '\n# Remote connections (other containers, the host) need the password.\nhost all all all %s\n' \
		"$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

	# A temporary server on the Unix socket only, so nothing connects before setup is done.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
	local -a psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
	if [ "$POSTGRES_DB" != postgres ]; then
		"${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
	fi
	local f
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
		*.sh)
			echo "running $f"
			# shellcheck disable=SC1090 # the user's own init script
			. "$f"
			;;
		*.sql)
			echo "running $f"
			"${psql[@]}" --dbname "$POSTGRES_DB" -f "$f"
			;;
		*) ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w stop
	echo "PostgreSQL init process complete; ready for start up."
}

# `docker run IMAGE -c foo=bar` means postgres with those options, as in the official image.
if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

if [ "$1" = postgres ]; then
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	export PGDATA=${PGDATA:-/var/lib/postgresql/data}
	export POSTGRES_HOST_AUTH_METHOD=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}

	if [ "$(id -u)" = 0 ]; then
		# As root: fix ownership (a fresh volume is root's), then run this script again as postgres.
		mkdir -p "$PGDATA" /var/run/postgresql
		find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
		chmod 700 "$PGDATA"
		chown postgres:postgres /var/run/postgresql
		chmod 3777 /var/run/postgresql
		exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
	fi

	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		init_database
	else
		echo "PostgreSQL database directory appears to contain a database; skipping initialisation"
	fi
	unset POSTGRES_PASSWORD
fi

exec "$@"
