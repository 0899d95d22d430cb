#!/bin/sh
# Cleans up after the xtask's ssh connection once the xtask has ended, however it ended (Ctrl-C,
# SIGTERM, SIGKILL — when no destructor runs): ends the connection's ControlMaster and removes its
# directory (ssh configuration, pinned host key, control socket; the key, if the xtask died while
# connecting). The xtask starts it in a process group of its own, so that the Ctrl-C which stops
# the xtask does not stop this too:
#   sh -c <this script> watchdog.sh PID DIR
set -eu
pid=$1 dir=$2
while kill -0 "$pid" 2>/dev/null; do
	sleep 1
done
if [ -d "$dir" ]; then
	ssh -F "$dir/config" -O exit lattice-server >/dev/null 2>&1 || true
	rm -rf "$dir"
fi
