#!/usr/bin/env bash
# One entry point for a fresh machine. Each command creates its environment (.venv) when missing.
#   ./run.sh serve [zimage-mcp serve args]   start the MCP server (stdio by default)
#   ./run.sh test  [pytest args]             run the whole test suite
#   ./run.sh cli   [zimage-mcp args]         any other zimage-mcp command (generate, list, make-tiny, ...)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${ZIMAGE_MCP_VENV:-.venv}"

ensure_env() {  # $1 = the pyproject extra to install; all pip output goes to stderr (stdout is MCP's)
    local extra="$1" stamp="$VENV/.installed-$1"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" >&2
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        # torch first, pinned: an unpinned resolve can pull a multi-GB build the machine does not need.
        "$VENV/bin/python" -c "import torch" 2>/dev/null || "$VENV/bin/python" -m pip install -q "torch==${ZIMAGE_MCP_TORCH:-2.13.0}" >&2
        "$VENV/bin/python" -m pip install -q -e ".[$extra]" >&2
        touch "$stamp"
    fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
    serve) ensure_env hub; exec "$VENV/bin/zimage-mcp" serve "$@" ;;
    test)  ensure_env test; exec "$VENV/bin/python" -m pytest "$@" ;;
    cli)   ensure_env hub; exec "$VENV/bin/zimage-mcp" "$@" ;;
    *) echo "usage: ./run.sh serve|test|cli [args]" >&2; exit 2 ;;
esac
