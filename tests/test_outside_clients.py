"""Outside clients against the real server, through its CLI only (issue 16).

* The official TypeScript SDK client (``@modelcontextprotocol/sdk``, the client inside most hosts) runs
  ``tests/outside/client.mjs`` over stdio (it spawns ``python -m zimage_mcp serve`` itself) and over
  streamable HTTP against ``zimage-mcp serve --transport http`` with a Bearer token: initialize, list
  tools, ``generate_image`` with a progress token (progress must arrive), read the
  ``zimage://images/<id>`` resource, ``edit_image`` on that id, and a misspelled argument that must be
  refused with an error naming it.
* The official conformance suite (``@modelcontextprotocol/conformance``) runs its active server scenarios
  against a tokenless loopback daemon (the suite cannot send headers); the scenarios that do not apply
  are its expected failures, ``tests/outside/conformance-baseline.yml`` (reasons in the README there).

Nothing here imports ``zimage_mcp``: the server is a subprocess, configured by its CLI and environment.
The npm packages (versions pinned by ``tests/outside/package-lock.json``, Node 22 included) are installed
with ``npm ci`` when ``tests/outside/node_modules`` is missing or older than the lock file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OUTSIDE = REPO / "tests" / "outside"
NODE_MODULES = OUTSIDE / "node_modules"
STAMP = NODE_MODULES / ".zimage-outside-installed"
CONFORMANCE_JS = NODE_MODULES / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
BASELINE = OUTSIDE / "conformance-baseline.yml"
TOKEN = "outside-clients-token"
SIZE, STEPS = 256, 2

NPM_CI_TIMEOUT = 300
MAKE_TINY_TIMEOUT = 120
SERVER_START_TIMEOUT = 60
CLIENT_TIMEOUT = 180  # client.mjs gives up by itself after 150 s (--deadline-ms)
CONFORMANCE_TIMEOUT = 180

# Server scenarios of the conformance suite that apply to a server without the reference server's test
# tools, resources and prompts: each must pass. tools-call-simple-text and tools-call-error also "pass",
# but only because calling the absent reference tools (test_simple_text, test_error_handling) yields an
# error result with text; they are not counted here (see tests/outside/README.md).
APPLICABLE = [
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "prompts-list",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
]
PASS_WITHOUT_APPLYING: list[str] = []


# -- npm packages -------------------------------------------------------------------------------------


def _lock_digest() -> str:
    h = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        h.update((OUTSIDE / name).read_bytes())
    return h.hexdigest()


def _tail(text: str | bytes | None, n: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-n:]


@pytest.fixture(scope="module")
def node() -> Path:
    """Node 22 from tests/outside/node_modules (npm's ``node`` package), installed by ``npm ci`` when needed."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "npm is not on PATH: the outside-client tests need Node.js and npm (any Node >= 18 to run "
            "npm; Node 22 itself comes from tests/outside/package-lock.json). Install them, e.g. "
            "`apt-get install nodejs npm`."
        )
    digest = _lock_digest()
    lock_path = (
        Path(tempfile.gettempdir())
        / f"zimage-outside-npm-{hashlib.sha256(str(OUTSIDE).encode()).hexdigest()[:12]}.lock"
    )
    with open(lock_path, "w") as lock:  # one npm ci at a time (parallel pytest workers, two checkouts' runs)
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = STAMP.read_text().strip() if STAMP.is_file() else ""
        if installed != digest or not CONFORMANCE_JS.is_file() or not (NODE_MODULES / ".bin" / "node").exists():
            started = time.monotonic()
            print(f"npm ci in {OUTSIDE} (node_modules missing or stale)", file=sys.stderr)
            try:
                done = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=OUTSIDE,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=NPM_CI_TIMEOUT,
                )
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"npm ci in {OUTSIDE} took longer than {NPM_CI_TIMEOUT} s:\n{_tail(exc.stderr)}")
            if done.returncode != 0:
                pytest.fail(
                    f"npm ci in {OUTSIDE} failed (exit {done.returncode}):\n{_tail(done.stdout)}\n{_tail(done.stderr)}"
                )
            STAMP.write_text(digest + "\n")
            print(f"npm ci done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    binary = NODE_MODULES / ".bin" / "node"
    try:
        version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError as exc:
        pytest.fail(
            f"{binary} does not run ({exc}): the `node` package's install script did not fetch the binary; "
            f"delete {NODE_MODULES} and run `npm ci` in {OUTSIDE} to see why"
        )
    if not version.startswith("v22."):
        pytest.fail(f"{binary} is {version!r}, expected Node 22 as pinned in {OUTSIDE / 'package.json'}")
    return binary


# -- the server, from outside ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for server subprocesses: a tiny random model made by ``zimage-mcp make-tiny``."""
    root = tmp_path_factory.mktemp("outside")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_MCP_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")] if p)
    home = root / "home"
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_PICTURES_DIR"):
        (home / var.lower()).mkdir(parents=True)
        env[var] = str(home / var.lower())
    env.update(HF_HOME=str(home / "hf"), HF_HUB_OFFLINE="1")
    model = root / "tiny"
    try:
        made = subprocess.run(
            [sys.executable, "-m", "zimage_mcp", "make-tiny", str(model)],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            timeout=MAKE_TINY_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"zimage-mcp make-tiny took longer than {MAKE_TINY_TIMEOUT} s")
    assert made.returncode == 0, f"zimage-mcp make-tiny failed:\n{_tail(made.stderr)}"
    registry = root / "registry.toml"
    registry.write_text(f"""
[variants.z-image-turbo.weights]
path = "{model.as_posix()}"

[variants.z-image-turbo.defaults]
steps = {STEPS}
width = {SIZE}
height = {SIZE}

[variants.z-image-turbo.limits]
min_side = {SIZE}
max_side = {SIZE}
""")
    (root / "loras").mkdir()
    (root / "inputs").mkdir()
    env.update(
        ZIMAGE_MCP_REGISTRY=str(registry),
        ZIMAGE_MCP_OUTPUT_DIR=str(root / "out"),
        ZIMAGE_MCP_INPUT_DIRS=str(root / "inputs"),
        ZIMAGE_MCP_LORA_DIR=str(root / "loras"),
        ZIMAGE_MCP_DEVICE="cpu",  # the CPU always runs float32
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kill(proc: subprocess.Popen) -> None:
    """Stop a process this module started, and its process group (it was started in a new session)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def _start_daemon(env: dict[str, str], log: Path, token: str | None) -> tuple[str, subprocess.Popen]:
    """``python -m zimage_mcp serve --transport http`` on a free loopback port; waits (bounded) for /metrics."""
    port = _free_port()
    env = dict(env)
    if token:
        env["ZIMAGE_MCP_TOKEN"] = token
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "zimage_mcp",
                "serve",
                "--transport",
                "http",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            cwd=log.parent,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the HTTP daemon exited with {proc.returncode}:\n{_tail(log.read_bytes())}")
            try:
                with urllib.request.urlopen(request, timeout=2) as answer:
                    if answer.status == 200:
                        return f"{base}/mcp", proc
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise AssertionError(
            f"the HTTP daemon did not answer within {SERVER_START_TIMEOUT} s:\n{_tail(log.read_bytes())}"
        )
    except BaseException:
        _kill(proc)
        raise


@pytest.fixture
def daemon_with_token(server_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    url, proc = _start_daemon(server_env, tmp_path / "daemon.log", TOKEN)
    try:
        yield url
    finally:
        _kill(proc)


@pytest.fixture
def daemon_without_token(server_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    url, proc = _start_daemon(server_env, tmp_path / "daemon.log", None)
    try:
        yield url
    finally:
        _kill(proc)


def _run_node(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a node command in its own process group; the whole group is killed on time-out or error."""
    proc = subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"{args[1:3]} took longer than {timeout} s\nstdout:\n{_tail(out)}\nstderr:\n{_tail(err)}"
        ) from None
    finally:
        _kill(proc)
        try:  # a stdio server the client spawned is in the same process group: never leave it behind
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


# -- the conformance suite -------------------------------------------------------------------------------


def _baseline() -> list[str]:
    return re.findall(r"^\s+-\s+([\w-]+)", BASELINE.read_text(), flags=re.M)


def test_conformance_suite(node: Path, server_env: dict[str, str], daemon_without_token: str, tmp_path: Path) -> None:
    results = tmp_path / "conformance"
    env = {k: v for k, v in server_env.items() if not k.startswith("ZIMAGE_MCP_")}
    done = _run_node(
        [
            str(node),
            str(CONFORMANCE_JS),
            "server",
            "--url",
            daemon_without_token,
            "--expected-failures",
            str(BASELINE),
            "-o",
            str(results),
        ],
        env,
        tmp_path,
        CONFORMANCE_TIMEOUT,
    )
    checks: dict[str, list[dict]] = {}
    for folder in sorted(results.iterdir()):
        scenario = re.sub(r"^server-|-\d{4}-\d{2}-\d{2}T[\d-]+Z$", "", folder.name)
        checks[scenario] = json.loads((folder / "checks.json").read_text())
    failing = {
        name: [f"{c['id']}: {c.get('errorMessage')}" for c in found if c["status"] == "FAILURE"]
        for name, found in checks.items()
    }
    bad = {name: failing.get(name, ["did not run"]) for name in APPLICABLE if failing.get(name, ["did not run"])}
    assert not bad, f"applicable conformance scenarios failed: {json.dumps(bad, indent=2)}\n{_tail(done.stdout)}"
    unknown = set(checks) - set(APPLICABLE) - set(PASS_WITHOUT_APPLYING) - set(_baseline())
    assert not unknown, f"scenarios this test does not know (classify them in tests/outside): {sorted(unknown)}"
    assert done.returncode == 0, (
        f"conformance exited {done.returncode} (a baseline entry now passes, or an "
        f"unexpected failure):\n{_tail(done.stdout)}\n{_tail(done.stderr)}"
    )


# -- the TypeScript SDK client ---------------------------------------------------------------------------


def _client(node: Path, env: dict[str, str], cwd: Path, transport_args: list[str]) -> dict:
    done = _run_node(
        [
            str(node),
            str(OUTSIDE / "client.mjs"),
            "--size",
            str(SIZE),
            "--steps",
            str(STEPS),
            "--deadline-ms",
            str((CLIENT_TIMEOUT - 30) * 1000),
            *transport_args,
        ],
        env,
        cwd,
        CLIENT_TIMEOUT,
    )
    try:
        summary = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"client.mjs exited {done.returncode} without a JSON summary\nstdout:\n{_tail(done.stdout)}"
            f"\nstderr:\n{_tail(done.stderr)}"
        ) from None
    summary["_exit"] = done.returncode
    summary["_stderr_tail"] = _tail(done.stderr, 1500)
    return summary


