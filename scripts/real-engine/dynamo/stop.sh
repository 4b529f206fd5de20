#!/usr/bin/env bash
# Stops the Dynamo frontend and mocker that start.sh started for PORT, and
# only those: the pids in $REAL_ENGINE_HOME/dynamo/run/dynamo-PORT.*.pid and
# the members of their sessions that run the Dynamo venv's interpreter.
#
#   bash scripts/real-engine/dynamo/stop.sh PORT
#
# SIGTERM to both at once (the mocker takes ~2.5 s to leave, the frontend
# ~4 s); SIGKILL to whatever is left after REAL_ENGINE_STOP_TIMEOUT seconds
# (default 20). A pid whose argument vector is not our frontend for PORT (or
# our mocker with PORT's discovery folder) is never signalled (a reused pid):
# its pid file is dropped as stale. The discovery folder is removed.
#
# Exit status: 0 nothing of that instance is left (also when none was
# running); 1 something survived SIGKILL; 2 usage.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="stop.sh PORT"
# shellcheck source=common.sh
. "$here/common.sh"
take_port_arg "${1-}"

say() { printf 'real-dynamo stop[%s]: %s\n' "$port" "$*" >&2; }

engine_exe=$(readlink -f "$dynamo_python" 2>/dev/null || true)

# The session leaders that are ours.
leaders=()
for pair in "frontend:$frontend_pid_file" "mocker:$mocker_pid_file"; do
  role=${pair%%:*}
  pid_file=${pair#*:}
  [ -f "$pid_file" ] || continue
  pid=$(<"$pid_file")
  if ! [[ $pid =~ ^[0-9]+$ ]]; then
    say "$pid_file holds '$pid', not a pid; removing it"
  elif [ "$role" = frontend ] && is_our_frontend "$pid" "$port"; then
    leaders+=("$pid")
  elif [ "$role" = mocker ] && is_our_mocker "$pid" "$port"; then
    leaders+=("$pid")
  elif process_alive "$pid"; then
    say "pid $pid is not our $role (reused?); not touching it"
  fi
done

# The leaders still alive, and members of their sessions that run the venv's
# interpreter (session ids are not reused while a member is alive).
collect_targets() { session_targets 0 "$engine_exe" "${leaders[@]}"; }

finish() {
  rm -f "$frontend_pid_file" "$mocker_pid_file" "$worker_metrics_file"
  rm -rf "$discovery_dir" "$tmp_dir"
}

collect_targets
if [ "${#targets[@]}" = 0 ]; then
  say "nothing running"
  finish
  exit 0
fi

say "SIGTERM to ${targets[*]}"
for log in "$frontend_log" "$mocker_log"; do
  printf '### stop.sh %s at %s: SIGTERM to %s\n' "$port" "$(date -u +%FT%TZ)" "${targets[*]}" >> "$log" 2>/dev/null || true
done
t0=$(date +%s.%N)
stop_targets "${REAL_ENGINE_STOP_TIMEOUT:-20}" || exit 1
finish
say "stopped in $(seconds_since "$t0") s"
