#!/usr/bin/env bash
# Starts the real Triton Inference Server that setup.sh installed, serving the
# model "ensemble", with its HTTP frontend on 127.0.0.1:PORT (gRPC and metrics
# on two other free loopback ports), in its own session, and waits until
# GET /v2/health/ready is 200.
#
#   bash scripts/real-engine/triton/start.sh PORT [extra tritonserver flags...]
#
# stdout: KEY=value lines, nothing else (also kept in
# $REAL_ENGINE_HOME/triton/run/triton-PORT.env):
#   REAL_TRITON_PID=...  REAL_TRITON_URL=http://127.0.0.1:PORT
#   REAL_TRITON_METRICS_URL=http://127.0.0.1:METRICS/metrics
#   REAL_TRITON_EVENTS_DIR=... (where the model appends events.jsonl)
# Progress goes to stderr.
#
# Files: log  $REAL_ENGINE_HOME/triton/logs/triton-PORT.log (the previous one
#             is kept as .prev)
#        pid  $REAL_ENGINE_HOME/triton/run/triton-PORT.pid
#
# Exit status: 0 ready; 1 the server died or was not ready within
# REAL_ENGINE_START_TIMEOUT seconds (default 60): the last 40 log lines go to
# stderr and what it started is stopped; 2 usage, or setup.sh not run; 3
# already running from our pid file, or the port is taken.
#
# Environment passed to the model: GATEWAY_TRITON_TOKEN_MS (time per token,
# default 25), GATEWAY_TRITON_EVENTS (the events folder, emptied here).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="start.sh PORT [extra tritonserver flags...]"
# shellcheck source=common.sh
. "$here/common.sh"
take_port_arg "${1-}"
shift

say() { printf 'real-triton start[%s]: %s\n' "$port" "$*" >&2; }

if [ ! -f "$triton_env_file" ] || [ ! -x "$triton_dist/bin/tritonserver" ] || [ ! -d "$triton_models/ensemble" ]; then
  say "no Triton under $triton_home; run scripts/real-engine/triton/setup.sh first"
  exit 2
fi
mkdir -p "$log_dir" "$run_dir"

if [ -f "$pid_file" ]; then
  previous=$(<"$pid_file")
  if is_our_server "$previous" "$port"; then
    say "already running as pid $previous (stop it with stop.sh $port)"
    exit 3
  fi
  say "removing stale pid file (pid $previous is not our server)"
  rm -f "$pid_file" "$info_file"
fi

if port_taken "$port"; then
  say "127.0.0.1:$port is already in use by another process"
  exit 3
fi
# Triton refuses port 0 for all three listeners: pick the other two here.
free_port() {
  local p
  while :; do
    p=$("$here/../free-port")
    [ "$p" != "$port" ] && [ "$p" != "${grpc_port-}" ] && break
  done
  printf '%s' "$p"
}
grpc_port=$(free_port)
metrics_port=$(free_port)

TRITON_LD_LIBRARY_PATH="" TRITON_VENV_BIN=""
# shellcheck disable=SC1090
. "$triton_env_file"
# The stub's Python finds numpy through the venv first on PATH.
export PATH="$TRITON_VENV_BIN:$PATH"
export LD_LIBRARY_PATH="$TRITON_LD_LIBRARY_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GATEWAY_TRITON_TOKEN_MS=${GATEWAY_TRITON_TOKEN_MS:-25}
export GATEWAY_TRITON_EVENTS=$events_dir
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
rm -rf "$events_dir" && mkdir -p "$events_dir"
rm -f /dev/shm/"$shm_prefix"* 2>/dev/null || true

server_argv=(
  "$triton_dist/bin/tritonserver"
  --model-repository "$triton_models"
  --backend-directory "$triton_dist/backends"
  --cache-directory "$triton_dist/caches"
  --http-address 127.0.0.1 --http-port "$port"
  --grpc-address 127.0.0.1 --grpc-port "$grpc_port"
  --metrics-address 127.0.0.1 --metrics-port "$metrics_port"
  --backend-config "python,shm-region-prefix-name=$shm_prefix"
  # SIGTERM waits this long for in-flight requests and the model's unload (0 crashes the server).
  --exit-timeout-secs 1
  --log-verbose 0
  "$@"
)

rm -f "$info_file"
launch real-triton "$log_file" "$pid_file" "${server_argv[@]}"

give_up() {
  say "$1; last 40 lines of $log_file:"
  tail -n 40 "$log_file" >&2 || true
  bash "$here/stop.sh" "$port" >&2 || true
  rm -f "$pid_file" "$info_file"
  exit 1
}
trap 'give_up "interrupted"' INT TERM HUP

wait_for_pid_files "$pid_file" || give_up "the server did not write its pid file"
server_pid=$(<"$pid_file")
[[ $server_pid =~ ^[0-9]+$ ]] || give_up "bad pid file content '$server_pid'"

ready() {
  curl --noproxy '*' -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$port/v2/health/ready" 2>/dev/null
}
command -v curl >/dev/null || give_up "curl is needed to wait for readiness"
timeout=${REAL_ENGINE_START_TIMEOUT:-60}
say "pid $server_pid, log $log_file; waiting up to $timeout s for /v2/health/ready"
t0=$(date +%s.%N)
until ready; do
  process_alive "$server_pid" || give_up "the server exited during startup"
  awk -v a="$t0" -v b="$(date +%s.%N)" -v t="$timeout" 'BEGIN { exit !(b - a < t) }' \
    || give_up "not ready after $timeout s"
  sleep 0.1
done
trap - INT TERM HUP

{
  printf 'REAL_TRITON_PID=%s\n' "$server_pid"
  printf 'REAL_TRITON_URL=http://127.0.0.1:%s\n' "$port"
  printf 'REAL_TRITON_METRICS_URL=http://127.0.0.1:%s/metrics\n' "$metrics_port"
  printf 'REAL_TRITON_EVENTS_DIR=%s\n' "$events_dir"
} > "$info_file"
say "ready after $(seconds_since "$t0") s: http://127.0.0.1:$port, metrics :$metrics_port"
cat "$info_file"
