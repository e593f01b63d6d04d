"""Blockwise prediction into OME-Zarr: the masks of the tile strategy, chunk-aligned, resumable, refused in one line.

A narrow untrained model stands in for a trained one: what is checked is the
geometry (every block predicted as the whole slice is), the bookkeeping
(marks, records, resumption after SIGKILL) and the faults.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from data_loading.readers import open_volume
from runtime.inference.blocks import choose_tile, default_chunk, fastest_tile, plan_blocks, tile_cost, worth_timing
from tests.conftest import ROOT, TEST_BASE_FILTERS, run_predict


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from model.unet import build_unet
    from runtime.inference.export import export_model

    return export_model(build_unet(3, 2, base_filters=TEST_BASE_FILTERS), tmp_path_factory.mktemp("e") / "x")[0].parent


@pytest.fixture(scope="module")
def stack(isbi_dir, tmp_path_factory):
    """Three ISBI test slices and an odd-sized one (700 x 900 from a 2 x 2 tiling), as TIFFs and a Zarr store."""
    folder = tmp_path_factory.mktemp("stack")
    images = tifffile.imread(isbi_dir / "test-volume.tif")[:2]
    odd = np.tile(images[:1], (1, 2, 2))[:, :700, :900]
    tifffile.imwrite(folder / "two.tif", images)
    tifffile.imwrite(folder / "odd.tif", odd)
    return folder


def masks_of(path: Path) -> np.ndarray:
    return open_volume(path).read_all() if path.name.endswith(".zarr") else tifffile.imread(path)


def test_the_geometry_of_blocks_and_tiles():
    assert [block.name for block in plan_blocks((2, 700, 900), (388, 388))][:4] == ["0.0.0", "0.0.388", "0.0.776",
                                                                                    "0.388.0"]
    assert len(plan_blocks((2, 700, 900), (388, 388))) == 2 * 2 * 3
    assert default_chunk(388, 5000) == 1164 and default_chunk(900, 5000) == 1800 and default_chunk(900, 700) == 700
    assert tile_cost(4096, 4096, 388) == 11 * 11 * 572**2 and tile_cost(512, 512, 644) == 828**2
    gib = 2**30
    assert choose_tile(512, 512, 8, gib) == 644  # one 828 tile beats four 572 ones
    assert choose_tile(4096, 4096, 64, 3 * gib) == 1412  # full width: 3 x 3 tiles of 1596 fit 3 GiB
    assert choose_tile(4096, 4096, 64, 2 * gib) == 1156  # 1596 inputs do not fit 2 GiB, 1340 do
    assert choose_tile(4096, 4096, 64, 1) == 388  # nothing fits: the recipe's tile


def test_the_tile_is_timed_only_where_the_volume_pays_for_it():
    from runtime.loop.blockwise import _timed_tile

    # 4096 x 4096: 121 passes of 388, 49 of 644, 25 of 900; the pixel count would take 900, the clock 644
    assert fastest_tile(4096, 4096, {388: 1.0, 644: 2.0, 900: 5.0}) == 644
    assert fastest_tile(4096, 4096, {388: 1.0, 644: 2.0, 900: 3.0}) == 900
    assert not worth_timing((2, 512, 512), (388, 644, 900), 0.01)  # timing costs more than the volume
    assert worth_timing((100, 4096, 4096), (388, 644, 900), 0.01) and not worth_timing((100, 4096, 4096), (388,), 1)

    class Clocked:
        """Networks whose passes take the seconds given, counting the passes timed."""

        def __init__(self, seconds):
            self.seconds, self.timed = seconds, []

        def pass_seconds(self, tile):
            self.timed.append(tile)
            return self.seconds[tile]

        def forget(self, keep):
            pass

    said = []
    small = Clocked({388: 0.01, 644: 0.02, 900: 0.05})
    assert _timed_tile((2, 512, 512), small, (388, 644, 900), said.append) is None and small.timed == [388]
    large = Clocked({388: 1.0, 644: 2.0, 900: 5.0})
    assert _timed_tile((100, 4096, 4096), large, (388, 644, 900), said.append) == 644
    assert sorted(large.timed) == [388, 644, 900] and said == ["tile 644 chosen by timing one pass of each: "
                                                               "388: 1.00 s, 644: 2.00 s, 900: 5.00 s"]


def test_blocks_of_the_recipes_tile_give_the_tile_strategys_masks(export, stack, tmp_path):
    """Tile 388 on the slice's own grid: every block (here of 300 x 300, not whole tiles) as the whole slice,
    exactly."""
    chunks = "300"
    for name in ("odd",):
        tiff = run_predict(str(export), str(stack / f"{name}.tif"), "--strategy", "tile", "-o", str(tmp_path / "t.tif"))
        zarr = run_predict(str(export), str(stack / f"{name}.tif"), "--strategy", "tile", "--tile_size", "388",
                           "--chunks", chunks, "-o", str(tmp_path / f"{name}.ome.zarr"))
        assert tiff.returncode == 0 and zarr.returncode == 0, zarr.stderr[-2000:]
        np.testing.assert_array_equal(masks_of(tmp_path / f"{name}.ome.zarr"), masks_of(tmp_path / "t.tif"))
        assert open_volume(tmp_path / f"{name}.ome.zarr").chunks[1:] == (int(chunks),) * 2


def test_a_larger_tile_agrees_with_the_recipes_and_records_what_made_it(export, stack, tmp_path):
    from data_loading.prediction_store import kept_record

    done = run_predict(str(export), str(stack / "odd.tif"), "--strategy", "tile", "-o", str(tmp_path / "a.ome.zarr"),
                       "--probabilities", "float16", "--cell_labels", "--overlays", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(tile 900, chunks 700x900)" in done.stdout  # one 1084 tile: the fewest pixels
    reference = run_predict(str(export), str(stack / "odd.tif"), "--strategy", "tile", "-o", str(tmp_path / "t.tif"))
    assert reference.returncode == 0
    agreement = (masks_of(tmp_path / "a.ome.zarr") == masks_of(tmp_path / "t.tif")).mean()
    assert agreement >= 0.999  # the decoder's same-padded up-convolutions see other tile borders
    record = kept_record(tmp_path / "a.ome.zarr")
    assert record["tile"] == 900 and record["settings"]["probabilities"] == "float16" and record["classes"] == 2
    import zarr

    probabilities = zarr.open_array(str(tmp_path / "a-probabilities.ome.zarr" / "0"), mode="r")
    assert probabilities.dtype == np.float16 and probabilities.shape == (2, 1, 700, 900)
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=0), 1.0, atol=2e-3)
    cells = open_volume(tmp_path / "a-cells.ome.zarr").read_all()
    assert cells.dtype == np.uint32 and cells.max() > 0
    assert (tmp_path / "a-overlays").is_dir() and not list(tmp_path.glob(".*"))  # no partial, no scratch left


def test_the_same_command_again_does_nothing_and_other_settings_are_refused(export, stack, tmp_path):
    output = str(tmp_path / "m.ome.zarr")
    first = run_predict(str(export), str(stack / "two.tif"), "--strategy", "tile", "-o", output)
    again = run_predict(str(export), str(stack / "two.tif"), "--strategy", "tile", "-o", output)
    assert first.returncode == 0 and again.returncode == 0
    assert "0 blocks computed, 2 done before" in again.stderr
    other = run_predict(str(export), str(stack / "two.tif"), "--strategy", "tile", "-o", output, "--tile_size",
                        "388")
    assert other.returncode == 2 and "made by another model or with other settings (tile: 644 there, 388 now)" \
        in other.stderr and "--overwrite" in other.stderr
    replaced = run_predict(str(export), str(stack / "two.tif"), "--strategy", "tile", "-o", output, "--tile_size",
                           "388", "--overwrite")
    assert replaced.returncode == 0 and "(tile 388," in replaced.stdout
    auto = run_predict(str(export), str(stack / "two.tif"), "--strategy", "tile", "-o", output)
    assert auto.returncode == 0 and "0 blocks computed" in auto.stderr  # auto takes the tile the output has


@pytest.mark.parametrize("case, message", [
    ("file", r"the output .*m.ome.zarr is a file; name a new folder"),
    ("folder", r"the output .*m.ome.zarr is a folder that is not an OME-Zarr image"),
    ("resize", r"is predicted block by block with overlap tiles: add --strategy tile"),
])
def test_a_bad_output_is_one_line(export, stack, tmp_path, case, message):
    output = tmp_path / "m.ome.zarr"
    if case == "file":
        output.write_text("mine")
    elif case == "folder":
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    done = run_predict(str(export), str(stack / "two.tif"), "--strategy", "resize" if case == "resize" else "tile",
                       "-o", str(output))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    import re
    assert re.search(message, done.stderr), done.stderr
    if case != "resize":
        assert (output if case == "file" else output / "notes.txt").read_text() == "mine"  # left alone


def test_a_volume_smaller_than_a_tile_and_of_one_slice(export, tmp_path):
    tifffile.imwrite(tmp_path / "tiny.tif", np.random.default_rng(0).integers(0, 255, (1, 90, 150), dtype=np.uint8))
    done = run_predict(str(export), str(tmp_path / "tiny.tif"), "--strategy", "tile", "-o", str(tmp_path / "t.zarr"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert masks_of(tmp_path / "t.zarr").shape == (1, 90, 150)


@pytest.mark.slow
@pytest.mark.one_stack  # the marks and the resumption are the same code on both stacks
def test_a_run_killed_halfway_goes_on_and_gives_what_an_uninterrupted_one_gives(export, isbi_dir, tmp_path):
    """SIGKILL once a few blocks are marked done; the same command computes only the rest."""
    tifffile.imwrite(tmp_path / "v.tif", tifffile.imread(isbi_dir / "test-volume.tif")[:10, :256, :256])
    command = [sys.executable, "predict.py", str(export), str(tmp_path / "v.tif"), "--strategy", "tile",
               "--tile_size", "388", "-b", "1", "-o"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    marks = tmp_path / ".killed.ome.zarr.partial" / ".unet2d-blocks"
    process = subprocess.Popen([*command, str(tmp_path / "killed.ome.zarr")], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if marks.is_dir() and len([m for m in marks.iterdir() if not m.name.endswith(".part")]) >= 2:
            break
        time.sleep(0.02)
    assert process.poll() is None, "finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    left = len([m for m in marks.iterdir() if not m.name.endswith(".part")])
    assert 2 <= left < 10 and not (tmp_path / "killed.ome.zarr").exists()
    resumed = subprocess.run([*command, str(tmp_path / "killed.ome.zarr")], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{left} of 10 blocks were done before" in resumed.stderr
    assert f"{10 - left} blocks computed and {left} found done" in resumed.stderr
    whole = run_predict(str(export), str(tmp_path / "v.tif"), "--strategy", "tile", "--tile_size", "388",
                        "-o", str(tmp_path / "whole.ome.zarr"))
    assert whole.returncode == 0
    np.testing.assert_array_equal(masks_of(tmp_path / "killed.ome.zarr"), masks_of(tmp_path / "whole.ome.zarr"))


@pytest.mark.one_stack  # a write error is met the same way on both stacks
def test_a_full_disk_midway_keeps_the_blocks_done_and_the_rerun_finishes(export, isbi_dir, tmp_path):
    """Six slices in 128 x 128 chunks (96 chunk files of a page each) onto a 220 kB disk: full midway."""
    tifffile.imwrite(tmp_path / "six.tif", tifffile.imread(isbi_dir / "test-volume.tif")[:6])
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=220k", "tmpfs", str(disk)], capture_output=True,
                      timeout=30).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        output = disk / "m.ome.zarr"
        flags = ("--strategy", "tile", "--tile_size", "388", "--chunks", "128")
        full = run_predict(str(export), str(tmp_path / "six.tif"), *flags, "-o", str(output))
        assert full.returncode == 2 and "no space left on the device" in full.stderr
        assert len(full.stderr.strip().splitlines()) == 1
        marks = disk / ".m.ome.zarr.partial" / ".unet2d-blocks"
        before = len(list(marks.iterdir()))
        assert 0 < before < 6  # blocks of 4 x 4 chunks (a 388 tile or more), here a slice each
        assert subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], timeout=30).returncode == 0
        finished = run_predict(str(export), str(tmp_path / "six.tif"), *flags, "-o", str(output))
        assert finished.returncode == 0, finished.stderr[-2000:]
        assert f"{before} of 6 blocks were done before" in finished.stderr
        reference = run_predict(str(export), str(tmp_path / "six.tif"), *flags, "-o", str(tmp_path / "r.ome.zarr"))
        assert reference.returncode == 0
        np.testing.assert_array_equal(masks_of(output), masks_of(tmp_path / "r.ome.zarr"))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


# Dask -------------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc): the Dask workers (spawned processes) among them."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            kids = (task / "children").read_text().split() if (task / "children").exists() else []
            found += [int(k) for k in kids]
            frontier += [int(k) for k in kids]
    return found


@pytest.mark.slow
@pytest.mark.serial  # a cluster of worker processes
@pytest.mark.one_stack  # Dask's scheduling, not TensorFlow's
def test_two_dask_workers_one_killed_midway_give_the_masks_of_one_process(export, isbi_dir, tmp_path):
    """A local cluster of 2 (one thread each); one worker process SIGKILLed once a block is done: Dask gives its
    blocks to the others, and the masks equal one process's."""
    tifffile.imwrite(tmp_path / "v.tif", tifffile.imread(isbi_dir / "test-volume.tif")[:8, :256, :256])
    flags = ["--strategy", "tile", "--tile_size", "388", "-b", "1"]
    single = run_predict(str(export), str(tmp_path / "v.tif"), *flags, "-o", str(tmp_path / "one.ome.zarr"))
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen([sys.executable, "predict.py", str(export), str(tmp_path / "v.tif"), *flags, "--workers",
                                "2", "-o", str(tmp_path / "two.ome.zarr")], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marks = tmp_path / ".two.ome.zarr.partial" / ".unet2d-blocks"
    deadline, killed = time.monotonic() + 300, None
    try:
        while time.monotonic() < deadline and process.poll() is None and killed is None:
            if marks.is_dir() and any(not m.name.endswith(".part") for m in marks.iterdir()):
                workers = [pid for pid in children(process.pid)
                           if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
                if workers:
                    killed = workers[-1]
                    os.kill(killed, signal.SIGKILL)
            time.sleep(0.05)
        out, err = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=60)
    assert killed is not None, "no worker to kill was found before the run ended"
    assert process.returncode == 0, err[-3000:]
    np.testing.assert_array_equal(masks_of(tmp_path / "two.ome.zarr"), masks_of(tmp_path / "one.ome.zarr"))


def test_a_scheduler_nobody_answers_is_one_line_and_exit_4(export, stack, tmp_path):
    import socket

    with socket.socket() as free:  # a port on 127.0.0.1 that nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    started = time.monotonic()
    done = run_predict(str(export), str(stack / "two.tif"), "--strategy", "tile", "-o", str(tmp_path / "m.ome.zarr"),
                       "--scheduler", f"tcp://127.0.0.1:{port}", "--cluster_timeout", "3")
    assert done.returncode == 4 and len(done.stderr.strip().splitlines()) == 1
    assert f"no Dask scheduler answered at tcp://127.0.0.1:{port} within 3 s" in done.stderr
    assert time.monotonic() - started < 60


def test_masks_go_into_an_ome_zarr_input_as_its_label_image(export, stack, tmp_path):
    """NGFF labels/: listed in the image's labels group, on the image's voxel size, in the image's NGFF version."""
    import convert_volume
    from data_loading.prediction_store import _attributes

    image = tmp_path / "two.ome.zarr"
    assert convert_volume.main([str(stack / "two.tif"), str(image), "--ngff", "0.4", "--scale", "40", "4",
                                "4"]) == 0
    done = run_predict(str(export), str(image), "--strategy", "tile", "--into_input_labels", "membranes",
                       "--overlays", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _attributes(image / "labels")["labels"] == ["membranes"]
    label = _attributes(image / "labels" / "membranes")
    assert label["image-label"]["source"] == {"image": "../../"}
    assert label["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [40.0, 4.0, 4.0]
    assert open_volume(image / "labels" / "membranes").shape == (2, 512, 512)
    assert (tmp_path / "two-membranes-overlays").is_dir()  # pictures beside the image, never inside it
    refused = run_predict(str(export), str(image / "0"), "--strategy", "tile", "--into_input_labels", "x")
    assert refused.returncode == 2 and "needs an OME-Zarr image as the input" in refused.stderr