def _assert_round_trip(summary: dict) -> None:
    names = [c["name"] for c in summary["checks"]]
    failed = {c["name"]: c.get("detail") for c in summary["checks"] if not c["ok"]}
    report = json.dumps(failed, indent=2)[:6000]
    assert summary["_exit"] == 0 and not failed, (
        f"TypeScript SDK client over {summary['transport']}: exit {summary['_exit']}, failed checks:\n{report}"
        f"\nserver/client stderr tail:\n{summary['_stderr_tail']}"
    )
    assert names == [
        "initialize",
        "list_tools",
        "generate_image",
        "progress_notifications",
        "read_resource",
        "edit_image",
        "misspelled_argument_refused",
    ], names
    assert summary["progress"] > 0


def test_typescript_sdk_client_over_http(
    node: Path, server_env: dict[str, str], daemon_with_token: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in server_env.items() if not k.startswith("ZIMAGE_MCP_")}
    env["ZIMAGE_MCP_TOKEN"] = TOKEN  # client.mjs sends it as 'Authorization: Bearer ...'
    summary = _client(node, env, tmp_path, ["http", daemon_with_token])
    summary["_stderr_tail"] += "\n[daemon log]\n" + _tail((tmp_path / "daemon.log").read_bytes(), 1500)
    _assert_round_trip(summary)
    assert summary["protocol_version"]  # negotiated over HTTP (sent back as MCP-Protocol-Version)


def test_typescript_sdk_client_over_stdio(node: Path, server_env: dict[str, str], tmp_path: Path) -> None:
    summary = _client(node, server_env, tmp_path, ["stdio", "--", sys.executable, "-m", "zimage_mcp", "serve"])
    _assert_round_trip(summary)
