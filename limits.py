"""Limits on every way into the app that Gradio does not bound itself: request bodies, files per upload,
queued requests per client, and process memory after large requests.

Gradio caps each uploaded file (`max_file_size`) but not a request body (a data URL inside a JSON call
can be any size), not the number of files in one upload (1000), and not how many queued requests one
client holds (one burst could fill the queue for everyone). `RequestLimits` is a plain ASGI middleware
for the first two; `limit_queue_per_client` wraps the queue's admission for the third. Two of Gradio's
costs per call are bounded too: `lazy_session_configs` keeps it from copying every component's config for
each REST call, and `wake_queue_on_events` from looking for work a thousand times a second. Imports
nothing from the project.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import ctypes.util
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gradio import queueing, state_holder

log = logging.getLogger("app.limits")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised from inside `receive` when a body grows past its limit, however it is framed."""


class RequestLimits:
    """Refuse a request body over `max_body` bytes (413) and an upload of more than `max_files` files
    (413), counting bytes and multipart parts as they stream in, so nothing over the limit is stored."""

    def __init__(self, app: Callable, max_body: int, max_upload_body: int, max_files: int) -> None:
        self.app, self.max_body, self.max_upload_body, self.max_files = app, max_body, max_upload_body, max_files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["path"].endswith("/upload")
        limit = self.max_upload_body if upload else self.max_body
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return await refuse(send, 413, too_large(limit))
        counter = BodyCounter(receive, limit, multipart_boundary(scope) if upload else None, self.max_files)
        refused = False

        async def checked_send(message: dict) -> None:
            """Once the body broke a limit, whatever the app answers (it may call it a parse error) is
            replaced by the 413 that says which limit."""
            nonlocal refused
            if counter.exceeded and not refused:
                refused = True
                await refuse(send, 413, counter.exceeded)
            elif not refused:
                await send(message)

        try:
            await self.app(scope, counter, checked_send)
        except BodyTooLarge:
            if not refused:
                await refuse(send, 413, counter.exceeded)


class BodyCounter:
    """A `receive` that counts body bytes and, for multipart bodies, the parts (files) begun so far."""

    def __init__(self, receive: Receive, limit: int, boundary: bytes | None, max_files: int) -> None:
        self.receive, self.limit, self.max_files = receive, limit, max_files
        self.delimiter = b"\r\n--" + boundary if boundary else None
        self.seen, self.parts, self.tail = 0, 0, b"\r\n"  # the first delimiter has no CRLF before it
        self.exceeded = ""  # which limit the body broke, once it has

    async def __call__(self) -> dict:
        message = await self.receive()
        if message["type"] != "http.request":
            return message
        chunk = message.get("body", b"")
        self.seen += len(chunk)
        if self.seen > self.limit:
            self.exceeded = too_large(self.limit)
            raise BodyTooLarge(self.exceeded)
        if self.delimiter:
            window = self.tail + chunk
            self.parts += window.count(self.delimiter) - self.tail.count(self.delimiter)
            self.tail = window[-len(self.delimiter) :]
            if self.parts - 1 > self.max_files:  # the closing delimiter ends the last part
                self.exceeded = f"At most {self.max_files} files per upload."
                raise BodyTooLarge(self.exceeded)
        return message


def multipart_boundary(scope: Scope) -> bytes | None:
    content_type = dict(scope.get("headers", [])).get(b"content-type", b"")
    for option in content_type.split(b";")[1:]:
        key, _, value = option.strip().partition(b"=")
        if key.lower() == b"boundary":
            return value.strip(b'"')
    return None


def too_large(limit: int) -> str:
    return f"The request is too large: at most {limit / 1e6:.0f} MB."


async def refuse(send: Send, status: int, message: str) -> None:
    log.warning("refused a request (%d): %s", status, message)
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def unknown_endpoint(request: Any, error: Exception) -> Any:
    """A call to an endpoint the app does not have: 404 and one log line, not a 500 with a traceback."""
    from starlette.responses import JSONResponse

    message = f"No such endpoint: {request.url.path.rsplit('/', 1)[-1]!r}; the app's endpoints are at /gradio_api/info."
    log.warning("refused a request (404): %s", message)
    return JSONResponse({"error": message}, status_code=404)


def client_keys(session_hash: str | None, headers: Any, host: str | None) -> set[str]:
    """Who is asking: the session, and the address (the first X-Forwarded-For entry, as Spaces pass it)."""
    forwarded = (headers.get("x-forwarded-for") or "").split(",")[0].strip()
    return {f"session:{session_hash}", f"ip:{forwarded or host}"}


def limit_queue_per_client(queue: Any, per_client: int) -> None:
    """Wrap Gradio's queue admission so one client (by session or address) holds at most `per_client`
    waiting or running events; more are refused like a full queue, with a message that says why."""
    push = queue.push

    async def admit(body: Any, request: Any, username: str | None) -> tuple[bool, Any, str]:
        keys = client_keys(body.session_hash, request.headers, request.client.host if request.client else None)
        held = sum(bool(keys & event_keys(event)) for event in queued_events(queue))
        if held >= per_client:
            message = f"Too many requests at once: at most {per_client} per visitor. Wait for your earlier ones."
            log.warning("refused a request: %s (%s)", message, ", ".join(sorted(keys)))
            return False, message, "queue_full"
        return await push(body, request, username)

    queue.push = admit


