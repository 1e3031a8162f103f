"""Scale-out on Ray Serve with the tiny model on CPU: one two-node Ray cluster for the whole module.

The cluster (``ray.cluster_utils.Cluster``) has two nodes with one ``zimage_slot`` each, and the deployment
asks for one slot per replica, so its two replicas sit on two nodes, as on two machines. Concurrency is
tested through the ``RayBackend`` proxy (the front's FIFO lock still admits one job at a time until
``JobManager(max_concurrent=)`` lands); the MCP test goes through the real server with its jobs and store.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tests.server_fixtures import make_settings, write_registry  # noqa: E402
from zimage_mcp.contract import GenerationCancelled, GenerationRequest, LoraRef  # noqa: E402
from zimage_mcp.scale import cluster  # noqa: E402
from zimage_mcp.scale.config import APP_NAME, DEPLOYMENT_NAME  # noqa: E402
from zimage_mcp.scale.proxy import RayRegistry  # noqa: E402

pytestmark = pytest.mark.slow
RAY_TABLE = """
[ray]
min_replicas = 2
max_replicas = 2
max_ongoing_requests = 1
max_models_per_replica = 1
num_cpus = 0.5
resources = { zimage_slot = 1 }
retries = 1
"""


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayRegistry]:
    from zimage_mcp.engine.presets.tiny import make_tiny

    tmp = tmp_path_factory.mktemp("ray")
    model = make_tiny(tmp / "model")
    registry_file = write_registry(tmp / "registry.toml", model)
    registry_file.write_text(registry_file.read_text() + RAY_TABLE)
    loras = tmp / "loras"
    loras.mkdir()
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for t in ("to_q", "to_k", "to_v"):
        sd[f"transformer.layers.0.attention.{t}.lora_A.weight"] = torch.randn(4, 64, generator=gen)
        sd[f"transformer.layers.0.attention.{t}.lora_B.weight"] = torch.randn(64, 4, generator=gen)
    save_file(sd, str(loras / "style.safetensors"))
    (tmp / "inputs").mkdir()
    settings = make_settings(tmp, registry_file, tmp / "inputs", lora_dir=loras)
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "resources": {"zimage_slot": 1}, "include_dashboard": False},
    )
    nodes.add_node(num_cpus=2, resources={"zimage_slot": 1})
    ray.init(address=nodes.address, log_to_driver=False)
    try:
        yield cluster.front_registry(settings)
    finally:
        cluster.shutdown()
        nodes.shutdown()


def _request(steps: int = 2, **kw: object) -> GenerationRequest:
    base = dict(prompt="a lighthouse", negative_prompt="", width=256, height=256, steps=steps, guidance=0.0, seed=3)
    return GenerationRequest(**(base | kw))  # type: ignore[arg-type]


def _replicas() -> dict[str, tuple[int, str]]:
    """Replica id -> (pid, node id), asking until both replicas have answered."""
    handle = serve.get_deployment_handle(DEPLOYMENT_NAME, APP_NAME)
    found: dict[str, tuple[int, str]] = {}
    deadline = time.monotonic() + 60
    while len(found) < 2 and time.monotonic() < deadline:
        replica, pid, node = handle.pid.remote().result(timeout_s=30)
        found[replica] = (pid, node)
    return found


def _wait_running(replicas: int = 2, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serve.status().applications[APP_NAME].deployments[DEPLOYMENT_NAME]
        if status.status == "HEALTHY" and status.replica_states.get("RUNNING", 0) == replicas:
            return
        time.sleep(0.5)
    raise AssertionError(f"deployment not back to {replicas} running replicas: {serve.status()}")


def test_replicas_sit_on_two_nodes(front: RayRegistry) -> None:
    nodes = {node for _, node in _replicas().values()}
    assert len(nodes) == 2


def test_eight_clients_three_requests_each_use_both_replicas(front: RayRegistry) -> None:
    backend = front.backend("turbo")
    before = {r: front.stats.count[r] for r in front.stats.replicas_used()}

    def client(i: int) -> list[int]:
        return [len(backend.generate(_request(seed=i * 10 + k), _noop, _never).images) for k in range(3)]

    with ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(client, range(8), timeout=150))
    assert answered == [[1, 1, 1]] * 8
    used = {r for r in front.stats.replicas_used() if front.stats.count[r] > before.get(r, 0)}
    assert len(used) == 2
    assert "zimage_replica_generation_seconds_count" in front.stats.render()


def test_lora_requests_go_to_the_replica_holding_the_lora(front: RayRegistry) -> None:
    lora = front.resolve_lora("style")
    backend = front.backend("lora:style")
    request = _request(loras=(LoraRef("style", lora.file, 0.8),))
    backend.generate(request, _noop, _never)  # one replica now holds "z-image-turbo+style"
    before = dict(front.stats.count)
    for seed in range(4):
        backend.generate(_request(seed=seed, loras=request.loras), _noop, _never)
    grew = {r for r, n in front.stats.count.items() if n > before.get(r, 0)}
    assert len(grew) == 1


def test_cancel_reaches_the_replica_and_it_stays_usable(front: RayRegistry) -> None:
    backend = front.backend("turbo")
    stop = threading.Event()

    def progress(phase: str, done: int, total: int, message: str) -> None:
        if phase == "denoising" and done >= 1:
            stop.set()

    started = time.monotonic()
    with pytest.raises(GenerationCancelled):
        backend.generate(_request(steps=100), progress, stop.is_set)
    assert time.monotonic() - started < 30
    assert backend.generate(_request(), _noop, _never).images


def test_a_killed_replica_is_retried_elsewhere_and_replaced(front: RayRegistry) -> None:
    pids = {replica: pid for replica, (pid, _) in _replicas().items()}
    backend = front.backend("turbo")
    killed: list[int] = []

    def progress(phase: str, done: int, total: int, message: str) -> None:
        if phase == "denoising" and not killed:  # kill -9 the replica running this request, mid-denoising
            busy = [r for r, n in front.stats.in_flight.items() if r and n > 0]
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(pids[busy[0]])

    result = backend.generate(_request(steps=60), progress, _never)
    assert killed and result.images
    assert sum(front.stats.lost_total.values()) >= 1
    _wait_running(2)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # Serve replaced the dead process with a new one
        now = {pid for pid, _ in _replicas().values()}
        if len(now) == 2 and killed[0] not in now:
            break
        time.sleep(0.5)
    assert len(now) == 2 and killed[0] not in now
    assert backend.generate(_request(), _noop, _never).images


@pytest.mark.anyio
async def test_mcp_generate_through_the_front(front: RayRegistry) -> None:
    import anyio
    from mcp import Client

    from zimage_mcp.server import build_server

    server = build_server(front.settings, front)
    assert server.state.jobs.lock._holders == front.max_concurrent > 1  # the front admits what the replicas can run
    before = {r: front.stats.count[r] for r in front.stats.replicas_used()}

    async def one_client(results: list[bool]) -> None:
        async with Client(server) as c:
            for _ in range(3):
                r = await c.call_tool("generate_image", {"prompt": "a red square", "seed": 1})
                results.append(not r.is_error and Path(r.structured_content["images"][0]["path"]).is_file())

    results: list[bool] = []
    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one_client, results)
    assert results == [True] * 24
    used = {r for r in front.stats.replicas_used() if front.stats.count[r] > before.get(r, 0)}
    assert len(used) == 2, "24 concurrent MCP calls through the one front must reach both replicas"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _noop(*args: object) -> None:
    return None


def _never() -> bool:
    return False
