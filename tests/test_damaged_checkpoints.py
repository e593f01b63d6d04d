"""A damaged newest checkpoint, or a garbled state file, never ends a run that an older checkpoint can serve.

One short training run writes checkpoints of steps 1, 2 and 3; each test
damages a copy of its model dir the way a full disk or a killed copy does,
and checks that evaluate, predict, export and resume fall back to step 2,
warn, give what step 2 gives when loaded directly, and keep the damaged
files. The training run is a subprocess, as a user starts it; the runs on the
damaged copies call ``unet2d.main`` and ``predict.main`` in this process
(``run_main``), with the same exit status and output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from predict import main as predict_main
from runtime.parse_results import read_log
from tests.conftest import run_cli, run_main

pytestmark = pytest.mark.slow  # every test here runs unet2d.py

STEPS = 3


def train_args(data_dir: Path, root: Path, *extra: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--exec_mode", "train", "--fold", "0", "--batch_size", "1",
            "--dtype", "fp32", "--max_steps", str(STEPS), "--log_every", "1", "--deterministic",
            "--no-augment", "--checkpoint_every", "1", "--model_dir", str(root / "model"),
            "--log_dir", str(root / "logs"), *extra]


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(isbi_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("damaged")
    ok(run_cli(*train_args(isbi_dir, root)))
    names = sorted(p.name for p in (root / "model" / "model_checkpoint").iterdir())
    assert [n for n in names if n.endswith(".index")] == [f"checkpoint-{s}.index" for s in (1, 2, 3)]
    return root


@pytest.fixture(scope="module")
def small_stack(isbi_dir, tmp_path_factory) -> Path:
    """Two 120x150 crops of the test volume: enough to compare masks, cheap to segment."""
    path = tmp_path_factory.mktemp("stack") / "small.tif"
    tifffile.imwrite(path, tifffile.imread(isbi_dir / "test-volume.tif")[:2, :120, :150])
    return path


def copy_of(trained: Path, tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    shutil.copytree(trained, root)
    return root


def checkpoint_files(root: Path, step: int) -> list[Path]:
    return sorted((root / "model" / "model_checkpoint").glob(f"checkpoint-{step}.*"))


def truncate_data(root: Path, step: int) -> None:
    data = next(f for f in checkpoint_files(root, step) if ".data-" in f.name)
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size // 2)


def garble_index(root: Path, step: int) -> None:
    index = next(f for f in checkpoint_files(root, step) if f.suffix == ".index")
    index.write_bytes(np.random.default_rng(0).integers(0, 256, index.stat().st_size, np.uint8).tobytes())


def broken_copy(trained: Path, tmp_path: Path, damage) -> tuple[Path, dict[str, bytes]]:
    """A copy whose checkpoint 3 is damaged by ``damage``, and the damaged files' bytes to check later."""
    root = copy_of(trained, tmp_path, "broken")
    damage(root, 3)
    return root, {f.name: f.read_bytes() for f in checkpoint_files(root, 3)}


def only_step_2(trained: Path, tmp_path: Path) -> Path:
    """The reference: the same run with checkpoint 3 never written, so step 2 loads directly."""
    root = copy_of(trained, tmp_path, "direct")
    for file in checkpoint_files(root, 3):
        file.unlink()
    (root / "model" / "model_checkpoint" / "checkpoint").unlink()
    return root


def restored(root: Path) -> list[dict]:
    return [r["data"] for r in read_log(root / "logs" / "log.json") if "restored" in r.get("data", {})]


def eval_metrics(root: Path) -> dict:
    return [r["data"] for r in read_log(root / "logs" / "log.json") if "eval_dice_score" in r.get("data", {})][-1]


def evaluate(data_dir: Path, root: Path):
    return run_main("--data_dir", str(data_dir), "--exec_mode", "evaluate", "--fold", "0", "--batch_size", "2",
                    "--dtype", "fp32", "--overlays", "0", "--model_dir", str(root / "model"),
                    "--log_dir", str(root / "logs"))


def predict(stack: Path, root: Path):
    return run_main("--exec_mode", "predict", "--predict_input", str(stack), "--dtype", "fp32",
                    "--overlays", "0", "--model_dir", str(root / "model"), "--log_dir", str(root / "logs"))


def test_evaluate_falls_back_past_a_truncated_data_file(trained, isbi_dir, tmp_path):
    root, damaged = broken_copy(trained, tmp_path, truncate_data)
    result = ok(evaluate(isbi_dir, root))
    assert "checkpoint-3 is damaged" in result.stdout
    assert restored(root)[-1]["restored"].endswith("checkpoint-2") and restored(root)[-1]["step"] == 2
    direct = only_step_2(trained, tmp_path)
    ok(evaluate(isbi_dir, direct))
    assert eval_metrics(root) == eval_metrics(direct)
    assert {f.name: f.read_bytes() for f in checkpoint_files(root, 3)} == damaged  # kept as it was


