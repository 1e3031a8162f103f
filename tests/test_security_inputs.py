"""Bad-input catalogue: every malformed argument a language model could send, through a real MCP client.

Each case asserts (1) an error result whose text names the field and the allowed values, and (2) that
the same server then still serves a valid generation. One server (and one loaded tiny model) is shared
by all cases. Also: accepted-and-converted inputs (animated GIF, CMYK JPEG, CJK prompts, control
characters), resource URIs that try to escape the store, the Pillow pixel limit and pickle refusal.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import shutil
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import MCPError
from PIL import Image

from tests.server_fixtures import (  # noqa: F401
    SyncClient,
    module_settings,
    result_text,
    tiny_model_dir,
)
from zimage_mcp.server import build_server

OK = {"prompt": "a small red house", "width": 256, "height": 256, "steps": 2, "preview": "none"}
SERVED: list[str] = []  # ids of the follow-up generations (all must exist at the end)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` (1-bit gray) with a tiny, truncated IDAT: a bomb on paper."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class Evil:
    """Unpickling this writes a marker file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    settings = module_settings(tmp_path_factory, tiny_model_dir, "catalogue")
    inputs = settings.input_dirs[0]
    outside = inputs.parent / "outside"
    outside.mkdir()
    Image.new("RGB", (256, 256), (10, 200, 10)).save(outside / "secret.png")
    Image.new("RGB", (256, 256), (200, 10, 10)).save(inputs / "ok.png")
    Image.new("L", (300, 100), 255).save(inputs / "mask_wrong.png")
    (inputs / "link.png").symlink_to(outside / "secret.png")
    (inputs / "folder.png").mkdir()
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "notes.png").write_text("this is not an image")
    good = (inputs / "ok.png").read_bytes()
    (inputs / "truncated.png").write_bytes(good[: len(good) // 3])
    (inputs / "bomb.png").write_bytes(_png_header_claiming(30_000, 30_000))
    frames = [Image.new("RGB", (256, 256), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(inputs / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    Image.new("CMYK", (256, 256), (0, 255, 255, 0)).save(inputs / "cmyk.jpg", "JPEG")
    with SyncClient(build_server(settings)) as client:
        yield {"client": client, "settings": settings, "inputs": inputs, "outside": outside}


def _expand(value: Any, env: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return value.format(inputs=env["inputs"], outside=env["outside"])
    if isinstance(value, dict):
        return {k: _expand(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env) for v in value]
    return value


def _serves(client: SyncClient) -> None:
    result = client.call("generate_image", OK)
    assert not result.is_error, result_text(result)
    SERVED.append(result.structured_content["images"][0]["id"])


G, E = "generate_image", "edit_image"
IMG = "{inputs}/ok.png"
CASES: list[tuple[str, str, dict[str, Any], list[str]]] = [
    # sizes
    ("width-zero", G, {"width": 0}, ["width", "multiples of 16 from 256 to 256"]),
    ("width-negative", G, {"width": -256}, ["width", "multiples of 16"]),
    ("height-not-16", G, {"height": 250}, ["height", "multiples of 16"]),
    ("width-million", G, {"width": 10**6}, ["width", "from 256 to 256"]),
    ("width-fraction", G, {"width": 256.5}, ["width", "valid integer"]),
    ("height-float", G, {"height": 256.0}, ["height", "valid integer"]),
    ("width-bool", G, {"width": True}, ["width", "valid integer"]),
    # steps and guidance at and past their bounds
    ("steps-zero", G, {"steps": 0}, ["steps", "use 1-100"]),
    ("steps-101", G, {"steps": 101}, ["steps", "use 1-100"]),
    ("steps-negative", G, {"steps": -3}, ["steps", "use 1-100"]),
    ("guidance-negative", G, {"guidance": -0.5}, ["guidance", "out of range; use 0.0-"]),
    ("guidance-huge", G, {"guidance": 1e9}, ["guidance", "out of range; use 0.0-"]),
    # seeds
    ("seed-negative", G, {"seed": -1}, ["seed", "greater than or equal to 0"]),
    ("seed-over-2-64", G, {"seed": 2**64 + 1}, ["seed", "less than or equal to 4294967295"]),
    # prompts
    ("prompt-empty", G, {"prompt": ""}, ["prompt", "at least 1 character"]),
    ("prompt-100k", G, {"prompt": "x" * 100_000}, ["prompt", "at most 4000 characters"]),
    ("prompt-only-controls", G, {"prompt": "\x00\x07\x1b\x7f"}, ["prompt", "must not be empty", "1-4000"]),
    ("prompt-blank", G, {"prompt": "   \n\t"}, ["prompt", "must not be empty"]),
    ("negative-100k", G, {"negative_prompt": "y" * 100_000}, ["negative_prompt", "at most 4000 characters"]),
    # count, model, LoRA
    ("count-zero", G, {"count": 0}, ["count", "greater than or equal to 1"]),
    ("count-five", G, {"count": 5}, ["count", "less than or equal to 4"]),
    ("model-unknown", G, {"model": "sdxl"}, ["model", "sdxl", "valid names", "z-image-turbo"]),
    ("model-huge", G, {"model": "m" * 5000}, ["model", "at most 200 characters"]),
    ("lora-unknown", G, {"loras": [{"name": "nope", "scale": 1.0}]}, ["loras", "nope", "valid LoRAs"]),
    ("lora-scale-high", G, {"loras": [{"name": "nope", "scale": 9}]}, ["loras[0].scale", "less than or equal to 4"]),
    (
        "lora-scale-low",
        G,
        {"loras": [{"name": "nope", "scale": -5}]},
        ["loras[0].scale", "greater than or equal to -4"],
    ),
    ("lora-extra-key", G, {"loras": [{"name": "nope", "weight": 1}]}, ["loras[0].weight", "unknown name"]),
    ("output-format", G, {"output_format": "gif"}, ["output_format", "'png', 'webp' or 'jpeg'"]),
    ("preview-mode", G, {"preview": "huge"}, ["preview", "'none', 'thumbnail' or 'full'"]),
    # wrong JSON types for every generate_image argument
    ("type-prompt", G, {"prompt": 123}, ["prompt", "valid string"]),
    ("type-model", G, {"model": 5}, ["model", "valid string"]),
    ("type-negative", G, {"negative_prompt": ["a"]}, ["negative_prompt", "valid string"]),
    ("type-width", G, {"width": "abc"}, ["width", "valid integer"]),
    ("type-height", G, {"height": [256]}, ["height", "valid integer"]),
    ("type-steps", G, {"steps": "2"}, ["steps", "valid integer"]),
    ("type-guidance", G, {"guidance": "high"}, ["guidance", "valid number"]),
    ("type-seed", G, {"seed": 1.5}, ["seed", "valid integer"]),
    ("type-count", G, {"count": "two"}, ["count", "valid integer"]),
    ("type-loras", G, {"loras": "style"}, ["loras", "valid list"]),
    ("type-lora-item", G, {"loras": [{"name": 1}]}, ["loras[0].name", "valid string"]),
    ("type-format", G, {"output_format": 1}, ["output_format", "'png', 'webp' or 'jpeg'"]),
    ("type-preview", G, {"preview": {}}, ["preview", "'none', 'thumbnail' or 'full'"]),
    ("type-wait", G, {"wait": "yes"}, ["wait", "valid boolean"]),
    # image values
    ("image-missing-id", E, {"image": "ffffffffffff"}, ["image", "no image with id"]),
    ("image-bad-uri", E, {"image": "zimage://images/../../etc/passwd"}, ["image", "zimage://images/<12 hex>"]),
    ("image-relative-dotdot", E, {"image": "../../etc/passwd"}, ["image", "must be absolute", "allowed folders"]),
    ("image-dotdot-escape", E, {"image": "{inputs}/../outside/secret.png"}, ["image", "outside the allowed folders"]),
    ("image-outside", E, {"image": "{outside}/secret.png"}, ["image", "outside the allowed folders"]),
    ("image-etc-passwd", E, {"image": "/etc/passwd"}, ["image", "outside the allowed folders"]),
    ("image-symlink-out", E, {"image": "{inputs}/link.png"}, ["image", "outside the allowed folders"]),
    ("image-file-uri-remote", E, {"image": "file://evil.example/x.png"}, ["image", "this machine"]),
    ("image-directory", E, {"image": "{inputs}/folder.png"}, ["image", "is not a file"]),
    ("image-zero-bytes", E, {"image": "{inputs}/empty.png"}, ["image", "not a readable image"]),
    ("image-text-as-png", E, {"image": "{inputs}/notes.png"}, ["image", "not a readable image"]),
    ("image-truncated", E, {"image": "{inputs}/truncated.png"}, ["image", "not a readable image"]),
    ("image-bomb", E, {"image": "{inputs}/bomb.png"}, ["image", "too large", "64 MP"]),
    ("image-missing-file", E, {"image": "{inputs}/nope.png"}, ["image", "does not exist"]),
    (
        "image-base64",
        E,
        {"image": "data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()},
        ["image", "no base64 or URLs"],
    ),
    ("image-url", E, {"image": "https://example.com/cat.png"}, ["image", "no base64 or URLs"]),
    ("image-empty", E, {"image": ""}, ["image", "image id"]),
    ("mask-mismatch", E, {"image": IMG, "mask": "{inputs}/mask_wrong.png"}, ["mask", "same size or aspect ratio"]),
    ("mask-outside", E, {"image": IMG, "mask": "{outside}/secret.png"}, ["mask", "outside the allowed folders"]),
    (
        "control-outside",
        E,
        {"image": IMG, "control": {"type": "canny", "image": "{outside}/secret.png"}},
        ["control", "img2img"],
    ),
    ("strength-zero", E, {"image": IMG, "strength": 0}, ["strength", "greater than 0"]),
    ("strength-high", E, {"image": IMG, "strength": 1.5}, ["strength", "less than or equal to 1"]),
    ("edit-no-prompt", E, {"image": IMG, "prompt": None}, ["prompt", "required"]),
    # wrong JSON types for edit_image arguments
    ("type-image", E, {"image": 5}, ["image", "valid string"]),
    ("type-instruction", E, {"image": IMG, "prompt": None, "instruction": 7}, ["instruction", "valid string"]),
    ("type-mask", E, {"image": IMG, "mask": 1}, ["mask", "valid string"]),
    ("type-strength", E, {"image": IMG, "strength": "half"}, ["strength", "valid number"]),
    ("type-control", E, {"image": IMG, "control": "canny"}, ["control", "valid dictionary"]),
    ("type-references", E, {"image": IMG, "reference_images": "x"}, ["reference_images", "valid list"]),
    # job tools
    ("job-unknown", "get_job", {"job_id": "abc"}, ["job_id", "no job", "12-hex"]),
    ("job-wait-high", "get_job", {"job_id": "abc", "wait_seconds": 99}, ["wait_seconds", "less than or equal to 50"]),
    ("job-type", "cancel_job", {"job_id": 12}, ["job_id", "valid string"]),
]


@pytest.mark.parametrize("tool, args, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_server_keeps_serving(
    env: dict[str, Any], tool: str, args: dict[str, Any], words: list[str]
) -> None:
    client: SyncClient = env["client"]
    base = {"prompt": "x", "width": 256, "height": 256, "steps": 2} if tool == G else {}
    if tool == E:
        base = {"prompt": "x", "steps": 2}
    full = {k: v for k, v in {**base, **_expand(args, env)}.items() if v is not None}
    result = client.call(tool, full)
    text = result_text(result)
    assert result.is_error, text
    for word in words:
        assert word in text, f"{word!r} not in {text!r}"
    assert "Traceback" not in text and len(text) < 2000
    _serves(client)


def test_catalogue_size() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", ["animated.gif", "cmyk.jpg"])
def test_animated_gif_and_cmyk_are_converted(env: dict[str, Any], name: str) -> None:
    """Documented as accepted: the first frame of an animation; CMYK converted to RGB."""
    client: SyncClient = env["client"]
    result = client.call(E, {"image": str(env["inputs"] / name), "prompt": "recolour", "steps": 2, "strength": 0.6})
    assert not result.is_error, result_text(result)
    with Image.open(result.structured_content["images"][0]["path"]) as out:
        assert out.mode == "RGB" and out.size == (256, 256)


@pytest.mark.parametrize(
    "prompt", ["一只红色的狐狸 在雪地里 🦊", "赤い狐、雪の中。 붉은 여우", "fox\x00 in\x1b snow\x07"]
)
def test_cjk_accepted_and_control_characters_stripped(env: dict[str, Any], prompt: str) -> None:
    result = env["client"].call(G, {**OK, "prompt": prompt})
    assert not result.is_error, result_text(result)
    kept = result.structured_content["prompt"]
    assert not any(ord(c) < 32 and c not in "\n\t" for c in kept)
    assert kept == "".join(c for c in prompt if c not in "\x00\x1b\x07")


ESCAPES = [
    "zimage://images/../../etc/passwd",
    "zimage://images/..%2F..%2Fetc%2Fpasswd",
    "zimage://images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "zimage://images//etc/passwd",
    "zimage://images/000000000000/../../../etc/passwd",
    "zimage://images/ABCDEF012345",
    "zimage://images/index",
    "zimage://images/.tmp-abc",
    "zimage://images/000000000000",
    "file:///etc/passwd",
    "zimage://gallery/../../etc/passwd",
]


@pytest.mark.parametrize("uri", ESCAPES)
def test_resource_uris_cannot_escape_the_store(env: dict[str, Any], uri: str) -> None:
    client: SyncClient = env["client"]
    with pytest.raises(MCPError) as caught:
        client.read(uri)
    assert "passwd" not in str(getattr(caught.value, "data", "") or "").replace(uri, "")
    assert not caught.value.error.message.startswith("root:")
    _serves(client)


def test_every_follow_up_image_is_readable(env: dict[str, Any]) -> None:
    client: SyncClient = env["client"]
    assert len(SERVED) >= 40
    for image_id in SERVED[-5:]:
        blob = client.read(f"zimage://images/{image_id}").contents[0]
        assert base64.b64decode(blob.blob).startswith(b"\x89PNG")


def test_pillow_pixel_limit_is_deliberate(env: dict[str, Any]) -> None:
    """The limit is ours (64 MP) after the server, the plugins and the engine are imported."""
    import zimage_builtins.engine_backend  # noqa: F401  (imports the engine, which must not reset the limit)

    from zimage_mcp.server import input_images as inputs

    assert Image.MAX_IMAGE_PIXELS == inputs.MAX_PIXELS == 64 * 1024 * 1024
    big = env["inputs"] / "big.png"
    Image.new("1", (9000, 8000)).save(big)  # 72 MP, 1-bit: a few KB on disk
    result = env["client"].call(E, {"image": str(big), "prompt": "x", "steps": 2})
    assert result.is_error and "too large" in result_text(result) and "64 MP" in result_text(result)


def test_pickles_are_never_loaded(env: dict[str, Any], tmp_path: Path, tiny_model_dir: Path) -> None:  # noqa: F811
    """LoRAs and checkpoints are safetensors only: a pickle that would write a marker is refused, and the
    server's answers show that each request reached its pickled file and a safetensors rule refused it.

    * turbo: the tiny folder (it loads), with a LoRA that is a pickle saved as ``.safetensors``;
    * base: a copy of the tiny folder whose transformer shard is a pickle saved as ``.safetensors``
      (safetensors parses the header and refuses; nothing is unpickled);
    * edit: no folder, ``single_file`` at a ``.ckpt`` pickle (the pickle rule refuses it unopened).
    """
    from zimage_mcp.engine.errors import WeightsError
    from zimage_mcp.engine.weights.files import read_safetensors
    from zimage_mcp.registry import Registry

    marker = tmp_path / "PWNED"
    evil = pickle.dumps(Evil(str(marker)))
    loras = tmp_path / "loras"
    loras.mkdir()
    for name in ("evil.pt", "evil.ckpt", "evil.bin", "evil.pth"):
        (loras / name).write_bytes(evil)
    (loras / "sneaky.safetensors").write_bytes(evil)  # a pickle with the right suffix
    for name in ("evil.pt", "sneaky.safetensors"):
        with pytest.raises(WeightsError):
            read_safetensors(loras / name)
    ckpt = tmp_path / "z_image_edit.ckpt"
    ckpt.write_bytes(evil)
    sneaky = tmp_path / "sneaky-base"
    shutil.copytree(tiny_model_dir, sneaky)
    shard = sorted((sneaky / "transformer").glob("diffusion_pytorch_model-*.safetensors"))[0]
    shard.write_bytes(evil)

    def table(vid: str, weights: str) -> str:
        return (
            f"[variants.{vid}.weights]\n{weights}\n[variants.{vid}.limits]\nmin_side = 256\nmax_side = 256\n"
            f"[variants.{vid}.defaults]\nwidth = 256\nheight = 256\nsteps = 2\n"
        )

    registry_file = tmp_path / "evil.toml"
    registry_file.write_text(
        table("z-image-turbo", f'path = "{tiny_model_dir.as_posix()}"')
        + table("z-image-base", f'path = "{sneaky.as_posix()}"')
        + table("z-image-edit", f'single_file = "{ckpt.as_posix()}"')
    )
    settings = module_settings_like(env["settings"], registry_file=registry_file, lora_dir=loras)
    registry = Registry.from_settings(settings)
    # the tables are taken (an ignored table was how this test once passed without reaching a pickle)
    assert not [p for p in registry.problems() if "is ignored" in p], registry.problems()
    assert "evil" not in [lora.name for lora in registry.loras()]
    with SyncClient(build_server(settings, registry)) as client:
        listed = client.call("list_models", {})
        base = client.call(G, {**OK, "model": "z-image-base"})
        edit = client.call(
            E,
            {
                "image": str(env["inputs"] / "ok.png"),
                "prompt": "x",
                "model": "z-image-edit",
                "reference_images": [str(env["inputs"] / "ok.png")],
                "steps": 2,
            },
        )
        used = client.call(G, {**OK, "loras": [{"name": "sneaky"}]})
        made = client.call(G, OK)
    assert not listed.is_error
    base_text, edit_text, used_text = result_text(base), result_text(edit), result_text(used)
    # base reached the pickled shard: refused as a file that is not safetensors, naming that shard
    assert base.is_error and f"{shard.name}: cannot read safetensors file" in base_text, base_text
    # edit's only weights are a pickle: the pickle rule refuses it by name
    assert edit.is_error and f"single_file {ckpt} refused: pickle formats are never loaded" in edit_text, edit_text
    # the LoRA was read (turbo loads) and refused as not safetensors
    assert used.is_error and "sneaky.safetensors: not a readable safetensors file" in used_text, used_text
    assert not made.is_error, result_text(made)  # the same server still makes images
    assert not marker.exists()


def module_settings_like(settings: Any, **overrides: Any) -> Any:
    from dataclasses import replace

    return replace(settings, **overrides)


def test_store_paths_in_results_stay_inside_the_store(env: dict[str, Any]) -> None:
    out = Path(env["settings"].output_dir).resolve()
    for image_id in SERVED[-3:]:
        meta = json.loads(env["client"].read(f"zimage://images/{image_id}/metadata").contents[0].text)
        assert Path(meta["path"]).resolve().is_relative_to(out)
        assert os.path.basename(meta["path"]).startswith(image_id)
