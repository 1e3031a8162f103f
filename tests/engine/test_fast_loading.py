"""The parallel loader: same bits as reading one tensor at a time, fused and fp8 weights filled on the way in,
and the text encoder of the low-VRAM mode never placed on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from zimage_mcp.engine import load_pipeline
from zimage_mcp.engine.weights import files as files_mod
from zimage_mcp.engine.weights.components import load_transformer
from zimage_mcp.engine.weights.files import read_files
from zimage_mcp.engine.weights.fp8 import FP8, Float8Linear, swap_to_fp8
from zimage_mcp.engine.weights.layout import find_diffusers_folder


def _sequential(paths: list[Path], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The loader before issue 17: one file, one tensor at a time, cast on the CPU, own storage."""
    out = {}
    for path in paths:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                out[key] = t.clone()
    return out


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.bfloat16])
def test_parallel_reads_are_bit_identical_and_in_order(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype | None
) -> None:
    monkeypatch.setattr(files_mod, "CHUNK_BYTES", 4096)  # many units per file, so the threads interleave
    files = find_diffusers_folder(tiny_dir)
    paths = [*files.transformer, *files.text_encoder, *files.vae]
    got = read_files(paths, dtype, "cpu", workers=4)
    want = _sequential(paths, dtype)
    assert list(got) == list(want)
    for key, t in want.items():
        assert got[key].dtype == t.dtype and got[key].device.type == "cpu" and torch.equal(got[key], t), key


def test_select_skips_and_renames(tiny_dir: Path) -> None:
    vae = find_diffusers_folder(tiny_dir).vae
    sd = read_files(vae, None, select=lambda k: "x." + k if k.startswith("decoder.") else None)
    assert sd and all(k.startswith("x.decoder.") for k in sd)


def _blocks(model: torch.nn.Module) -> list:
    return model.blocks()


def test_fused_on_the_way_in_equals_fusing_after(tiny_dir: Path) -> None:
    files = find_diffusers_folder(tiny_dir)
    cpu = torch.device("cpu")
    fused = load_transformer(files.transformer, files.transformer_config, cpu, torch.bfloat16, fuse=True)
    after = load_transformer(files.transformer, files.transformer_config, cpu, torch.bfloat16)
    after.fuse_projections()
    a, b = fused.state_dict(), after.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    for blk_in, blk_after in zip(_blocks(fused), _blocks(after), strict=True):
        att, ff = blk_in.attention, blk_in.feed_forward
        assert torch.equal(att.qkv.weight, blk_after.attention.qkv.weight)
        assert torch.equal(ff.w13.weight, blk_after.feed_forward.w13.weight)
        # the checkpoint-named weights are views of the one fused buffer (no second copy)
        assert att.to_q.weight.data_ptr() == att.qkv.weight.data_ptr()
        assert ff.w3.weight.data_ptr() == ff.w13.weight.data_ptr() + ff.w1.weight.numel() * ff.w1.weight.element_size()
    fused.fuse_projections()  # what optimize() does next: a no-op
    assert fused.layers[0].attention.qkv.weight.data_ptr() == fused.layers[0].attention.to_q.weight.data_ptr()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == FP8 else t


