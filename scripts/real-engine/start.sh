#!/usr/bin/env bash
# Starts the real engine (vLLM CPU, OpenAI-compatible API) serving "tiny-llama"
# on 127.0.0.1:PORT, in its own session, and waits until GET /health is 200.
#
#   PID=$(bash scripts/real-engine/start.sh PORT [extra vllm flags...])
#
# stdout: the server's pid, nothing else; progress goes to stderr.
# Extra flags come after the defaults, so they win (vLLM's argparse keeps the
# last value): start.sh 18012 --max-num-seqs 4 --max-model-len 512
#
# Files: log  $REAL_ENGINE_HOME/logs/vllm-PORT.log (the previous one is kept as
#             vllm-PORT.log.prev)
#        pid  $REAL_ENGINE_HOME/run/vllm-PORT.pid
#
# Exit status: 0 healthy; 1 the server died or was not healthy within
# REAL_ENGINE_START_TIMEOUT seconds (default 180): the last 60 log lines go to
# stderr and everything it started is stopped; 2 usage, or setup.sh not run;
# 3 already running from our pid file, or the port is taken.
#
# Environment passed to vLLM (the first six can be overridden by the caller;
# the offline and no-telemetry ones are always set):
#   VLLM_CPU_KVCACHE_SPACE=1 (GiB)  VLLM_HOST_IP=127.0.0.1
#   VLLM_ENABLE_V1_MULTIPROCESSING=0 (no separate worker process)
#   HF_HOME, VLLM_CACHE_ROOT, VLLM_CONFIG_ROOT under $REAL_ENGINE_HOME
#   TMPDIR=$REAL_ENGINE_HOME/tmp/vllm-PORT (emptied here and by stop.sh; vLLM
#     otherwise leaves a vllm_dist_* file in /tmp per start)
#   HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="start.sh PORT [extra vllm flags...]"
# shellcheck source=common.sh
. "$here/common.sh"
take_port_arg "${1-}"
shift

say() { printf 'real-engine start[%s]: %s\n' "$port" "$*" >&2; }

if [ ! -x "$engine_python" ] || [ ! -f "$model_dir/.real-engine-stamp" ]; then
  say "no engine under $engine_home; run scripts/real-engine/setup.sh first"
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
  rm -f "$pid_file"
fi

# Something already accepts connections on the port?
if port_taken "$port"; then
  say "127.0.0.1:$port is already in use by another process"
  exit 3
fi

# GET http://127.0.0.1:PORT$1, success on HTTP 200; never through a proxy.
http_ok() {
  if command -v curl >/dev/null; then
    curl --noproxy '*' -fsS -o /dev/null --max-time 3 "http://127.0.0.1:$port$1" 2>/dev/null
  else
    "$engine_python" -c '
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    sys.exit(0 if opener.open(sys.argv[1], timeout=3).status == 200 else 1)
except Exception:
    sys.exit(1)' "http://127.0.0.1:$port$1"
  fi
}

export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
export VLLM_HOST_IP=${VLLM_HOST_IP:-127.0.0.1}
export VLLM_ENABLE_V1_MULTIPROCESSING=${VLLM_ENABLE_V1_MULTIPROCESSING:-0}
export HF_HOME=${HF_HOME:-$engine_home/hf-home}
export VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-$engine_home/vllm-cache}
export VLLM_CONFIG_ROOT=${VLLM_CONFIG_ROOT:-$engine_home/vllm-config}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export PYTHONUNBUFFERED=1
rm -rf "$tmp_dir" && mkdir -p "$tmp_dir"
export TMPDIR=$tmp_dir

# The `vllm` console script fails for the vllm-cpu distribution; use the module.
server_argv=(
  "$engine_python" -m vllm.entrypoints.openai.api_server
  --host 127.0.0.1 --port "$port"
  --model "$model_dir" --served-model-name "$served_name"
  --chat-template "$model_dir/chat_template.jinja"
  --dtype bfloat16 --max-model-len 2048 --enforce-eager
  --enable-log-requests        # also what logs "Aborted request(s) ..." on disconnect
  "$@"
)

launch real-engine "$log_file" "$pid_file" "${server_argv[@]}"

give_up() {
  say "$1; last 60 lines of $log_file:"
  tail -n 60 "$log_file" >&2 || true
  bash "$here/stop.sh" "$port" >&2 || true
  rm -f "$pid_file"
  exit 1
}
trap 'give_up "interrupted"' INT TERM HUP

wait_for_pid_files "$pid_file" || give_up "the server did not write its pid file"
server_pid=$(<"$pid_file")
[[ $server_pid =~ ^[0-9]+$ ]] || give_up "bad pid file content '$server_pid'"

timeout=${REAL_ENGINE_START_TIMEOUT:-180}
say "pid $server_pid, log $log_file; waiting up to $timeout s for /health"
t0=$SECONDS
until http_ok /health; do
  process_alive "$server_pid" || give_up "the server exited during startup"
  [ $((SECONDS - t0)) -lt "$timeout" ] || give_up "/health not 200 after $timeout s"
  sleep 0.5
done
trap - INT TERM HUP

say "healthy after $((SECONDS - t0)) s: http://127.0.0.1:$port/v1 model $served_name"
echo "$server_pid"
