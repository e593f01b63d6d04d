"""Malformed inputs end in the loader's own error, never another exception; outputs are never half-written."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from common.errors import UserInputError
from data_loading import tiff_io
from data_loading.data_loader import TRAIN_LABELS, Dataset, StreamOptions
from data_loading.tiff_io import read_stack, write_stack_atomically
from data_loading.volumes import class_ids


def tiff_bytes(stack: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, stack)
    return buffer.getvalue()


VALID = tiff_bytes(np.arange(3 * 16 * 16, dtype=np.uint8).reshape(3, 16, 16))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda cut: VALID[:cut], st.integers(0, len(VALID) - 1)),
    st.builds(lambda at, value: VALID[:at] + bytes([value]) + VALID[at + 1:],
              st.integers(0, len(VALID) - 1), st.integers(0, 255)),
))
def test_fuzzed_tiff_bytes_raise_only_the_loaders_error(tmp_path, data):
    path = tmp_path / "fuzz.tif"
    path.write_bytes(data)
    try:
        stack = read_stack(path)
    except UserInputError:
        return
    assert stack.ndim == 3 and stack.dtype.kind in "uif" and stack.size > 0


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_header_declaring_more_pixels_than_its_data_can_hold_is_refused_before_allocating(tmp_path, compression):
    """Hypothesis found this one uncompressed: a flipped width byte made a 768-byte file declare 24 GiB, and
    tifffile ran out of memory allocating it. Deflate cannot expand its data more than 1032-fold either."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.arange(3 * 16 * 16, dtype=np.uint8).reshape(3, 16, 16), compression=compression)
    data = bytearray(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tiff:
        width = tiff.pages[0].tags["ImageWidth"]
        assert width.dtype == 4  # LONG: room for a width of 2**29
        offset = width.valueoffset
    data[offset:offset + 4] = (1 << 29).to_bytes(4, "little")
    path = tmp_path / "declares_gigabytes.tif"
    path.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="its header is damaged"):
        read_stack(path)


def test_a_page_compressed_close_to_deflates_limit_still_reads(tmp_path):
    path = tmp_path / "zeros.tif"
    zeros = np.zeros((2, 1024, 1024), np.uint8)
    tifffile.imwrite(path, zeros, compression="zlib", compressionargs={"level": 9}, rowsperstrip=1024)
    with tifffile.TiffFile(path) as tiff:
        assert sum(tiff.pages[0].databytecounts) * 900 < zeros[0].nbytes  # beyond 900:1, near deflate's 1032:1
    np.testing.assert_array_equal(read_stack(path), zeros)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4),
       dtype=st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]))
def test_any_shape_and_dtype_is_accepted_or_refused_cleanly(tmp_path, shape, dtype):
    path = tmp_path / "shape.tif"
    try:
        tifffile.imwrite(path, np.zeros(shape, dtype))
    except (ValueError, IndexError):  # some tifffile versions cannot write every such array
        assume(False)
    try:
        stack = read_stack(path)
    except UserInputError:
        return
    assert stack.ndim == 3 and stack.dtype.kind in "uif" and dtype != np.bool_


