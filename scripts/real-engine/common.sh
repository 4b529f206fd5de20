# Shared by start.sh, stop.sh and check.sh (sourced, not run). Paths of the
# engine installed by setup.sh and the test for "this pid is our server on PORT".

# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

engine_home=${REAL_ENGINE_HOME:-$HOME/.cache/gateway-real-engine}
engine_python=$engine_home/venv/bin/python
model_dir=$engine_home/models/tiny-llama
served_name=tiny-llama
log_dir=$engine_home/logs
run_dir=$engine_home/run

# Sets $port, $log_file and $pid_file from the PORT argument, or exits 2.
take_port_arg() {
  take_port_number "${1-}"
  log_file=$log_dir/vllm-$port.log
  pid_file=$run_dir/vllm-$port.pid
  tmp_dir=$engine_home/tmp/vllm-$port   # the server's TMPDIR (vLLM leaves files there)
}

# True when pid $1 runs vLLM's OpenAI api_server with --port $2 and our model
# directory, judged from its argument vector (not a substring of a joined line).
is_our_server() {
  local pid=$1 want_port=$2 i has_module=0 has_port=0 has_model=0
  local -a argv
  process_alive "$pid" || return 1
  argv_of "$pid" || return 1
  for ((i = 0; i < ${#argv[@]}; i++)); do
    case ${argv[i]} in
      vllm.entrypoints.openai.api_server) has_module=1 ;;
      --port) [ "${argv[i + 1]-}" = "$want_port" ] && has_port=1 ;;
      --model) [ "${argv[i + 1]-}" = "$model_dir" ] && has_model=1 ;;
    esac
  done
  [ "$has_module$has_port$has_model" = 111 ]
}
