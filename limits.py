"""Limits on every way into the app that Gradio does not bound itself: which routes answer at all, request
bodies, what an upload may hold and leave on disk, what one visitor may send, the size of Gradio's file cache,
upload bookkeeping, queued requests per visitor, and process memory after large requests.

Gradio caps each uploaded file (`max_file_size`) but not a request body (a data URL inside a JSON call can be
any size), not the number of files in one upload (1000), not what a visitor sends over time nor its cache's
size, and it serves routes this app never uses (one writes any upload to TMPDIR for good). `RequestLimits` is
a plain ASGI middleware for the routes, bodies, uploads and budget; `PER_VISITOR` wraps the queue's admission;
`UPLOAD_PROGRESS` bounds Gradio's upload trackers; `visitor` says who the visitor is. Each reliance on
Gradio's internals is a guard `Patch`: where this Gradio is not as it expects, the app does not start.
Imports nothing from the project but `gradio_patches`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import inspect
import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import gradio
from gradio import blocks, processing_utils, queueing, route_utils, routes
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.datastructures import Headers
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request

from gradio_patches import Patch, lacks, not_coroutines, parameters, source_lacks

log = logging.getLogger("app.limits")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
Charge = Callable[[int, int], None]  # (bytes, files) a request's body adds to its visitor's spending

UPLOAD_PATH = "/gradio_api/upload"  # Gradio's upload route: the only one given the upload allowance
READ, POST = frozenset({"GET", "HEAD"}), frozenset({"POST"})
# The routes the page (Chromium, tests/browser), gradio_client (tests/code/test_app.py) and plain REST
# (docs/api.md) were seen to call, every request logged while their tests ran, and /cancel and /reset, which
# gradio_client calls for `Job.cancel()` and `reset_session()`; the PWA's manifest and icons, which Gradio
# serves on a Space. Every other route answers 404 before a byte of its body is read.
ROUTES = tuple(
    (methods, re.compile(pattern))
    for methods, pattern in (
        (READ, r"/|/config/?|/(assets|static)/.+|/(favicon\.ico|theme\.css|robots\.txt|manifest\.json)"),
        (READ, r"/pwa_icon(/\d+)?|/gradio_api/(info|startup-events|upload_progress|queue/data)/?"),
        (READ, r"/gradio_api/file=.+|/gradio_api/call/(v2/)?[^/]+/[^/]+"),
        (POST, r"/gradio_api/(upload|queue/join|cancel|reset)|/gradio_api/call/(v2/)?[^/]+/?"),
    )
)
DIRECT_RUN = re.compile(r"/gradio_api/(run|api)/[^/]+/?")  # Gradio's routes past the queue (api_open=False)


class Refused(MultiPartException):
    """A request refused: `status`, the sentence that says why, and any headers more (Retry-After). Raised
    from inside `receive` as the body streams in, it is the exception Gradio's multipart parser deletes every
    file it began for, so a refused upload leaves nothing behind."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = (), who: str = "") -> None:
        super().__init__(message)
        self.status, self.headers, self.who = status, headers, who  # `who`: the visitor, for the log only


class ClientGone(MultiPartException):
    """Raised from inside `receive` when the client leaves before its body ended. Gradio's multipart
    parser lets Starlette's own `ClientDisconnect` through, leaving the files it had begun and a traceback
    in the log; this one it cleans up after, and the route answers no one."""


