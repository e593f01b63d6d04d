"""Shared fixtures: ISBI-shaped test data found the way a user has it, and a CLI runner.

The data is looked for in ``UNET2D_TEST_DATA`` (if set), then
``../shared/data/isbi2012`` beside the clone, then ``./data`` (where
``download_dataset.py`` puts it). ``UNET2D_TEST_DATA_SEARCH`` (folders
separated by ``:``) replaces that list, e.g. with an empty folder to try the
suite as on a machine without the data. When no folder holds the three files,
the synthetic EM dataset (same names and shapes) is generated once and cached
under ``~/.cache/unet2d/test-data``, every test runs on it, and only the
tests marked ``real_isbi`` (their assertions need the real ISBI pixels) are
skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests of behaviour (resume, signals, locks, distribution, errors...) run the UNet's code paths at this width:
# about 1/60 of the recipe's FLOPs, with its bottleneck (16 x 8 = 128 channels) still on the CPU's matmul
# weight gradient. The few tests about the recipe's model itself pass --base_filters 64.
TEST_BASE_FILTERS = 8
TEST_WIDTH = ("--base_filters", str(TEST_BASE_FILTERS))
ISBI_FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif")
SYNTHETIC_SEED = 0  # the cache folder's name carries it, so a new seed never reuses an old folder


def search_path() -> list[Path]:
    if "UNET2D_TEST_DATA_SEARCH" in os.environ:
        return [Path(p) for p in os.environ["UNET2D_TEST_DATA_SEARCH"].split(os.pathsep) if p]
    explicit = [Path(os.environ["UNET2D_TEST_DATA"])] if os.environ.get("UNET2D_TEST_DATA") else []
    return [*explicit, ROOT.parent / "shared" / "data" / "isbi2012", ROOT / "data"]


def synthetic_cache() -> Path:
    base = Path(os.environ.get("UNET2D_TEST_CACHE", Path.home() / ".cache" / "unet2d" / "test-data"))
    return base / f"synthetic-em-30x512-seed{SYNTHETIC_SEED}"


def _generate_synthetic(folder: Path) -> None:
    """Write the synthetic dataset into ``folder`` once, atomically: a killed run leaves no half folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two suites at once: one generates, the other waits
        if all((folder / name).is_file() for name in ISBI_FILES):
            return
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
        done = subprocess.run([sys.executable, str(ROOT / "download_dataset.py"), "--synthetic",
                               "--seed", str(SYNTHETIC_SEED), "--data_dir", str(staging)],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"generating the synthetic test data failed: {done.stderr[-2000:]}")
        os.replace(staging, folder)


@cache
def find_test_data() -> tuple[Path, bool]:
    """The data folder the suite runs on, and whether it holds the real ISBI 2012 pixels."""
    from data_loading.isbi import verification_problem

    for folder in search_path():
        if all((folder / name).is_file() for name in ISBI_FILES):
            real = all(verification_problem(folder / name, name) is None for name in ISBI_FILES)
            return folder, real
    folder = synthetic_cache()
    _generate_synthetic(folder)
    return folder, False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "real_isbi: the assertions need the real ISBI 2012 pixels")
    config.addinivalue_line("markers", "slow: over about 20 s (subprocess training runs, several workers, the "
                                       "full-width model); -m 'not slow' is the quick tier")
    config.addinivalue_line("markers", "bf16_kernels: runs bfloat16 convolutions or matmuls in this process; "
                                       "skipped only where bf16 cannot run at all (runtime.execution.device)")
    config.addinivalue_line("markers", "one_stack: code whose path is the same on every TensorFlow version (bash "
                                       "scripts, benchmark bookkeeping, the test-data fallback); skipped where "
                                       "UNET2D_ONE_STACK_DONE=1 says another stack's run covers it")
    config.addinivalue_line("markers", "serial: several processes whose timing the test depends on (workers, "
                                       "signals, locks, start-up deadlines): run alone, after the parallel phase")


@cache
def bf16_unrunnable() -> str | None:
    """Why bf16 kernels would fail outright here (an AVX-512 CPU with oneDNN capped below it); None if they run."""
    from runtime.execution.device import cpu_bf16_support, cpu_flags, onednn_isa_cap, onednn_opts_enabled, read_cpuinfo

    return cpu_bf16_support(cpu_flags(read_cpuinfo()), onednn_isa_cap(), onednn_opts_enabled()).unrunnable


