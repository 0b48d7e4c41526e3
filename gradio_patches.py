"""Gradio tuning: changes to Gradio's internals that cut what it costs per call and while idle, kept apart
from the app's limits (limits.py, which guards its own change to the queue with the `Patch` here).

Gradio changes fast and these reach inside it, so each `Patch` first checks that what it replaces is there
and as it expects; where it is not, a tuning patch is off (the app serves with Gradio's own behaviour and the
log says in one warning line which patch and why), and a guard (`guard=True`, limits.py's) stops the app at
start with one sentence: serving without a limit is worse than not serving. Imports nothing from the project.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import gradio
from gradio import queueing, state_holder

log = logging.getLogger("app.gradio_patches")


@dataclass(frozen=True)
class Patch:
    """One change to Gradio: `problem` says what in Gradio is not as the change expects (None when all
    is), `install` makes it. Both take the same arguments. A `guard` is a limit the app must not serve
    without."""

    name: str
    problem: Callable[..., str | None]
    install: Callable[..., None]
    guard: bool = False

    def apply(self, *args: Any) -> bool:
        """Install the change where Gradio is as expected; else, for a guard, stop the app with one sentence
        (SystemExit: no traceback), and for a tuning patch one warning line and Gradio's own way. A check
        that cannot even look (a name it reads is gone) is a problem too."""
        try:
            problem = self.problem(*args)
        except Exception as error:
            problem = f"its check failed ({type(error).__name__}: {error})"
        if problem and self.guard:
            raise SystemExit(
                f"The app does not start: its limit {self.name!r} cannot be installed on gradio "
                f"{gradio.__version__} ({problem}); keep the Gradio version in requirements.txt or update limits.py."
            )
        if problem:
            log.warning(
                "Gradio patch %r is off (gradio %s): %s; Gradio's own behaviour serves",
                self.name,
                gradio.__version__,
                problem,
            )
            return False
        self.install(*args)
        return True


def lacks(owner: Any, *names: str) -> str | None:
    """What `owner` lacks of `names`, as a problem, or None."""
    absent = [name for name in names if not hasattr(owner, name)]
    return f"{getattr(owner, '__name__', type(owner).__name__)} has no {', '.join(absent)}" if absent else None


def not_coroutines(owner: Any, *names: str) -> str | None:
    """Which of `names` on `owner` are not async functions, as a problem, or None."""
    plain = [name for name in names if not inspect.iscoroutinefunction(getattr(owner, name, None))]
    return f"{', '.join(plain)} {'is' if len(plain) == 1 else 'are'} not async" if plain else None


def source_lacks(function: Callable, *fragments: str) -> str | None:
    """Which of `fragments` of code `function` no longer contains, as a problem, or None."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return f"the source of {function.__qualname__} cannot be read"
    absent = [fragment for fragment in fragments if fragment not in source]
    return f"{function.__qualname__} no longer has {absent[0]!r}" if absent else None


def parameters(function: Callable) -> list[str]:
    return list(inspect.signature(function).parameters)


# --------------------------------------------------------------------------- sessions

_SessionState: type = getattr(state_holder, "SessionState", object)  # the check below refuses `object`


class LazySessionState(_SessionState):
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


def _sessions_problem() -> str | None:
    """LazySessionState relies on: the store making sessions by the module's name `SessionState(blocks)`,
    sessions that fill `config_values` from `blocks_config.config_for_block`, and `components`."""
    current = getattr(state_holder, "SessionState", None)
    if current is LazySessionState:
        return None  # installed by an earlier launch in this process
    if current is None or current is not _SessionState:
        return "gradio.state_holder.SessionState is not the class this module was built on"
    if not isinstance(inspect.getattr_static(current, "components", None), property):
        return "SessionState has no `components` property"
    if parameters(current.__init__) != ["self", "blocks"]:
        return f"SessionState takes {parameters(current.__init__)}, not (self, blocks)"
    return source_lacks(current.__init__, "self.config_values", "config_for_block") or source_lacks(
        state_holder.StateHolder.__getitem__, "SessionState(self.blocks)"
    )


