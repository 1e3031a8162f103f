"""Tiny text-side checkpoint writer: a real Qwen2-style tokenizer and a random 3-layer Qwen3Model.

Both are written in the published Z-Image layout (``tokenizer/`` and ``text_encoder/``), so the same
files load with our engine, with ``transformers`` and with diffusers' ``ZImagePipeline``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import Qwen3Config, Qwen3Model

# Room for the trained BPE vocabulary plus the special tokens (the BPE part stays below 1500).
TINY_VOCAB_SIZE = 2048
BPE_VOCAB_SIZE = 1500

# Qwen2/Qwen3 pre-tokenizer regex (the same as transformers' Qwen2Tokenizer).
_SPLIT_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501

# (token, special) in Qwen3's order; <|endoftext|> comes first and is the pad token.
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|image_pad|>", True),
    ("<think>", False),
    ("</think>", False),
)

# Qwen3's published chat template (Qwen3-4B tokenizer_config.json), structure kept verbatim.
QWEN3_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in message.content %}
                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""  # noqa: E501

# Small fixed training corpus: image-prompt English, some CJK, digits and punctuation.
_CORPUS = """A photo of a cat sitting on a wooden table, soft morning light, high detail.
A portrait of an old man with a grey beard, cinematic lighting, 85mm lens, shallow depth of field.
A futuristic city at night with neon signs, rain on the streets, reflections, wide angle.
An oil painting of mountains and a lake at sunset; warm colors, impressionist style.
A red sports car driving along the coast road. Blue sky, white clouds, ocean waves!
Close-up of a bowl of ramen with egg, green onions and steam rising: food photography.
A young woman reading a book in a library, bookshelves, dust in the light beams.
Watercolor illustration of a small house in a forest, flowers, birds and a river.
Text that says "Hello, World!" written in bold letters on a chalkboard (2024).
The quick brown fox jumps over the lazy dog. 0123456789 + - * / = % # @ & ? ... -- 'quotes'
Minimalist logo design, vector art, flat colors, simple shapes, black and white background.
一只猫坐在窗台上，阳光明媚，高清摄影。
中国古代山水画，远山，小桥，流水，人家。
夜晚的城市，霓虹灯，下雨，街道，倒影。
一位穿着红色汉服的女孩站在樱花树下，微笑。
美丽的风景，蓝天白云，绿色的草地和花朵。
日本の桜と富士山、春の風景、写真。
한국의 전통 한옥 마을, 가을 풍경.
Anime style character with blue hair and golden eyes, dynamic pose, detailed background, 4k.
A macro shot of a dragonfly on a leaf with water droplets; bokeh, natural green tones.
Isometric 3D render of a cozy bedroom: plants, lamps, posters, a computer desk and a sleeping dog.
Street market in Marrakesh, spices, colorful fabrics, crowded alleys, golden hour photograph.
A knight in shining armor riding a white horse through a snowy valley, epic fantasy artwork.
Product shot of a glass perfume bottle on marble, studio lighting, elegant and luxurious mood.
一杯热咖啡放在木桌上，旁边是一本打开的书和眼镜，温暖的灯光。
雪山下的湖泊，清澈的湖水，倒映着天空和树林，宁静的早晨。
"""


def _corpus() -> list[str]:
    lines = _CORPUS.strip().splitlines()
    # Repeat with small variations so common words and CJK pairs reach the merge frequency.
    return [f"{line} {i}" if i % 2 else line.lower() for i in range(4) for line in lines]


def _build_tokenizer() -> Tokenizer:
    tok = Tokenizer(
        models.BPE(
            unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False, byte_fallback=False
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=s, normalized=False) for t, s in SPECIAL_TOKENS])
    return tok


def write_tiny_tokenizer(dir: Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.json``, ``merges.txt`` into ``dir``."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer()
    tok.save(str(dir / "tokenizer.json"))
    model = json.loads(tok.to_str())["model"]
    (dir / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": s,
        }
        for t, s in SPECIAL_TOKENS
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [t for t, s in SPECIAL_TOKENS if s and t != "<|endoftext|>"],
        "bos_token": None,
        "chat_template": QWEN3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def tiny_text_encoder_config(vocab_size: int) -> Qwen3Config:
    """A 3-layer Qwen3 with hidden 32 (= the tiny DiT's ``cap_feat_dim``)."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=64,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=True,
        max_position_embeddings=1024,
        attention_bias=False,
        dtype="float32",
        architectures=["Qwen3Model"],
    )


def write_tiny_text_encoder(dir: Path, seed: int, shards: int = 2) -> None:
    """Random-init a tiny ``Qwen3Model`` and save it sharded as HF does, with ``model.``-prefixed keys."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    config = tiny_text_encoder_config(TINY_VOCAB_SIZE)
    torch.manual_seed(seed)
    model = Qwen3Model(config).float()
    with torch.no_grad():  # HF init leaves the RMSNorm weights at 1: perturb them so norms are tested.
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(0.1 * torch.randn_like(p))
    config.to_json_file(str(dir / "config.json"))
    state = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    total = sum(v.numel() * v.element_size() for v in state.values())
    groups: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    seen = 0
    for i, (key, value) in enumerate(state.items()):
        idx = min(shards - 1, seen * shards // total, i)  # byte-balanced, never an empty first shard
        groups[idx][key] = value
        seen += value.numel() * value.element_size()
    if shards == 1:  # HF writes a lone ``model.safetensors`` and no index
        save_file(state, str(dir / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map: dict[str, str] = {}
    for k, group in enumerate(groups, start=1):
        name = f"model-{k:05d}-of-{shards:05d}.safetensors"
        save_file(group, str(dir / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
