#!/usr/bin/env bash
# Starts a real NVIDIA Dynamo on 127.0.0.1:PORT: its OpenAI-compatible frontend
# (`python -m dynamo.frontend`) and one GPU-free mocker worker
# (`python -m dynamo.mocker`) serving "tiny-llama", found through file-based
# discovery in a folder of their own (no etcd, no NATS). Each runs in its own
# session; the script waits until the frontend lists the model and has served
# one chat completion.
#
#   bash scripts/real-engine/dynamo/start.sh PORT [frontend flags...] [-- mocker flags...]
#
# Extra flags come after the defaults, so they win (argparse keeps the last
# value). Mocker defaults: --max-num-seqs 4 (a small batch, so a burst queues)
# and --speedup-ratio 1 (~6 ms per token on these machines, so a long stream
# can be cut mid-way). Overload needs a busy threshold, on the command line
# (--active-decode-blocks-threshold F) or set at run time with
# POST /busy_threshold (docs/real-engine-dynamo.md).
#
# stdout: KEY=value lines only: REAL_DYNAMO_URL, REAL_DYNAMO_FRONTEND_PID,
# REAL_DYNAMO_MOCKER_PID, REAL_DYNAMO_WORKER_METRICS_URL (the mocker's own
# /metrics); progress goes to stderr.
#
# Files under $REAL_ENGINE_HOME/dynamo (default ~/.cache/gateway-real-engine/dynamo):
#   logs/dynamo-PORT.{frontend,mocker}.log  (the previous ones kept as *.prev)
#   run/dynamo-PORT.{frontend,mocker}.pid, run/dynamo-PORT.worker-metrics,
#   run/dynamo-PORT.discovery/              (emptied here, removed by stop.sh)
#
# Exit status: 0 ready; 1 a process died or the model was not served within
# REAL_ENGINE_START_TIMEOUT seconds (default 120): the last 40 lines of each
# log go to stderr and everything started is stopped; 2 usage, or setup.sh not
# run; 3 already running from our pid files, or the port is taken.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="start.sh PORT [frontend flags...] [-- mocker flags...]"
# shellcheck source=common.sh
. "$here/common.sh"
take_port_arg "${1-}"
shift

frontend_flags=()
mocker_flags=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then
    shift
    mocker_flags=("$@")
    break
  fi
  frontend_flags+=("$1")
  shift
done

say() { printf 'real-dynamo start[%s]: %s\n' "$port" "$*" >&2; }

if [ ! -x "$dynamo_python" ] || [ ! -f "$model_dir/.real-dynamo-stamp" ]; then
  say "no Dynamo under $dynamo_home; run scripts/real-engine/dynamo/setup.sh first"
  exit 2
fi
mkdir -p "$log_dir" "$run_dir"

for pid_file in "$frontend_pid_file" "$mocker_pid_file"; do
  [ -f "$pid_file" ] || continue
  previous=$(<"$pid_file")
  if is_our_frontend "$previous" "$port" || is_our_mocker "$previous" "$port"; then
    say "already running as pid $previous (stop it with stop.sh $port)"
    exit 3
  fi
  say "removing stale pid file $pid_file (pid $previous is not ours)"
  rm -f "$pid_file"
done

if port_taken "$port"; then
  say "127.0.0.1:$port is already in use by another process"
  exit 3
fi

# The mocker's own /metrics port: Dynamo 1.6.1 reads DYN_SYSTEM_PORT as a
# signed 16-bit number, so it must be below 32768 (the kernel's ephemeral
# ports are above). A random free one in 20000..32767.
worker_port=$("$dynamo_python" - <<'PY'
import random, socket
for _ in range(200):
    p = random.randrange(20000, 32768)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
PY
)
[[ $worker_port =~ ^[0-9]+$ ]] || { say "no free port below 32768 for the mocker's metrics"; exit 1; }

