"""The README and docs/: every local file they show or link is committed, and every anchor they link exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINK = re.compile(r"\]\(([^)\s]+)\)")  # markdown links and images: [text](target) / ![alt](target)
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def committed_files() -> set[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return set(listed.stdout.splitlines())


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    found, in_code = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := re.match(r"#{1,6} (.*)", line)):
            found.add(re.sub(r"[^a-z0-9 _-]", "", match.group(1).lower()).replace(" ", "-"))
    return found


def local_links(document: Path) -> list[tuple[str, str]]:
    """(path relative to the repository, anchor) of every link that is not a web address."""
    links = []
    for target in LINK.findall(document.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document.resolve()
        links.append((resolved.relative_to(ROOT).as_posix(), anchor))
    return links


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_linked_files_are_committed_and_anchors_exist(document):
    committed = committed_files()
    links = local_links(document)
    if document.name == "README.md":
        assert links, "the README links no local file: the pattern is broken"
    missing = sorted({path for path, _ in links
                      if path not in committed and not any(f.startswith(path.rstrip("/") + "/") for f in committed)})
    assert not missing, f"{document.name} links files that are not committed: {missing}"
    broken = sorted(f"{path}#{anchor}" for path, anchor in links
                    if anchor and path.endswith(".md") and anchor not in anchors((ROOT / path).read_text()))
    assert not broken, f"{document.name} links anchors that no heading makes: {broken}"


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_anchor_rule_matches_githubs():
    assert anchors("## Throughput against the kernel ceiling (AVX512_BF16 CPU)\n```\n# not a heading\n```") == \
        {"throughput-against-the-kernel-ceiling-avx512_bf16-cpu"}
