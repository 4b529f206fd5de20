# Shared by start.sh and stop.sh (sourced, not run): where setup.sh put the
# Dynamo venv and model folder, the files of one instance, and the test for
# "this pid is our frontend / our mocker for PORT".

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

engine_home=${REAL_ENGINE_HOME:-$HOME/.cache/gateway-real-engine}
dynamo_home=$engine_home/dynamo
dynamo_python=$dynamo_home/venv/bin/python
model_dir=$dynamo_home/models/tiny-llama
served_name=tiny-llama
log_dir=$dynamo_home/logs
run_dir=$dynamo_home/run

# Sets $port and the paths of the instance on PORT from the argument, or
# exits 2 ($usage is the caller's usage line).
take_port_arg() {
  take_port_number "${1-}"
  frontend_log=$log_dir/dynamo-$port.frontend.log
  mocker_log=$log_dir/dynamo-$port.mocker.log
  frontend_pid_file=$run_dir/dynamo-$port.frontend.pid
  mocker_pid_file=$run_dir/dynamo-$port.mocker.pid
  # The mocker's own /metrics URL (its DYN_SYSTEM_PORT), for tests.
  worker_metrics_file=$run_dir/dynamo-$port.worker-metrics
  # File-based discovery: a fresh, empty folder per instance, so two
  # instances on one machine never see each other's workers.
  discovery_dir=$run_dir/dynamo-$port.discovery
  tmp_dir=$dynamo_home/tmp/dynamo-$port
}

# True when pid $1 runs `python -m dynamo.frontend --http-port $2`, judged
# from its argument vector.
is_our_frontend() {
  local pid=$1 want_port=$2 i has_module=0 has_port=0
  local -a argv
  process_alive "$pid" || return 1
  argv_of "$pid" || return 1
  for ((i = 0; i < ${#argv[@]}; i++)); do
    case ${argv[i]} in
      dynamo.frontend) [ "${argv[i - 1]-}" = -m ] && has_module=1 ;;
      --http-port) [ "${argv[i + 1]-}" = "$want_port" ] && has_port=1 ;;
    esac
  done
  [ "$has_module$has_port" = 11 ]
}

# True when pid $1 runs `python -m dynamo.mocker` on our model folder and
# its environment names the discovery folder of PORT $2 (the mocker's
# arguments do not say which frontend it serves).
is_our_mocker() {
  local pid=$1 want_port=$2 i has_module=0 has_model=0 has_dir=0 entry
  local -a argv env
  process_alive "$pid" || return 1
  argv_of "$pid" || return 1
  for ((i = 0; i < ${#argv[@]}; i++)); do
    case ${argv[i]} in
      dynamo.mocker) [ "${argv[i - 1]-}" = -m ] && has_module=1 ;;
      --model-path) [ "${argv[i + 1]-}" = "$model_dir" ] && has_model=1 ;;
    esac
  done
  mapfile -d '' -t env 2>/dev/null < "/proc/$pid/environ" || return 1
  for entry in "${env[@]}"; do
    [ "$entry" = "DYN_FILE_KV=$run_dir/dynamo-$want_port.discovery" ] && has_dir=1
  done
  [ "$has_module$has_model$has_dir" = 111 ]
}
