"""Uploads that cannot fill the disk (issue 36), on the live server: every form of an upload that is not all
`files` parts is refused and leaves nothing, in Gradio's folder or in TMPDIR; a visitor over its upload budget
is refused with when to retry while another is served; Gradio's file cache is held to its bound, oldest files
first; the budget's ledger, by a clock of the test's."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import limits
from bench.abuse import call, client_from, disk_bytes, files_under, upload_flood, upload_forms, upload_outcome
from bench.common import running_app

BUDGET_MB, BUDGET_FILES, CACHE_MB = 20, 100, 40
EXPECTED = {  # each form of upload_forms(): its status; only the 200 stores its parts (3)
    "40 files, empty boundary": 400,
    "a 100 KB part, empty boundary, unclosed": 400,
    "no boundary": 400,
    "two 2 MB parts not named files": 400,
    "a field, not a file": 400,
    "a part named '..' after a good one": 400,
    "33 files after a leading CRLF": 413,
    "3 files after a leading CRLF": 200,
    "a multipart body to /call/predict": 415,
    "a 2 MB part to /process_recording": 404,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Gradio's folder (GRADIO_TEMP_DIR) and the app's TMPDIR."""
    return tmp_path_factory.mktemp("gradio"), tmp_path_factory.mktemp("tmp")


@pytest.fixture(scope="module")
def app(folders: tuple[Path, Path]) -> Iterator[tuple[str, Path, set[Path]]]:
    """The app with a small upload budget (20 MB and 100 files a visitor every 10 minutes) and file cache
    (40 MB), so both are reached in seconds; each test sends from addresses of its own. Its URL, its log and
    the files in Gradio's folder when it first answered (the examples, cached at start)."""
    gradio, temp = folders
    env = {"GRADIO_TEMP_DIR": str(gradio), "TMPDIR": str(temp), "PETS_UPLOAD_CACHE_MB": str(CACHE_MB)}
    env |= {"PETS_UPLOAD_MB_PER_VISITOR": str(BUDGET_MB), "PETS_UPLOAD_FILES_PER_VISITOR": str(BUDGET_FILES)}
    with running_app(env) as (url, process):
        yield url, process.log, files_under(gradio)


@pytest.mark.parametrize("form", sorted(EXPECTED))
def test_an_upload_not_all_files_parts_is_refused_and_leaves_nothing(app, folders, form: str) -> None:
    """The review's uploads (files left for good, or past the file count) and the other forms: 4xx and no file
    in Gradio's folder or TMPDIR; the same parts after a leading CRLF, stored (200) and counted."""
    url, log, _ = app
    path, content_type, body = upload_forms()[form]
    before = log.read_text()
    outcome = upload_outcome(url, folders[0], [("content-type", content_type)], body, path, folders[1])
    assert outcome == {"status": EXPECTED[form], "files_left": 3 if EXPECTED[form] == 200 else 0}, outcome
    written = log.read_text()[len(before) :]
    assert "Traceback" not in written and written.count("refused a request") == (EXPECTED[form] != 200), written


def test_a_visitor_over_its_budget_is_told_when_to_retry_while_another_is_served(app, folders) -> None:
    """One visitor uploads 1 MB files from 4 threads as fast as it is answered for 8 s: Gradio's folder grows
    by its 20 MB at most (the rest refused, 429), while a second visitor uploads and calls /predict once a
    second, every time answered; the refusal says, and Retry-After says, when there is room again."""
    url, _, _ = app
    outcome = upload_flood(url, folders[0], seconds=8, source="127.0.0.5")
    assert outcome["flood"].get("429", 0) > 0 and outcome["flood"].get("200", 0) <= BUDGET_MB, outcome
    assert outcome["most_disk_growth_mb"] <= BUDGET_MB + 0.1, outcome  # + the second visitor's 21 KB photo
    other = outcome["second_visitor"]
    assert other["calls"] >= 4 and other["uploaded"] == other["answered"] == other["calls"], other
    with client_from("127.0.0.5") as http:  # a file the size of the flood's: the flood's 429 says it cannot fit
        refused = http.post(url + "gradio_api/upload", files={"files": ("f.bin", bytes(1_000_000))})
    assert refused.status_code == 429, refused.text
    wait = int(re.search(r"Try again in (\d+) s\.", refused.json()["error"]).group(1))
    assert 500 <= wait <= 600 and refused.headers["retry-after"] == str(wait)


@pytest.mark.parametrize("api", ["predict", "predict_batch"])
def test_a_file_given_by_url_is_refused_and_never_fetched(app, folders, api: str) -> None:
    """Gradio fetches a file a call names by URL, whole, outside every budget (the call is a few bytes):
    refused with what to send instead, one log line, nothing made in Gradio's folder."""
    url, log, _ = app
    given = {"path": "https://huggingface.co/datasets/x/resolve/main/huge.jpg", "meta": {"_type": "gradio.FileData"}}
    before, folders_before, written = files_under(folders[0]), set(folders[0].rglob("*")), log.read_text()
    with client_from("127.0.0.9") as http:
        kind, text = call(http, url, api, [given if api == "predict" else [given]])
    assert kind == "error" and "does not fetch files from URLs" in text, (kind, text)
    assert files_under(folders[0]) == before and set(folders[0].rglob("*")) == folders_before
    said = log.read_text()[len(written) :]
    assert said.count("refused a request: a file given by URL") == 1 and "Traceback" not in said, said


