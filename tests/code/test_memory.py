"""Memory under plain REST traffic: every call is a new Gradio session, and the app bounds how many
sessions Gradio keeps (bench/load.py measures the effect on resident memory)."""

from __future__ import annotations

import httpx
import pytest

from bench.common import free_port, rest_call
from tests.conftest import CHELSEA


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
