"""The suite finds its data the way a user has it, and runs without the real ISBI files.

The no-data case is tried by pointing the search at an empty folder (never by
moving ``../shared``): the suite then generates the synthetic dataset and
skips only the tests that need the real pixels.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests import conftest
from tests.conftest import ISBI_FILES, ROOT


def test_search_order_puts_the_users_folder_first(monkeypatch, tmp_path):
    monkeypatch.delenv("UNET2D_TEST_DATA_SEARCH", raising=False)
    monkeypatch.setenv("UNET2D_TEST_DATA", str(tmp_path))
    assert conftest.search_path() == [tmp_path, ROOT.parent / "shared" / "data" / "isbi2012", ROOT / "data"]
    monkeypatch.setenv("UNET2D_TEST_DATA_SEARCH", os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert conftest.search_path() == [tmp_path / "a", tmp_path / "b"]


def test_a_folder_of_other_pixels_is_used_but_not_taken_for_isbi(monkeypatch, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ISBI_FILES:
        tifffile.imwrite(mine / name, np.zeros((2, 8, 8), np.uint8))
    monkeypatch.setenv("UNET2D_TEST_DATA_SEARCH", os.pathsep.join([str(tmp_path / "empty"), str(mine)]))
    conftest.find_test_data.cache_clear()
    try:
        assert conftest.find_test_data() == (mine, False)
    finally:
        conftest.find_test_data.cache_clear()


@pytest.mark.one_stack
def test_without_any_data_the_suite_runs_on_generated_data(tmp_path):
    """A data-reading slice of the suite, as on a machine with no ../shared and no ./data."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "UNET2D_TEST_DATA_SEARCH": str(empty), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           "tests/test_download.py", "tests/test_data_loader.py", "tests/test_preprocessing.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert f"test data: synthetic EM data (tests marked real_isbi are skipped) in {conftest.synthetic_cache()}" \
        in output
    # nothing skipped: the downloader's tests serve generated stacks whose hashes stand in for the published ones
    assert not re.search(r"\d+ skipped", output) and re.search(r"\d+ passed", output), output[-2000:]
    assert Path(conftest.synthetic_cache(), "train-labels.tif").is_file()
