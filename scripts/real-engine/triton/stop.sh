#!/usr/bin/env bash
# Stops the Triton server that start.sh started on PORT, and only that: the pid
# in $REAL_ENGINE_HOME/triton/run/triton-PORT.pid, the members of its session
# (start.sh runs it under setsid) and its descendants (the Python backend's
# stub processes), then removes its /dev/shm regions.
#
#   bash scripts/real-engine/triton/stop.sh PORT
#
# SIGTERM to all of them first (the server then waits up to 1 s for in-flight
# requests and the model's unload: about 2 s in all); SIGKILL to whatever is
# left after REAL_ENGINE_STOP_TIMEOUT seconds (default 10). A pid whose argument vector is not tritonserver with
# --http-port PORT and our model repository is never signalled (a reused pid):
# the pid file is then dropped as stale.
#
# Exit status: 0 nothing of that server is left (also when none was running);
# 1 something survived SIGKILL; 2 usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="stop.sh PORT"
# shellcheck source=common.sh
. "$here/common.sh"
take_port_arg "${1-}"

say() { printf 'real-triton stop[%s]: %s\n' "$port" "$*" >&2; }
clean_files() {
  rm -f "$pid_file" "$info_file"
  rm -f /dev/shm/"$shm_prefix"* 2>/dev/null || true
}

if [ ! -f "$pid_file" ]; then
  say "no pid file; nothing to stop"
  exit 0
fi
leader=$(<"$pid_file")
if ! [[ $leader =~ ^[0-9]+$ ]]; then
  say "pid file holds '$leader', not a pid; removing it"
  clean_files
  exit 0
fi

leader_is_ours=0
if is_our_server "$leader" "$port"; then
  leader_is_ours=1
elif process_alive "$leader"; then
  say "pid $leader is not our server on port $port (pid reused?); not touching it, removing the stale pid file"
  rm -f "$pid_file" "$info_file"
  exit 0
fi

stub_exe=$(readlink -f "$triton_dist/backends/python/triton_python_backend_stub" 2>/dev/null || true)

# The leader, its descendants and its session's members. With the leader
# gone, a left-over session member counts only when it is our stub binary
# (session ids are not reused while a member lives).
collect_targets() { session_targets "$leader_is_ours" "$stub_exe" "$leader"; }

collect_targets
if [ "${#targets[@]}" = 0 ]; then
  say "pid $leader is not running; removing the stale pid file"
  clean_files
  exit 0
fi

say "SIGTERM to ${targets[*]} (server pid $leader)"
printf '### stop.sh %s at %s: SIGTERM to %s\n' "$port" "$(date -u +%FT%TZ)" "${targets[*]}" >> "$log_file" 2>/dev/null || true
t0=$(date +%s.%N)
stop_targets "${REAL_ENGINE_STOP_TIMEOUT:-10}" || exit 1
clean_files
say "stopped in $(seconds_since "$t0") s"
