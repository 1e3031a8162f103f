"""The stdio transport: newline-delimited JSON-RPC on stdin and a protocol-only stdout.

Unlike ``mcp.server.stdio.stdio_server`` (which drops a line it cannot parse without a word), every
malformed line gets a JSON-RPC error and the server keeps serving:

- not JSON (or not UTF-8): ``-32700`` parse error, ``id`` null;
- JSON that is not a single request, notification or response (a batch array, a non-object,
  ``jsonrpc`` not "2.0", no ``method``, a bad ``id`` or ``params``): ``-32600`` invalid request,
  with the line's ``id`` when it is a valid one, else null;
- a line over ``LINE_LIMIT`` (64 MiB): ``-32600``, and the line is dropped unread.

Blank lines are skipped. Such lines never reach the SDK. At end of input the requests in flight are answered
before the streams close (the SDK would cancel them).

Where stdin is a pipe, a socket or a terminal (how hosts start a server), the event loop itself waits for it
(``connect_read_pipe``) and writes the replies as the pipe has room: a request and its reply wake no worker
thread. Waking one after the host sat idle was what cost (RESULTS §21). What epoll refuses (a regular file,
/dev/null) is read and written on worker threads. On Linux, a stdout pipe is widened to ``WIRE_PIPE_BYTES``
so that a reply with a preview goes in with one write instead of one per 64 KiB the client drained.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import selectors
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage

log = logging.getLogger(__name__)
PARSE_ERROR, INVALID_REQUEST = -32700, -32600
# The longest request line read: far above any real one (prompts are at most 4000 characters and images come
# by reference, never inline), while a runaway client cannot make the server buffer gigabytes. A longer line
# is dropped and answered with -32600.
LINE_LIMIT = 64 << 20
# Linux's limit for an unprivileged process (/proc/sys/fs/pipe-max-size); a 512 px preview makes a reply line of
# about 200 KB for the random-weight benchmarks' images (up to 350 KB for pure noise). On this project's CPU
# machine the wider pipe brought the reply to the SDK client 0.15-0.2 ms sooner (the writer no longer waits for
# the client to drain each 64 KiB; RESULTS §22).
WIRE_PIPE_BYTES = 1 << 20


def classify(line: bytes) -> SessionMessage | dict[str, Any] | None:
    """A line as a ``SessionMessage``, a JSON-RPC error object to answer with, or ``None`` (blank)."""
    if not line.strip():
        return None
    try:
        data = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return _error(None, PARSE_ERROR, f"Parse error: the line is not valid JSON ({type(exc).__name__})")
    if isinstance(data, list):
        return _error(None, INVALID_REQUEST, "Invalid Request: batches (JSON arrays) are not supported")
    if not isinstance(data, dict):
        return _error(None, INVALID_REQUEST, "Invalid Request: a message must be a JSON object")
    raw_id = data.get("id")
    msg_id = raw_id if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else None
    if data.get("jsonrpc") != "2.0":
        return _error(msg_id, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"')
    if "id" in data and raw_id is not None and msg_id is None:
        return _error(None, INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
    if "method" not in data and "result" not in data and "error" not in data:
        return _error(msg_id, INVALID_REQUEST, 'Invalid Request: no "method"')
    try:
        message = types.jsonrpc_message_adapter.validate_python(data, by_name=False)
    except Exception:
        fields = "method, id and params" if "method" in data else "id, result and error"
        return _error(msg_id, INVALID_REQUEST, f"Invalid Request: check {fields}")
    return SessionMessage(message)


TOO_LONG = f"Invalid Request: the line is longer than {LINE_LIMIT >> 20} MiB"


def _error(msg_id: str | int | None, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


@asynccontextmanager
async def stdio_streams(stdin: BinaryIO, wire: BinaryIO) -> AsyncIterator[tuple[Any, Any]]:
    """(read, write) streams for ``Server.run`` over binary ``stdin`` and the binary ``wire`` (stdout)."""
    read_send, read_recv = create_context_streams[SessionMessage | Exception](0)
    write_send, write_recv = create_context_streams[SessionMessage](0)
    lock = anyio.Lock()

    async def emit(text: str) -> None:
        async with lock:
            with anyio.CancelScope(shield=True):  # a line goes out whole: a cut one would break the protocol
                await write_line(wire, (text + "\n").encode())

    unanswered = Unanswered()

    async def reader() -> None:
        async with read_send:
            async for line in _lines(stdin):
                item = classify(line) if line is not None else _error(None, INVALID_REQUEST, TOO_LONG)
                if item is None:
                    continue
                if isinstance(item, dict):
                    log.info("answered a malformed JSON-RPC line: %s", item["error"]["message"])
                    await emit(json.dumps(item))
                    continue
                unanswered.read(item.message)
                await read_send.send(item)
            # End of input: a client may close its side and still read. Closing the read stream now would
            # have the SDK cancel every request in flight, so first let them finish (a signal still stops us).
            await unanswered.wait()

    async def writer() -> None:
        async with write_recv:
            async for message in write_recv:
                await emit(message.message.model_dump_json(by_alias=True, exclude_unset=True))
                unanswered.written(message.message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield read_recv, write_send
        finally:
            await write_send.aclose()  # the writer drains what is left, then ends (as the SDK's transport)


async def write_line(wire: BinaryIO, line: bytes) -> None:
    """Write ``line`` whole. From the event loop itself as far as the pipe takes it, then, for a long line (a
    preview fills the 64 KiB pipe several times), again each time the loop sees room: a reply wakes no worker
    thread. A worker thread writes it where the loop cannot wait for the descriptor."""
    loop = _asyncio_loop()
    fd = _descriptor(wire)
    view = memoryview(line)
    if loop is not None and fd is not None and os.name == "posix":
        try:
            while view := view[_write_ready(fd, view) :]:
                await _writable(loop, fd)
            return
        except PermissionError:  # epoll refuses this kind of file: finish the line on a thread
            pass
    await anyio.to_thread.run_sync(_write_all, wire, view)


def _write_all(wire: BinaryIO, data: memoryview) -> None:
    """Blocking: an unbuffered file's ``write`` may take less than it was given."""
    while data:
        data = data[wire.write(data) or 0 :]
    wire.flush()


