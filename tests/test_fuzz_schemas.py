"""Hypothesis fuzzing over the generate_image and edit_image schemas, through a real in-memory MCP client.

Every response must be a success or an error result whose text names an argument; the server must keep
serving afterwards. Deterministic and bounded: a fixed number of derandomized examples per tool, no
deadline, no database, no time budget; each test counts its own examples, so none depends on another.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.server_fixtures import SyncClient, module_settings, result_text, tiny_model_dir  # noqa: F401
from zimage_mcp.server import build_server

EXAMPLES = 40  # per tool

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
wild = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
sizes = st.one_of(st.sampled_from([256, 0, -16, 255, 272, 10**6]), st.integers(-5000, 5000), wild)
prompts = st.one_of(st.sampled_from(["a cat", "一只猫", "cat\x00\x1b", "", " "]), st.text(max_size=60), wild)
lora_entry = st.fixed_dictionaries({"name": st.text(max_size=10)}, optional={"scale": st.floats(-10, 10)})
loras = st.one_of(st.just([]), st.lists(lora_entry, max_size=2), wild)
COMMON = {
    "model": st.one_of(st.none(), st.sampled_from(["z-image-turbo", "turbo", "sdxl", ""]), wild),
    "steps": st.one_of(st.sampled_from([1, 2, 0, 101]), st.integers(-10, 200), wild),
    "guidance": st.one_of(st.sampled_from([0.0, 0, -1.0, 25.0]), st.floats(allow_nan=False), wild),
    "seed": st.one_of(st.integers(-(2**65), 2**65), wild),
    "loras": loras,
    "output_format": st.one_of(st.sampled_from(["png", "webp", "jpeg", "gif"]), wild),
    "preview": st.one_of(st.sampled_from(["none", "thumbnail", "full", "big"]), wild),
    "wait": st.one_of(st.booleans(), wild),
}
GENERATE = {
    **COMMON,
    "negative_prompt": st.one_of(st.none(), st.text(max_size=30), wild),
    "width": sizes,
    "height": sizes,
    "count": st.one_of(st.integers(-2, 6), wild),
}
EDIT = {
    **COMMON,
    "instruction": prompts,
    "strength": st.one_of(st.floats(-1, 2), wild),
    "mask": st.one_of(st.sampled_from(["{img}", "/etc/passwd", "../x.png", "ffffffffffff"]), wild),
    "control": st.one_of(st.fixed_dictionaries({"type": st.text(max_size=8), "image": st.just("{img}")}), wild),
    "reference_images": st.one_of(st.lists(st.sampled_from(["{img}", "/etc/hosts"]), max_size=3), wild),
}
IMAGES = st.one_of(
    st.sampled_from(
        [
            "{img}",
            "zimage://images/000000000000",
            "/etc/passwd",
            "file:///etc/passwd",
            "{inputs}/../x.png",
            "data:image/png;base64,AAAA",
            "{inputs}",
        ]
    ),
    wild,
)


def _args(draw: Any, fields: dict[str, Any], required: dict[str, Any]) -> dict[str, Any]:
    args = {name: draw(strategy) for name, strategy in required.items()}
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=5))
    args.update({name: draw(fields[name]) for name in chosen})
    args.setdefault("steps", 2)
    args.setdefault("preview", "none")
    if "wait" in args and args["wait"] is False:
        args["wait"] = True  # background jobs would outlive the example
    return args


@st.composite
def generate_args(draw: Any) -> dict[str, Any]:
    return _args(draw, GENERATE, {"prompt": prompts})


@st.composite
def edit_args(draw: Any) -> dict[str, Any]:
    return _args(draw, EDIT, {"image": IMAGES, "prompt": prompts})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    conf = module_settings(tmp_path_factory, tiny_model_dir, "fuzz")
    inputs = conf.input_dirs[0]
    Image.new("RGB", (256, 256), (20, 40, 200)).save(inputs / "img.png")
    with SyncClient(build_server(conf)) as client:
        yield {"client": client, "inputs": inputs, "img": str(inputs / "img.png")}


def _fill(value: Any, env: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.replace("{img}", env["img"]).replace("{inputs}", str(env["inputs"]))
    if isinstance(value, list):
        return [_fill(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, env) for k, v in value.items()}
    return value


def _check(env: dict[str, Any], tool: str, args: dict[str, Any], fields: set[str]) -> str:
    """One call; asserts the answer is well formed and the server still answers. Returns the outcome."""
    client: SyncClient = env["client"]
    result = client.call(tool, _fill(args, env))
    text = result_text(result)
    if result.is_error:
        message = text.replace(tool, "")  # "edit_image" itself must not count as naming the field "image"
        assert any(f in message for f in fields), f"no field named in: {text!r} for {args!r}"
        assert "Traceback" not in text and len(text) < 3000
        outcome = "refused"
    else:
        data = result.structured_content
        assert data["status"] == "done" and data["images"], text
        outcome = "succeeded"
    alive = client.call("list_models", {})
    assert not alive.is_error
    return outcome


# generate only: no shrinking (a failing example is reported as drawn), no explicit or replayed examples
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _fuzz(env: dict[str, Any], tool: str, strategy: Any, fields: set[str]) -> None:
    outcomes: list[str] = []

    @SETTINGS
    @given(args=strategy)
    def example(args: dict[str, Any]) -> None:
        outcomes.append(_check(env, tool, args, fields))

    example()
    assert len(outcomes) == EXAMPLES  # every example ran and got a well-formed answer
    assert "refused" in outcomes  # the fuzzing reached the validation, not only the happy path
    after = env["client"].call(
        "generate_image", {"prompt": "after the storm", "width": 256, "height": 256, "steps": 2, "preview": "none"}
    )
    assert not after.is_error, result_text(after)


def test_fuzz_generate_image(env: dict[str, Any]) -> None:
    _fuzz(env, "generate_image", generate_args(), {"prompt", *GENERATE})


def test_fuzz_edit_image(env: dict[str, Any]) -> None:
    _fuzz(env, "edit_image", edit_args(), {"image", "prompt", *EDIT})