@cache
def machine_line() -> str:
    """The CPU kind and what --dtype auto picks on it: which kind of machine a test log came from."""
    done = subprocess.run([sys.executable, "-m", "runtime.cli.machine", "--no_hpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    return f"machine: {lines[-1]}" if done.returncode == 0 and lines else f"machine: unknown ({done.stderr[-300:]})"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say which data the suite runs on, first thing, even under -q (which hides report headers)."""
    folder, real = find_test_data()
    what = "the real ISBI 2012 data" if real else "synthetic EM data (tests marked real_isbi are skipped)"
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for line in (machine_line(), f"test data: {what} in {folder}"):
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips = {}
    if not find_test_data()[1]:
        skips["real_isbi"] = pytest.mark.skip(reason="needs the real ISBI 2012 pixels; running on synthetic data")
    if bf16_unrunnable():
        skips["bf16_kernels"] = pytest.mark.skip(reason=f"bf16 cannot run here: {bf16_unrunnable()}")
    if os.environ.get("UNET2D_ONE_STACK_DONE") == "1":
        skips["one_stack"] = pytest.mark.skip(reason="the same on every stack: run on the current stack")
    for item in items:
        for keyword, skip in skips.items():
            if keyword in item.keywords:
                item.add_marker(skip)
    # scripts/run_tests.sh runs the suite in two phases: the rest on both cores (pytest-xdist), then the serial
    # tests alone. Deselected, not skipped: each phase reports only what it ran.
    phase = os.environ.get("UNET2D_TEST_PHASE")
    if phase in ("parallel", "serial"):
        chosen = [item for item in items if ("serial" in item.keywords) == (phase == "serial")]
        config.hook.pytest_deselected(items=[item for item in items if item not in chosen])
        items[:] = chosen


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    """ISBI-shaped data (three 30x512x512 stacks): the real files when found, else the synthetic ones."""
    return find_test_data()[0]


@pytest.fixture
def isbi_copy(isbi_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the data, for tests that break one file."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ISBI_FILES:
        shutil.copyfile(isbi_dir / name, folder / name)
    return folder


def unet2d_command(*args: str) -> list[str]:
    """The command line of unet2d.py with ``args``, at the tests' width unless ``args`` name one."""
    width = () if "--base_filters" in args else TEST_WIDTH
    return [sys.executable, str(ROOT / "unet2d.py"), *args, *width]


def run_cli(*args: str, timeout: float = 600, env: dict[str, str] | None = None,
            file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """Run unet2d.py in a subprocess, as a user would (at the tests' width: ``unet2d_command``).

    ``file_size_limit`` (bytes) caps every file the process writes, as a full disk
    would: Python ignores SIGXFSZ, so the write fails with EFBIG instead. The
    timeout bounds a hang; it is no speed assertion.
    """
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", **(env or {})}

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    return subprocess.run(unet2d_command(*args), cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_file_size if file_size_limit else None)


def write_source_checkpoint(folder: Path, num_classes: int = 2, seed: int = 7) -> str:
    """A checkpoint prefix holding a UNet at the tests' width, as --init_from reads it (weights only)."""
    import tensorflow as tf

    from model.unet import build_unet

    model = build_unet(seed, num_classes, base_filters=TEST_BASE_FILTERS)
    return tf.train.Checkpoint(model=model).write(str(Path(folder) / "source"))


def layer_weights(checkpoint: str, num_classes: int = 2) -> dict:
    """Each layer's weights (NumPy arrays) in a checkpoint of this project, by layer name."""
    import tensorflow as tf

    from model.unet import build_unet

    model = build_unet(0, num_classes, base_filters=TEST_BASE_FILTERS)
    tf.train.Checkpoint(model=model).read(checkpoint).expect_partial().assert_existing_objects_matched()
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def run_main(*args: str) -> subprocess.CompletedProcess:
    """``run_cli``'s result from unet2d.main in this process (at the tests' width).

    For runs whose subject is not the process around them (flag and input
    errors, short trainings, evaluations, exports): each saves the seconds a
    new process spends importing TensorFlow. What such a run sets for the
    whole process is undone after it: Keras's mixed-precision policy (bf16
    runs) and op determinism (--deterministic). Runs that dump debug info,
    whose subject is signals, hangs, exit statuses of processes, the terminal
    or a file-size limit stay in subprocesses.
    """
    import unet2d
    from common import compat

    argv = unet2d_command(*args)[2:]
    try:
        status, out, err = _in_process(unet2d.main, argv)
    finally:
        compat.set_mixed_bfloat16(False)
        if "--deterministic" in args:  # enable_op_determinism's undo is not exported; both stacks have it
            from tensorflow.python.framework.config import disable_op_determinism
            disable_op_determinism()
    return subprocess.CompletedProcess(argv, status, out, err)


def run_predict(*args: str) -> subprocess.CompletedProcess:
    """``run_main`` for predict.py: its main in this process, with the result a subprocess would give."""
    import predict

    status, out, err = _in_process(predict.main, list(args))
    return subprocess.CompletedProcess(["predict.py", *args], status, out, err)


def _in_process(main, argv: list[str]) -> tuple[int, str, str]:
    """A command-line main's exit status and what it printed (argparse's exit included)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as flag_error:  # argparse's way out, as the process would end
            status = flag_error.code
    return status, out.getvalue(), err.getvalue()
