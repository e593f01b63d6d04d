"""Every writer of a run, failing with every errno a user can act on: one line naming what and where, status 2.

Each case makes the writer's own lowest write fail the way the system or
TensorFlow makes it fail (an OSError with the errno, or TensorFlow's error
with the C library's words behind its graph noise), runs it under the
command-line handler (``common.errors.exit_status``), and reads the one line.
A full disk for real is in tests/test_disk_full.py; this file covers the
errnos that a test cannot make happen (quota, read-only, permission, I/O).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from common.errors import exit_status

pytestmark = pytest.mark.one_stack  # the writers and the handler are the same code on every stack

ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
          errno.EPERM: "operation not permitted", errno.EIO: "input/output error"}


def os_error(number: int, filename: str | None = None) -> OSError:
    return OSError(number, os.strerror(number), *([filename] if filename else []))


def tensorflow_error(number: int, path: Path, op: str):
    """As TensorFlow raises a failed file write: the class its status code maps to, the C library's words."""
    import tensorflow as tf

    kind = {errno.ENOSPC: tf.errors.ResourceExhaustedError, errno.EDQUOT: tf.errors.ResourceExhaustedError,
            errno.EIO: tf.errors.UnavailableError}.get(number, tf.errors.PermissionDeniedError)
    text = (f"{{{{function_node __wrapped__{op}_device_/job:localhost/replica:0/task:0/device:CPU:0}}}} {path}; "
            f"{os.strerror(number)} [Op:{op}]")
    return kind(None, None, text)


def one_line(action) -> str:
    said: list[str] = []
    assert exit_status("unet2d.py", action, report=said.append) == 2
    assert len(said) == 1 and "\n" not in said[0], said
    return said[0]


def fail_with(error: BaseException):
    def failing(*args, **kwargs):
        raise error
    return failing


# The writers, each failing in its own lowest write; (what to run, the line expected).

def log_writer(tmp_path: Path, number: int, monkeypatch):
    from runtime.reporting.dllog import Logger

    logger = Logger(stdout=False, json_path=tmp_path / "logs" / "log.json")
    monkeypatch.setattr(logger._writer, "flush", fail_with(os_error(number)))
    return (lambda: logger.log((1, 10), {"train_ce_loss": 0.5}),
            f"cannot write the log in {tmp_path / 'logs'}: {ERRNOS[number]}")


def checkpoint_writer(tmp_path: Path, number: int, monkeypatch):
    import tensorflow as tf

    from runtime.loop.training import _save

    folder = tmp_path / "model" / "model_checkpoint"
    folder.mkdir(parents=True)
    (folder / "checkpoint-3_temp").mkdir()  # what SaveV2 leaves when it fails halfway
    manager = SimpleNamespace(directory=str(folder), latest_checkpoint=str(folder / "checkpoint-2"),
                              save=fail_with(tensorflow_error(number, folder / "checkpoint-3_temp" / "part", "SaveV2")))
    runner = SimpleNamespace(step=tf.Variable(3, dtype=tf.int64), ctx=None)

    def save():
        try:
            _save(runner, manager)
        finally:
            assert not (folder / "checkpoint-3_temp").exists()  # the partial save is removed
    return save, (f"cannot write checkpoint 3 in {folder}: {ERRNOS[number]}; the last good checkpoint "
                  f"{folder / 'checkpoint-2'} is kept")


def checkpoint_clean_up(tmp_path: Path, number: int, monkeypatch):
    from runtime.loop import checkpoints

    folder = tmp_path / "model" / "model_checkpoint"
    folder.mkdir(parents=True)
    old = folder / "checkpoint-1.index"
    old.write_bytes(b"x")
    monkeypatch.setattr(shutil, "rmtree", fail_with(os_error(number, str(old))))
    verb = "write" if number in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else "use"
    return lambda: checkpoints.clear_checkpoints(folder), f"cannot {verb} {old}: {ERRNOS[number]}"


def overlay_writer(tmp_path: Path, number: int, monkeypatch):
    from PIL import Image

    from runtime.reporting.overlays import write_overlays

    folder = tmp_path / "logs" / "overlays"
    monkeypatch.setattr(Image.Image, "save", fail_with(os_error(number, str(folder / ".s0.png.x.part"))))
    image, ids = np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)

    def write():
        try:
            write_overlays(folder, ["eval_step10_s0"], [image], [ids])
        finally:
            assert list(folder.iterdir()) == []  # no temporary file left behind
    return write, f"cannot write overlay eval_step10_s0.png in {folder}: {ERRNOS[number]}"


def tensorboard_writer(tmp_path: Path, number: int, monkeypatch):
    from runtime.reporting.tensorboard import TensorBoardWriters

    writers = TensorBoardWriters(tmp_path / "logs")
    event_file = tmp_path / "logs" / "events.out.tfevents.1.host.1.v2"
    monkeypatch.setattr(writers.train, "flush", fail_with(tensorflow_error(number, event_file,
                                                                           "FlushSummaryWriter")))
    return (lambda: writers.train_scalars(20, {"train_total_loss": 1.0}),
            f"cannot write the TensorBoard events in {tmp_path / 'logs'}: {ERRNOS[number]}")


def export_writer(tmp_path: Path, number: int, monkeypatch):
    from runtime.loop.exporting import export_folder

    folder = tmp_path / "model" / "export"
    folder.mkdir(parents=True)
    (folder / "unet2d.keras").write_bytes(b"the old model")

    def export():
        try:
            with export_folder(folder) as staging:
                (staging / "unet2d.keras").write_bytes(b"the new model")
                raise os_error(number, str(staging / "saved_model" / "variables"))
        finally:  # the old export whole, nothing staged left beside it
            assert (folder / "unet2d.keras").read_bytes() == b"the old model"
            assert sorted(path.name for path in folder.parent.iterdir()) == ["export"]
    return export, f"cannot write the export in {folder}: {ERRNOS[number]}"


def mask_writer(tmp_path: Path, number: int, monkeypatch):
    import tifffile

    from data_loading.volume_reader import ArrayVolume
    from runtime.loop.masks import predict_to_tiff

    path = tmp_path / "predictions" / "stack-masks.tif"
    monkeypatch.setattr(tifffile, "imwrite", fail_with(os_error(number)))  # write() errors carry no file name

    def predict():
        try:
            predict_to_tiff(lambda batch: np.full((len(batch), 388, 388, 2), 0.5, np.float32),
                            ArrayVolume(np.zeros((2, 64, 64), np.uint8)), ["a", "b"], path, strategy="tile",
                            batch_size=1, tta=False, num_classes=2, overlays=0, cell_labels=False,
                            cell_threshold=None)
        finally:
            assert list(path.parent.iterdir()) == []  # nothing under the final name, no temporary left
    return predict, f"cannot write {path.name} in {path.parent}: {ERRNOS[number]}"


WRITERS = {"log": log_writer, "checkpoint": checkpoint_writer, "checkpoint clean-up": checkpoint_clean_up,
           "overlays": overlay_writer, "TensorBoard": tensorboard_writer, "export": export_writer,
           "masks": mask_writer}


@pytest.mark.parametrize("number", ERRNOS, ids=[errno.errorcode[number] for number in ERRNOS])
@pytest.mark.parametrize("writer", WRITERS)
def test_a_failed_write_is_one_line_naming_what_and_where(writer, number, tmp_path, monkeypatch):
    action, expected = WRITERS[writer](tmp_path, number, monkeypatch)
    assert one_line(action) == f"unet2d.py: error: {expected}"