def test_the_file_cache_is_held_to_its_bound_oldest_first(app, folders) -> None:
    """Three visitors upload 18 MB each, within their budgets, into a 40 MB cache: it ends within 40 MB,
    the files uploaded first went first, and the examples the app cached at start stay."""
    url, _, at_start = app
    stored = []
    for address in ("127.0.0.6", "127.0.0.7", "127.0.0.8"):
        with client_from(address) as http:
            for _ in range(18):
                data = secrets.token_bytes(16) + bytes(1_000_000 - 16)
                stored.append(Path(http.post(url + "gradio_api/upload", files={"files": ("f.bin", data)}).json()[0]))
    time.sleep(1.0)  # the last walk runs in a worker thread after the answer
    kept = [path.exists() for path in stored]
    assert disk_bytes(folders[0]) <= CACHE_MB * 1_000_000 and kept[-1] and not kept[0], kept
    assert kept == sorted(kept)  # all that went came before all that stayed
    assert not any(path.parent.exists() for path, there in zip(stored, kept, strict=True) if not there)  # no husks
    assert at_start and all(path.exists() for path in at_start)


def test_the_budget_says_when_there_is_room_again_and_forgets_idle_visitors() -> None:
    """10 MB every 100 s: 6 MB, then 5 MB 50 s later is refused, told to wait the 50 s until the 6 MB leave
    the window; a spent visitor is refused before a byte is read, another is not; after the window, room
    again; a visitor with nothing left in the window is forgotten; 0 and 0 lift the budget."""
    now = [1000.0]
    budget = limits.UploadBudget(10_000_000, 0, 100, clock=lambda: now[0])
    budget.open("a", 0, upload=True)(6_000_000, 0)
    now[0] += 50
    with pytest.raises(limits.Refused) as refused:
        budget.open("a", 0, upload=True)(5_000_000, 0)
    assert refused.value.status == 429 and "Try again in 50 s." in refused.value.message
    assert (b"retry-after", b"50") in refused.value.headers
    with pytest.raises(limits.Refused):
        budget.open("a", 1, upload=False)
    budget.open("b", 9_000_000, upload=True)
    now[0] += 51
    budget.open("a", 3_000_000, upload=True)(3_000_000, 0)
    now[0] += 200
    assert budget.spent("c") == (0, 0) and not budget.ledger
    assert limits.UploadBudget(0, 0, 100).open("a", 10**12, upload=True) is limits.no_charge


def test_a_visitor_whose_spending_expired_and_who_is_refused_unread_breaks_no_later_sweep() -> None:
    """A visitor's spending leaves the window with no sweep in between, then it sends a body declared over the
    budget (refused before a byte is charged): nothing of it stays in the ledger, and later sweeps, on any
    visitor's request, go on answering (they raised IndexError on its emptied entry, a 500 for everyone)."""
    now = [0.0]
    budget = limits.UploadBudget(10_000, 0, 600, clock=lambda: now[0])
    budget.open("a", 0, upload=True)(1_000, 0)
    now[0] = 590.0
    budget.open("b", 0, upload=True)  # a sweep: a's spending is still in the window
    now[0] = 601.0
    with pytest.raises(limits.Refused):
        budget.open("a", 50_000, upload=True)
    assert "a" not in budget.ledger
    for moment in (640.0, 700.0):
        now[0] = moment
        budget.open("c", 0, upload=True)(10, 0)
    assert budget.spent("c") == (20, 0)


def test_the_files_in_a_budget_are_counted_per_visitor() -> None:
    budget = limits.UploadBudget(0, 3, 100)
    charge = budget.open("a", 0, upload=True)
    charge(10, 3)
    with pytest.raises(limits.Refused, match="at most 3 files per visitor"):
        charge(10, 1)
    with pytest.raises(limits.Refused):
        budget.open("a", 0, upload=True)  # no file left: an upload is refused before its body
    budget.open("a", 0, upload=False)  # a call's body carries no file


BUDGET_SETTINGS = ["PETS_UPLOAD_MB_PER_VISITOR", "PETS_UPLOAD_FILES_PER_VISITOR", "PETS_UPLOAD_WINDOW_S"]


@pytest.mark.parametrize("name", BUDGET_SETTINGS)
def test_a_budget_setting_that_is_not_a_number_stops_the_start_in_one_sentence(name: str) -> None:
    with pytest.raises(SystemExit, match=f"{name} must be a whole number of at least"):
        limits.UploadBudget.from_environ({name: "-1"})