def _write_ready(fd: int, data: memoryview) -> int:
    """Write what the pipe takes now, without waiting; how many bytes that was."""
    blocking = os.get_blocking(fd)
    if blocking:  # non-blocking only for this call: the pipe's write end may be shared with the process that started us
        os.set_blocking(fd, False)
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    finally:
        if blocking:
            os.set_blocking(fd, True)


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    room: asyncio.Future[None] = loop.create_future()
    loop.add_writer(fd, lambda: room.done() or room.set_result(None))
    try:
        await room
    finally:
        loop.remove_writer(fd)


def widen_pipe(wire: BinaryIO, size: int = WIRE_PIPE_BYTES) -> int | None:
    """Grow ``wire``'s pipe buffer to ``size`` bytes where Linux allows it (never shrink one the host made
    wider); the size it has then, or None where ``wire`` is no pipe or the platform cannot (the replies are the
    same, only written in more pieces)."""
    fd = _descriptor(wire)
    if sys.platform != "linux" or fd is None or not stat.S_ISFIFO(os.fstat(fd).st_mode):
        return None
    import fcntl  # POSIX only; its pipe-size commands are Linux's

    if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < size:
        try:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
        except OSError:  # EPERM: over pipe-max-size, or the user's pipe pages are spent; the default still works
            pass
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def _descriptor(file: BinaryIO) -> int | None:
    try:
        return file.fileno()
    except (AttributeError, OSError, ValueError):  # io.BytesIO and other in-memory files
        return None


