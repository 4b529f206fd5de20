# What every real engine's scripts share (sourced, not run): vLLM's here,
# Triton's in triton/, Dynamo's in dynamo/. Each engine's common.sh sources
# this and adds its own paths and its "is this pid our server" test.
#
# Setup: stamps and digests, one setup at a time, uv and its retrying
# install. Start: the port argument, a program launched in its own session
# with its log and pid file. Stop: the processes of a session and the
# TERM-then-KILL loop.

# The uv all engines are installed with, one copy on disk for all.
readonly REAL_ENGINE_UV_VERSION=0.13.9

# --- ports -------------------------------------------------------------------

# Sets $port from $1, or prints the caller's $usage and exits 2.
take_port_number() {
  if ! [[ ${1-} =~ ^[1-9][0-9]{0,4}$ ]] || [ "$1" -gt 65535 ]; then
    printf 'usage: %s\n' "$usage" >&2
    exit 2
  fi
  port=$1
}

# True when something accepts connections on 127.0.0.1:$1.
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- processes -----------------------------------------------------------------

# Fails for a missing pid, a zombie or a dead process.
process_alive() {
  local line rest
  { read -r line < "/proc/$1/stat"; } 2>/dev/null || return 1
  rest=${line##*") "}
  case ${rest:0:1} in Z | X | x | "") return 1 ;; esac
}

# Reads the argument vector of pid $1 into the caller's array `argv`
# (declare it local first).
argv_of() {
  mapfile -d '' -t argv 2>/dev/null < "/proc/$1/cmdline"
}

# launch NAME LOG PID_FILE PROGRAM [ARGS...]: runs the program in a new
# session (its own process group, which stop signals), appending to LOG (the
# previous LOG kept as LOG.prev, a header line naming the command). The inner
# shell writes its own pid to PID_FILE and exec hands it on to the program,
# so the pid is right whether or not setsid had to fork.
launch() {
  local name=$1 log=$2 pid_file=$3
  shift 3
  if [ -f "$log" ]; then mv -f "$log" "$log.prev"; fi
  printf '### start.sh %s at %s: %s\n' "$port" "$(date -u +%FT%TZ)" "$*" > "$log"
  rm -f "$pid_file"
  setsid bash -c 'echo "$$" > "$1"; shift; exec "$@"' "$name" "$pid_file" "$@" \
    >>"$log" 2>&1 </dev/null &
}

# Waits up to 5 s until every given pid file is non-empty.
wait_for_pid_files() {
  local file ready
  for _ in $(seq 100); do
    ready=1
    for file in "$@"; do [ -s "$file" ] || ready=0; done
    [ "$ready" = 0 ] || return 0
    sleep 0.05
  done
  return 1
}

# Seconds since $1 (a `date +%s.%N` reading), one decimal.
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# --- stop ----------------------------------------------------------------------

