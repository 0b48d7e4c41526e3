"""How `app.launch` serves, checked on the running server: the bound on Gradio's sessions (every plain REST
call is a new one; bench/load.py measures the effect on memory) and what each costs, the upload limit, no
share link; each patch on Gradio's internals active, the app serving with Gradio's own behaviour where a
patch's target is not as expected, and a second launch in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bench.common import free_port, rest_call, running_app
from tests.conftest import CHELSEA, REPO


@pytest.fixture(scope="module")
def app_in_process():
    """The real app, served in this process so its session store can be inspected."""
    import app

    port = free_port()
    app.launch(server_port=port, prevent_thread_lock=True)
    yield app, f"http://127.0.0.1:{port}/"
    app.demo.close()


def test_rest_sessions_beyond_the_capacity_are_evicted(app_in_process) -> None:
    app, url = app_in_process
    sessions = app.demo.server_app.state_holder.session_data
    assert app.demo.state_session_capacity == app.SESSION_CAPACITY
    with httpx.Client(timeout=30) as http:
        for _ in range(app.SESSION_CAPACITY + 5):
            rest_call(http, url, "grayscale", CHELSEA, inline=True)
    assert len(sessions) == app.SESSION_CAPACITY  # five were evicted, oldest first


def test_a_rest_call_makes_no_config_it_does_not_use(app_in_process) -> None:
    """Every REST call is a new session; its state makes only the configs it touches (Gradio's own made all
    64 each time), and a deep link still sees every component as Gradio would have made it."""
    import gradio_patches

    gradios_own = gradio_patches.LazySessionState.__base__  # gradio.state_holder.SessionState, before launch

    app, url = app_in_process
    with httpx.Client(timeout=30) as http:
        rest_call(http, url, "predict", CHELSEA, inline=True)
    session = next(reversed(app.demo.server_app.state_holder.session_data.values()))
    assert isinstance(session, gradio_patches.LazySessionState)
    assert set(session.config_values) == {app.photo._id, app.breeds._id}  # the photo it read, the label it set
    eager, lazy = gradios_own(app.demo), gradio_patches.LazySessionState(app.demo)
    assert not lazy.config_values and len(eager.config_values) == len(app.demo.blocks)
    assert list(lazy.components) == list(eager.components)
    assert {c["id"] for c in session.components} == {c["id"] for c in eager.components}


def test_no_share_link_no_debug_and_the_upload_limit(app_in_process) -> None:
    app, url = app_in_process
    assert app.demo.share is False and app.demo.share_url is None and not app.demo.show_error
    config = httpx.get(url + "config", timeout=10).json()
    assert config["max_file_size"] == 20 * 1024 * 1024


def test_gradio_analytics_are_off_unless_the_user_opts_in() -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "import app, gradio.analytics as a; print(a.analytics_enabled())"
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_ANALYTICS_ENABLED"}
    for extra, expected in (({}, "False"), ({"GRADIO_ANALYTICS_ENABLED": "True"}, "True")):
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env | extra, capture_output=True, text=True)
        assert done.stdout.split() == [expected], done.stderr[-500:]


def test_the_idle_queue_sleeps_until_an_event_comes(app_in_process, monkeypatch) -> None:
    """Gradio's queue loop looked for work every millisecond (a tenth of a core, idle, on 2 cores). Now it
    sleeps until an event is pushed or a job ends: with the fallback wake-up pushed out to a minute, calls
    are still answered at once (a missed wake-up would hang them past the client's timeout). Another
    loop's sleep of the same length stays asyncio's."""
    import asyncio
    import time

    from gradio import queueing

    import gradio_patches

    app, url = app_in_process
    queue, sleeps = app.demo._queue, []
    wake_on_events = queueing.asyncio.sleep

    async def counted(delay: float, result: object = None) -> object:
        sleeps.append(delay)
        return await wake_on_events(delay, result)

    monkeypatch.setattr(queueing.asyncio, "sleep", counted)
    monkeypatch.setattr(gradio_patches, "QUEUE_FALLBACK_WAKE_S", 60.0)
    with httpx.Client(timeout=20) as http:
        for _ in range(3):
            assert rest_call(http, url, "grayscale", CHELSEA, inline=True)[0]["path"]
    time.sleep(1.0)  # idle: Gradio's own loop would have looked a thousand times
    assert sleeps.count(queue.sleep_when_free) <= 12, len(sleeps)
    started = time.perf_counter()
    asyncio.run(queueing.asyncio.sleep(queue.sleep_when_free))  # not the app's queue loop: asyncio's own
    assert time.perf_counter() - started < 0.5  # not the minute a loop waiting for an event would take


def test_every_patch_finds_its_target_as_expected_in_this_gradio() -> None:
    """Checked on a queue and a session store no patch has touched: a Gradio upgrade that moves a target
    turns its patch off (and the app warns), and fails here."""
    import gradio as gr

    import gradio_patches
    import limits

    with gr.Blocks() as fresh:
        gr.Button().click(lambda: None, api_name="nothing")
    fresh.queue()
    assert gradio_patches.QUEUE_WAKE_UP.problem(fresh._queue) is None
    assert limits.PER_VISITOR.problem(fresh._queue, 4, 0) is None
    assert gradio_patches.LAZY_SESSIONS.problem() is None
    assert limits.UPLOAD_PARSING.problem() is None and limits.UPLOAD_PROGRESS.problem() is None


def test_an_upload_tracker_lives_only_while_its_upload_is_in_flight_or_read(app_in_process) -> None:
    """Gradio kept a progress tracker for every upload with an `upload_id` and an event for every id asked
    about: here none is left once the uploads are over, and a reader that asked before its upload began, as
    the page does, is still told it is done; an id never uploaded is 404 once the wait is over."""
    import threading

    from gradio import routes

    _, url = app_in_process
    progress, lines = routes.file_upload_statuses, []
    with httpx.Client(timeout=30) as http:

        def upload(upload_id: str, size: int = 10) -> int:
            files = {"files": ("a.bin", os.urandom(size))}
            return http.post(url + "gradio_api/upload", params={"upload_id": upload_id}, files=files).status_code

        def read() -> None:
            with http.stream("GET", url + "gradio_api/upload_progress", params={"upload_id": "read"}) as stream:
                lines.extend(line for line in stream.iter_lines() if line)

        assert [upload(f"plain{n}") for n in range(20)] == [200] * 20
        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.3)  # the reader waits for its upload to begin
        assert upload("read", 2_000_000) == 200
        reader.join(timeout=10)
        assert http.get(url + "gradio_api/upload_progress", params={"upload_id": "never"}).status_code == 404
    assert not reader.is_alive() and '"msg": "done"' in lines[-1], lines
    assert not progress._statuses and not progress._signals and not progress._read


GUARD_TARGETS = {  # a sitecustomize that moves one guard's target, as a Gradio upgrade might: the guard's name
    "requests per visitor": "from gradio import queueing\n\n\nasync def push(self, body, request):\n    pass\n\n\n"
    "queueing.Queue.push = push\n",
    "upload parts checked as Gradio reads them": "from gradio import route_utils\n\nuploaded = route_utils.upload_fn\n"
    "route_utils.upload_fn = lambda *args, **kwargs: uploaded(*args, **kwargs)\n",
    "bounded upload trackers": "from gradio import routes\n\nroutes.file_upload_statuses = object()\n",
}


@pytest.mark.parametrize("guard", sorted(GUARD_TARGETS))
def test_a_guard_whose_target_moved_stops_the_start_in_one_sentence(tmp_path: Path, guard: str) -> None:
    """A limit the app cannot install on this Gradio: `python app.py` exits 1 before serving, its last line one
    sentence that names the limit, no traceback (a tuning patch, above, only warns)."""
    (tmp_path / "sitecustomize.py").write_text(GUARD_TARGETS[guard])
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": path, "GRADIO_SERVER_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert last.startswith(f"The app does not start: its limit {guard!r} cannot be installed"), last
    assert "Running on" not in done.stdout


def test_a_check_that_cannot_look_turns_its_patch_off_with_one_line(monkeypatch, caplog) -> None:
    """A Gradio whose queue module no longer has the name a check reads (it imports `sleep` from asyncio, say):
    the patch is off with one warning line, the queue untouched, where the check's AttributeError stopped the app."""
    import gradio as gr
    from gradio import queueing

    import gradio_patches

    with gr.Blocks() as fresh:
        gr.Button().click(lambda: None, api_name="nothing")
    fresh.queue()
    push = fresh._queue.push
    monkeypatch.delattr(queueing, "asyncio")
    with caplog.at_level("WARNING", logger="app.gradio_patches"):
        assert gradio_patches.QUEUE_WAKE_UP.apply(fresh._queue) is False
    assert fresh._queue.push == push and not hasattr(queueing, "asyncio")
    [line] = [record.getMessage() for record in caplog.records]
    assert "'queue wakes on events' is off" in line and "AttributeError" in line, line


CHANGED_GRADIO = """
from gradio import queueing, state_holder

del state_holder.SessionState.components  # a target gone
original = queueing.Queue.start_processing


async def start_processing(self):  # a target changed: its idle sleep is no longer its own code
    await original(self)


queueing.Queue.start_processing = start_processing
"""


def test_the_app_serves_with_gradios_own_behaviour_where_a_target_is_not_as_expected(tmp_path: Path) -> None:
    """A Gradio whose session state lacks `components` and whose queue loop is not the code the wake-up
    patch expects (changed at start-up by a sitecustomize): the app starts, says in one warning line each
    which patch is off, and answers."""
    (tmp_path / "sitecustomize.py").write_text(CHANGED_GRADIO)
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    with running_app({"PYTHONPATH": path}) as (url, process), httpx.Client(timeout=30) as http:
        assert rest_call(http, url, "predict", CHELSEA)[0]["confidences"]
        log = process.log.read_text()
    warnings = [line for line in log.splitlines() if "Gradio patch" in line]
    assert len(warnings) == 2 and "Traceback" not in log, log[-2000:]
    assert "'lazy session configs' is off" in warnings[0] + warnings[1]
    assert "'queue wakes on events' is off" in warnings[0] + warnings[1]


TWO_LAUNCHES = """
import json, os, sys
import httpx
from bench.common import free_port, listens_on, rest_call
from tests.conftest import CHELSEA
import app

answers = []
for _ in range(2):
    port = free_port()
    app.launch(server_port=port, prevent_thread_lock=True)
    assert listens_on(os.getpid(), port), "another process answers on the port"
    with httpx.Client(timeout=20) as http:
        answers.append(rest_call(http, f"http://127.0.0.1:{port}/", "predict", CHELSEA)[0]["label"])
    app.demo.close()
print(json.dumps(answers))
"""


def test_a_second_launch_in_one_process_serves() -> None:
    """The queue's wake-up is made in the event loop it serves: a second `launch()` (a new server, a new
    loop) gets its own, where a wake-up bound to the first loop hung the queue."""
    done = subprocess.run([sys.executable, "-c", TWO_LAUNCHES], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = json.loads(done.stdout.strip().splitlines()[-1])
    assert first == second and first
