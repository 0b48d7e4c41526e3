"""The README and docs/ as a reader follows them: every relative link resolves, to a file and, where it
names one, to a heading of that page; every page in docs/ is linked from the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    found = [a or b for a, b in LINK.findall(text)]
    return [link for link in found if not re.match(r"[a-z]+:", link)]


def broken(page: Path, link: str) -> str | None:
    target, _, anchor = link.partition("#")
    path = (page.parent / target).resolve() if target else page
    if not path.exists():
        return f"{link}: no such file"
    if anchor and path.suffix == ".md" and anchor not in anchors(path):
        return f"{link}: no heading #{anchor} in {path.name}"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(page: Path) -> None:
    assert page.is_file()
    problems = [problem for link in relative_links(page) if (problem := broken(page, link))]
    assert not problems, problems


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(REPO / link.partition("#")[0]).resolve() for link in relative_links(REPO / "README.md")}
    assert set((REPO / "docs").glob("*.md")) <= linked


def test_a_broken_link_and_a_missing_heading_are_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Real heading\n\n[a](gone.md) [b](#real-heading) [c](#nowhere) ![d](x.png)\n")
    problems = [broken(page, link) for link in relative_links(page)]
    assert problems == [
        "gone.md: no such file",
        None,
        "#nowhere: no heading #nowhere in page.md",
        "x.png: no such file",
    ]


def test_the_readme_says_what_the_model_is_in_at_most_25_lines() -> None:
    """What the model is, the served numbers and what they mean for dogs; its history is docs/training.md's."""
    section = REPO.joinpath("README.md").read_text().split("\n## The model\n", 1)[1].split("\n## ", 1)[0]
    assert len(section.strip().splitlines()) <= 25