def _install_sessions() -> None:
    state_holder.SessionState = LazySessionState


LAZY_SESSIONS = Patch("lazy session configs", _sessions_problem, _install_sessions)


# --------------------------------------------------------------------------- the queue's wake-ups

QUEUE_FALLBACK_WAKE_S = 1.0  # the longest the queue sleeps with nothing said: a safety net, not a poll
# The wake-up of the queue loop running in this task, if the patch started it; other tasks (another app's
# queue in the same process, say) see None and sleep as Gradio meant.
_QUEUE_WAKE_UP: contextvars.ContextVar[SimpleNamespace | None] = contextvars.ContextVar("queue_wake_up", default=None)


def _wake_up_problem(queue: Any) -> str | None:
    """The patch relies on: the queue module calling `asyncio.sleep` through its module name `asyncio`,
    the loop's idle sleep being `asyncio.sleep(self.sleep_when_free)`, and the three async methods it wraps."""
    if queueing.asyncio is not asyncio and getattr(queueing.asyncio, "sleep", None) is not _sleep_until_woken:
        return "gradio.queueing.asyncio is not the asyncio module"
    return (
        lacks(queue, "sleep_when_free", "progress_update_sleep_when_free")
        or not_coroutines(queue, "push", "process_events", "start_processing")
        or source_lacks(type(queue).start_processing, "asyncio.sleep(self.sleep_when_free)")
    )


def _install_wake_up(queue: Any) -> None:
    """Gradio's queue loop sleeps a millisecond (`sleep_when_free`) whenever it has nothing it can start,
    and its progress loop ten: on 2 cores an idle app spent a tenth of a core waking up, and under load
    the wake-ups preempt ONNX Runtime's threads. Here the queue loop's sleep ends when an event is pushed
    or a job ends (the only things that let it start one), and at the latest after QUEUE_FALLBACK_WAKE_S;
    the progress loop looks every 0.1 s (this app reports no progress). Gradio's loop itself is unchanged:
    only the `asyncio.sleep` its module calls is `_sleep_until_woken`. The wake-up's event is made each
    time the loop starts, in the event loop it runs in: a second `launch()` in one process gets its own."""
    running = SimpleNamespace(wake_up=None)  # the wake-up of the queue loop now running
    idle_sleep = queue.sleep_when_free
    push, process_events, start_processing = queue.push, queue.process_events, queue.start_processing

    def wake() -> None:
        if running.wake_up is not None:
            running.wake_up.event.set()

    async def pushed(*args: Any, **kwargs: Any) -> Any:
        try:
            return await push(*args, **kwargs)
        finally:
            wake()

    async def processed(*args: Any, **kwargs: Any) -> Any:
        try:
            return await process_events(*args, **kwargs)
        finally:
            wake()

    async def processing() -> None:
        running.wake_up = SimpleNamespace(event=asyncio.Event(), idle_sleep=idle_sleep)
        _QUEUE_WAKE_UP.set(running.wake_up)  # in this task's context only: the loop's own sleeps see it
        await start_processing()

    queue.push, queue.process_events, queue.start_processing = pushed, processed, processing
    queue.progress_update_sleep_when_free = 0.1
    queueing.asyncio = SimpleNamespace(**(vars(asyncio) | {"sleep": _sleep_until_woken}))


async def _sleep_until_woken(delay: float, result: Any = None) -> Any:
    """`asyncio.sleep` as Gradio's queue module sees it: the idle sleep of a loop the patch started lasts
    until something happened (at once if it did since the loop last looked); any other sleep is asyncio's."""
    wake_up = _QUEUE_WAKE_UP.get()
    if wake_up is None or delay != wake_up.idle_sleep:
        return await asyncio.sleep(delay, result)
    if not wake_up.event.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake_up.event.wait(), QUEUE_FALLBACK_WAKE_S)
    wake_up.event.clear()  # the loop looks at the queue right after this returns
    return result


QUEUE_WAKE_UP = Patch("queue wakes on events", _wake_up_problem, _install_wake_up)
