#!/bin/sh
# The switch: uploaded as .switch.sh into the deploy directory by cargo xtask and started there by
# the lock's session, detached and holding the deploy lock, so a client that dies cannot leave
# `current` and the running containers apart:
#   sh .switch.sh SHA PREVIOUS ACTION TIMEOUT WHO ELAPSED PROJECT IMAGE PAUSE
# Points `current` at releases/SHA, brings it up and waits up to TIMEOUT s until healthy, and
# appends the outcome to deploys.log as ACTION (deploy or rollback) by WHO, ELAPSED seconds added
# for what ran before. Unhealthy: keeps the bot's last log lines in .switch.bot-logs, records it,
# switches back to PREVIOUS (- for none) and records that as switch-back. Its last act is writing
# .switch.result: healthy, back-ok, back-unhealthy or no-previous. PROJECT is the compose project,
# IMAGE the image repository (tags are shas). PAUSE (switch or health; - otherwise) is a test
# hook: print `lattice test pause: <step>` there and sleep 5 s.
set -eu
sha=$1 previous=$2 action=$3 timeout=$4 who=$5 elapsed=$6 project=$7 image=$8 pause=$9
start=$(date +%s)

# `docker compose` for one release: its own files and image (see Layout::stack).
compose() {
	release=$1
	shift
	docker compose -p "$project" --env-file .env --env-file "releases/$release/release.env" \
		-f "releases/$release/base.yml" -f "releases/$release/prod.yml" "$@"
}

# A deploys.log line: time action sha digest result seconds who (see history.rs).
record() {
	digest=$(docker image inspect --format '{{index .RepoDigests 0}}' "$image:$2" 2>/dev/null) || digest=-
	printf '%s %s %s %s %s %ss %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$1" "$2" "${digest:--}" "$3" \
		"$(($4 + $(date +%s) - start))" "$who" >>deploys.log
}

# Points `current` at a release atomically: a new symlink, renamed over the old one.
switch() {
	ln -sfn "releases/$1" current.new && mv -T current.new current
}

up() {
	compose "$1" up --detach --wait --wait-timeout "$timeout" --remove-orphans
}

result() {
	echo "$1" >.switch.result.new && mv .switch.result.new .switch.result
}

pause() {
	if [ "$pause" = "$1" ]; then
		echo "lattice test pause: $1"
		sleep 5
	fi
}

echo "switch current to $sha"
switch "$sha"
pause switch
if [ "$pause" = health ]; then
	# Started but not yet waited for; a failure here shows in the health wait below.
	compose "$sha" up --detach --remove-orphans || true
	pause health
fi
echo "wait up to $timeout s for $sha to be healthy"
if up "$sha"; then
	record "$action" "$sha" ok "$elapsed"
	result healthy
	exit 0
fi
compose "$sha" logs --no-color --tail 40 bot >.switch.bot-logs 2>&1 || true
record "$action" "$sha" unhealthy "$elapsed"
if [ "$previous" = - ] || [ "$previous" = "$sha" ]; then
	result no-previous
	exit 0
fi
echo "$sha is not healthy: switching back to $previous"
start=$(date +%s)
switch "$previous"
if up "$previous"; then
	record switch-back "$previous" ok 0
	result back-ok
else
	record switch-back "$previous" unhealthy 0
	result back-unhealthy
fi
