#!/bin/sh
# The original deployment flow, as its write-up describes it, for `cargo xtask bench --only deploy`
# to run beside `cargo xtask deploy` on the same server. Run in its deploy directory, which holds
# base.yml, prod.yml and .env:
#   sh original.sh PROJECT IMAGE
# Pulls IMAGE, migrates with a one-off container, recreates the bot with `up -d`, then polls its
# Docker health every 5 s until it is healthy (at most 5 minutes).
set -eu
project=$1 image=$2

compose() {
	docker compose -p "$project" --env-file .env --env-file release.env -f base.yml -f prod.yml "$@"
}

printf 'BOT_IMAGE=%s\n' "$image" >release.env
compose pull --quiet bot
compose run --rm --no-TTY bot migrate
compose up --detach
tries=0
until [ "$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps --quiet bot)")" = healthy ]; do
	tries=$((tries + 1))
	if [ "$tries" -gt 60 ]; then
		echo "the bot is not healthy after 5 minutes" >&2
		exit 1
	fi
	sleep 5
done
