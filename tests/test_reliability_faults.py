"""GPU faults, failed loads, cancellation and time-outs, on the real engine backend (tiny model, CPU).

A test plugin (registered on the plugin manager, like any third-party plugin) adds variants whose
factories wrap the real ``zimage_engine_backend.build_backend``:

* ``oom-engine``: the engine raises ``torch.cuda.OutOfMemoryError`` from its step callback mid-run
  (patched on that backend instance only), so the backend's own OOM translation runs;
* ``slow-engine``: each denoising step takes 50 ms longer and is timestamped, to measure how fast a
  cancel stops the engine;
* ``broken-engine``: the factory raises (a backend that fails to load).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError

from tests.server_fixtures import SyncClient, module_settings, result_text, tiny_model_dir  # noqa: F401
from zimage_mcp import hookimpl
from zimage_mcp.registry import Registry
from zimage_mcp.registry.plugin_manager import plugin_manager_from_settings
from zimage_mcp.registry.settings import Settings
from zimage_mcp.server import build_server

ARGS = {"prompt": "a lamp", "width": 256, "height": 256, "steps": 2, "preview": "none"}


class Probe:
    """Shared switches and observations between the test and the wrapped backends."""

    def __init__(self) -> None:
        self.oom_armed = True
        self.step_times: list[float] = []
        self.builds = 0


def _plugin(turbo: Any, probe: Probe) -> object:
    def oom_factory(spec: Any, ctx: Any) -> Any:
        import torch
        from zimage_builtins.engine_backend import build_backend

        backend = build_backend(spec, ctx)
        real_run = backend._run

        def run(request: Any, on_step: Any, should_stop: Any) -> Any:
            def exploding(i: int, n: int) -> None:
                on_step(i, n)
                if i >= 1 and probe.oom_armed:
                    probe.oom_armed = False
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

            return real_run(request, exploding, should_stop)

        backend._run = run  # this instance only
        return backend

    def slow_factory(spec: Any, ctx: Any) -> Any:
        from zimage_builtins.engine_backend import build_backend

        backend = build_backend(spec, ctx)
        real_run = backend._run

        def run(request: Any, on_step: Any, should_stop: Any) -> Any:
            def slow(i: int, n: int) -> None:
                time.sleep(0.05)
                probe.step_times.append(time.monotonic())
                on_step(i, n)

            return real_run(request, slow, should_stop)

        backend._run = run
        return backend

    def broken_factory(spec: Any, ctx: Any) -> Any:
        probe.builds += 1
        raise RuntimeError("safetensors header is corrupt in transformer shard 2")

    class FaultPlugin:
        @hookimpl
        def zimage_register_variants(self, register: Any, catalog: Any) -> None:
            for vid, factory in (("oom-engine", oom_factory), ("slow-engine", slow_factory),
                                 ("broken-engine", broken_factory)):
                register(replace(turbo, id=vid, title=vid), factory, aliases=())

    return FaultPlugin()


def _server(settings: Settings, probe: Probe) -> Any:
    turbo = Registry.from_settings(settings).resolve("z-image-turbo").spec
    pm = plugin_manager_from_settings(settings)
    pm.register(_plugin(turbo, probe), name="fault_test_plugin")
    return build_server(settings, Registry.from_settings(settings, pm=pm))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Settings:
    return module_settings(tmp_path_factory, tiny_model_dir, "faults")


def _images(settings: Settings) -> set[str]:
    folder = Path(settings.output_dir) / "images"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_oom_mid_run_is_translated_and_the_server_recovers(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    emptied: list[int] = []
    real_empty = torch.cuda.empty_cache
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: (emptied.append(1), real_empty())[1])
    probe = Probe()
    server = _server(settings, probe)
    with SyncClient(server) as client:
        before = _images(settings)
        oom = client.call("generate_image", {**ARGS, "model": "oom-engine"})
        text = result_text(oom)
        assert oom.is_error and "out of GPU memory" in text, text
        assert "Lower width/height, count or steps" in text and "256x256" in text
        assert not probe.oom_armed  # it really fired inside the engine's step path
        assert emptied, "the backend did not empty the CUDA cache after the OOM"
        assert not server.state.jobs.lock.held and server.state.jobs.queue_depth == 0
        assert _images(settings) == before  # nothing half-written
        again = client.call("generate_image", {**ARGS, "model": "oom-engine"})
        assert not again.is_error, result_text(again)
        assert again.structured_content["timings"]["queue_wait"] < 0.1
        other = client.call("generate_image", ARGS)
        assert not other.is_error
    assert 'reason="OutOfMemoryError"' in server.state.metrics.render()


def test_failed_load_marks_only_that_variant(settings: Settings) -> None:
    probe = Probe()
    server = _server(settings, probe)
    with SyncClient(server) as client:
        broken = client.call("generate_image", {**ARGS, "model": "broken-engine"})
        assert broken.is_error and "broken-engine" in result_text(broken)
        assert "corrupt" in result_text(broken)
        models = client.call("list_models", {})
        failed = models.structured_content["failed"]
        assert "broken-engine" in failed and "corrupt" in failed["broken-engine"]
        row = next(v for v in models.structured_content["variants"] if v["id"] == "broken-engine")
        assert row["failed"] and "FAILED" in result_text(models)
        assert set(failed) == {"broken-engine"}
        ok = client.call("generate_image", ARGS)
        assert not ok.is_error, result_text(ok)
        again = client.call("generate_image", {**ARGS, "model": "broken-engine"})
        assert again.is_error and probe.builds == 1  # marked failed: not rebuilt on every call
        assert not server.state.jobs.lock.held


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_client_cancel_stops_within_one_step(settings: Settings, mode: str) -> None:
    probe = Probe()
    server = _server(settings, probe)
    with SyncClient(server, mode=mode) as client:
        warm = client.call("generate_image", {**ARGS, "model": "slow-engine"})
        assert not warm.is_error, result_text(warm)
        before = _images(settings)
        probe.step_times.clear()
        with pytest.raises(MCPError):
            client.call("generate_image", {**ARGS, "model": "slow-engine", "steps": 80}, timeout=0.6)
        cancelled_at = time.monotonic()
        assert probe.step_times, "the engine never started"
        deadline = cancelled_at + 5
        while server.state.jobs.lock.held and time.monotonic() < deadline:
            time.sleep(0.005)
        freed_after = time.monotonic() - cancelled_at
        late_steps = [t for t in probe.step_times if t > cancelled_at]
        assert len(late_steps) <= 1, f"{len(late_steps)} steps ran after the cancel"
        assert freed_after < 0.5, f"GPU lock held {freed_after:.2f} s after the cancel"
        assert len(probe.step_times) < 80
        nxt = client.call("generate_image", ARGS)
        assert not nxt.is_error, result_text(nxt)
        assert nxt.structured_content["queue_wait_seconds"] < 0.1  # the next call gets the GPU at once
        new = _images(settings) - before
        assert len(new) == 2 and not [n for n in new if n.startswith(".tmp-")]  # only the next call's image+sidecar
    assert 'outcome="cancelled"' in server.state.metrics.render()


def test_server_timeout_stops_the_engine(settings: Settings) -> None:
    probe = Probe()
    server = _server(replace(settings, job_timeout_seconds=0.5), probe)
    with SyncClient(server) as client:
        client.call("generate_image", {**ARGS, "model": "slow-engine"})  # load first
        probe.step_times.clear()
        started = time.monotonic()
        slow = client.call("generate_image", {**ARGS, "model": "slow-engine", "steps": 80})
        assert slow.is_error and "timed out after 0.5 s" in result_text(slow)
        assert "fewer steps" in result_text(slow)
        assert time.monotonic() - started < 3 and len(probe.step_times) < 40
        assert not server.state.jobs.lock.held
        nxt = client.call("generate_image", ARGS)
        assert not nxt.is_error and nxt.structured_content["queue_wait_seconds"] < 0.1


def test_cancel_job_while_queued_and_running(settings: Settings) -> None:
    probe = Probe()
    server = _server(settings, probe)
    with SyncClient(server) as client:
        client.call("generate_image", {**ARGS, "model": "slow-engine"})
        first = client.call("generate_image", {**ARGS, "model": "slow-engine", "steps": 60, "wait": False})
        second = client.call("generate_image", {**ARGS, "model": "slow-engine", "steps": 60, "wait": False})
        a, b = first.structured_content, second.structured_content
        assert b["queue_ticket"] == a["queue_ticket"] + 1
        queued = client.call("cancel_job", {"job_id": b["job_id"]})
        assert queued.structured_content["status"] == "cancelled"
        running = client.call("cancel_job", {"job_id": a["job_id"]})
        assert running.structured_content["status"] == "cancelled"
        assert not server.state.jobs.lock.held
        nxt = client.call("generate_image", ARGS)
        assert not nxt.is_error and nxt.structured_content["queue_wait_seconds"] < 0.1
