"""Shared fixtures: the real ISBI 2012 data beside the project, and a CLI runner."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ISBI_DIR = ROOT.parent / "shared" / "data" / "isbi2012"
ISBI_FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    if not all((ISBI_DIR / name).is_file() for name in ISBI_FILES):
        pytest.fail(f"the ISBI 2012 data is expected in {ISBI_DIR} (../shared/data/isbi2012)")
    return ISBI_DIR


@pytest.fixture
def isbi_copy(isbi_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the data, for tests that break one file."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ISBI_FILES:
        shutil.copyfile(isbi_dir / name, folder / name)
    return folder


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None,
            file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run unet2d.py in a subprocess, as a user would.

    ``file_size_limit`` (bytes) caps every file the process writes, as a full disk
    would: Python ignores SIGXFSZ, so the write fails with EFBIG instead.
    """
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **(env or {})}

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run([sys.executable, str(ROOT / "unet2d.py"), *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_file_size if file_size_limit else None)
