#!/bin/sh
# A database snapshot. cargo xtask runs it over ssh, in the deploy directory:
#   sh -c <this script> snapshot.sh KEEP RELEASE DUMP-COMMAND...
# DUMP-COMMAND writes `pg_dump -Fc` of the app's database to its standard output (run inside the
# Postgres container); it goes to snapshots/<UTC time>-<RELEASE>.dump (the directory 0700, the file
# 0600, written under a temporary name and renamed only once complete). Then all but the newest
# KEEP snapshots are removed, and the new one's name is printed.
set -eu
keep=$1 release=$2
shift 2
umask 077
mkdir -p snapshots
chmod 700 snapshots
name=$(date -u +%Y%m%dT%H%M%SZ)-$release.dump
# Two snapshots within a second: the later one waits for its own name.
while [ -e "snapshots/$name" ]; do
	sleep 1
	name=$(date -u +%Y%m%dT%H%M%SZ)-$release.dump
done
if ! "$@" >"snapshots/$name.partial"; then
	rm -f "snapshots/$name.partial"
	echo "pg_dump failed: no snapshot was written" >&2
	exit 1
fi
mv "snapshots/$name.partial" "snapshots/$name"
# Oldest first by name (the time leads): all but the newest KEEP go. Only names this script
# writes are counted or removed.
set -- snapshots/[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9]Z-*.dump
excess=$(($# - keep))
for old; do
	[ "$excess" -gt 0 ] || break
	rm -f "$old"
	excess=$((excess - 1))
done
echo "$name"
