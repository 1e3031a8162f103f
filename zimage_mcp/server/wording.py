"""Error wording for the calling model: quote values briefly, one plain sentence per bad field.

``quote`` is the one place a user-supplied value is shown in an error: at most ``QUOTE_LIMIT``
characters of it, then the full length, so a 100,000-character prompt or URI is never echoed back.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

QUOTE_LIMIT = 200

_KINDS = {
    "int_type": "must be a valid integer",
    "int_parsing": "must be a valid integer",
    "int_from_float": "must be a valid integer (a whole number)",
    "float_type": "must be a valid number",
    "float_parsing": "must be a valid number",
    "finite_number": "must be a finite number",
    "string_type": "must be a valid string",
    "bool_type": "must be a valid boolean (true or false)",
    "bool_parsing": "must be a valid boolean (true or false)",
    "list_type": "must be a valid list",
    "tuple_type": "must be a valid list",
    "dict_type": "must be a valid dictionary (a JSON object)",
    "model_type": "must be a valid dictionary (a JSON object)",
    "model_attributes_type": "must be a valid dictionary (a JSON object)",
    "none_required": "must be null",
    "missing": "is required",
}


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as JSON-ish text for an error message, cut to ``limit`` characters (length noted)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return json.dumps(value, ensure_ascii=False)
        return f'{json.dumps(value[:limit], ensure_ascii=False)[:-1]}..." ({len(value)} characters)'
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def did_you_mean(name: str, valid: Iterable[str]) -> str:
    """`` (did you mean 'width'?)`` when a valid name is close to ``name``, else ``""``."""
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_arguments(tool: str, unknown: Sequence[str], valid: Sequence[str]) -> str:
    """The refusal for argument names a tool does not have."""
    parts = [f"{quote(name, 60)}{did_you_mean(name, valid)}" for name in unknown]
    noun = "argument" if len(unknown) == 1 else "arguments"
    allowed = f"Valid arguments: {', '.join(valid)}" if valid else f"{tool} takes no arguments"
    return f"{tool}: unknown {noun} {', '.join(parts)}; nothing was run. {allowed}"


def field_path(loc: Sequence[Any]) -> str:
    """``('loras', 0, 'scale')`` -> ``loras[0].scale``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _sentence(err: Mapping[str, Any], hint: str, siblings: Sequence[str]) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = f", got {quote(value)}"
    if kind == "extra_forbidden":
        name = str(err["loc"][-1])
        return (
            f"unknown name{did_you_mean(name, siblings)}; valid names: {', '.join(siblings)}"
            if siblings
            else "unknown name"
        )
    if kind == "missing":
        return "is required" + (f" ({hint})" if hint else "")
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}{got}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        word = {
            "greater_than_equal": "greater than or equal to",
            "greater_than": "greater than",
            "less_than_equal": "less than or equal to",
            "less_than": "less than",
        }[kind]
        bound = next(iter(ctx.values()), "")
        return f"must be {word} {bound}" + (f" ({hint})" if hint else "") + got
    if kind in ("string_too_long", "too_long"):
        size = len(value) if isinstance(value, (str, list, dict)) else "?"
        unit = "characters" if kind == "string_too_long" else "items"
        return f"must have at most {ctx.get('max_length')} {unit}, got {size} (nothing is truncated)"
    if kind in ("string_too_short", "too_short"):
        least = ctx.get("min_length")
        unit = ("character" if kind == "string_too_short" else "item") + ("" if least == 1 else "s")
        return f"must have at least {least} {unit}" + (f" ({hint})" if hint else "")
    base = _KINDS.get(kind) or str(err.get("msg", "is not valid")).replace("Input should", "must").lower()
    return base + (f" ({hint})" if hint else "") + got


def _field_schema(schema: Mapping[str, Any], loc: Sequence[Any]) -> Mapping[str, Any]:
    """The JSON-schema node of a field path (following ``$ref`` into ``$defs``, lists into ``items``)."""
    defs, node = schema.get("$defs", {}), schema
    for part in loc:
        node = _resolve(node, defs)
        if isinstance(part, int):
            node = node.get("items", {})
        else:
            node = node.get("properties", {}).get(part, {})
    return _resolve(node, defs)


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    if "$ref" in node:
        return {**defs.get(str(node["$ref"]).rsplit("/", 1)[-1], {}), **{k: v for k, v in node.items() if k != "$ref"}}
    for key in ("anyOf", "oneOf"):
        options = [o for o in node.get(key, []) if o.get("type") != "null"]
        if len(options) == 1:
            return {**_resolve(options[0], defs), **{k: v for k, v in node.items() if k != key}}
    return node


def describe_validation(tool: str, exc: ValidationError, schema: Mapping[str, Any]) -> str:
    """One sentence per bad field, e.g. ``width: must be an integer (multiple of 16 ...), got "big"``."""
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        parent = _field_schema(schema, loc[:-1]) if loc else schema
        node = _field_schema(schema, loc)
        hint = str(node.get("description", "")).rstrip(".")
        first = hint.split(" ", 1)[0]
        hint = hint if len(first) > 1 and first.isupper() else hint[:1].lower() + hint[1:]
        siblings = list(parent.get("properties", {}))
        lines.append(f"{field_path(loc) or 'arguments'}: {_sentence(err, hint, siblings)}")
    head = f"{tool}: invalid argument{'s' if len(lines) > 1 else ''}; nothing was run."
    return "\n".join([head, *lines])
