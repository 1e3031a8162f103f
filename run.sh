#!/usr/bin/env bash
# One entry point for a fresh machine. Each command creates its environment (.venv) when missing.
#   ./run.sh serve [zimage-mcp serve args]   start the MCP server (stdio by default)
#   ./run.sh test  [pytest args]             ruff (lint, format check), then the whole test suite (from the project folder)
#   ./run.sh cli   [zimage-mcp args]         any other zimage-mcp command (generate, list, make-tiny, ...)
# serve and cli run where you stand, so relative paths (--out rel.png, --registry my.toml) are yours.
# What it installs is announced on stderr, one line per step; stdout stays the protocol's under serve.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"  # a subshell: the caller's cwd is kept
VENV="${ZIMAGE_MCP_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac

say() { echo "run.sh: $*" >&2; }

ensure_env() {  # $1 = the pyproject extra to install; all installer output goes to stderr (stdout is MCP's)
    local extra="$1" stamp="$VENV/.installed-$1" start
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtual environment $VENV"
        python3 -m venv "$VENV" >&2
    fi
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
        # torch first, pinned: an unpinned resolve can pull a multi-GB build the machine does not need.
        if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
            start=$SECONDS
            say "installing torch==${ZIMAGE_MCP_TORCH:-2.13.0} (a large download, often a minute or more)"
            "$VENV/bin/python" -m pip install -q "torch==${ZIMAGE_MCP_TORCH:-2.13.0}" >&2
            say "torch installed in $((SECONDS - start)) s"
        fi
        start=$SECONDS
        say "installing zimage-mcp (editable, from $ROOT) with its '$extra' extra and dependencies"
        "$VENV/bin/python" -m pip install -q -e "$ROOT[$extra]" >&2
        say "zimage-mcp[$extra] installed in $((SECONDS - start)) s"
        touch "$stamp"
    fi
}

ensure_npm() {  # the npm packages of tests/test_outside_clients.py (it would run the same npm ci itself)
    local dir="$ROOT/tests/outside" digest start
    [ -f "$dir/package-lock.json" ] || return 0
    if ! command -v npm >/dev/null 2>&1; then
        say "npm not found: tests/test_outside_clients.py needs Node.js and npm and will fail"
        return 0
    fi
    digest="$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$dir/node_modules/.zimage-outside-installed" 2>/dev/null)" != "$digest" ]; then
        start=$SECONDS
        say "installing npm packages for tests (npm ci in tests/outside: MCP TypeScript SDK, conformance suite, Node 22)"
        (cd "$dir" && npm ci --no-audit --no-fund >&2) || { say "npm ci failed; the outside-client tests will retry it"; return 0; }
        echo "$digest" > "$dir/node_modules/.zimage-outside-installed"
        say "npm packages installed in $((SECONDS - start)) s"
    fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
    serve) ensure_env hub; exec "$VENV/bin/zimage-mcp" serve "$@" ;;
    test)  ensure_env test; ensure_npm; cd "$ROOT"
           say "ruff: lint and format check"
           "$VENV/bin/ruff" check --quiet . && "$VENV/bin/ruff" format --check --quiet . \
               || { say "ruff found problems (above): '$VENV/bin/ruff check --fix . && $VENV/bin/ruff format .' fixes most"; exit 1; }
           exec "$VENV/bin/python" -m pytest "$@" ;;
    cli)   ensure_env hub; exec "$VENV/bin/zimage-mcp" "$@" ;;
    *) echo "usage: ./run.sh serve|test|cli [args]" >&2; exit 2 ;;
esac
