"""Every local file the README shows or links is in the repository, not only on the machine that made it."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)")  # markdown links and images: [text](target) / ![alt](target)


def test_readme_links_point_at_committed_files():
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    committed = set(listed.stdout.splitlines())
    readme = (ROOT / "README.md").read_text()
    targets = {t for t in LINK.findall(readme) if "://" not in t and not t.startswith("mailto:")}
    if "results.json" in readme:  # the Performance section cites the benchmark's own files too
        targets |= {"benchmarks/results/results.json", "benchmarks/results/results.md"}
    assert targets, "the README links no local file: the pattern is broken"
    missing = sorted(t.removeprefix("./") for t in targets
                     if t.removeprefix("./").rstrip("/") not in committed
                     and not any(f.startswith(t.removeprefix("./").rstrip("/") + "/") for f in committed))
    assert not missing, f"the README links files that are not committed: {missing}"
