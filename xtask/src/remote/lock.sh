#!/bin/sh
# The deploy lock's session. cargo xtask runs it over ssh, in the deploy directory, under the lock:
#   exec flock -n|-w SECS -E 75 .lock sh -c <this script> lock.sh HOLDER SILENCE
# so the lock is held for as long as this session lives. Writes HOLDER and the time to
# .lock.holder and prints `locked`. Then reads commands, one a line: `beat` (the client's
# heartbeat, every few seconds) does nothing; `ping` answers `pong` (the client makes sure it
# still holds the lock); `detach`, followed by the switch's arguments one a
# line and an empty line, starts `sh .switch.sh ARGS` detached (setsid nohup, output to
# .switch.log) and prints `started PID`. The session ends when its input ends (the client is
# gone) or when nothing arrives for SILENCE seconds (a client suspended, or a connection that died
# half-open, which sshd would notice only hours later): the lock is never held by a client that no
# longer speaks. The switch script inherits the locked descriptor, so the lock outlives this
# session until the switch has ended.
set -eu
holder=$1 silence=$2

printf '%s since %s\n' "$holder" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >.lock.holder
echo locked

# The next line of input, waiting at most SILENCE seconds (`read` takes one byte at a time from a
# pipe, so nothing after the line is lost). Fails at the end of input and on silence.
next() {
	# shellcheck disable=SC2016 # the inner shell expands it
	timeout "$silence" sh -c 'IFS= read -r line && printf "%s\n" "$line"'
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
	if [ "$line" = ping ]; then
		echo pong
	elif [ "$line" = detach ]; then
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
		: >.switch.log
		# From a subshell, so that init, not this shell, becomes its parent and reaps it: a zombie
		# would keep `tail --pid` following its log forever.
		(setsid nohup sh .switch.sh "$@" >>.switch.log 2>&1 </dev/null & echo "started $!")
	fi
done
