#!/bin/sh
# The deploy lock's session. cargo xtask runs it over ssh, in the deploy directory, under the lock:
#   exec flock -n|-w SECS -E 75 .lock sh -c <this script> lock.sh HOLDER
# so the lock is held for as long as this session's standard input stays open. Writes HOLDER and
# the time to .lock.holder and prints `locked`. Then reads commands, one a line, until its input
# ends: `detach`, followed by the switch's arguments one a line and an empty line, starts
# `sh .switch.sh ARGS` detached (setsid nohup, output to .switch.log) and prints `started PID`.
# The switch script inherits the locked descriptor, so the lock outlives this session until the
# switch has ended.
set -eu
holder=$1

printf '%s since %s\n' "$holder" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >.lock.holder
echo locked

while read -r line; do
	if [ "$line" = detach ]; then
		set --
		while read -r arg && [ -n "$arg" ]; do
			set -- "$@" "$arg"
		done
		: >.switch.log
		# From a subshell, so that init, not this shell, becomes its parent and reaps it: a zombie
		# would keep `tail --pid` following its log forever.
		(setsid nohup sh .switch.sh "$@" >>.switch.log 2>&1 </dev/null & echo "started $!")
	fi
done
