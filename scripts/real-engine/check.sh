#!/usr/bin/env bash
# Smoke test of the engine that start.sh PORT started; see check.py for the list.
#   bash scripts/real-engine/check.sh PORT
# One line per check, then "real-engine check: ..."; exit status 1 if any failed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
usage="check.sh PORT"
# shellcheck source=common.sh
. "$here/common.sh"
take_port_arg "${1-}"
[ -x "$engine_python" ] || { echo "check.sh: no engine under $engine_home; run setup.sh" >&2; exit 2; }
exec "$engine_python" "$here/check.py" "$port" --log "$log_file"