class RequestLimits:
    """Every request held to the limits: a route the app does not use is refused (404) and a multipart body
    anywhere but the upload route (415) before a byte of the body is read; a body over `max_body` bytes, or
    on the upload route over `max_upload_body`, is refused (413) when declared or as it streams; the
    visitor's budget is charged as it streams (429 once spent); an upload's parts are checked as Gradio will
    read them (`UploadParts`) before Gradio writes them. The upload route is matched by its exact path."""

    def __init__(
        self,
        app: Callable,
        max_body: int,
        max_upload_body: int,
        max_files: int,
        trusted: int,
        budget: UploadBudget,
        cache: UploadCache,
    ) -> None:
        self.app, self.max_body, self.max_upload_body, self.max_files = app, max_body, max_upload_body, max_files
        self.trusted, self.budget, self.cache = trusted, budget, cache
        cache.keep_what_is_there()  # Starlette makes its middleware at the first request, once all is cached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            counter = self.admit(scope, Headers(scope=scope), receive)
        except Refused as refusal:
            return await refuse(send, refusal)
        try:
            await self.serve(scope, counter, send)
        finally:
            self.after(scope, counter)

    def admit(self, scope: Scope, headers: Headers, receive: Receive) -> BodyCounter:
        """What is decided before the body is read: the route, the body's form and declared size, and whether
        the visitor has budget left; the `receive` that holds the rest to the limits as it streams."""
        why = route_refusal(scope["method"], scope["path"])
        if why:
            raise Refused(404, why)
        upload, form = scope["path"] == UPLOAD_PATH, multipart_form(headers)
        if upload and not (form and form[0]):
            raise Refused(400, "An upload must be multipart/form-data with a boundary: nothing of it is kept.")
        if form and not upload:
            raise Refused(415, f"Only {UPLOAD_PATH} takes a multipart body.")
        limit = self.max_upload_body if upload else self.max_body
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise Refused(413, too_large(limit))
        if declared in ("", "0") and "transfer-encoding" not in headers:
            return BodyCounter(receive, limit, no_charge, None, has_body=False)
        charge = self.budget.open(visitor(Request(scope), self.trusted), int(declared or 0), upload)
        parts = UploadParts(*form, self.max_files, charge) if form else None
        return BodyCounter(receive, limit, charge, parts, has_body=True)

    async def serve(self, scope: Scope, counter: BodyCounter, send: Send) -> None:
        """Run the app; once the body is refused, whatever the app answers (it may call it a parse error) is
        replaced by the refusal that says why."""
        refused = False

        async def checked_send(message: dict) -> None:
            nonlocal refused
            if counter.refusal and not refused:
                refused = True
                await refuse(send, counter.refusal)
            elif not refused:
                await send(message)

        try:
            await self.app(scope, counter, checked_send)
        except Refused:
            if not refused:
                await refuse(send, counter.refusal)

    def after(self, scope: Scope, counter: BodyCounter) -> None:
        """A request is over, answered or cancelled: its upload's progress tracker goes
        (`BoundedUploadProgress`), and where its body could have filled the file cache, the cache is trimmed
        in a worker thread, which runs to its end whatever becomes of the request."""
        if scope["path"] == UPLOAD_PATH:
            for upload_id in parse_qs(scope.get("query_string", b"").decode("latin-1")).get("upload_id", []):
                routes.file_upload_statuses.upload_ended(upload_id)
        if self.cache.added(counter.seen):
            asyncio.get_running_loop().run_in_executor(None, self.cache.trim)


def route_refusal(method: str, path: str) -> str | None:
    """Why a request to this route is refused, or None where the app uses it (`ROUTES`)."""
    if any(method in methods and pattern.fullmatch(path) for methods, pattern in ROUTES):
        return None
    if DIRECT_RUN.fullmatch(path):  # Gradio's own sentence, which docs/api.md quotes
        return "This API endpoint does not accept direct HTTP POST requests. Please join the queue to use this API."
    return f"No such route: {method} {path[:200]}. The app's endpoints are listed at /gradio_api/info."


def no_charge(*_: Any) -> None:
    """The charge of a request without a body, or where the budget is lifted."""


