"""Limits on every way into the app that Gradio does not bound itself: request bodies, files per upload,
queued requests per visitor, and process memory after large requests.

Gradio caps each uploaded file (`max_file_size`) but not a request body (a data URL inside a JSON call
can be any size), not the number of files in one upload (1000), and not how many queued requests one
visitor holds (one burst could fill the queue for everyone). `RequestLimits` is a plain ASGI middleware
for the first two; `PER_VISITOR` wraps the queue's admission for the third, and `visitor` says who the
visitor is. Imports nothing from the project but `gradio_patches`, whose guard the queue's wrapper uses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from gradio import queueing
from python_multipart.multipart import parse_options_header
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException

from gradio_patches import Patch, lacks, not_coroutines, parameters

log = logging.getLogger("app.limits")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

UPLOAD_PATH = "/gradio_api/upload"  # Gradio's upload route: the only one given the upload allowance


class BodyTooLarge(MultiPartException):
    """Raised from inside `receive` when a body grows past its limit, however it is framed. It is the
    exception Gradio's multipart parser cleans up after: the files a refused upload had begun are deleted."""


class UnclosedUpload(MultiPartException):
    """Raised from inside `receive` when a multipart body ends without its closing boundary. Gradio's parser
    would return the parts it saw end and keep the file of the last one, begun but never ended, on disk for
    good (nothing lists it for deletion); this exception is one it deletes every file it began for."""


class ClientGone(MultiPartException):
    """Raised from inside `receive` when the client leaves before its body ended. Gradio's multipart
    parser lets Starlette's own `ClientDisconnect` through, leaving the files it had begun and a traceback
    in the log; this one it cleans up after, and the route answers no one."""


class RequestLimits:
    """Refuse a request body over `max_body` bytes (413), or on the upload route over `max_upload_body`
    bytes or of more than `max_files` files (413), counting bytes and multipart parts as they stream in, so
    nothing over the limit is stored; and a multipart body on any route that ends before its closing
    boundary (400). The upload route is matched by its exact path."""

    def __init__(self, app: Callable, max_body: int, max_upload_body: int, max_files: int) -> None:
        self.app, self.max_body, self.max_upload_body, self.max_files = app, max_body, max_upload_body, max_files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload, headers = scope["path"] == UPLOAD_PATH, Headers(scope=scope)
        limit = self.max_upload_body if upload else self.max_body
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return await refuse(send, 413, too_large(limit))
        has_body = declared not in (None, "0") or "transfer-encoding" in headers
        files = self.max_files if upload else None
        counter = BodyCounter(receive, limit, multipart_boundary(headers), files, has_body)
        refused = False

        async def checked_send(message: dict) -> None:
            """Once the body is refused, whatever the app answers (it may call it a parse error) is replaced
            by the refusal that says why: 413 and which limit, or 400 for an upload left unclosed."""
            nonlocal refused
            if counter.refusal and not refused:
                refused = True
                await refuse(send, counter.status, counter.refusal)
            elif not refused:
                await send(message)

        try:
            await self.app(scope, counter, checked_send)
        except (BodyTooLarge, UnclosedUpload):
            if not refused:
                await refuse(send, counter.status, counter.refusal)


class BodyCounter:
    """A `receive` that counts body bytes and, for multipart bodies, the parts (files) begun so far (at most
    `max_files`, where it is not None) and whether the closing boundary came; a client that leaves before
    its body ended is `ClientGone`."""

    def __init__(
        self, receive: Receive, limit: int, boundary: bytes | None, max_files: int | None, has_body: bool
    ) -> None:
        self.receive, self.limit, self.max_files = receive, limit, max_files
        self.delimiter = b"\r\n--" + boundary if boundary else None
        self.seen, self.parts, self.tail = 0, 0, b"\r\n"  # the first delimiter has no CRLF before it
        self.refusal, self.status = "", 413  # why the body is refused, once it is, and with what status
        self.ended = not has_body  # whether the body's last part came (a disconnect after it is the app's to see)

    async def __call__(self) -> dict:
        message = await self.receive()
        if message["type"] == "http.disconnect" and not self.ended:
            log.warning("a client left before its request's body ended (%d bytes); nothing of it is kept", self.seen)
            raise ClientGone("The client left before the request's body ended.")
        if message["type"] != "http.request":
            return message
        self.ended = not message.get("more_body", False)
        chunk = message.get("body", b"")
        self.seen += len(chunk)
        if self.seen > self.limit:
            self.refusal = too_large(self.limit)
            raise BodyTooLarge(self.refusal)
        if self.delimiter:
            self.count_parts(chunk)
        return message

    def count_parts(self, chunk: bytes) -> None:
        """Count the delimiters in `chunk` (and across its start), refusing too many parts, and a body that
        ended without the closing delimiter (a CRLF may follow it, as clients send it)."""
        window = self.tail + chunk
        self.parts += window.count(self.delimiter) - self.tail.count(self.delimiter)
        self.tail = window[-len(self.delimiter) - 4 :]  # long enough for the closing delimiter and a CRLF
        if self.max_files is not None and self.parts - 1 > self.max_files:  # the closing delimiter ends the last
            self.refusal = f"At most {self.max_files} files per upload."
            raise BodyTooLarge(self.refusal)
        if self.ended and self.seen and not self.tail.rstrip(b"\r\n").endswith(self.delimiter + b"--"):
            self.refusal, self.status = "The upload ended before its closing boundary: nothing of it is kept.", 400
            raise UnclosedUpload(self.refusal)