# Loopback only: without these the request plane binds the machine's external
# address. (The mocker's ZMQ KV-event sockets bind 0.0.0.0 whatever is set;
# they advertise 127.0.0.1, so all traffic stays on loopback.)
export DYN_TCP_RPC_HOST=127.0.0.1 DYN_EVENT_PLANE_HOST=127.0.0.1
export DYN_TCP_RESPONSE_STREAM_HOST=127.0.0.1 DYN_SYSTEM_HOST=127.0.0.1
rm -rf "$discovery_dir" && mkdir -p "$discovery_dir"
export DYN_DISCOVERY_BACKEND=file DYN_FILE_KV=$discovery_dir
export DYN_LOGGING_JSONL=1   # plain JSON log lines (else ANSI colours)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1
export HF_HOME=${HF_HOME:-$dynamo_home/hf-home}
export PYTHONUNBUFFERED=1
rm -rf "$tmp_dir" && mkdir -p "$tmp_dir"
export TMPDIR=$tmp_dir
unset DYN_SYSTEM_PORT

frontend_argv=(
  "$dynamo_python" -m dynamo.frontend
  --http-host 127.0.0.1 --http-port "$port"
  "${frontend_flags[@]}"
)
mocker_argv=(
  env "DYN_SYSTEM_PORT=$worker_port"
  "$dynamo_python" -m dynamo.mocker
  --model-path "$model_dir" --model-name "$served_name"
  --max-num-seqs 4 --speedup-ratio 1
  "${mocker_flags[@]}"
)

give_up() {
  say "$1"
  local log
  for log in "$frontend_log" "$mocker_log"; do
    say "last 40 lines of $log:"
    tail -n 40 "$log" >&2 || true
  done
  bash "$here/stop.sh" "$port" >&2 || true
  exit 1
}
trap 'give_up "interrupted"' INT TERM HUP

t0=$SECONDS
launch real-dynamo "$frontend_log" "$frontend_pid_file" "${frontend_argv[@]}"
launch real-dynamo "$mocker_log" "$mocker_pid_file" "${mocker_argv[@]}"
printf 'http://127.0.0.1:%s/metrics\n' "$worker_port" > "$worker_metrics_file"

wait_for_pid_files "$frontend_pid_file" "$mocker_pid_file" || give_up "the frontend or the mocker did not write its pid file"
frontend_pid=$(<"$frontend_pid_file")
mocker_pid=$(<"$mocker_pid_file")

# curl, never through a proxy.
fetch() { curl --noproxy '*' -sS --max-time 5 "$@" 2>/dev/null; }

timeout=${REAL_ENGINE_START_TIMEOUT:-120}
say "frontend pid $frontend_pid, mocker pid $mocker_pid (metrics on $worker_port); waiting up to $timeout s for the model"
# The frontend's /health says healthy before any worker is found (requests
# then get 404): wait for the model in /v1/models instead.
until fetch "http://127.0.0.1:$port/v1/models" | grep -q "\"id\":\"$served_name\""; do
  process_alive "$frontend_pid" || give_up "the frontend exited during startup"
  process_alive "$mocker_pid" || give_up "the mocker exited during startup"
  [ $((SECONDS - t0)) -lt "$timeout" ] || give_up "model $served_name not listed after $timeout s"
  sleep 0.1
done
body="{\"model\":\"$served_name\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":1}"
answer=$(fetch -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port/v1/chat/completions") \
  || give_up "the first chat completion failed"
case $answer in
  *'"finish_reason":"length"'*) ;;
  *) give_up "unexpected answer to the first chat completion: $answer" ;;
esac
trap - INT TERM HUP

say "ready after $((SECONDS - t0)) s: http://127.0.0.1:$port/v1 model $served_name"
printf '%s\n' \
  "REAL_DYNAMO_URL=http://127.0.0.1:$port" \
  "REAL_DYNAMO_FRONTEND_PID=$frontend_pid" \
  "REAL_DYNAMO_MOCKER_PID=$mocker_pid" \
  "REAL_DYNAMO_WORKER_METRICS_URL=http://127.0.0.1:$worker_port/metrics"
