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
collect_targets() {
  local stat line rest pid state sid leader
  local -A chosen=()
  for leader in "${leaders[@]}"; do
    process_alive "$leader" && chosen[$leader]=1
  done
  if [ "${#leaders[@]}" -gt 0 ]; then
    for stat in /proc/[0-9]*/stat; do
      { read -r line < "$stat"; } 2>/dev/null || continue
      pid=${stat#/proc/}; pid=${pid%/stat}
      rest=${line##*") "}
      read -r state _ _ sid _ <<<"$rest"
      case $state in Z | X | x) continue ;; esac
      for leader in "${leaders[@]}"; do
        if [ "$sid" = "$leader" ] && [ -n "$engine_exe" ] \
          && [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$engine_exe" ]; then
          chosen[$pid]=1
        fi
      done
    done
  fi
  targets=("${!chosen[@]}")
}

declare -A termed=()
signal_targets() {  # SIGTERM goes once to each process; SIGKILL to all given
  local sig=$1 pid
  for pid in "${targets[@]}"; do
    if [ "$sig" = TERM ]; then
      [ -z "${termed[$pid]-}" ] || continue
      termed[$pid]=1
    fi
    kill "-$sig" "$pid" 2>/dev/null || true
  done
}

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
signal_targets TERM
deadline=$((SECONDS + ${REAL_ENGINE_STOP_TIMEOUT:-20}))
while :; do
  sleep 0.1
  collect_targets
  [ "${#targets[@]}" -gt 0 ] || break
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "still running after ${REAL_ENGINE_STOP_TIMEOUT:-20} s: ${targets[*]}; SIGKILL"
    signal_targets KILL
    for _ in $(seq 50); do
      sleep 0.1
      collect_targets
      [ "${#targets[@]}" -gt 0 ] || break
    done
    if [ "${#targets[@]}" -gt 0 ]; then
      say "error: still alive after SIGKILL: ${targets[*]}"
      exit 1
    fi
    break
  fi
  signal_targets TERM
done
finish
say "stopped in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
