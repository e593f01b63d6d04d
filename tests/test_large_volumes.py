"""Volumes read a box at a time: every format as one reader, streams equal to memory, bad stores in one line.

Small volumes stand in for large ones: what is checked is that nothing is
read whole (the streamed Dataset equals the in-memory one draw for draw), that
every format gives the same voxels, and that each bad store is one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from common.errors import UserInputError
from data_loading.data_loader import Dataset, DataSources, StreamOptions, read_errors_in_one_line
from data_loading.intensity import fit_window
from data_loading.memory import MemoryNeeds, keep_in_memory
from data_loading.readers import open_volume
from data_loading.volume_reader import read_mirrored
from data_loading.volumes import plan_pairs
from tests.conftest import ROOT, run_predict

ZARR3 = int(__import__("zarr").__version__.split(".")[0]) >= 3
needs_zarr3 = pytest.mark.skipif(not ZARR3, reason="Zarr format 3 needs zarr-python 3 (the current stack)")
SHAPE = (5, 300, 260)


def volume(dtype=np.uint8, seed: int = 0) -> np.ndarray:
    high = 256 if dtype == np.uint8 else 60000
    return np.random.default_rng(seed).integers(0, high, SHAPE).astype(dtype)


def write_zarr(path: Path, data: np.ndarray, chunks: tuple[int, ...], zarr_format: int = 2,
               dimension_names: list[str] | None = None) -> Path:
    import zarr

    if ZARR3:
        extra = {"dimension_names": dimension_names} if zarr_format == 3 and dimension_names else {}
        array = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                                  zarr_format=zarr_format, **extra)
    else:
        array = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype=data.dtype)
    array[...] = data
    return path


def write_ome(path: Path, data: np.ndarray, chunks: tuple[int, ...], version: str, axes: list[str] | None = None,
              levels: int = 1) -> Path:
    """An OME-Zarr image written by hand as the NGFF specification lays it out (levels: 2x downsampled in y, x)."""
    import json

    zarr_format = 3 if version == "0.5" else 2
    axes = axes or ["z", "y", "x"]
    datasets = []
    for level in range(levels):
        step = 2**level
        index = tuple(slice(None, None, step) if name in "yx" else slice(None) for name in axes)
        write_zarr(path / str(level), np.ascontiguousarray(data[index]), chunks, zarr_format, axes)
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [float(step if name in "yx" else 1) for name in axes]}]})
    multiscales = [{"axes": [{"name": name, "type": "channel" if name == "c" else "space"} for name in axes],
                    "datasets": datasets}]
    if zarr_format == 3:
        (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
            "ome": {"version": version, "multiscales": multiscales}}}))
    else:
        (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
        (path / ".zattrs").write_text(json.dumps({"multiscales": [{"version": version, **multiscales[0]}]}))
    return path


def write_hdf5(path: Path, datasets: dict[str, np.ndarray], chunks: tuple[int, ...] | None = None) -> Path:
    import h5py

    with h5py.File(path, "w") as handle:
        for name, data in datasets.items():
            handle.create_dataset(name, data=data, chunks=chunks)
    return path


def write_format(kind: str, folder: Path, data: np.ndarray) -> str:
    """``data`` stored as ``kind``; the spec that names it."""
    if kind == "tiff_uncompressed":
        tifffile.imwrite(folder / "v.tif", data, photometric="minisblack")
        return str(folder / "v.tif")
    if kind == "tiff_deflate":
        tifffile.imwrite(folder / "v.tif", data, photometric="minisblack", compression="zlib")
        return str(folder / "v.tif")
    if kind == "png_folder":
        (folder / "slices").mkdir()
        for index, image in enumerate(data):
            Image.fromarray(image).save(folder / "slices" / f"s{index:02d}.png")
        return str(folder / "slices")
    if kind == "zarr_v2":
        return str(write_zarr(folder / "v.zarr", data, (2, 128, 100)))
    if kind == "zarr_v3_in_group":
        import zarr

        group = zarr.open_group(str(folder / "g.zarr"), mode="w", zarr_format=3)
        group.create_array("raw", shape=data.shape, chunks=(1, 100, 128), dtype=data.dtype)[...] = data
        return str(folder / "g.zarr" / "raw")
    if kind == "ome_0.4":
        return str(write_ome(folder / "v.ome.zarr", data, (1, 128, 128), "0.4"))
    if kind == "ome_0.5_channel":
        return str(write_ome(folder / "v.ome.zarr", data[:, np.newaxis], (1, 1, 128, 128), "0.5",
                             ["z", "c", "y", "x"]))
    if kind == "hdf5_chunked":
        return f"{write_hdf5(folder / 'v.h5', {'volumes/raw': data, 'volumes/other': data[:1]}, (1, 64, 64))}" \
               ":/volumes/raw"
    if kind == "hdf5_one_dataset":
        return str(write_hdf5(folder / "v.hdf", {"raw": data[..., np.newaxis]}))  # a size-1 channel last
    raise ValueError(kind)


FORMATS = ["tiff_uncompressed", "tiff_deflate", "png_folder", "zarr_v2", "ome_0.4", "hdf5_chunked",
           "hdf5_one_dataset", pytest.param("zarr_v3_in_group", marks=needs_zarr3),
           pytest.param("ome_0.5_channel", marks=needs_zarr3)]


@pytest.mark.parametrize("kind", FORMATS)
def test_every_format_reads_as_one_volume_box_by_box(kind, tmp_path):
    data = volume()
    reader = open_volume(write_format(kind, tmp_path, data))
    assert reader.shape == SHAPE and reader.dtype == np.uint8
    np.testing.assert_array_equal(reader.read_all(), data)
    rng = np.random.default_rng(1)
    for _ in range(20):
        z, top, left = int(rng.integers(5)), int(rng.integers(-400, 500)), int(rng.integers(-400, 500))
        height, width = (int(v) for v in rng.integers(1, 600, 2))
        padded = np.pad(data[z], ((1200, 1200), (1200, 1200)), mode="reflect")
        expected = padded[1200 + top:1200 + top + height, 1200 + left:1200 + left + width]
        np.testing.assert_array_equal(read_mirrored(reader, z, top, left, height, width), expected)


def test_an_uncompressed_tiff_is_read_as_byte_ranges_of_the_file(tmp_path):
    data = volume(np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", data, photometric="minisblack")
    reader = open_volume(tmp_path / "v.tif")
    assert reader._offset is not None  # rows straight from the file, no page decoded whole
    np.testing.assert_array_equal(reader.read(3, slice(7, 90), slice(11, 200)), data[3, 7:90, 11:200])


def test_an_ome_zarr_image_reads_level_zero_and_another_level_by_its_array(tmp_path):
    data = volume()
    image = write_ome(tmp_path / "v.ome.zarr", data, (1, 64, 64), "0.4", levels=2)
    np.testing.assert_array_equal(open_volume(image).read_all(), data)
    np.testing.assert_array_equal(open_volume(image / "1").read_all(), data[:, ::2, ::2])


@pytest.mark.parametrize("case, message", [
    ("missing_member", r"the Zarr store .*g.zarr holds no nothing \(it holds raw\)"),
    ("group", r"g.zarr is a Zarr group, not an array or an OME-Zarr image: name one of its arrays \(it holds raw\)"),
    ("two_channels", r"has axes z=5, c=2, y=300, x=260; a volume must have axes z, y, x"),
    ("five_axes", r"has shape \(1, 5, 1, 300, 260\); a volume must be \(z, y, x\) or \(y, x\)"),
    ("hdf5_missing", r"v.h5 holds no dataset /volumes/labels \(its datasets: /volumes/raw\)"),
    ("hdf5_group", r"v.h5:/volumes is an HDF5 group, not a dataset: name one of its datasets"),
    ("hdf5_ambiguous", r"v.h5 holds 2 image datasets: name one as .*v.h5:/path/to/dataset"),
    ("hdf5_not_hdf5", r"cannot read .*v.h5 as an HDF5 file"),
    ("colour_zarr", r"holds complex64 pixels; images must hold integer or float grey values"),
])
def test_a_bad_store_is_one_line(case, message, tmp_path):
    import zarr

    data = volume()
    if case in ("missing_member", "group"):
        group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
        write_zarr(tmp_path / "g.zarr" / "raw", data, (1, 100, 100))
        spec = str(tmp_path / "g.zarr" / ("nothing" if case == "missing_member" else ""))
        del group
    elif case == "two_channels":
        spec = str(write_ome(tmp_path / "v.ome.zarr", np.stack([data, data], axis=1), (1, 1, 100, 100), "0.4",
                             ["z", "c", "y", "x"]))
    elif case == "five_axes":
        spec = str(write_zarr(tmp_path / "v.zarr", data[np.newaxis, :, np.newaxis], (1, 1, 1, 100, 100)))
    elif case == "colour_zarr":
        spec = str(write_zarr(tmp_path / "v.zarr", data.astype(np.complex64), (1, 100, 100)))
    elif case == "hdf5_not_hdf5":
        (tmp_path / "v.h5").write_bytes(b"not an HDF5 file at all")
        spec = str(tmp_path / "v.h5")
    else:
        write_hdf5(tmp_path / "v.h5", {"volumes/raw": data, **({"volumes/more": data} if "ambiguous" in case else {})})
        spec = {"hdf5_missing": f"{tmp_path}/v.h5:/volumes/labels", "hdf5_group": f"{tmp_path}/v.h5:/volumes",
                "hdf5_ambiguous": f"{tmp_path}/v.h5"}[case]
    with pytest.raises(UserInputError, match=message) as caught:
        open_volume(spec, "--train_images")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("damage", ["truncated", "garbled"])
def test_a_damaged_chunk_is_named_by_its_index_and_file(damage, tmp_path):
    data = volume()
    import zarr
    from numcodecs import Zlib

    options = {"compressors": Zlib()} if ZARR3 else {"compressor": Zlib()}
    array = zarr.open_array(str(tmp_path / "v.zarr"), mode="w", shape=data.shape, chunks=(1, 150, 130),
                            dtype=data.dtype, **options) if not ZARR3 else zarr.create_array(
        store=str(tmp_path / "v.zarr"), shape=data.shape, chunks=(1, 150, 130), dtype=data.dtype, zarr_format=2,
        **options)
    array[...] = data
    chunk = tmp_path / "v.zarr" / "3.1.0"
    content = chunk.read_bytes()
    chunk.write_bytes(content[:len(content) // 2] if damage == "truncated" else b"\x00" * len(content))
    reader = open_volume(tmp_path / "v.zarr")
    np.testing.assert_array_equal(reader.read(2), data[2])  # the rest reads
    with pytest.raises(UserInputError, match=r"cannot read chunk \(3, 1, 0\) of .*v.zarr \(.*v.zarr/3.1.0\): .*"
                                             r"the chunk is damaged or truncated"):
        reader.read(3, slice(140, 160), slice(0, 50))


@pytest.mark.skipif(ZARR3, reason="zarr-python 3 reads format 3; the refusal is the TF 2.15 stack's")
def test_zarr_format_3_on_zarr_python_2_is_one_line(tmp_path):
    import json

    store = tmp_path / "v.zarr"
    store.mkdir()
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "array", "shape": [2, 4, 4],
                                                 "data_type": "uint8", "chunk_grid": {"name": "regular",
                                                 "configuration": {"chunk_shape": [1, 4, 4]}}}))
    with pytest.raises(UserInputError, match=r"is Zarr format 3 \(OME-Zarr 0.5\), which zarr-python 2.* cannot "
                                             r"read: .*convert_volume.py --ngff 0.4"):
        open_volume(store)


def test_a_store_on_a_read_only_file_system_reads_and_is_left_as_it_was(tmp_path):
    data = volume()
    source = tmp_path / "source"
    source.mkdir()
    spec = write_format("ome_0.4", source, data)
    mounted = tmp_path / "ro"
    mounted.mkdir()
    bind = subprocess.run(["mount", "--bind", str(source), str(mounted)], capture_output=True, timeout=30)
    if bind.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bind.stderr.decode().strip()}")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(mounted)], capture_output=True,
                          timeout=30).returncode != 0:
            pytest.skip("cannot remount read-only here")
        with pytest.raises(OSError):
            (mounted / "probe").write_text("x")  # truly read-only, even for root
        before = sorted(p.relative_to(source) for p in source.rglob("*"))
        store = mounted / Path(spec).name
        np.testing.assert_array_equal(open_volume(store).read_all(), data)
        assert sorted(p.relative_to(source) for p in source.rglob("*")) == before
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True, timeout=30)


def test_an_hdf5_file_held_open_for_writing_is_refused_at_once(tmp_path):
    path = write_hdf5(tmp_path / "v.h5", {"raw": volume()})
    holder = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               f"f = h5py.File({str(path)!r}, 'a')\nprint('open', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"  # bounded by the holder's own 60 s
        with pytest.raises(UserInputError, match=r"another process holds it open for writing \(HDF5 file lock\)"):
            open_volume(f"{path}:/raw")
    finally:
        holder.kill()
        holder.wait(timeout=30)


# Streams: the same draws from a store as from memory ------------------------------------------------------


def isbi_as_stores(isbi_dir: Path, folder: Path, slices: int = 10) -> dict[str, str]:
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:slices]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:slices]
    tifffile.imwrite(folder / "images.tif", images)
    tifffile.imwrite(folder / "labels.tif", labels)
    return {"tif_images": str(folder / "images.tif"), "tif_labels": str(folder / "labels.tif"),
            "zarr_images": str(write_ome(folder / "images.ome.zarr", images, (1, 128, 128), "0.4")),
            "zarr_labels": str(write_zarr(folder / "labels.zarr", labels, (1, 256, 256)))}


@pytest.mark.parametrize("input_mode", ["tile", "resize"])
def test_a_streamed_store_gives_the_batches_of_the_stack_in_memory(input_mode, isbi_dir, tmp_path):
    stores = isbi_as_stores(isbi_dir, tmp_path)

    def dataset(images: str, labels: str, keep: bool) -> Dataset:
        sources = DataSources(plan_pairs([images], [labels], "--train_images", "--train_labels"))
        return Dataset(sources, StreamOptions(batch_size=2, seed=4, elastic_sigma=10.0), 1, input_mode=input_mode,
                       keep_in_memory=keep)

    memory = dataset(stores["tif_images"], stores["tif_labels"], True)
    streamed = dataset(stores["zarr_images"], stores["zarr_labels"], False)
    assert streamed.describe_split()["volume_loading"] == "stream"
    for ours, theirs in zip(streamed.train_fn(start_step=3).take(2), memory.train_fn(start_step=3).take(2),
                            strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    for ours, theirs in zip(streamed.eval_fn(), memory.eval_fn(), strict=True):
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    for (a, b), (c, d) in zip(streamed.validation_slices(), memory.validation_slices(), strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_a_bad_label_in_a_streamed_volume_stops_the_stream_in_one_line(tmp_path):
    images, labels = volume(), np.zeros(SHAPE, np.uint8)
    labels[3, 100:, :] = 7
    write_zarr(tmp_path / "i.zarr", images, (1, 300, 260))
    write_zarr(tmp_path / "l.zarr", labels, (1, 300, 260))
    sources = DataSources(plan_pairs([str(tmp_path / "i.zarr")], [str(tmp_path / "l.zarr")], "-i", "-l"))
    data = Dataset(sources, StreamOptions(batch_size=5, seed=0, augment=False), None, input_mode="resize",
                   keep_in_memory=False)
    with pytest.raises(UserInputError, match=r"^label value 7 in slice 3 of .*l.zarr: with --num_classes 2 labels "
                                             r"must be two-valued"):
        with read_errors_in_one_line():
            next(iter(data.train_fn()))


@pytest.mark.one_stack  # NumPy only
def test_the_window_from_sampled_chunks_lands_within_a_grey_level_of_the_whole_stack(isbi_dir, tmp_path):
    """16-bit ISBI (value x 37 + 1200, plus noise) in chunks of 64 x 64: read whole by default (it is far below
    the 2 GiB read budget), and from half its chunks when the budget is cut to half its size."""
    images = tifffile.imread(isbi_dir / "train-volume.tif").astype(np.uint16) * 37 + 1200
    images += np.random.default_rng(0).integers(0, 37, images.shape, dtype=np.uint16)
    store = open_volume(write_zarr(tmp_path / "wide.zarr", images, (1, 64, 64)))
    whole = fit_window([images], "the training images")
    assert fit_window([store], "the training images") == whole
    sampled = fit_window([store], "the training images", read_budget=images.nbytes // 2)
    assert "3,932,160 values of 3,932,160 voxels read in whole chunks, of 7,864,320" in sampled.source
    grey_level = (whole.high - whole.low) / 255
    assert abs(sampled.low - whole.low) <= grey_level and abs(sampled.high - whole.high) <= grey_level
    assert fit_window([store], "the training images", read_budget=images.nbytes // 2) == sampled  # seeded
    thinned = fit_window([store], "x", read_budget=images.nbytes // 2, value_budget=2**18)
    assert "263,040 values of 3,932,160 voxels" in thinned.source  # every 15th of each chunk: at most 2^18


@pytest.mark.one_stack  # NumPy and scikit-image only
def test_scores_added_slice_by_slice_equal_those_of_the_whole_stack(isbi_dir):
    """What evaluation of a volume larger than memory keeps (a few numbers a slice) gives the stack's scores."""
    from runtime.inference.metrics import challenge_scores, class_dice
    from runtime.inference.scores import SliceScores
    from runtime.inference.strategies import class_ids
    from runtime.inference.thinned import thinned_scores

    truths = (tifffile.imread(isbi_dir / "train-labels.tif")[:2] // 255).astype(np.uint8)
    rng = np.random.default_rng(2)
    cell = np.clip(0.15 + 0.7 * truths + rng.normal(0, 0.25, truths.shape), 0, 1).astype(np.float32)
    maps = np.stack([1 - cell, cell], axis=-1)
    predicted = [class_ids(m) for m in maps]
    scores = SliceScores(2)
    for truth, ids, probabilities in zip(truths, predicted, maps, strict=True):
        scores.add(truth, ids, probabilities)
    whole = {**challenge_scores(truths, predicted), **thinned_scores(truths, maps[..., 1]),
             **class_dice(truths, predicted, 2)}
    ours = scores.scores()
    assert ours.keys() == whole.keys() and len(ours) == 9
    for name, value in whole.items():
        assert abs(ours[name] - value) <= 1e-12, name


# Memory: stream when it does not fit, and say so --------------------------------------------------------


@pytest.mark.one_stack  # arithmetic only
def test_auto_streams_what_does_not_fit_and_memory_names_the_streaming_route(monkeypatch):
    monkeypatch.setenv("UNET2D_MEMORY_LIMIT_GIB", "1")
    gib = 2**30
    assert keep_in_memory("auto", MemoryNeeds(gib // 4, gib // 8)) is True
    assert keep_in_memory("auto", MemoryNeeds(3 * gib, gib // 8)) is False
    assert keep_in_memory("stream", MemoryNeeds(gib // 4, gib // 8)) is False
    with pytest.raises(UserInputError, match=r"need about 3.0 GiB of memory, but only 1.0 GiB is available; "
                                             r"--volume_loading stream reads them a tile at a time"):
        keep_in_memory("memory", MemoryNeeds(3 * gib, gib // 8))
    weights = "--border_weights keeps a weight map of every training slice in memory (2.0 GiB here)"
    with pytest.raises(UserInputError, match=r"^--volume_loading stream: --border_weights keeps"):
        keep_in_memory("stream", MemoryNeeds(3 * gib, gib // 8, weights))
    with pytest.raises(UserInputError, match=r"streaming route|stream reads them a tile at a time \(but "
                                             r"--border_weights"):
        keep_in_memory("auto", MemoryNeeds(3 * gib, gib // 8, weights))
    with pytest.raises(UserInputError, match=r"streamed, need about 2.0 GiB"):
        keep_in_memory("auto", MemoryNeeds(3 * gib, 2 * gib))


def test_the_run_streams_a_store_larger_than_its_memory_share(isbi_dir, tmp_path, monkeypatch):
    from common.config import RunConfig
    from runtime.cli.arguments import parse_args
    from runtime.cli.inputs import plan_run

    stores = isbi_as_stores(isbi_dir, tmp_path)
    flags = ["--train_images", stores["zarr_images"], "--train_labels", stores["zarr_labels"], "--fold", "0",
             "--model_dir", str(tmp_path / "m"), "--input_mode", "tile"]
    assert plan_run(RunConfig.from_flags(vars(parse_args(flags)))).in_memory is True
    # In memory the 10 slices take 27 MB (images, labels, the labels' check, one slice at work), streamed 17 MB.
    monkeypatch.setenv("UNET2D_MEMORY_LIMIT_GIB", "0.02")
    assert plan_run(RunConfig.from_flags(vars(parse_args(flags)))).in_memory is False
    with pytest.raises(UserInputError, match=r"--volume_loading stream reads them a tile at a time"):
        plan_run(RunConfig.from_flags(vars(parse_args([*flags, "--volume_loading", "memory"]))))
    with pytest.raises(UserInputError, match=r"--volume_loading stream: --border_weights"):
        plan_run(RunConfig.from_flags(vars(parse_args([*flags, "--volume_loading", "stream", "--border_weights"]))))


# Conversion ------------------------------------------------------------------------------------------


def test_convert_writes_an_ome_zarr_that_reads_back_and_never_replaces_an_output(tmp_path):
    import convert_volume

    data = volume(np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", data, compression="zlib")
    output = tmp_path / "v.ome.zarr"
    assert convert_volume.main([str(tmp_path / "v.tif"), str(output), "--chunks", "2", "128", "128"]) == 0
    reader = open_volume(output)
    assert reader.chunks == (2, 128, 128) and reader.dtype == np.uint16
    np.testing.assert_array_equal(reader.read_all(), data)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert convert_volume.main([str(tmp_path / "v.tif"), str(output)]) == 2  # exists: refused, left alone
    np.testing.assert_array_equal(open_volume(output).read_all(), data)
    hdf5 = write_hdf5(tmp_path / "c.hdf", {"volumes/raw": data})
    assert convert_volume.main([f"{hdf5}:/volumes/raw", str(tmp_path / "c.ome.zarr"), "--ngff", "0.4"]) == 0
    np.testing.assert_array_equal(open_volume(tmp_path / "c.ome.zarr").read_all(), data)


@needs_zarr3
def test_ome_zarr_py_reads_what_convert_writes(tmp_path):
    ome_zarr = pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    data = volume()
    tifffile.imwrite(tmp_path / "v.tif", data)
    for version in ("0.5", "0.4"):
        output = tmp_path / f"v{version}.ome.zarr"
        done = subprocess.run([sys.executable, "convert_volume.py", str(tmp_path / "v.tif"), str(output), "--ngff",
                               version], cwd=ROOT, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"(OME-Zarr {version}, 5 slices of 300x260 uint8" in done.stdout
        image = next(iter(Reader(parse_url(str(output)))()))
        assert [axis["name"] for axis in image.metadata["axes"]] == ["z", "y", "x"], ome_zarr.__version__
        np.testing.assert_array_equal(np.asarray(image.data[0]), data)


# Prediction from a store -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from model.unet import build_unet
    from runtime.inference.export import export_model
    from tests.conftest import TEST_BASE_FILTERS

    return export_model(build_unet(3, 2, base_filters=TEST_BASE_FILTERS), tmp_path_factory.mktemp("e") / "x")[0].parent


def test_predict_py_segments_a_store_as_it_segments_the_tiff(export, isbi_dir, tmp_path):
    stores = isbi_as_stores(isbi_dir, tmp_path, slices=3)
    from_tiff = run_predict(str(export), stores["tif_images"], "-o", str(tmp_path / "a.tif"), "--strategy", "tile",
                            "--cell_labels")
    from_store = run_predict(str(export), stores["zarr_images"], "--strategy", "tile", "--cell_labels",
                             "--overlays", "1", "-o", str(tmp_path / "images-masks.tif"))
    assert from_tiff.returncode == 0 and from_store.returncode == 0, from_store.stderr[-2000:]
    default = tmp_path / "images-masks.tif"  # beside the store, never inside it
    assert f"wrote 3 masks of 512x512 to {default}" in from_store.stdout
    np.testing.assert_array_equal(tifffile.imread(default), tifffile.imread(tmp_path / "a.tif"))
    cells = tifffile.imread(tmp_path / "images-cells.tif")
    assert cells.dtype == np.uint16 and cells.shape == (3, 512, 512)
    np.testing.assert_array_equal(cells, tifffile.imread(tmp_path / "a-cells.tif"))
    assert (tmp_path / "images-masks-overlays").is_dir()


def test_predict_py_refuses_a_slice_that_does_not_fit_in_one_line(export, tmp_path, monkeypatch):
    write_zarr(tmp_path / "v.zarr", np.zeros((1, 4096, 4096), np.uint8), (1, 1024, 1024))
    monkeypatch.setenv("UNET2D_MEMORY_LIMIT_GIB", "0.25")
    done = run_predict(str(export), str(tmp_path / "v.zarr"), "--strategy", "tile")
    assert done.returncode == 2
    assert "one slice of" in done.stderr and "4096x4096) need about 1.0 GiB of memory" in done.stderr


# Through the command line ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.one_stack  # the streams of both stacks are compared in the quick tier
def test_train_evaluate_and_predict_streamed_from_ome_zarr_as_from_memory(isbi_dir, tmp_path):
    """unet2d.py on OME-Zarr stores streamed: trains, and evaluates and predicts exactly as with the stacks in
    memory (the same 17 evaluation numbers, the same masks)."""
    from runtime.parse_results import read_log
    from tests.conftest import run_main

    stores = isbi_as_stores(isbi_dir, tmp_path, slices=8)
    model = tmp_path / "model"
    common = ["--input_mode", "tile", "-b", "2", "--model_dir", str(model), "--overlays", "1"]
    trained = run_main("--exec_mode", "train", "--train_images", stores["zarr_images"], "--train_labels",
                       stores["zarr_labels"], "--fold", "0", "--max_steps", "2", "--warmup_steps", "0",
                       "--volume_loading", "stream", "--log_dir", str(tmp_path / "train"), *common)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "volume_loading : stream" in trained.stdout
    scores = {}
    for loading in ("memory", "stream"):
        done = run_main("--exec_mode", "evaluate", "--train_images", stores["zarr_images"], "--train_labels",
                        stores["zarr_labels"], "--fold", "0", "--volume_loading", loading, "--log_dir",
                        str(tmp_path / loading), *common)
        assert done.returncode == 0, done.stderr[-2000:]
        scores[loading] = next(r["data"] for r in read_log(tmp_path / loading / "log.json")
                               if "eval_v_rand_thinned" in r.get("data", {}))
    assert scores["memory"] == scores["stream"] and len([k for k in scores["stream"] if k.startswith("eval_")]) == 13
    masks = {}
    for loading, images in (("memory", stores["tif_images"]), ("stream", stores["zarr_images"])):
        done = run_main("--exec_mode", "predict", "--test_images", images, "--volume_loading", loading,
                        "--cell_labels", "--log_dir", str(tmp_path / f"p{loading}"), *common)
        assert done.returncode == 0, done.stderr[-2000:]
        masks[loading] = tifffile.imread(model / "predictions" / "images-masks.tif")
        assert tifffile.imread(model / "predictions" / "images-cells.tif").shape == (8, 512, 512)
    np.testing.assert_array_equal(masks["memory"], masks["stream"])
