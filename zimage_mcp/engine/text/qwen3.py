"""Qwen3 text encoder: chat template, truncated Qwen3 decoder, real-token features, LRU cache.

Features match diffusers' ``ZImagePipeline.encode_prompt``: ``hidden_states[-2]`` of Qwen3 (the
output of decoder layer ``num_hidden_layers - 2``, before the final norm), real tokens only. The decoder
(``qwen3_model``) and tokenizer (``tokenizer``) are ours, so a first request imports no ``transformers``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from zimage_mcp.engine.errors import WeightsError
from zimage_mcp.engine.speed.compile_policy import compile_module
from zimage_mcp.engine.speed.cuda_graphs import ShapeGraphs
from zimage_mcp.engine.text.qwen3_model import Qwen3TextConfig, Qwen3TextModel, read_config
from zimage_mcp.engine.text.tokenizer import Qwen3Tokenizer, chat_prompt, load_tokenizer
from zimage_mcp.engine.weights.files import read_files, read_shapes, require_safetensors, shard_files


class TextEncoder:
    """A truncated Qwen3 decoder plus its tokenizer; ``encode`` returns one (L_i, hidden) tensor per prompt."""

    def __init__(self, model: Qwen3TextModel, tokenizer: Qwen3Tokenizer, cache_size: int = 64) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int], Tensor] = OrderedDict()
        self._graphs: ShapeGraphs | None = None  # see ``use_cuda_graphs``
        self._bypass_cache = False  # see ``uncached``

    @property
    def device(self) -> torch.device:
        """Where the decoder layers run (the embedding table stays in host memory, see ``_build``)."""
        return self.model.device

    def clear_cache(self) -> None:
        self._cache.clear()

    @contextmanager
    def uncached(self) -> Iterator[None]:
        """Inside, ``encode`` runs the model even for cached prompts (a warm-up replay must reach it)."""
        self._bypass_cache = True
        try:
            yield
        finally:
            self._bypass_cache = False

    def encode(self, prompts: list[str], max_length: int = 512) -> list[Tensor]:
        """Features of the real tokens of each prompt. Cached tensors are shared: treat them as read-only."""
        found = {
            p: self._cache[(p, max_length)]
            for p in prompts
            if (p, max_length) in self._cache and not self._bypass_cache
        }
        todo = [p for p in dict.fromkeys(prompts) if p not in found]
        if todo:
            found.update(zip(todo, self._run(todo, max_length), strict=False))
        if self.cache_size > 0:
            for p in dict.fromkeys(prompts):
                self._cache[(p, max_length)] = found[p]
                self._cache.move_to_end((p, max_length))
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return [found[p] for p in prompts]

    @torch.no_grad()
    def _run(self, prompts: list[str], max_length: int) -> list[Tensor]:
        # Truncate at max_length (template tokens count) and right-pad only to the longest prompt:
        # with causal attention, right padding leaves the real-token states unchanged.
        batch = self.tokenizer([chat_prompt(p) for p in prompts], max_length=max_length)  # (B, L)
        lengths = batch.attention_mask.sum(dim=1).tolist()  # on the CPU: no device sync to unpad
        ids = batch.input_ids
        graphed = self._graphs is not None and self.device.type == "cuda"
        if graphed:  # one graph per (batch, length bucket)
            ids = torch.nn.functional.pad(
                ids, (0, length_bucket(ids.shape[1]) - ids.shape[1]), value=self.tokenizer.pad_token_id
            )
        embeds = self.model.embed(ids)  # (B, L, hidden) on the layers' device: the gather runs off the graph
        hidden = self._graphs(embeds) if graphed else self._forward(embeds)
        return [h[:n] for h, n in zip(hidden, lengths, strict=True)]

    def _forward(self, embeds: Tensor) -> Tensor:
        """embeds (B, L, hidden) -> features (B, L, hidden). No mask at all: pads sit to the right and
        attention is causal, so no real token ever sees one (Qwen3's positions do not depend on the mask
        either); this keeps the fast causal kernel, and the call has no host sync, so it can be captured
        as a graph."""
        return self.model.run_layers(embeds)

    def use_cuda_graphs(self, enabled: bool = True) -> None:
        """Replay the encoder as CUDA graphs, one per (batch, length bucket); CUDA only, lossless.

        Eager, the ~600 kernel launches of a short prompt cost ~40 ms of Python; the GPU work is a few ms.
        """
        if enabled and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need the encoder on a CUDA device, not {self.device}")
        if enabled and self._graphs is not None:
            return  # shared by Turbo and Base: keep the graphs already captured
        self._graphs = ShapeGraphs(self._forward, component="text") if enabled else None

    def compile_layers(self) -> None:
        """Inductor-fused decoder layers: RMSNorms, RoPE, silu·mul and residual adds in a few kernels
        instead of ~15 per layer. Dynamic shapes: after at most one recompile a new length bucket only
        captures a graph (batch 1 and larger batches compile apart, as torch specialises size 1). Eager's
        bf16 roundings are kept (``emulate_precision_casts``), so the features stay as close to an fp32 run
        as eager's are. Graphs captured before are dropped and recaptured."""
        for layer in self.model.layers:
            if getattr(layer, "_compiled_call_impl", None) is None:
                compile_module(layer, "text", dynamic=True, options={"emulate_precision_casts": True})
        if self._graphs is not None:
            self._graphs = ShapeGraphs(self._forward, component="text")

    @property
    def compiled(self) -> bool:
        return all(getattr(layer, "_compiled_call_impl", None) is not None for layer in self.model.layers)

    @property
    def cuda_graphs(self) -> bool:
        return self._graphs is not None

    @property
    def graph_shapes(self) -> list[tuple[int, ...]]:
        return self._graphs.shapes if self._graphs is not None else []


