#!/bin/sh
# The switch: uploaded as .switch.sh into the deploy directory by cargo xtask and started there by
# the lock's session, detached and holding the deploy lock, so a client that dies cannot leave
# `current` and the running containers apart:
#   sh .switch.sh SHA PREVIOUS ACTION TIMEOUT WHO ELAPSED PROJECT IMAGE PAUSE BLOCKING
# Points `current` at releases/SHA and hands the bot over to it make-before-break (see handover
# below), waiting up to TIMEOUT s per step, and appends the outcome to deploys.log as ACTION
# (deploy or rollback) by WHO, ELAPSED seconds added for what ran before. Failed: keeps the new
# bot's last log lines in .switch.bot-logs, records it, points `current` back at PREVIOUS (- for
# none) with its bot serving and records that as switch-back. Its last act is writing
# .switch.result: healthy, back-ok, back-unhealthy, back-refused or no-previous; its first is the
# intent line `.switch.intent` (time ACTION SHA PREVIOUS WHO), removed with the result. PROJECT is the compose project,
# IMAGE the image repository (tags are shas). PAUSE (switch or health; - otherwise) is a test
# hook: print `lattice test pause: <step>` there and sleep 5 s.
#
# Why a scaled compose service and not a one-off container or a project per release: the new bot
# is started by the new release's own files with `up --no-recreate --scale bot=<running + 1>`, so
# Compose keeps the old container as it is and creates one more container of the same service
# (lattice-bot-<n+1>) from the new files. It carries the service's labels, so `compose ps`,
# `compose logs bot` (status, logs) and the next switch find it like any other; a `compose run`
# container is a one-off (labelled so), not one of the service's containers, and a second project
# would need the network and volume shared by hand. The old container is then stopped and
# removed by id with plain `docker`, which Compose takes as the service scaled back to one.
set -eu
sha=$1 previous=$2 action=$3 timeout=$4 who=$5 elapsed=$6 project=$7 image=$8 pause=$9
# Applied migrations the previous release's code does not know (not declared backward-compatible),
# comma-separated, or `-`: when there are any, the previous release is never started again.
blocking=${10}
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

# The script's last act: its result, and the intent line removed (the switch is over and recorded).
result() {
	echo "$1" >.switch.result.new && mv .switch.result.new .switch.result
	rm -f .switch.intent
}

# The end of a step, for the client's one line per step: `lattice step: NAME DETAIL`.
step() {
	echo "lattice step: $*"
}

pause() {
	if [ "$pause" = "$1" ]; then
		echo "lattice test pause: $1"
		sleep 5
	fi
}

# The project's bot containers by the labels Compose gives them (never the one-off `run` ones, like
# a migration's), by id: the running ones, or all (`--all`).
bots() {
	docker ps --quiet "$@" --filter "label=com.docker.compose.project=$project" \
		--filter label=com.docker.compose.service=bot --filter label=com.docker.compose.oneoff=False
}

# Whether id $1 is one of the ids in $2.
among() {
	printf '%s\n' "$2" | grep -qx "$1"
}

# `lattice-bot healthcheck --wait $2` inside container $1: exits 0 once it is a ready standby
# (standby) or leads with its gateway READY/RESUMED (leader), non-zero at TIMEOUT.
wait_for() {
	echo "wait up to $timeout s for $1 to be $2"
	docker exec "$1" lattice-bot healthcheck --wait "$2" --timeout "$timeout" >/dev/null
}