def multipart_boundary(headers: Headers) -> bytes | None:
    """The boundary exactly as Gradio's parser will read it: from the first Content-Type header (which
    Starlette's `Headers` returns), by python-multipart's own `parse_options_header`; None unless the body
    is multipart/form-data (Gradio's multipart routes refuse any other unparsed)."""
    content_type, options = parse_options_header(headers.get("content-type"))
    return options.get(b"boundary") if content_type == b"multipart/form-data" else None


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


# --------------------------------------------------------------------------- who the visitor is


def trusted_proxies(environ: Mapping[str, str] = os.environ) -> int:
    """How many proxies in front of the app append to X-Forwarded-For: `PETS_TRUSTED_PROXIES`, or where it is
    unset, 1 on a Hugging Face Space (marked as Gradio marks one: SYSTEM=spaces and SPACE_ID) and 0
    elsewhere. docs/operations.md says what this default rests on."""
    on_a_space = environ.get("SYSTEM") == "spaces" and bool(environ.get("SPACE_ID"))
    value = environ.get("PETS_TRUSTED_PROXIES", "1" if on_a_space else "0")
    if not value.strip().isdigit():
        raise ValueError(f"PETS_TRUSTED_PROXIES must be a whole number of proxies (0 or more), got {value!r}.")
    return int(value)


def visitor(request: Any, trusted: int) -> str:
    """Who is asking: with no trusted proxy, the socket's peer address; behind `trusted` proxies that each
    append the address they were called from to X-Forwarded-For, the entry the outermost of them added, the
    `trusted`-th from the right (as uvicorn's `forwarded_allow_ips` and Werkzeug's `ProxyFix(x_for=N)`
    read it). The entries to its left are the client's own to write, so they never count. A request that
    passed fewer proxies than that is its peer's."""
    peer = request.client.host if request.client else "unknown"
    if not trusted:
        return peer
    entries = [entry.strip() for value in request.headers.getlist("x-forwarded-for") for entry in value.split(",")]
    return entries[-trusted] if len(entries) >= trusted and entries[-trusted] else peer


def client_keys(session_hash: str | None, request: Any, trusted: int) -> set[str]:
    """The keys a request counts under: its address (`visitor`) and, where it has one, its session."""
    return {f"ip:{visitor(request, trusted)}"} | ({f"session:{session_hash}"} if session_hash else set())


# --------------------------------------------------------------------------- requests per visitor


def _per_visitor_problem(queue: Any, per_visitor: int, trusted: int) -> str | None:
    """The wrapper relies on: `push(body, request, username)` returning (ok, message, state); the waiting
    events per concurrency group and the running jobs; each event's `session_hash` and `request`."""
    problem = lacks(queue, "event_queue_per_concurrency_id", "active_jobs") or not_coroutines(queue, "push")
    if problem:
        return problem
    if parameters(queue.push) != ["body", "request", "username"]:
        return f"Queue.push takes {parameters(queue.push)}, not (body, request, username)"
    if not {"session_hash", "request"} <= set(inspect.signature(queueing.Event).parameters):
        return "gradio.queueing.Event no longer keeps the session_hash and request"
    return None


def _install_per_visitor(queue: Any, per_visitor: int, trusted: int) -> None:
    """Wrap Gradio's queue admission so one visitor (by session or address) holds at most `per_visitor`
    waiting or running events; more are refused like a full queue, with a message that says why."""
    push = queue.push

    async def admit(body: Any, request: Any, username: str | None) -> tuple[bool, Any, str]:
        keys = client_keys(body.session_hash, request, trusted)
        held = sum(bool(keys & client_keys(event.session_hash, event.request, trusted)) for event in events(queue))
        if held >= per_visitor:
            message = f"Too many requests at once: at most {per_visitor} per visitor. Wait for your earlier ones."
            log.warning("refused a request: %s (%s)", message, ", ".join(sorted(keys)))
            return False, message, "queue_full"
        return await push(body, request, username)

    queue.push = admit


def events(queue: Any) -> list[Any]:
    """Every event the queue holds: waiting in any concurrency group, or running."""
    waiting = [event for group in queue.event_queue_per_concurrency_id.values() for event in group.queue]
    return waiting + [event for job in queue.active_jobs if job for event in job]


PER_VISITOR = Patch("requests per visitor", _per_visitor_problem, _install_per_visitor)


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