def test_labels_must_be_two_valued_and_may_be_zero_one(isbi_copy):
    ids, note = class_ids(np.array([[[0, 1]]], np.uint8), Path("x.tif"), ["x_000"], 2)
    np.testing.assert_array_equal(ids, [[[0, 1]]])
    assert note == "x.tif: labels hold 0/1, read as class ids (1 = cell)"
    ids, note = class_ids(np.array([[[0, 255]]], np.uint8), Path("x.tif"), ["x_000"], 2)
    np.testing.assert_array_equal(ids, [[[0, 1]]])
    assert note is None
    labels = tifffile.imread(isbi_copy / TRAIN_LABELS)
    tifffile.imwrite(isbi_copy / TRAIN_LABELS, (labels // 255).astype(np.uint8))
    data = Dataset.isbi(isbi_copy, StreamOptions(batch_size=1, seed=0), fold=0, need_test=False)
    assert "0/1" in data.describe_split()["notes"]
    labels[4, 0, :3] = [7, 8, 9]
    tifffile.imwrite(isbi_copy / TRAIN_LABELS, labels)
    with pytest.raises(UserInputError, match=r"label value 9 in slice 4 \(train-labels_004\) of .*train-labels.tif: "
                                             "with --num_classes 2 labels must be two-valued"):
        Dataset.isbi(isbi_copy, StreamOptions(batch_size=1, seed=0), fold=0, need_test=False)


def test_full_disk_leaves_neither_partial_nor_final_file(tmp_path, monkeypatch):
    target = tmp_path / "predictions" / "test-masks.tif"

    def fill_disk(path, data, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"II*\0partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tiff_io.tifffile, "imwrite", fill_disk)
    with pytest.raises(OSError):
        write_stack_atomically(target, np.zeros((2, 4, 4), np.uint8))
    assert list(target.parent.iterdir()) == []


@pytest.mark.slow
def test_a_folder_is_replaced_whole_or_not_at_all_and_the_users_files_stay(tmp_path):
    from common.files import replaced_folder

    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "weights").write_text("old")
    (folder / "window").write_text("old")
    (folder / "mine.txt").write_text("the user's")
    with pytest.raises(OSError), replaced_folder(folder, frozenset({"weights", "window"})) as staging:
        (staging / "weights").write_text("new")
        raise OSError(errno.ENOSPC, "No space left on device")  # before the new window is written
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"weights": "old", "window": "old",
                                                                   "mine.txt": "the user's"}
    with replaced_folder(folder, frozenset({"weights", "window"})) as staging:
        (staging / "weights").write_text("new")  # a model without a window: the old one goes
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"weights": "new", "mine.txt": "the user's"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging, nothing set aside


def test_model_dir_of_home_clears_only_its_checkpoint_folder(tmp_path, monkeypatch):
    """--model_dir $HOME: the old checkpoints inside go, the user's own files stay."""
    from tests.conftest import run_main

    home = tmp_path / "home"
    (home / "model_checkpoint").mkdir(parents=True)
    (home / "model_checkpoint" / "checkpoint-7.index").write_text("old run")
    (home / "thesis.tex").write_text("years of work")
    (home / "projects").mkdir()
    (home / "projects" / "notes.txt").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    result = run_main("--synth_data", "--exec_mode", "train", "--max_steps", "1", "--batch_size", "1",
                      "--model_dir", str(home), "--log_dir", str(tmp_path / "logs"))
    assert result.returncode == 0, result.stderr[-1500:]
    assert (home / "thesis.tex").read_text() == "years of work"
    assert (home / "projects" / "notes.txt").read_text() == "keep"
    assert not (home / "model_checkpoint" / "checkpoint-7.index").exists()
    assert (home / "model_checkpoint" / "checkpoint-1.index").exists()


def test_model_dir_of_root_is_never_cleared_itself(tmp_path):
    """With --model_dir / the folder that training clears is /model_checkpoint, and only that."""
    from runtime.cli.arguments import parse_config
    from runtime.cli.setup import prepare_checkpoint_dir
    from runtime.execution.distribution import Workers
    from runtime.loop.checkpoints import clear_checkpoints

    config = parse_config(["--synth_data", "--exec_mode", "evaluate", "--model_dir", "/"])
    assert prepare_checkpoint_dir(config, Workers()) == Path("/model_checkpoint")
    for folder in (Path("/"), Path.home(), tmp_path):
        with pytest.raises(AssertionError, match="only checkpoint folders"):
            clear_checkpoints(folder)
    assert Path.home().exists() and tmp_path.exists()


def test_unwritable_model_dir(tmp_path):
    from tests.conftest import run_main

    targets = [Path("/proc/unet2d-model")]  # refused even to root
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        targets.append(locked)
    for target in targets:
        result = run_main("--synth_data", "--exec_mode", "train", "--max_steps", "1", "--batch_size", "1",
                          "--model_dir", str(target), "--log_dir", str(tmp_path / "logs"))
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and last.startswith("unet2d.py: error:") and "--model_dir" in last, last
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_disk_filling_up_while_writing_predictions(isbi_copy, tmp_path):
    """A file-size limit stands in for a full disk: the write fails part-way, in the CLI itself."""
    from tests.conftest import run_cli

    model_dir = tmp_path / "model"
    (model_dir / "predictions").mkdir(parents=True)
    result = run_cli("--data_dir", str(isbi_copy), "--exec_mode", "train_and_predict", "--max_steps", "1",
                     "--batch_size", "1", "--disable_ckpt_saving", "--model_dir", str(model_dir),
                     "--log_dir", str(tmp_path / "logs"), file_size_limit=64 * 1024)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "cannot write" in last and "test-masks.tif" in last, last
    assert "Traceback" not in result.stderr
    assert list((model_dir / "predictions").iterdir()) == []  # no partial file, no file under the final name


def test_every_special_file_kind_is_named(tmp_path):
    """A socket and a block device too, which the CLI tests do not make."""
    import socket

    from data_loading.input_paths import check_input

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock"))
    try:
        with pytest.raises(UserInputError, match="is a socket"):
            check_input(tmp_path / "sock", "input", "any")
    finally:
        server.close()
    block = next((p for p in Path("/dev").iterdir() if p.is_block_device()), None)
    if block is not None:
        with pytest.raises(UserInputError, match="is a block device"):
            check_input(block, "input")
    with pytest.raises(UserInputError, match="input is not a folder"):
        check_input(Path(__file__), "input", "folder")
    with pytest.raises(UserInputError, match="input is not a file"):
        check_input(tmp_path, "input", "file")
    assert check_input(tmp_path, "input", "any") == tmp_path