# Make-before-break handover to release $1. Sets `old` (the bot containers that ran before) and
# `new` (the one started). Returns 0 when the new one leads; 1 when it never became a standby
# (removed; the old ones were never stopped); 2 when it failed after taking over (removed; the
# old ones started again, and they resume).
#   1. the new release's bot is started beside the old one: a standby, it never takes the leader
#      lock or connects the gateway while another instance leads;
#   2. it must become a ready standby (database reachable, schema at or above its head);
#   3. the old one is stopped with SIGTERM and its stop grace period (`docker stop` uses the
#      container's own, stop_grace_period in base.yml): it stores its session and releases the
#      lock, the standby takes it and RESUMEs;
#   4. the new one must lead with its gateway READY/RESUMED; then the old one is removed.
# With no old bot running (the first deploy, or the old one crashed) the new one leads at once.
handover() {
	old=$(bots)
	# Stopped or restarting bot containers serve nobody, and `up` would count and start them.
	for id in $(bots --all); do
		among "$id" "$old" || docker rm --force "$id" >/dev/null
	done
	echo "start $1 beside the running bot"
	compose "$1" up --detach --no-recreate --remove-orphans --scale "bot=$(($(echo "$old" | wc -w) + 1))" ||
		echo "starting $1 failed"
	new=
	for id in $(bots --all); do
		among "$id" "$old" || new=$id
	done
	if [ -z "$new" ]; then
		return 1
	fi
	pause health
	# (A leading new bot makes the standby wait last its whole TIMEOUT before the check below.)
	if [ -n "$old" ] && ! wait_for "$new" standby; then
		# A new bot that leads already found nobody leading: the old one was not serving.
		if ! docker exec "$new" lattice-bot healthcheck --wait leader --timeout 1 >/dev/null 2>&1; then
			docker logs --tail 40 "$new" >.switch.bot-logs 2>&1 || true
			docker rm --force "$new" >/dev/null
			return 1
		fi
	fi
	step switch "$new is a ready standby"
	stopping=
	if [ -n "$old" ]; then
		echo "stop the old bot: it hands over to $new"
		# In the background: the new one takes over as soon as the old one has let go of the
		# leader lock, which is before the old container has finished stopping.
		# shellcheck disable=SC2086 # one word per id
		docker stop $old >/dev/null &
		stopping=$!
	fi
	if wait_for "$new" leader; then
		step healthy "$new leads"
		if [ -n "$stopping" ]; then
			wait "$stopping" || true
			# shellcheck disable=SC2086 # one word per id
			docker rm $old >/dev/null
		fi
		return 0
	fi
	if [ -n "$stopping" ]; then
		wait "$stopping" || true
	fi
	docker logs --tail 40 "$new" >.switch.bot-logs 2>&1 || true
	# Stopped first, so whatever it took (lock, session) is handed back as the old one's would be.
	docker stop "$new" >/dev/null || true
	docker rm --force "$new" >/dev/null
	if [ -n "$old" ] && [ "$blocking" = - ]; then
		echo "start the old bot again"
		# shellcheck disable=SC2086 # one word per id
		docker start $old >/dev/null || true
	fi
	return 2
}

# Written before anything changes: should this script not get to its result (killed, the server
# rebooted), the next deploy, rollback or status finds what was under way (see intent in switch.rs).
printf '%s %s %s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$action" "$sha" "$previous" "$who" >.switch.intent.new
mv .switch.intent.new .switch.intent
echo "switch current to $sha"
switch "$sha"
pause switch
status=0
handover "$sha" || status=$?
if [ "$status" = 0 ]; then
	record "$action" "$sha" ok "$elapsed"
	result healthy
	exit 0
fi
record "$action" "$sha" unhealthy "$elapsed"
if [ "$previous" = - ] || [ "$previous" = "$sha" ]; then
	result no-previous
	exit 0
fi
if [ "$blocking" != - ]; then
	# The old code cannot run on the migrated schema: it is not started again, and one that still
	# serves (it never handed over) is stopped. Nothing runs until the snapshot is restored and the
	# previous release rolled back to.
	echo "$sha did not take over; $previous is NOT started again: migrations $blocking are applied, which its code does not know"
	for id in $old; do
		docker rm --force "$id" >/dev/null || true
	done
	record switch-back "$previous" refused 0
	result back-refused
	exit 0
fi
echo "$sha did not take over: switching back to $previous"
start=$(date +%s)
switch "$previous"
back=1
if [ -n "$old" ]; then
	# The old bots serve (never stopped) or were started again: one of them must lead.
	for id in $old; do
		if wait_for "$id" leader; then
			back=0
			break
		fi
	done
else
	# Nothing ran before: the previous release is handed over to like any other.
	logs=$(cat .switch.bot-logs 2>/dev/null) || logs=
	if handover "$previous"; then
		back=0
	fi
	printf '%s\n' "$logs" >.switch.bot-logs
fi
if [ "$back" = 0 ]; then
	record switch-back "$previous" ok 0
	result back-ok
else
	record switch-back "$previous" unhealthy 0
	result back-unhealthy
fi