def length_bucket(n: int) -> int:
    """Token-length classes of the graphed encoder: 32, 64, 128, 256, 512, ... (padding is nearly free:
    at these lengths the encoder is bound by reading its 8 GB of weights, not by the tokens)."""
    return max(32, 1 << (n - 1).bit_length())


def _infer_config(file: Path) -> Qwen3TextConfig:
    """Read a Qwen3 config off the tensor shapes of a single file (Qwen3-4B values for the rest)."""
    require_safetensors(file)
    try:
        with safe_open(str(file), framework="pt") as f:
            shape = {k.removeprefix("model."): f.get_slice(k).get_shape() for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{file}: corrupt or truncated safetensors file: {e}") from e
    try:
        vocab, hidden = shape["embed_tokens.weight"]
        head_dim = shape["layers.0.self_attn.q_norm.weight"][0]
        n_layers = 1 + max(int(k.split(".")[1]) for k in shape if k.startswith("layers."))
        return Qwen3TextConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=n_layers,
            head_dim=head_dim,
            num_attention_heads=shape["layers.0.self_attn.q_proj.weight"][0] // head_dim,
            num_key_value_heads=shape["layers.0.self_attn.k_proj.weight"][0] // head_dim,
            intermediate_size=shape["layers.0.mlp.gate_proj.weight"][0],
            # rms_norm_eps, rope_theta and max_position_embeddings cannot be read off the shapes: the
            # config's defaults are Qwen3-4B's
        )
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{file} does not look like a Qwen3 text encoder (missing {e})") from e


EMBEDDING = "embed_tokens.weight"


def _build(
    files: list[Path], config: Qwen3TextConfig, device: torch.device | str, dtype: torch.dtype
) -> Qwen3TextModel:
    with torch.device("meta"):  # no init work: every parameter is assigned from the checkpoint below
        model = Qwen3TextModel(config)
    # The features are hidden_states[-2], i.e. the output of layer index n-2 *before* the final norm
    # (HF applies model.norm only to the last entry). So the last layer and the norm are never needed:
    # drop the layer and make the norm an identity, and the model's output is exactly those features.
    dropped = f"layers.{config.num_hidden_layers - 1}."
    model.layers = model.layers[:-1]
    model.norm = nn.Identity()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    for file in files:  # the key audit reads headers only
        if not Path(file).is_file():
            raise WeightsError(f"missing text-encoder weights file {file}")
        names = [k.removeprefix("model.") for k in read_shapes([file])]
        unexpected = sorted(n for n in names if n not in expected and n != "norm.weight" and not n.startswith(dropped))
        if unexpected:
            raise WeightsError(f"{file}: unexpected text-encoder keys {unexpected}")

    def select(key: str, on_host: bool) -> str | None:  # skipped keys are never read
        name = key.removeprefix("model.")
        return name if name in expected and (name == EMBEDDING) == on_host else None

    # Parallel over shards and chunks, straight to the device in the target dtype (weights/files.py). The
    # embedding table stays in host memory whatever the device (Qwen3TextModel.embed gathers there): 0.72 GiB
    # of Qwen3-4B's bf16 that the GPU keeps for activations, for a copy of a few hundred rows per prompt.
    state: dict[str, Tensor] = read_files(files, dtype, device, select=lambda k: select(k, on_host=False))
    state.update(read_files(files, dtype, "cpu", select=lambda k: select(k, on_host=True)))
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WeightsError(f"text-encoder keys {missing} not found in {[str(f) for f in files]}")
    wrong = sorted(f"{k}: {tuple(v.shape)} != {tuple(expected[k])}" for k, v in state.items() if v.shape != expected[k])
    if wrong:
        raise WeightsError(f"text-encoder shape mismatch in {[str(f) for f in files]}: {wrong}")
    model.load_state_dict(state, strict=True, assign=True)
    model.rotary_emb.to(device)  # its inv_freq (computed on the CPU) is not in the checkpoint
    return model


def load_text_encoder(
    text_encoder_dir: Path, tokenizer_dir: Path, device: torch.device | str, dtype: torch.dtype, cache_size: int = 64
) -> TextEncoder:
    """Load the published ``text_encoder/`` folder (sharded or single file) and ``tokenizer/``, offline."""
    folder = Path(text_encoder_dir)
    if not folder.is_dir():
        raise WeightsError(f"text-encoder folder not found: {folder}")
    config = read_config(folder / "config.json")
    model = _build(shard_files(folder, "model.safetensors.index.json", "model.safetensors"), config, device, dtype)
    return TextEncoder(model, load_tokenizer(Path(tokenizer_dir)), cache_size)


def load_text_encoder_file(
    file: Path,
    tokenizer_dir: Path,
    config: Qwen3TextConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    cache_size: int = 64,
) -> TextEncoder:
    """Load a ComfyUI single file (``qwen_3_4b.safetensors``: HF key names with ``model.`` prefix)."""
    file = Path(file)
    if not file.is_file():
        raise WeightsError(f"text-encoder file not found: {file}")
    model = _build([file], config or _infer_config(file), device, dtype)
    return TextEncoder(model, load_tokenizer(Path(tokenizer_dir)), cache_size)
