#!/bin/sh
# Writes the app's .env in the deploy directory from standard input (NAME=value lines), mode 0600,
# replaced atomically. cargo xtask runs it as `sh -c <this script> write_env.sh ROOT MODE`:
#   ROOT  the deploy directory (made when missing)
#   MODE  keep: names already set keep their values, new names are added;
#         overwrite: the names sent replace theirs, the others stay
set -eu
root=$1 mode=$2
umask 077
mkdir -p "$root"
cd "$root"
touch .env
cat >.env.incoming
# (Not `NR==FNR`: it is true throughout when the first file is empty.)
case $mode in
keep)
	cat .env >.env.new
	awk -F= 'FILENAME == ".env" { had[$1]=1; next } !($1 in had)' .env .env.incoming >>.env.new
	;;
overwrite)
	awk -F= 'FILENAME == ".env.incoming" { sent[$1]=1; next } !($1 in sent)' .env.incoming .env >.env.new
	cat .env.incoming >>.env.new
	;;
*)
	echo "write_env.sh: MODE is keep or overwrite, not $mode" >&2
	exit 2
	;;
esac
chmod 600 .env.new
mv .env.new .env
rm -f .env.incoming
