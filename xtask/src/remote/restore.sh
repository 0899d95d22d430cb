#!/bin/sh
# Restores a snapshot. Runs inside the Postgres container, the `pg_dump -Fc` archive on its
# standard input:
#   docker compose … exec --no-TTY postgres sh -c <this script> restore.sh < snapshots/<name>
# The public schema is dropped and recreated and the archive's contents loaded in one transaction:
# tables of later migrations go too, and a failure leaves the database as it was.
set -eu
{
	echo 'set client_min_messages = warning;'
	echo 'drop schema public cascade;'
	echo 'create schema public;'
	pg_restore --no-owner --no-privileges -f -
} | psql -v ON_ERROR_STOP=1 --single-transaction --quiet -U "$POSTGRES_USER" -d "$POSTGRES_DB" >/dev/null
