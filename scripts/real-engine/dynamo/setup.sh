#!/usr/bin/env bash
# Installs a real NVIDIA Dynamo for the gateway's real-engine tests: ai-dynamo
# 1.6.1 (its OpenAI-compatible frontend, `python -m dynamo.frontend`, and its
# GPU-free simulated worker, `python -m dynamo.mocker`) in its own venv, plus
# the model folder the mocker reads its tokenizer and shapes from (the
# project's TinyLlama tokenizer fixture and a config; no weights, no model hub).
#
#   bash scripts/real-engine/dynamo/setup.sh
#
# Idempotent. Everything lives under $REAL_ENGINE_HOME/dynamo (default
# $HOME/.cache/gateway-real-engine/dynamo); nothing is written inside the
# repository. Two stamp files record what the venv and the model folder were
# built from (versions, sha256 of the lock and of the model inputs). When both
# match, the script prints the paths and exits at once: no lock, no Python, no
# network. Concurrent runs are serialised with flock.
#
# Why not `pip install ai-dynamo==1.6.1`: see requirements.in (a dependency that
# cannot be installed from the registries and is not needed). The lock holds
# every package; they are installed with --no-deps.
#
# stdout: KEY=value lines only (REAL_DYNAMO_HOME, REAL_DYNAMO_PYTHON_BIN,
# REAL_DYNAMO_MODEL_DIR, REAL_DYNAMO_SERVED_MODEL_NAME, REAL_DYNAMO_LOG_DIR,
# REAL_DYNAMO_RUN_DIR); progress goes to stderr. Exit status 0 = ready to start.
#
# Environment:
#   REAL_ENGINE_HOME          install root (default $HOME/.cache/gateway-real-engine;
#                             shared with the vLLM setup, which uses other folders)
#   REAL_ENGINE_PYTHON        base interpreter, >= 3.11 with pip (default python3)
#   REAL_ENGINE_FORCE=1       rebuild the venv and the model folder regardless of stamps
#   REAL_ENGINE_LOCK_TIMEOUT  seconds to wait for a concurrent setup (default 1800)
#   UV_CACHE_DIR              uv download cache (default $REAL_ENGINE_HOME/uv-cache)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fixtures=$(cd "$here/../../../fixtures/tokenizers" && pwd)
# shellcheck source=../lib.sh
. "$here/../lib.sh"

engine_home=${REAL_ENGINE_HOME:-$HOME/.cache/gateway-real-engine}
base_python=${REAL_ENGINE_PYTHON:-python3}
force=${REAL_ENGINE_FORCE:-0}

readonly DYNAMO_VERSION=1.6.1
readonly SERVED_NAME=tiny-llama

dynamo_home=$engine_home/dynamo
venv=$dynamo_home/venv
model_dir=$dynamo_home/models/$SERVED_NAME
venv_stamp=$venv/.real-dynamo-stamp
model_stamp=$model_dir/.real-dynamo-stamp

lock_file=$here/requirements.lock
# Model folder: <source> -> <name in the folder>.
model_files=(
  "$fixtures/tinyllama.json:tokenizer.json"
  "$fixtures/tinyllama.tokenizer_config.json:tokenizer_config.json"
  "$fixtures/tinyllama.chat_template.jinja:chat_template.jinja"
  "$here/model/config.json:config.json"
  "$here/model/generation_config.json:generation_config.json"
)

say() { printf 'real-dynamo setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

sources=()
for entry in "${model_files[@]}"; do
  sources+=("${entry%%:*}")
done
for input in "$lock_file" "${sources[@]}"; do
  [ -f "$input" ] || die "missing input $input"
done

# What each part is built from; "layout" is bumped when this script changes
# how it builds them.
venv_key="layout=2 ai-dynamo=$DYNAMO_VERSION uv=$REAL_ENGINE_UV_VERSION pins=$(pins_digest "$lock_file")"
model_key="layout=1 files=$(content_digest "${sources[@]}")"

venv_ready()  { [ -x "$venv/bin/python" ] && stamp_matches "$venv_stamp" "$venv_key"; }
model_ready() { [ -s "$model_dir/tokenizer.json" ] && stamp_matches "$model_stamp" "$model_key"; }

report() {
  printf '%s\n' \
    "REAL_DYNAMO_HOME=$dynamo_home" \
    "REAL_DYNAMO_PYTHON_BIN=$venv/bin/python" \
    "REAL_DYNAMO_MODEL_DIR=$model_dir" \
    "REAL_DYNAMO_SERVED_MODEL_NAME=$SERVED_NAME" \
    "REAL_DYNAMO_LOG_DIR=$dynamo_home/logs" \
    "REAL_DYNAMO_RUN_DIR=$dynamo_home/run"
}

# Warm path: nothing to do.
if [ "$force" != 1 ] && venv_ready && model_ready; then
  say "up to date (ai-dynamo $DYNAMO_VERSION, model folder $SERVED_NAME) in $dynamo_home"
  report
  exit 0
fi

mkdir -p "$dynamo_home/logs" "$dynamo_home/run" "$dynamo_home/models"

if ! setup_lock "$dynamo_home" && [ "$force" != 1 ] && venv_ready && model_ready; then
  say "the other run finished the setup"
  report
  exit 0
fi
started=$SECONDS

# --- 1. uv, from PyPI with the base interpreter's pip, into its own folder.
ensure_uv

# --- 2. The venv: every pinned package, none resolved.
if [ "$force" = 1 ] || ! venv_ready; then
  interpreter=$(python_311)

  say "creating the venv $venv with $interpreter"
  rm -rf "$venv"
  "$uv_bin" venv --quiet --python "$interpreter" "$venv" >&2

  say "installing ai-dynamo $DYNAMO_VERSION and its pinned dependencies (cold: ~150 MB download)"
  t0=$SECONDS
  uv_install "$venv/bin/python" --compile-bytecode --no-deps --requirements "$lock_file"
  say "packages installed in $((SECONDS - t0)) s"

  # Import check: a broken install fails here, not at the first start.
  "$venv/bin/python" - >&2 <<'PY' || die "the installed Dynamo does not import"
from importlib.metadata import version
import dynamo.frontend.main, dynamo.mocker.main  # noqa: F401  (the imports are the check)
print("real-dynamo setup: import check ok:", ", ".join(
    f"{name} {version(name)}" for name in ("ai-dynamo", "ai-dynamo-runtime", "transformers")))
PY
  printf '%s' "$venv_key" > "$venv_stamp"
fi

# --- 3. The model folder: tokenizer and shapes, no weights.
if [ "$force" = 1 ] || ! model_ready; then
  say "writing the model folder $model_dir"
  rm -rf "$model_dir" "$model_dir.partial"
  mkdir -p "$model_dir.partial"
  for entry in "${model_files[@]}"; do
    cp -- "${entry%%:*}" "$model_dir.partial/${entry#*:}"
  done
  printf '%s' "$model_key" > "$model_dir.partial/.real-dynamo-stamp"
  mv "$model_dir.partial" "$model_dir"
fi

say "ready in $((SECONDS - started)) s; $(du -sh "$dynamo_home" 2>/dev/null | cut -f1) under $dynamo_home"
report