# session_targets FOLLOW EXE LEADER...: sets the array `targets` to the
# leaders still alive, the members of their sessions and, with FOLLOW=1,
# all their descendants. With FOLLOW=0 a session member counts only when
# it runs the binary EXE (a left-over child of a leader that is gone, or
# that is not known to be ours). Session ids are not reused while a member
# lives, so this finds nothing of anyone else's.
session_targets() {
  local follow=$1 exe=$2
  shift 2
  local stat line rest pid state ppid sid leader grew
  local -A parent_of=() session_of=() leaders=() chosen=()
  for leader in "$@"; do leaders[$leader]=1; done
  targets=()
  for stat in /proc/[0-9]*/stat; do
    { read -r line < "$stat"; } 2>/dev/null || continue
    pid=${stat#/proc/}; pid=${pid%/stat}
    rest=${line##*") "}
    read -r state ppid _ sid _ <<<"$rest"
    case $state in Z | X | x) continue ;; esac
    parent_of[$pid]=$ppid
    session_of[$pid]=$sid
  done
  for leader in "$@"; do
    if [ -n "${parent_of[$leader]-}" ]; then chosen[$leader]=1; fi
  done
  for pid in "${!session_of[@]}"; do
    [ -n "${leaders[${session_of[$pid]}]-}" ] || continue
    if [ "$follow" = 1 ] || { [ -n "$exe" ] && [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]; }; then
      chosen[$pid]=1
    fi
  done
  if [ "$follow" = 1 ]; then  # descendants that left the session
    grew=1
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

# stop_targets TIMEOUT: SIGTERM to each of `targets` (and to any process
# the caller's `collect_targets` finds later, once each), until
# collect_targets finds none; SIGKILL to what is left after TIMEOUT
# seconds. Fails when something survives SIGKILL.
stop_targets() {
  local timeout=$1 deadline pid
  local -A termed=()
  deadline=$((SECONDS + timeout))
  while :; do
    for pid in "${targets[@]}"; do
      [ -z "${termed[$pid]-}" ] || continue
      termed[$pid]=1
      kill -TERM "$pid" 2>/dev/null || true
    done
    sleep 0.1
    collect_targets
    [ "${#targets[@]}" -gt 0 ] || return 0
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "still running after $timeout s: ${targets[*]}; SIGKILL"
      kill -KILL "${targets[@]}" 2>/dev/null || true
      for _ in $(seq 50); do
        sleep 0.1
        collect_targets
        [ "${#targets[@]}" -gt 0 ] || return 0
      done
      say "error: still alive after SIGKILL: ${targets[*]}"
      return 1
    fi
  done
}

# --- setup ---------------------------------------------------------------------

# sha256 over the contents (not the names) of the given files.
content_digest() { sha256sum -- "$@" | cut -c1-64 | sha256sum | cut -c1-64; }

# The same for requirement files, ignoring comment and blank lines (so
# editing a note reinstalls nothing).
pins_digest() {
  local f
  for f in "$@"; do
    printf '== %s\n' "${f##*/}"
    sed -e '/^[[:space:]]*#/d' -e '/^[[:space:]]*$/d' -- "$f"
  done | sha256sum | cut -c1-64
}

# True when the stamp file $1 holds exactly $2.
stamp_matches() { [ -f "$1" ] && [ "$(<"$1")" = "$2" ]; }

# setup_lock DIR: one setup at a time per install folder (two CI jobs on one
# machine). Returns 0 when the lock was free; 1 when it waited for another
# run, which may have done the work (the caller checks again).
setup_lock() {
  exec {setup_lock_fd}>"$1/.setup.lock"
  flock -n "$setup_lock_fd" && return 0
  say "another setup is running in $1; waiting for it"
  flock -w "${REAL_ENGINE_LOCK_TIMEOUT:-1800}" "$setup_lock_fd" || die "timed out waiting for $1/.setup.lock"
  return 1
}

# Installs uv into $engine_home (the base interpreter's pip, --target) unless
# it is there; sets $uv_bin and the uv environment (packages only, from
# PyPI, never an interpreter; no config files read).
ensure_uv() {
  local uv_home=$engine_home/uv-$REAL_ENGINE_UV_VERSION
  uv_bin=$uv_home/bin/uv
  export UV_CACHE_DIR=${UV_CACHE_DIR:-$engine_home/uv-cache}
  export UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1
  export UV_HTTP_TIMEOUT=${UV_HTTP_TIMEOUT:-300}
  uv_is_installed && return 0
  command -v "$base_python" >/dev/null || die "$base_python not found (set REAL_ENGINE_PYTHON)"
  say "installing uv $REAL_ENGINE_UV_VERSION into $uv_home (pip --target)"
  rm -rf "$uv_home" "$uv_home.partial"
  PIP_ROOT_USER_ACTION=ignore "$base_python" -m pip install --quiet --no-input \
      --disable-pip-version-check --no-warn-script-location \
      --target "$uv_home.partial" "uv==$REAL_ENGINE_UV_VERSION" >&2 \
    || die "pip could not install uv==$REAL_ENGINE_UV_VERSION for $base_python"
  mv "$uv_home.partial" "$uv_home"
  uv_is_installed || die "$uv_bin does not report version $REAL_ENGINE_UV_VERSION"
}

uv_is_installed() {
  local v
  v=$("$uv_bin" --version 2>/dev/null) || return 1
  [[ "$v" == "uv $REAL_ENGINE_UV_VERSION" || "$v" == "uv $REAL_ENGINE_UV_VERSION "* ]]
}

# uv_install VENV_PYTHON ARGS...: `uv pip install` into the venv, three
# tries (finished downloads stay in the cache, so a retry fetches only what
# is missing).
uv_install() {
  local python=$1 try=1
  shift
  until "$uv_bin" pip install --python "$python" "$@" >&2; do
    [ "$try" -lt 3 ] || die "uv pip install failed 3 times"
    say "uv pip install failed (try $try of 3); retrying in 10 s"
    try=$((try + 1))
    sleep 10
  done
}

# The real path of the base interpreter when it is Python >= 3.11.
python_311() {
  local interpreter
  interpreter=$("$base_python" -c 'import sys; print(sys.executable if sys.version_info >= (3, 11) else "")') \
    || die "cannot run $base_python (set REAL_ENGINE_PYTHON)"
  [ -n "$interpreter" ] || die "$base_python is older than 3.11 (set REAL_ENGINE_PYTHON)"
  printf '%s' "$interpreter"
}
