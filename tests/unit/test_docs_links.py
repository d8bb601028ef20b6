"""Every relative link in the project's Markdown documents points at a file that exists and, when
it names an anchor, at a heading of that file (GitHub's slugs): the operator manual is split over
README.md and docs/, and a moved section must not leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = sorted(
    [
        *ROOT.glob("*.md"),
        *(ROOT / "docs").glob("*.md"),
        ROOT / "helm" / "README.md",
        ROOT / "bench" / "README.md",
    ]
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def slug(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.*)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    text = FENCE.sub("", doc.read_text())
    dead = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            dead.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(target)
    assert not dead, dead


def test_the_readme_is_what_a_first_time_user_needs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
    assert len(readme) < 8000  # the operator manual lives in docs/
    for doc in (ROOT / "docs").glob("*.md"):
        assert f"docs/{doc.name}" in readme, f"{doc.name} is not linked from the README"


def test_every_podman_build_shown_keeps_the_healthcheck() -> None:
    """podman's default image format (OCI) has no HEALTHCHECK field and drops the Containerfile's:
    every `podman build` in the docs, the Containerfile and the scripts says `--format docker`,
    and the README, whose `make image` hides the command, says so for a build by hand."""
    files = [*DOCS, ROOT / "Containerfile", ROOT / "Makefile", *(ROOT / "scripts").glob("*.sh")]
    builds = [
        (path.name, line.strip())
        for path in files
        for line in path.read_text().splitlines()
        if re.search(r"\bpodman build\b", line)
    ]
    assert any(name == "build-image.sh" for name, _ in builds)  # the scan sees `make image`'s
    assert [b for b in builds if "--format docker" not in b[1]] == []
    readme = (ROOT / "README.md").read_text()
    assert "--format docker" in readme and "HEALTHCHECK" in readme