def test_fp8_per_tensor_on_the_way_in_equals_converting_after_loading(tiny_dir: Path) -> None:
    files = find_diffusers_folder(tiny_dir)
    cpu = torch.device("cpu")
    early = load_transformer(files.transformer, files.transformer_config, cpu, torch.bfloat16, fp8=True)
    late = load_transformer(files.transformer, files.transformer_config, cpu, torch.bfloat16)
    swap_to_fp8(late, keep_bf16=False)
    assert early.precision == late.precision == "fp8"
    assert list(early.state_dict()) == list(late.state_dict())
    pairs = []
    for e, lt in zip(_blocks(early), _blocks(late), strict=True):
        pairs += [
            (e.attention.qkv, lt.attention.qkv),
            (e.feed_forward.w13, lt.feed_forward.w13),
            (e.attention.to_out[0], lt.attention.to_out[0]),
            (e.feed_forward.w2, lt.feed_forward.w2),
        ]
        for lin in (e.attention.to_q, e.attention.to_k, e.attention.to_v, e.feed_forward.w1, e.feed_forward.w3):
            assert lin.weight.numel() == 0  # no bf16 copy is kept
    for a, b in pairs:
        assert isinstance(a, Float8Linear) and isinstance(b, Float8Linear)
        assert a.weight_fp8.dtype == FP8 and a.weight_scale.dtype == torch.float32
        assert torch.equal(_bits(a.weight_fp8), _bits(b.weight_fp8)) and torch.equal(a.weight_scale, b.weight_scale)
        assert a.weight_fp8.shape == b.weight_fp8.shape and a.weight_scale.shape == b.weight_scale.shape
    rest = {k: v for k, v in early.state_dict().items() if v.numel()}
    late_sd = late.state_dict()
    assert all(torch.equal(v, late_sd[k]) for k, v in rest.items())
    swap_to_fp8(early, keep_bf16=False)  # what optimize(fp8=True) does next: nothing changes
    assert torch.equal(_bits(early.layers[0].attention.qkv.weight_fp8), _bits(late.layers[0].attention.qkv.weight_fp8))


def test_dtype_and_device_of_every_tensor(tiny_dir: Path) -> None:
    """``meta`` stands in for a GPU: the DiT and VAE go to the device (DiT in the target dtype, VAE fp32),
    and in the low-VRAM mode the text encoder never leaves host memory."""
    pipe = load_pipeline(tiny_dir, device="meta", dtype=torch.bfloat16, offload_text_encoder=True)
    dit = [*pipe.transformer.parameters(), *pipe.transformer.buffers()]
    assert {t.device.type for t in dit} == {"meta"}
    assert {t.dtype for t in pipe.transformer.parameters()} == {torch.bfloat16}
    assert {(p.device.type, p.dtype) for p in pipe.vae.parameters()} == {("meta", torch.float32)}
    te = [*pipe.text_encoder.model.parameters(), *pipe.text_encoder.model.buffers()]
    assert {t.device.type for t in te} == {"cpu"}
    assert {p.dtype for p in pipe.text_encoder.model.parameters()} == {torch.bfloat16}
    on_device = load_pipeline(tiny_dir, device="meta", dtype=torch.bfloat16)
    assert {p.device.type for p in on_device.text_encoder.model.layers.parameters()} == {"meta"}


def test_the_offloaded_text_encoder_is_read_straight_to_host_memory(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from zimage_mcp.engine.text import qwen3

    devices: list[str] = []
    real = qwen3.read_files

    def spy(files, dtype, device="cpu", **kwargs):  # noqa: ANN001, ANN003, ANN202
        devices.append(str(device))
        return real(files, dtype, device, **kwargs)

    monkeypatch.setattr(qwen3, "read_files", spy)
    pipe = load_pipeline(tiny_dir, device="meta", dtype=torch.bfloat16, offload_text_encoder=True)
    assert set(devices) == {"cpu"} and pipe.text_encoder.device.type == "cpu"
    devices.clear()
    load_pipeline(tiny_dir, device="meta", dtype=torch.bfloat16)
    assert devices == ["meta", "cpu"]  # the layers to the device, the embedding table to host memory


def test_the_embedding_table_stays_in_host_memory_beside_layers_on_the_device(tiny_dir: Path) -> None:
    # meta stands in for a GPU: only the table, not the layers, may be in host memory.
    pipe = load_pipeline(tiny_dir, device="meta", dtype=torch.bfloat16)
    model = pipe.text_encoder.model
    assert model.embed_tokens.weight.device.type == "cpu"
    assert {p.device.type for n, p in model.named_parameters() if not n.startswith("embed_tokens.")} == {"meta"}
    assert pipe.text_encoder.device.type == "meta"
    # a gather in host memory lands on the layers' device, whatever device the ids came from
    assert model.embed(torch.tensor([[1, 2, 3]])).device.type == "meta"
