"""Shared fixtures for the server tests: a tiny real checkpoint, settings and a registry pointing at it.

Import the fixtures into a test module with ``from tests.server_fixtures import *``. The checkpoint is
made once per session by the engine's ``make_tiny``; every generation goes through the real registry,
plugins and engine on the CPU, at 64x64 with a couple of steps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from zimage_mcp.registry import Registry
from zimage_mcp.registry.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TINY_SIZE = 256


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zimage_mcp.engine.presets.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny-zimage"))


def write_registry(path: Path, model_dir: Path, steps: int = 2) -> Path:
    """A user registry that points Turbo at the tiny checkpoint and allows 64 px images."""
    path.write_text(
        f"""
[variants.z-image-turbo.weights]
path = "{model_dir.as_posix()}"

[variants.z-image-turbo.defaults]
steps = {steps}
width = {TINY_SIZE}
height = {TINY_SIZE}

[variants.z-image-turbo.limits]
min_side = 256
max_side = 256
"""
    )
    return path


@pytest.fixture
def registry_file(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return write_registry(tmp_path / "registry.toml", tiny_model_dir)


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(tmp_path: Path, registry_file: Path, input_dir: Path) -> Settings:
    return make_settings(tmp_path, registry_file, input_dir)


def make_settings(tmp_path: Path, registry_file: Path, input_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "registry_file": registry_file,
        "output_dir": tmp_path / "out",
        "input_dirs": (input_dir,),
        "lora_dir": tmp_path / "loras",
        "device": "cpu",
        "dtype": "float32",
        "idle_unload_seconds": 0.0,
        "load_plugins": None,
    }
    values.update(overrides)
    return Settings.from_env(environ={}, **values)


def server_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a server subprocess with the same configuration as ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMAGE_MCP_")}
    env.update(
        ZIMAGE_MCP_REGISTRY=str(settings.registry_file),
        ZIMAGE_MCP_OUTPUT_DIR=str(settings.output_dir),
        ZIMAGE_MCP_INPUT_DIRS=os.pathsep.join(str(p) for p in settings.input_dirs),
        ZIMAGE_MCP_LORA_DIR=str(settings.lora_dir),
        ZIMAGE_MCP_DEVICE="cpu",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_http_server(settings: Settings, port: int, **env: str) -> subprocess.Popen[bytes]:
    """Start ``zimage-mcp serve --transport http`` and wait (bounded) until it answers."""
    import httpx2

    proc = subprocess.Popen(
        [sys.executable, "-m", "zimage_mcp", "serve", "--transport", "http", "--port", str(port)],
        env=server_env(settings, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=1, headers=_auth(env))
            return proc
        except httpx2.HTTPError:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError("HTTP server did not start within 30 s")


def _auth(env: dict[str, str]) -> dict[str, str]:
    token = env.get("ZIMAGE_MCP_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def http_server(settings: Settings) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = start_http_server(settings, port)
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        stop(proc)


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    """The real registry (real plugins) on the tiny checkpoint; unloads its backends afterwards."""
    reg = Registry.from_settings(settings)
    try:
        yield reg
    finally:
        reg.unload_all()


# -- helpers for the reliability, security, fuzz, load, crash and logging tests ------------------


def module_settings(factory: pytest.TempPathFactory, model_dir: Path, name: str, **overrides: object) -> Settings:
    """Settings in a fresh temp folder (for module-scoped servers shared by many cases)."""
    root = factory.mktemp(name)
    inputs = root / "inputs"
    inputs.mkdir()
    return make_settings(root, write_registry(root / "registry.toml", model_dir), inputs, **overrides)


class SyncClient:
    """An in-memory ``mcp.Client`` held open on a blocking portal, so sync tests (and hypothesis) can
    share one server and one loaded model across many calls. Use as a context manager."""

    def __init__(self, server: object, mode: str = "auto") -> None:
        self.server = server
        self.mode = mode

    def __enter__(self) -> SyncClient:
        from anyio.from_thread import start_blocking_portal
        from mcp import Client

        self._portal_cm = start_blocking_portal("asyncio")
        self.portal = self._portal_cm.__enter__()
        self._client_cm = self.portal.wrap_async_context_manager(Client(self.server, mode=self.mode))
        self.client = self._client_cm.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._client_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    def call(self, name: str, args: dict[str, object], timeout: float = 60.0) -> object:
        return self.portal.call(lambda: self.client.call_tool(name, args, read_timeout_seconds=timeout))

    def read(self, uri: str) -> object:
        return self.portal.call(self.client.read_resource, uri)


def result_text(result: object) -> str:
    return "\n".join(getattr(b, "text", "") for b in getattr(result, "content", []) if getattr(b, "type", "") == "text")


def rss_kib(pid: int) -> int:
    """Resident memory of a process from /proc (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
