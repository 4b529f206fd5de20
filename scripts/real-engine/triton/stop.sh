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
collect_targets() {
  local stat line rest pid state ppid pgrp sid
  local -A parent_of=() session_of=() chosen=()
  targets=()
  for stat in /proc/[0-9]*/stat; do
    { read -r line < "$stat"; } 2>/dev/null || continue
    pid=${stat#/proc/}; pid=${pid%/stat}
    rest=${line##*") "}
    read -r state ppid pgrp sid _ <<<"$rest"
    case $state in Z | X | x) continue ;; esac
    parent_of[$pid]=$ppid
    session_of[$pid]=$sid
  done
  if [ -n "${parent_of[$leader]-}" ]; then chosen[$leader]=1; fi
  for pid in "${!session_of[@]}"; do
    [ "${session_of[$pid]}" = "$leader" ] || continue
    if [ "$leader_is_ours" = 1 ] || [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$stub_exe" ]; then
      chosen[$pid]=1
    fi
  done
  if [ "$leader_is_ours" = 1 ]; then
    local grew=1
    while [ "$grew" = 1 ]; do
      grew=0
      for pid in "${!parent_of[@]}"; do
        if [ -z "${chosen[$pid]-}" ] && [ -n "${chosen[${parent_of[$pid]}]-}" ]; then
          chosen[$pid]=1
          grew=1
        fi
      done
    done
  fi
  targets=("${!chosen[@]}")
}

collect_targets
if [ "${#targets[@]}" = 0 ]; then
  say "pid $leader is not running; removing the stale pid file"
  clean_files
  exit 0
fi

say "SIGTERM to ${targets[*]} (server pid $leader)"
printf '### stop.sh %s at %s: SIGTERM to %s\n' "$port" "$(date -u +%FT%TZ)" "${targets[*]}" >> "$log_file" 2>/dev/null || true
t0=$(date +%s.%N)
kill -TERM "${targets[@]}" 2>/dev/null || true
deadline=$((SECONDS + ${REAL_ENGINE_STOP_TIMEOUT:-10}))
while :; do
  sleep 0.1
  collect_targets
  [ "${#targets[@]}" -gt 0 ] || break
  if [ "$SECONDS" -ge "$deadline" ]; then
    say "still running after ${REAL_ENGINE_STOP_TIMEOUT:-10} s: ${targets[*]}; SIGKILL"
    kill -KILL "${targets[@]}" 2>/dev/null || true
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
done
clean_files
say "stopped in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
