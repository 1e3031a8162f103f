"""The bridge's compile queue: which requests are kept for an idle-time replay, and how they are replayed."""

from __future__ import annotations

from dataclasses import replace

import pytest
from zimage_builtins.compile_queue import CompileQueue, replay_request

from zimage_mcp.contract import GenerationRequest
from zimage_mcp.engine.speed.compile_policy import may_compile, record_miss

REQUEST = GenerationRequest(prompt="a cat", negative_prompt="", width=1024, height=768, steps=8, guidance=0.0, seed=1)


def _run(queue: CompileQueue, request: GenerationRequest, *missed: str) -> None:
    with queue.request(request):
        assert not any(may_compile(part) for part in ("dit", "text", "vae"))  # a request compiles nothing
        for part in missed:
            record_miss(part)


def test_requests_that_missed_are_replayed_part_by_part_with_that_part_allowed() -> None:
    replays: list[tuple[int, list[str]]] = []
    queue = CompileQueue(lambda r: replays.append((r.steps, [p for p in ("dit", "text", "vae") if may_compile(p)])))
    _run(queue, REQUEST)  # all compiled: nothing kept
    assert not queue.pending()
    _run(queue, REQUEST, "vae", "dit")
    assert queue.pending()
    assert queue.next() == "vae at 1024x768"
    assert queue.next() == "dit at 1024x768"
    assert queue.next() is None and not queue.pending()
    # two steps, one part allowed at a time, the decoder first (the later units then decode compiled)
    assert replays == [(2, ["vae"]), (2, ["dit"])]


def test_a_repeat_with_another_seed_is_kept_once_and_a_failed_request_not_at_all() -> None:
    queue = CompileQueue(lambda r: None)
    _run(queue, REQUEST, "dit")
    _run(queue, replace(REQUEST, seed=2), "dit")  # same shapes
    with pytest.raises(RuntimeError), queue.request(replace(REQUEST, prompt="a dog")):
        record_miss("dit")
        raise RuntimeError("out of memory")
    _run(queue, replace(REQUEST, prompt="a red fox in the snow"), "text")
    labels = [queue.next(), queue.next(), queue.next()]
    assert labels == ["dit at 1024x768", "text at 1024x768", None]
    _run(queue, replace(REQUEST, seed=3), "dit")  # replayed before: not again
    assert not queue.pending()


def test_img2img_replays_keep_enough_steps_to_reach_the_denoiser() -> None:
    assert replay_request(replace(REQUEST, mode="img2img", strength=0.3)).steps == 7  # int(7 * 0.3) = 2 steps run
    assert replay_request(replace(REQUEST, mode="img2img", strength=0.3, steps=4)).steps == 4
    assert replay_request(REQUEST).steps == 2