def queued_events(queue: Any) -> list[Any]:
    waiting = [event for events in queue.event_queue_per_concurrency_id.values() for event in events.queue]
    return waiting + [event for job in queue.active_jobs if job for event in job]


def event_keys(event: Any) -> set[str]:
    request = event.request
    return client_keys(event.session_hash, request.headers, request.client.host if request.client else None)


QUEUE_FALLBACK_WAKE_S = 1.0  # the longest the queue sleeps with nothing said: a safety net, not a poll
# The wake-up of the queue loop running in this task, if `wake_queue_on_events` started it; other tasks
# (another app's queue in the same process, say) see None and sleep as Gradio meant.
_QUEUE_WAKE_UP: contextvars.ContextVar[SimpleNamespace | None] = contextvars.ContextVar("queue_wake_up", default=None)


def wake_queue_on_events(queue: Any) -> None:
    """Gradio's queue loop sleeps a millisecond (`sleep_when_free`) whenever it has nothing it can start,
    and its progress loop ten: on 2 cores an idle app spent a tenth of a core waking up, and under load
    the wake-ups preempt ONNX Runtime's threads. Here the queue loop's sleep ends when an event is pushed
    or a job ends (the only things that let it start one), and at the latest after QUEUE_FALLBACK_WAKE_S;
    the progress loop looks every 0.1 s (this app reports no progress). Gradio's loop itself is unchanged:
    only the `asyncio.sleep` its module calls is `_sleep_until_woken`."""
    wake_up = SimpleNamespace(event=asyncio.Event(), idle_sleep=queue.sleep_when_free)
    push, process_events, start_processing = queue.push, queue.process_events, queue.start_processing

    async def pushed(*args: Any, **kwargs: Any) -> Any:
        try:
            return await push(*args, **kwargs)
        finally:
            wake_up.event.set()

    async def processed(*args: Any, **kwargs: Any) -> Any:
        try:
            return await process_events(*args, **kwargs)
        finally:
            wake_up.event.set()

    async def processing() -> None:
        _QUEUE_WAKE_UP.set(wake_up)  # in this task's context only: the loop's own sleeps see it
        await start_processing()

    queue.push, queue.process_events, queue.start_processing = pushed, processed, processing
    queue.progress_update_sleep_when_free = 0.1
    queueing.asyncio = SimpleNamespace(**(vars(asyncio) | {"sleep": _sleep_until_woken}))


async def _sleep_until_woken(delay: float, result: Any = None) -> Any:
    """`asyncio.sleep` as Gradio's queue module sees it: the idle sleep of a loop `wake_queue_on_events`
    started lasts until something happened (at once if it did since the loop last looked); any other
    sleep is asyncio's."""
    wake_up = _QUEUE_WAKE_UP.get()
    if wake_up is None or delay != wake_up.idle_sleep:
        return await asyncio.sleep(delay, result)
    if not wake_up.event.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake_up.event.wait(), QUEUE_FALLBACK_WAKE_S)
    wake_up.event.clear()  # the loop looks at the queue right after this returns
    return result


class LazySessionState(state_holder.SessionState):
    """Gradio's per-session state, with each component's config made when first needed. Gradio makes all
    of them (64 here, ~100 KB) for every new session, and every REST call is a new session: a profile of
    REST /predict under load found a seventh of the server's busy time there. They are read only to update
    an output's value (made then) and for deep links (`components`, made then in full)."""

    def __init__(self, blocks: Any) -> None:
        super().__init__(SimpleNamespace(default_config=blocks.default_config, blocks={}))  # no config made
        self._block_ids = set(blocks.blocks)

    @property
    def components(self) -> Iterator[dict]:
        for key, block in self.blocks_config.blocks.items():
            if key in self._block_ids and key not in self.config_values:
                self.config_values[key] = self.blocks_config.config_for_block(key, [], block)
        return super().components


def lazy_session_configs() -> None:
    """New sessions of every Gradio app in this process get `LazySessionState`."""
    state_holder.SessionState = LazySessionState


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
M_MMAP_THRESHOLD = -3


def return_memory_to_the_os() -> None:
    """glibc keeps freed heap memory for reuse, so after one 300 MB request RSS would stay 300 MB higher.
    Serve large blocks (≥ 1 MB) from their own mappings, which go back to the OS when freed, at start."""
    if hasattr(_LIBC, "mallopt"):
        _LIBC.mallopt(M_MMAP_THRESHOLD, 1 << 20)


TRIM_GROWTH = 32 * 1024 * 1024  # RSS growth since the last trim that makes the next request end with one
_rss_after_trim = [0]


def resident_bytes() -> int:
    """This process's resident memory (Linux /proc; 0 elsewhere, where nothing is trimmed)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim_memory() -> None:
    """After a request: where RSS has grown by TRIM_GROWTH since the last trim, give the heap's free pages
    back to the OS (glibc's malloc_trim, ~1 ms: too dear for every small request, which frees little)."""
    if not hasattr(_LIBC, "malloc_trim"):
        return
    if resident_bytes() - _rss_after_trim[0] > TRIM_GROWTH:
        _LIBC.malloc_trim(0)
        _rss_after_trim[0] = resident_bytes()