def test_predict_and_export_fall_back_past_a_garbled_index(trained, small_stack, tmp_path):
    root, damaged = broken_copy(trained, tmp_path, garble_index)
    result = ok(predict(small_stack, root))
    assert "checkpoint-3 is damaged" in result.stdout
    direct = only_step_2(trained, tmp_path)
    ok(predict(small_stack, direct))
    masks = tifffile.imread(root / "model" / "predictions" / "small-masks.tif")
    np.testing.assert_array_equal(masks, tifffile.imread(direct / "model" / "predictions" / "small-masks.tif"))

    result = ok(run_main("--exec_mode", "export", "--model_dir", str(root / "model"),
                         "--log_dir", str(root / "logs")))
    assert "checkpoint-3 is damaged" in result.stdout and restored(root)[-1]["step"] == 2
    exported = tmp_path / "exported-masks.tif"
    assert predict_main([str(root / "model" / "export"), str(small_stack), "--output", str(exported)]) == 0
    np.testing.assert_array_equal(tifffile.imread(exported), masks)
    assert {f.name: f.read_bytes() for f in checkpoint_files(root, 3)} == damaged


def test_resume_falls_back_and_sets_the_damaged_checkpoint_aside(trained, isbi_dir, tmp_path):
    root, damaged = broken_copy(trained, tmp_path, truncate_data)
    result = ok(run_main(*train_args(isbi_dir, root, "--resume_training", "--max_steps", "4")))
    assert "checkpoint-3 is damaged" in result.stdout
    assert restored(root)[-1]["step"] == 2
    # Step 3 again, from step 2's weights, Adam moments and data stream: the first run's step 3 exactly.
    losses = {}
    for record in read_log(root / "logs" / "log.json"):
        if isinstance(record.get("step"), list) and len(record["step"]) == 2:
            losses.setdefault(record["step"][0], []).append(record["data"]["train_total_loss"])
    assert len(losses[3]) == 2 and losses[3][1] == pytest.approx(losses[3][0], rel=2e-5)
    set_aside = root / "model" / "model_checkpoint" / "damaged"
    assert {f.name: f.read_bytes() for f in set_aside.iterdir()} == damaged  # moved, not deleted
    folder = root / "model" / "model_checkpoint"
    assert sorted(f.name for f in folder.glob("*.index")) == [f"checkpoint-{s}.index" for s in (2, 3, 4)]
    assert 'model_checkpoint_path: "checkpoint-4"' in (folder / "checkpoint").read_text()


def test_every_checkpoint_damaged_is_one_line_and_nothing_is_deleted(trained, isbi_dir, small_stack, tmp_path):
    root = copy_of(trained, tmp_path, "broken")
    for step in (1, 2, 3):
        truncate_data(root, step)
    before = {f.name: f.read_bytes() for f in (root / "model" / "model_checkpoint").iterdir()}
    for result in (predict(small_stack, root),
                   run_main(*train_args(isbi_dir, root, "--resume_training"))):
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and "every checkpoint in" in last and "is damaged" in last, result.stderr
        assert "Traceback" not in result.stderr
    assert {f.name: f.read_bytes() for f in (root / "model" / "model_checkpoint").iterdir()} == before


@pytest.mark.parametrize("state", ["garbled", "missing"])
def test_a_bad_state_file_does_not_hide_intact_checkpoints(trained, small_stack, isbi_dir, tmp_path, state):
    root = copy_of(trained, tmp_path, "state")
    state_file = root / "model" / "model_checkpoint" / "checkpoint"
    if state == "garbled":
        state_file.write_bytes(b"\x00\xffnot a checkpoint state {{{")
    else:
        state_file.unlink()
    ok(predict(small_stack, root))
    assert restored(root)[-1]["restored"].endswith("checkpoint-3") and restored(root)[-1]["step"] == 3
    if state == "garbled":  # resuming repairs the state file, so TensorFlow rotates the old checkpoints again
        ok(run_main(*train_args(isbi_dir, root, "--resume_training", "--max_steps", "4",
                               "--keep_checkpoints", "3")))
        assert restored(root)[-1]["step"] == 3
        folder = root / "model" / "model_checkpoint"
        assert sorted(f.name for f in folder.glob("*.index")) == [f"checkpoint-{s}.index" for s in (2, 3, 4)]
