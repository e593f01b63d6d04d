"""A disk that fills up: every write says so in one line naming its folder, keeps what was whole, and leaves
no partial file under a final name.

The disk is a small tmpfs mounted for the test, which needs root (as the
suite has in CI); elsewhere these tests skip and say why.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from common.errors import UserInputError, exit_status, write_failure
from runtime.reporting.dllog import Logger
from tests.conftest import run_cli


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], capture_output=True, timeout=30)


def last_line(result: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_checkpoint_that_fills_the_disk_keeps_the_last_good_one(tmp_path):
    """9 MB hold one width-8 checkpoint (6.5 MB with Adam's moments) but not two."""
    with small_disk(tmp_path / "disk", "9m") as disk:
        model = disk / "model"
        result = run_cli("--synth_data", "--exec_mode", "train", "--max_steps", "4", "--batch_size", "1",
                         "--checkpoint_every", "1", "--model_dir", str(model), "--log_dir", str(tmp_path / "logs"))
        line = last_line(result)
        assert result.returncode == 2, result.stderr[-2000:]
        folder = model / "model_checkpoint"
        assert line == (f"unet2d.py: error: cannot write checkpoint 2 in {folder}: no space left on the device; "
                        f"the last good checkpoint {folder / 'checkpoint-1'} is kept"), line
        names = sorted(path.name for path in folder.iterdir())
        assert names == ["checkpoint", "checkpoint-1.data-00000-of-00001", "checkpoint-1.index",
                         "written_by.json"], names  # which stack wrote checkpoint 1, and nothing of the failed one
        shutil.copytree(model, tmp_path / "copy")
    evaluated = run_cli("--synth_data", "--exec_mode", "evaluate", "--fold", "0", "--batch_size", "1",
                        "--model_dir", str(tmp_path / "copy"), "--log_dir", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


@pytest.mark.slow
def test_an_export_that_fills_the_disk_writes_nothing_under_a_final_name(tmp_path):
    model = tmp_path / "model"
    trained = run_cli("--synth_data", "--exec_mode", "train", "--max_steps", "1", "--batch_size", "1",
                      "--model_dir", str(model), "--log_dir", str(tmp_path / "logs"))
    assert trained.returncode == 0, trained.stderr[-2000:]
    with small_disk(tmp_path / "disk", "3m") as disk:
        target = disk / "export"
        result = run_cli("--exec_mode", "export", "--model_dir", str(model), "--export_dir", str(target),
                         "--log_dir", str(tmp_path / "logs"))
        line = last_line(result)
        assert result.returncode == 2, result.stderr[-2000:]
        assert line == f"unet2d.py: error: cannot write the export in {target}: no space left on the device", line
        assert not target.exists() or not list(target.iterdir())  # replaced only when whole: nothing new there
        assert not [path.name for path in disk.iterdir() if path.name.startswith(".export")]  # nor left beside


@pytest.mark.one_stack  # no TensorFlow in the log's writing
def test_a_log_that_fills_the_disk_is_one_line(tmp_path):
    with small_disk(tmp_path / "disk", "8k") as disk:
        logger = Logger(stdout=False, json_path=disk / "log.json")
        with pytest.raises(UserInputError, match=f"cannot write the log in {disk}: no space left on the device"):
            for step in range(1000):
                logger.log((step, 1000), {"train_ce_loss": 0.5, "padding": "x" * 100})
        logger.close()


@pytest.mark.one_stack  # no TensorFlow: the handler alone
@pytest.mark.parametrize("number, words, verb", [
    (errno.ENOSPC, "no space left on the device", "write"), (errno.EDQUOT, "disk quota exceeded", "write"),
    (errno.EROFS, "read-only file system", "write"), (errno.EACCES, "permission denied", "use"),
    (errno.EPERM, "operation not permitted", "use"), (errno.EIO, "input/output error", "use")])
def test_a_failed_write_anywhere_is_one_line_with_the_errnos_words(number, words, verb):
    said = []

    def write_overlay():
        raise OSError(number, os.strerror(number), "/logs/overlays/eval_step10_slice0.png")

    assert exit_status("unet2d.py", write_overlay, report=said.append) == 2
    assert said == [f"unet2d.py: error: cannot {verb} /logs/overlays/eval_step10_slice0.png: {words}"]
    # TensorFlow's SaveV2 says it in the C library's words, after its graph noise
    saved = Exception("{{function_node __wrapped__SaveV2_dtypes_64_device_/job:localhost/replica:0/task:0}}"
                      " /m/model_checkpoint/checkpoint-2_temp/part-00000-of-00001.data-00000-of-00001.tempstate1; "
                      f"{os.strerror(number)} [Op:SaveV2]")
    assert str(write_failure("checkpoint 2", "/m/model_checkpoint", saved)) == \
        f"cannot write checkpoint 2 in /m/model_checkpoint: {words}"


@pytest.mark.one_stack
def test_memory_is_said_as_memory():
    said = []

    def read_a_huge_stack():
        raise MemoryError

    assert exit_status("predict.py", read_a_huge_stack, report=said.append) == 2
    assert len(said) == 1 and said[0].startswith("predict.py: error: not enough memory: try --volume_loading stream")


@pytest.mark.one_stack
def test_other_os_errors_are_bugs_and_keep_their_traceback():
    def bug():
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        exit_status("unet2d.py", bug, report=lambda line: None)
