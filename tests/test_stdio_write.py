"""The stdio transport's writer: a line goes out whole, from the event loop, however full the pipe is."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from zimage_mcp.server.stdio_transport import WIRE_PIPE_BYTES, widen_pipe, write_line


def test_a_line_longer_than_the_pipe_goes_out_whole_while_the_reader_is_slow() -> None:
    read_fd, write_fd = os.pipe()
    line = bytes(range(256)) * 8192 + b"\n"  # 2 MiB: the pipe (64 KiB) fills many times
    received = bytearray()

    def slow_reader() -> None:
        with os.fdopen(read_fd, "rb", buffering=0) as source:
            while chunk := source.read(65536):
                received.extend(chunk)
                time.sleep(0.001)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    with os.fdopen(write_fd, "wb", buffering=0) as wire:
        anyio.run(write_line, wire, line)
        assert os.get_blocking(write_fd)  # non-blocking only for each write: the descriptor may be shared
    reader.join(timeout=30)
    assert bytes(received) == line


def test_a_wire_without_a_descriptor_is_written_on_a_thread() -> None:
    wire = io.BytesIO()
    anyio.run(write_line, wire, b'{"jsonrpc": "2.0"}\n')
    assert wire.getvalue() == b'{"jsonrpc": "2.0"}\n'


def test_a_regular_file_is_written_whole(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with path.open("wb", buffering=0) as wire:
        for i in range(3):
            anyio.run(write_line, wire, b"x" * 100_000 + str(i).encode() + b"\n")
    data = path.read_bytes().splitlines()
    assert [len(x) for x in data] == [100_001] * 3


@pytest.mark.skipif(sys.platform != "linux", reason="pipe sizes are set through Linux's fcntl")
def test_the_wire_pipe_is_widened_so_a_reply_goes_in_with_one_write() -> None:
    import fcntl

    read_fd, write_fd = os.pipe()
    try:
        with os.fdopen(write_fd, "wb", buffering=0, closefd=False) as wire:
            assert widen_pipe(wire) == WIRE_PIPE_BYTES
        assert fcntl.fcntl(read_fd, fcntl.F_GETPIPE_SZ) == WIRE_PIPE_BYTES  # the pipe itself, seen from the client
        assert os.write(write_fd, b"x" * 400_000) == 400_000  # a preview's reply, taken whole without a reader
    finally:
        os.close(read_fd)
        os.close(write_fd)


@pytest.mark.skipif(sys.platform != "linux", reason="pipe sizes are set through Linux's fcntl")
def test_a_pipe_the_host_made_wider_is_not_shrunk() -> None:
    import fcntl

    read_fd, write_fd = os.pipe()
    try:
        fcntl.fcntl(read_fd, fcntl.F_SETPIPE_SZ, WIRE_PIPE_BYTES)  # the host's choice, wider than what we ask below
        with os.fdopen(write_fd, "wb", buffering=0, closefd=False) as wire:
            assert widen_pipe(wire, size=WIRE_PIPE_BYTES // 4) == WIRE_PIPE_BYTES
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_what_is_no_pipe_is_left_as_it_is(tmp_path: Path) -> None:
    assert widen_pipe(io.BytesIO()) is None
    with (tmp_path / "out.jsonl").open("wb") as regular:
        assert widen_pipe(regular) is None