class Unanswered:
    """The requests read whose answer is not written yet (by id), for the end of input to wait on."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._none = anyio.Event()
        self._none.set()

    def read(self, message: types.JSONRPCMessage) -> None:
        if isinstance(message, types.JSONRPCRequest):
            if not self._ids:
                self._none = anyio.Event()
            self._ids.add(str(message.id))
        elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            self._settle((message.params or {}).get("requestId"))  # the SDK does not answer a cancelled request

    def written(self, message: types.JSONRPCMessage) -> None:
        if isinstance(message, (types.JSONRPCResponse, types.JSONRPCError)):
            self._settle(message.id)

    async def wait(self) -> None:
        await self._none.wait()

    def _settle(self, request_id: object) -> None:
        self._ids.discard(str(request_id))
        if not self._ids:
            self._none.set()


async def _lines(stdin: BinaryIO) -> AsyncIterator[bytes | None]:
    """``stdin``'s lines (each with its newline; the last may lack it) until end of file; None for a line
    longer than ``LINE_LIMIT``, which is dropped."""
    loop = _asyncio_loop()
    if loop is None or not _pollable(stdin):
        async for line in _lines_on_a_thread(stdin):
            yield line
        return
    fd = stdin.fileno()
    stream = asyncio.StreamReader(limit=LINE_LIMIT)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), stdin)
    try:
        while True:
            try:
                yield await stream.readuntil(b"\n")
            except asyncio.LimitOverrunError as over:
                if not await _drop_line(stream, over.consumed):
                    return
                yield None
            except asyncio.IncompleteReadError as end:  # end of file, maybe after a line without its newline
                if end.partial:
                    yield end.partial
                return
    finally:
        transport.close()  # closes the file object, not the descriptor (opened with closefd=False)
        os.set_blocking(fd, True)  # the pipe's read end may be shared with the process that started us


async def _drop_line(stream: asyncio.StreamReader, buffered: int) -> bool:
    """Discard an over-long line through its newline; False if the input ended first."""
    try:
        while True:
            await stream.readexactly(buffered)
            try:
                await stream.readuntil(b"\n")
                return True
            except asyncio.LimitOverrunError as over:
                buffered = over.consumed
    except asyncio.IncompleteReadError:
        return False


async def _lines_on_a_thread(stdin: BinaryIO) -> AsyncIterator[bytes | None]:
    """``_lines`` for what the loop cannot wait for (a regular file): a worker thread reads each line."""
    while line := await anyio.to_thread.run_sync(stdin.readline, LINE_LIMIT + 1):
        if len(line) <= LINE_LIMIT or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):
            line = await anyio.to_thread.run_sync(stdin.readline, LINE_LIMIT + 1)
        yield None


def _asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:  # another anyio backend
        return None


def _pollable(stdin: BinaryIO) -> bool:
    """Whether the loop can wait for ``stdin``: a pipe, socket or character device (what asyncio's pipe
    transport takes) that the OS's selector accepts. epoll refuses /dev/null, a character device, and asyncio
    would only find out in a callback, with the reader stuck; elsewhere than POSIX, never."""
    try:
        mode = os.fstat(stdin.fileno()).st_mode
        if os.name != "posix" or not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)):
            return False
        with selectors.DefaultSelector() as probe:
            probe.register(stdin.fileno(), selectors.EVENT_READ)
    except (OSError, ValueError):
        return False
    return True


def _claim_stdin() -> BinaryIO:
    """A private copy of fd 0 for the protocol; fd 0 then reads /dev/null, so children cannot eat requests."""
    private = os.dup(0)
    os.set_inheritable(private, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return os.fdopen(private, "rb", closefd=False)


def run_stdio(server: Any, wire: BinaryIO) -> None:
    """Serve ``server`` (an ``MCPServer`` or a low-level ``Server``) over stdin and the binary ``wire``."""
    low = getattr(server, "_lowlevel_server", server)
    stdin = _claim_stdin()
    widen_pipe(wire)

    async def run() -> None:
        async with stdio_streams(stdin, wire) as (read, write):
            await low.run(read, write, low.create_initialization_options())

    anyio.run(run)
