# Shared by setup.sh, start.sh and stop.sh (sourced, not run): the paths of
# the Triton install and the test for "this pid is our server on PORT".

# shellcheck source=../lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

triton_home=${REAL_ENGINE_HOME:-$HOME/.cache/gateway-real-engine}/triton
triton_venv=$triton_home/venv
# The server's files as its launcher lays them out: backends/python (with
# the stub for the venv's Python) and caches/.
triton_dist=$triton_home/dist
triton_models=$triton_home/models
triton_env_file=$triton_home/triton.env   # written by setup.sh: TRITON_* paths
log_dir=$triton_home/logs
run_dir=$triton_home/run
events_root=$triton_home/events

# Sets $port, $log_file, $pid_file, $info_file, $events_dir and $shm_prefix
# from the PORT argument, or exits 2.
take_port_arg() {
  take_port_number "${1-}"
  log_file=$log_dir/triton-$port.log
  pid_file=$run_dir/triton-$port.pid
  info_file=$run_dir/triton-$port.env   # KEY=value lines of a started server
  events_dir=$events_root/$port         # the model's events.jsonl
  shm_prefix=gateway-triton-$port-      # the Python backend's /dev/shm regions
}

# True when pid $1 runs tritonserver with --http-port $2 and our model
# repository, judged from its argument vector.
is_our_server() {
  local pid=$1 want_port=$2 i has_binary=0 has_port=0 has_repo=0
  local -a argv
  process_alive "$pid" || return 1
  argv_of "$pid" || return 1
  [[ ${argv[0]-} == */tritonserver ]] && has_binary=1
  for ((i = 1; i < ${#argv[@]}; i++)); do
    case ${argv[i]} in
      --http-port) [ "${argv[i + 1]-}" = "$want_port" ] && has_port=1 ;;
      --model-repository) [ "${argv[i + 1]-}" = "$triton_models" ] && has_repo=1 ;;
    esac
  done
  [ "$has_binary$has_port$has_repo" = 111 ]
}