class BodyCounter:
    """A `receive` that holds a body to its limits as it streams: its size (413), the visitor's budget (429,
    `charge`) and, for an upload, its parts (`parts`); a client that leaves before its body ended is
    `ClientGone`. The refusal, once there is one, is `refusal`."""

    def __init__(self, receive: Receive, limit: int, charge: Charge, parts: UploadParts | None, has_body: bool) -> None:
        self.receive, self.limit, self.charge, self.parts = receive, limit, charge, parts
        self.seen, self.refusal = 0, None
        self.ended = not has_body  # whether the body's last part came (a disconnect after it is the app's to see)

    async def __call__(self) -> dict:
        message = await self.receive()
        if message["type"] == "http.disconnect" and not self.ended:
            log.warning("a client left before its request's body ended (%d bytes); nothing of it is kept", self.seen)
            raise ClientGone("The client left before the request's body ended.")
        if message["type"] == "http.request":
            self.ended = not message.get("more_body", False)
            try:
                self.check(message.get("body", b""))
            except Refused as refusal:
                self.refusal = refusal
                raise
        return message

    def check(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        if self.seen > self.limit:
            raise Refused(413, too_large(self.limit))
        self.charge(len(chunk), 0)
        if self.parts:
            self.parts.feed(chunk, self.ended)


class UploadParts:
    """An upload's body read a second time as it streams, by the parser Gradio's own drives (python-multipart's
    `MultipartParser`, with the boundary and charset read from the same header the same way), so both see the
    same parts whatever the boundary's form or what comes before it. Every part must be a file named `files`
    that Gradio's upload route keeps: any other part Gradio wrote to disk and never listed, and a name it
    refuses (`..`) failed the upload after the parts before it were stored. At most `max_files`, each charged
    to the visitor; the body must reach its closing boundary (Gradio's parser kept the last part's file of
    one that does not). A part is refused as its headers end, before Gradio sees that chunk."""

    def __init__(self, boundary: bytes, charset: str, max_files: int, charge: Charge) -> None:
        self.charset, self.max_files, self.charge, self.files = charset, max_files, charge, 0
        self.field, self.value, self.disposition = b"", b"", b""
        callbacks = {
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }
        self.parser = MultipartParser(boundary, callbacks)

    def feed(self, chunk: bytes, last: bool) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as error:
            raise Refused(400, f"The upload is not well-formed multipart ({error}): nothing of it is kept.") from None
        if last and self.parser.state != MultipartState.END:
            raise Refused(400, "The upload ended before its closing boundary: nothing of it is kept.")

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        if self.field.lower() == b"content-disposition":  # the last one counts, as in Gradio's parser
            self.disposition = self.value
        self.field, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.disposition = b""
        name, filename = (options.get(key) for key in (b"name", b"filename"))
        if filename is None or name is None or route_utils._user_safe_decode(name, self.charset) != "files":
            raise Refused(400, "Every part of an upload must be a file named 'files': nothing of it is kept.")
        decoded = route_utils._user_safe_decode(filename, self.charset)
        if not gradio_stores(decoded):
            raise Refused(400, f"An uploaded file's name, {decoded[:100]!r}, is not one Gradio stores.")
        self.files += 1
        if self.files > self.max_files:
            raise Refused(413, f"At most {self.max_files} files per upload.")
        self.charge(0, 1)


def gradio_stores(filename: str) -> bool:
    """Whether Gradio's upload route stores a file of this name, by its own steps (`route_utils.upload_fn`):
    the name's last part, its dangerous characters stripped, joined safely to the upload folder."""
    name = route_utils.client_utils.strip_invalid_filename_characters(Path(filename).name) if filename else "tmp"
    try:
        route_utils.utils.safe_join(route_utils.DeveloperPath("upload"), route_utils.UserProvidedPath(name))
    except route_utils.InvalidPathError:
        return False
    return True


def multipart_form(headers: Headers) -> tuple[bytes, str] | None:
    """The boundary and charset exactly as Gradio's parser will read them: from the first Content-Type header
    (which Starlette's `Headers` returns), by python-multipart's own `parse_options_header`; None unless the
    body is multipart/form-data."""
    content_type, options = parse_options_header(headers.get("content-type"))
    if content_type != b"multipart/form-data":
        return None
    charset = options.get(b"charset", b"utf-8")
    return options.get(b"boundary", b""), charset.decode("latin-1")


def too_large(limit: int) -> str:
    return f"The request is too large: at most {limit / 1e6:.0f} MB."


async def refuse(send: Send, refusal: Refused) -> None:
    who = f" (ip:{refusal.who})" if refusal.who else ""
    log.warning("refused a request (%d): %s%s", refusal.status, refusal.message, who)
    body = json.dumps({"error": refusal.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers + list(refusal.headers)})
    await send({"type": "http.response.body", "body": body})


async def unknown_endpoint(request: Any, error: Exception) -> Any:
    """A call to an endpoint the app does not have: 404 and one log line, not a 500 with a traceback."""
    from starlette.responses import JSONResponse

    message = f"No such endpoint: {request.url.path.rsplit('/', 1)[-1]!r}; the app's endpoints are at /gradio_api/info."
    log.warning("refused a request (404): %s", message)
    return JSONResponse({"error": message}, status_code=404)


# --------------------------------------------------------------------------- what one visitor may send


class UploadBudget:
    """What one visitor may send in request bodies (`max_bytes`: uploads and data URLs alike, both end as
    files in Gradio's cache) and upload (`max_files`) per `window_s`; 0 lifts either. Gradio keeps every
    upload an hour with no bound on what one client sends, so one client could fill a Space's disk at
    network speed. Spending is kept per visitor in `SLICES` slices of the window, so what the ledger costs is
    bounded whatever the traffic; visitors with nothing in the window are forgotten."""

    SLICES = 20

    def __init__(self, max_bytes: int, max_files: int, window_s: int, clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.max_files, self.window_s, self.clock = max_bytes, max_files, window_s, clock
        self.slice_s = window_s / self.SLICES
        self.ledger: dict[str, deque[list[float]]] = {}  # visitor: [slice start, bytes, files], oldest first
        self.swept_at = clock()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> UploadBudget:
        """PETS_UPLOAD_MB_PER_VISITOR, PETS_UPLOAD_FILES_PER_VISITOR and PETS_UPLOAD_WINDOW_S (docs/operations.md)."""
        megabytes = setting(environ, "PETS_UPLOAD_MB_PER_VISITOR", 200)
        return cls(
            megabytes * 1_000_000,
            setting(environ, "PETS_UPLOAD_FILES_PER_VISITOR", 200),
            setting(environ, "PETS_UPLOAD_WINDOW_S", 600, least=1),
        )

    def open(self, key: str, declared: int, upload: bool) -> Charge:
        """Admit a request with a body from visitor `key`: refused (429) where its budget is spent or the body
        declares more than is left; else the charge its bytes and files go to as they stream in."""
        if not (self.max_bytes or self.max_files):
            return no_charge
        spent_bytes, spent_files = self.spent(key)
        if (self.max_bytes and spent_bytes + declared > self.max_bytes) or (upload and self.over(0, spent_files)):
            self.refuse(key)

        def charge(size: int, files: int) -> None:
            slices = self.ledger.setdefault(key, deque())
            now = self.slice_s * math.floor(self.clock() / self.slice_s)
            if not slices or slices[-1][0] != now:
                slices.append([now, 0, 0])
            slices[-1][1] += size
            slices[-1][2] += files
            if self.over(*self.spent(key)):
                self.refuse(key)

        return charge

    def over(self, size: float, files: float) -> bool:
        return bool((self.max_bytes and size > self.max_bytes) or (self.max_files and files > self.max_files))

    def spent(self, key: str) -> tuple[float, float]:
        """What visitor `key` sent within the window, its older slices dropped; once a slice, visitors with
        nothing left in the window are forgotten."""
        now = self.clock()
        horizon = now - self.window_s
        if now - self.swept_at > self.slice_s:
            self.swept_at = now
            for gone in [other for other, slices in self.ledger.items() if not slices or slices[-1][0] <= horizon]:
                del self.ledger[gone]
        slices = self.ledger.get(key, deque())
        while slices and slices[0][0] <= horizon:
            slices.popleft()
        if not slices:  # nothing left in the window: forgotten now, not left empty for the sweep
            self.ledger.pop(key, None)
        return sum(entry[1] for entry in slices), sum(entry[2] for entry in slices)

    def refuse(self, key: str) -> None:
        """429, with when the visitor's oldest spending leaves the window far enough for room again."""
        size, files = self.spent(key)
        wait = self.window_s
        for start, slice_bytes, slice_files in self.ledger.get(key, ()):
            size, files = size - slice_bytes, files - slice_files
            if not self.over(size + 1, files + 1):
                wait = start + self.window_s - self.clock()
                break
        seconds = max(1, math.ceil(wait))
        limits = ((self.max_bytes, f"{self.max_bytes / 1e6:.0f} MB"), (self.max_files, f"{self.max_files} files"))
        allowed = " and ".join(text for limit, text in limits if limit)
        message = f"Upload budget spent: at most {allowed} per visitor every {self.window_s} s."
        message += f" Try again in {seconds} s."
        raise Refused(429, message, ((b"retry-after", str(seconds).encode()),), who=key)


class UploadCache:
    """Gradio's file cache (uploads and results, `gradio.utils.get_upload_folder()`) held to `max_bytes`,
    oldest files first; 0 lifts it. Gradio deletes a file an hour after it was made, and an hour of uploads
    fills a disk. The files there at the app's first request (its examples and the Model tab's images,
    cached as the app starts) are never evicted, even where an upload of the same photo renews one. The
    folder is walked when what came in since the last walk could have taken it over the bound, or a minute
    has passed (results are written there too)."""

    WALK_EVERY_S = 60.0

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.kept: set[Path] = set()  # files never evicted: those there when the app first answered
        self.walked_at, self.estimate, self.walking = time.monotonic(), 0, False
        self.counting = threading.Lock()  # the estimate moves on the event loop and in the walking thread

    def keep_what_is_there(self) -> None:
        self.kept = {path for path, _ in file_stats(self.folder)}

    def added(self, size: int) -> bool:
        """Count `size` more bytes in; whether the cache is due a walk (and now taken to be walking)."""
        with self.counting:
            self.estimate += size
        due = self.estimate > self.max_bytes or time.monotonic() - self.walked_at > self.WALK_EVERY_S
        if not self.max_bytes or self.walking or not due:
            return False
        self.walking = True
        return True

    def trim(self) -> None:
        """Walk the folder and delete its oldest files, but the kept ones, until it holds at most `max_bytes`;
        again where what came in during the walk takes it over (not where only files from before start do)."""
        try:
            while True:
                counted = self.estimate  # what came in before this walk, which the walk sees
                total = self.walk()
                with self.counting:
                    self.estimate += total - counted  # what came in during the walk stays counted
                self.walked_at = time.monotonic()
                if self.estimate <= self.max_bytes or self.estimate == total:
                    return
        finally:
            self.walking = False

    def walk(self) -> int:
        """One walk: the oldest files but the kept ones deleted while the folder is over `max_bytes`; its total."""
        files = sorted((stat.st_mtime, stat.st_size, path) for path, stat in file_stats(self.folder))
        total, evicted = sum(size for _, size, _ in files), 0
        for _, size, path in files:
            if total <= self.max_bytes:
                break
            if path not in self.kept:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
                    if path.parent != self.folder:
                        path.parent.rmdir()  # Gradio's folder of one upload, where it is now empty
                total, evicted = total - size, evicted + 1
        if evicted:
            log.warning("the file cache was over %.0f MB: its %d oldest files went", self.max_bytes / 1e6, evicted)
        return total


def file_stats(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """Every file under `folder` with its stat; one that goes while it is walked is left out."""
    found = []
    for path in folder.rglob("*"):
        try:
            stat = path.stat()
        except OSError:
            continue
        if path.is_file():
            found.append((path, stat))
    return found


def setting(environ: Mapping[str, str], name: str, default: int, least: int = 0) -> int:
    """A whole-number setting, or the app does not start, with a sentence that names it."""
    value = environ.get(name, str(default))
    if not value.strip().isdigit() or int(value) < least:
        raise SystemExit(f"{name} must be a whole number of at least {least}, got {value!r}.")
    return int(value)


def request_limits(max_body: int, max_files: int, trusted: int, environ: Mapping[str, str] = os.environ) -> Middleware:
    """The middleware that holds every request to the limits, its settings read from `environ`; the guards it
    relies on are checked first, and the app does not start without them."""
    UPLOAD_PARSING.apply()
    UPLOAD_PROGRESS.apply()
    NO_URL_FETCH.apply()
    cache_mb = setting(environ, "PETS_UPLOAD_CACHE_MB", 2000)
    return Middleware(
        RequestLimits,
        max_body=max_body,
        max_upload_body=max_files * max_body,
        max_files=max_files,
        trusted=trusted,
        budget=UploadBudget.from_environ(environ),
        cache=UploadCache(Path(route_utils.utils.get_upload_folder()), cache_mb * 1_000_000),
    )


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
    passed fewer proxies than that is its peer's. The address is then `address_key`'s."""
    peer = request.client.host if request.client else "unknown"
    if not trusted:
        return address_key(peer)
    entries = [entry.strip() for value in request.headers.getlist("x-forwarded-for") for entry in value.split(",")]
    return address_key(entries[-trusted] if len(entries) >= trusted and entries[-trusted] else peer)


def address_key(address: str) -> str:
    """One visitor's key for an address: its port dropped (`1.2.3.4:5678`, `[2001:db8::1]:443`, as some
    proxies write it), an IPv4-mapped IPv6 address as IPv4, and any other IPv6 address as its /64: one
    subscriber's network, which an ISP hands out whole (RFC 6177), so its 2^64 addresses are one visitor.
    Anything else is kept as written."""
    host = address.strip()
    if host.startswith("[") and "]" in host:
        host = host[1 : host.index("]")]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host.lower()
    if ip.version == 6 and ip.ipv4_mapped:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)


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


PER_VISITOR = Patch("requests per visitor", _per_visitor_problem, _install_per_visitor, guard=True)


# --------------------------------------------------------------------------- Gradio's upload route

_FileUploadProgress: type = getattr(route_utils, "FileUploadProgress", object)  # the check below refuses `object`


class BoundedUploadProgress(_FileUploadProgress):
    """Gradio's upload progress trackers, kept only while an upload is in flight or its progress is read.
    Gradio made one for every new `upload_id` (and an event for every id asked about) and dropped it only
    once a reader saw it done: 3000 uploads with new ids held 4.3 MB for good, and a reader of a failed
    upload waited for ever."""

    def __init__(self) -> None:
        super().__init__()
        self._read: set[str] = set()  # ids whose progress a reader asked for

    async def is_tracked(self, upload_id: str) -> bool:
        self._read.add(upload_id)
        try:
            return await super().is_tracked(upload_id)
        finally:
            if upload_id not in self._statuses:  # the reader gave up waiting: nothing to keep
                self.stop_tracking(upload_id)

    def stop_tracking(self, upload_id: str) -> None:
        super().stop_tracking(upload_id)
        self._signals.pop(upload_id, None)
        self._read.discard(upload_id)

    def upload_ended(self, upload_id: str) -> None:
        """The upload's request is over, whatever its outcome: a reader is told it is done (and stops
        tracking it), else the tracker goes now."""
        if upload_id in self._read and upload_id in self._statuses:
            self.set_done(upload_id)
        else:
            self.stop_tracking(upload_id)


def _upload_progress_problem() -> str | None:
    """BoundedUploadProgress relies on: the routes reading the module's `file_upload_statuses` by name, and a
    FileUploadProgress keeping its trackers in `_statuses` and its events in `_signals`."""
    if isinstance(getattr(routes, "file_upload_statuses", None), BoundedUploadProgress):
        return None  # installed by an earlier launch in this process
    if _FileUploadProgress is object or type(getattr(routes, "file_upload_statuses", None)) is not _FileUploadProgress:
        return "gradio.routes.file_upload_statuses is not the FileUploadProgress this module was built on"
    fresh = _FileUploadProgress()
    return (
        lacks(fresh, "_statuses", "_signals", "track", "set_done", "stop_tracking")
        or not_coroutines(fresh, "is_tracked")
        or source_lacks(routes.App.create_app, "upload_progress=file_upload_statuses if upload_id else None")
    )


def _install_upload_progress() -> None:
    routes.file_upload_statuses = BoundedUploadProgress()


UPLOAD_PROGRESS = Patch("bounded upload trackers", _upload_progress_problem, _install_upload_progress, guard=True)


def _upload_parsing_problem() -> str | None:
    """`RequestLimits` relies on Gradio's upload route keeping the `files` parts by the names
    `gradio_stores` gives, from a parser built on python-multipart's `MultipartParser` that deletes every
    file it began when the stream raises a MultiPartException (`Refused`, `ClientGone`)."""
    problem = lacks(route_utils, "upload_fn", "GradioMultiPartParser", "_user_safe_decode", "DeveloperPath")
    problem = problem or lacks(route_utils, "UserProvidedPath", "InvalidPathError", "client_utils", "utils")
    if problem:
        return problem
    if route_utils.MultiPartException is not MultiPartException or route_utils.MultipartParser is not MultipartParser:
        return "gradio.route_utils parses with another MultiPartException or MultipartParser"
    return source_lacks(
        route_utils.upload_fn, 'form.getlist("files")', "strip_invalid_filename_characters(file_name)", "safe_join("
    ) or source_lacks(
        route_utils.GradioMultiPartParser.parse,
        "MultipartParser(boundary, callbacks)",
        "except (MultiPartException, MultipartParseError)",
        "Path(file.name).unlink()",
    )


UPLOAD_PARSING = Patch("upload parts checked as Gradio reads them", _upload_parsing_problem, lambda: None, guard=True)


# --------------------------------------------------------------------------- files given by URL

URL_REFUSED = (
    "This Space does not fetch files from URLs: send the photo itself (an upload, or gradio_client's "
    "handle_file with a local path)."
)


async def refuse_url_download(url: str, cache_dir: str) -> str:
    """In place of Gradio's fetch of a file a call names by an http(s) URL: Gradio downloads it whole, with
    no bound on its size and outside every visitor's budget (the call itself is a few bytes), so one call
    could fill the memory or the disk. The app takes files only as uploads, which the limits count."""
    log.warning("refused a request: a file given by URL (%.80s)", url)
    raise gradio.Error(URL_REFUSED, print_exception=False)


def _url_fetch_problem() -> str | None:
    """Every fetch of a file given by URL goes through `processing_utils.async_ssrf_protected_download`,
    looked up by name when called: the block cache's and the synchronous fetch's."""
    if processing_utils.async_ssrf_protected_download is refuse_url_download:
        return None  # installed by an earlier launch in this process
    return (
        lacks(processing_utils, "async_ssrf_protected_download", "ssrf_protected_download")
        or not_coroutines(processing_utils, "async_ssrf_protected_download")
        or source_lacks(blocks.Block.async_move_resource_to_block_cache, "async_ssrf_protected_download(")
        or source_lacks(processing_utils.ssrf_protected_download, "async_ssrf_protected_download")
    )


def _install_url_refusal() -> None:
    processing_utils.async_ssrf_protected_download = refuse_url_download


NO_URL_FETCH = Patch("no file fetched from a URL", _url_fetch_problem, _install_url_refusal, guard=True)


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
