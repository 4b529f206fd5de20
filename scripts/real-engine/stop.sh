#!/usr/bin/env bash
# Stops the engine that start.sh started on PORT, and only that: the pid in
# $REAL_ENGINE_HOME/run/vllm-PORT.pid, its process group / session (start.sh
# runs it under setsid) and all its descendants (vLLM's EngineCore child and
# the multiprocessing resource tracker).
#
#   bash scripts/real-engine/stop.sh PORT
#
# SIGTERM first; SIGKILL to whatever is left after REAL_ENGINE_STOP_TIMEOUT
# seconds (default 30). A pid whose argument vector is not vLLM's api_server
# with --port PORT and our model directory is never signalled (a reused pid):
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

say() { printf 'real-engine stop[%s]: %s\n' "$port" "$*" >&2; }

if [ ! -f "$pid_file" ]; then
  say "no pid file; nothing to stop"
  exit 0
fi
leader=$(<"$pid_file")
if ! [[ $leader =~ ^[0-9]+$ ]]; then
  say "pid file holds '$leader', not a pid; removing it"
  rm -f "$pid_file"
  exit 0
fi

leader_is_ours=0
if is_our_server "$leader" "$port"; then
  leader_is_ours=1
elif process_alive "$leader"; then
  say "pid $leader is not our server on port $port (pid reused?); not touching it, removing the stale pid file"
  rm -f "$pid_file"
  exit 0
fi

engine_exe=$(readlink -f "$engine_python")

# The processes to stop: the leader, its descendants, and the members of its
# session. If the leader is already gone, a left-over session member (e.g. an
# orphaned EngineCore) counts only when it runs the engine's interpreter.
# Session ids are not reused while a member is alive, so this finds nothing
# of anyone else's.
collect_targets() { session_targets "$leader_is_ours" "$engine_exe" "$leader"; }

collect_targets
if [ "${#targets[@]}" = 0 ]; then
  say "pid $leader is not running; removing the stale pid file"
  rm -f "$pid_file"
  rm -rf "$tmp_dir"
  exit 0
fi

say "SIGTERM to ${targets[*]} (server pid $leader)"
printf '### stop.sh %s at %s: SIGTERM to %s\n' "$port" "$(date -u +%FT%TZ)" "${targets[*]}" >> "$log_file" 2>/dev/null || true
t0=$(date +%s.%N)
stop_targets "${REAL_ENGINE_STOP_TIMEOUT:-30}" || exit 1
rm -f "$pid_file"
rm -rf "$tmp_dir"
say "stopped in $(seconds_since "$t0") s"
