#!/bin/sh
# The deploy lock's session. cargo xtask runs it over ssh, in the deploy directory, under the lock:
#   exec flock -n|-w SECS -E 75 .lock sh -c <this script> lock.sh HOLDER SILENCE
# so the lock is held for as long as this session lives. Writes HOLDER and the time to
# .lock.holder and prints `locked`. Then reads commands, one a line; the session is the deploy's
# one channel to the server while it holds the lock:
#   beat              the client's heartbeat, every few seconds: does nothing
#   ping              answers `pong` (the client makes sure it still holds the lock)
#   write PATH LINES  the next LINES lines are the file PATH (written as PATH.new, then renamed;
#                     its directory made): prints `wrote PATH`
#   detach            the switch's arguments follow one a line, then an empty line: starts
#                     `sh .switch.sh ARGS` detached (setsid nohup, output to .switch.log), prints
#                     `started PID`, then each line of its log as `log LINE` as it comes, and
#                     `result RESULT` (the content of .switch.result, `none` without one) once the
#                     script has ended
# The session ends when its input ends (the client is gone) or when nothing arrives for SILENCE
# seconds (a client suspended, or a connection that died half-open, which sshd would notice only
# hours later): the lock is never held by a client that no longer speaks. Heartbeats that arrive
# while the switch's log streams wait in the pipe and are read afterwards. The switch script
# inherits the locked descriptor, so the lock outlives this session until the switch has ended,
# and a client that goes away mid-switch changes nothing about its outcome.
set -euf
holder=$1 silence=$2

printf '%s since %s\n' "$holder" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >.lock.holder
echo locked

# The next line of input, waiting at most SILENCE seconds (`read` takes one byte at a time from a
# pipe, so nothing after the line is lost). Fails at the end of input and on silence (124).
next() {
	# shellcheck disable=SC2016 # the inner shell expands it
	timeout "$silence" sh -c 'IFS= read -r line && printf "%s\n" "$line"'
}

# The next COUNT lines of input to standard output, all within SILENCE seconds; fails when the
# input ends (or falls silent) before them.
lines() {
	# shellcheck disable=SC2016 # the inner shell expands it
	timeout "$silence" sh -c 'i=0
		while [ "$i" -lt "$1" ]; do
			IFS= read -r line || exit 1
			printf "%s\n" "$line"
			i=$((i + 1))
		done' lines "$1"
}

while :; do
	status=0
	line=$(next) || status=$?
	if [ "$status" = 124 ]; then
		echo "no word from the client for $silence s: the deploy lock is given up" >&2
		exit 1
	fi
	# The end of input: the client is gone.
	[ "$status" = 0 ] || exit 0
	# shellcheck disable=SC2086 # a command and its words
	set -- $line
	case "${1-}" in
	ping)
		echo pong
		;;
	write)
		path=$2 count=$3
		case "$count" in
		'' | *[!0-9]*) exit 1 ;;
		esac
		mkdir -p "$(dirname "$path")"
		# Cut off in the middle of the file: nothing is written.
		lines "$count" >"$path.new" || {
			rm -f "$path.new"
			exit 1
		}
		mv "$path.new" "$path"
		echo "wrote $path"
		;;
	detach)
		set --
		complete=
		while arg=$(next); do
			if [ -z "$arg" ]; then
				complete=yes
				break
			fi
			set -- "$@" "$arg"
		done
		# Cut off in the middle of the message: nothing is started.
		[ -n "$complete" ] || exit 1
		rm -f .switch.result .switch.bot-logs
		: >.switch.log
		# From a subshell, so that init, not this shell, becomes its parent and reaps it: a zombie
		# would keep `tail --pid` following its log forever.
		pid=$(setsid nohup sh .switch.sh "$@" >>.switch.log 2>&1 </dev/null & echo "$!")
		echo "started $pid"
		# tail checks whether the script still runs every 0.1 s (its default is every second).
		tail -n +1 -s 0.1 --pid="$pid" -f .switch.log | while IFS= read -r log; do
			printf 'log %s\n' "$log"
		done
		echo "result $(cat .switch.result 2>/dev/null || echo none)"
		;;
	esac
done
