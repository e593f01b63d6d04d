"""tf.distribute from the CLI: two local workers (multi_worker, through the launcher) and two logical CPUs (mirrored).

Both must compute what one worker computes on the same global batches: the
reference below trains one model in this process, averaging the gradients of
each replica's batch (with that replica's dropout draw) before every Adam
update. fp32, augmentation off, op determinism on. Faults: a stop signal to
one worker stops both at the same step; a killed worker ends the job.
Every wait is bounded, and only processes started here are signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from common.compat import KERAS_MAJOR
from runtime.parse_results import final_eval, merged_data, read_log
from tests.conftest import (
    ROOT,
    TEST_BASE_FILTERS,
    layer_weights,
    run_cli,
    unet2d_command,
    write_source_checkpoint,
)

LAUNCHER = ROOT / "scripts" / "launch_workers.py"
GLOBAL_STEPS = 2

pytestmark = [pytest.mark.slow,  # every test here runs unet2d.py processes or trains a model in this one
              pytest.mark.skipif(KERAS_MAJOR < 3, reason="the tf.distribute engines are the current stack's "
                                                         "(TF 2.15 scales with Horovod)")]


def train_flags(data_dir: Path, root: Path, replicas: int, *extra: str) -> list[str]:
    return ["--data_dir", str(data_dir), "--exec_mode", "train", "--fold", "0", "--batch_size", "1",
            "--dtype", "fp32", "--no-augment", "--deterministic", "--max_steps", str(GLOBAL_STEPS * replicas),
            "--log_every", "1", "--checkpoint_every", "0", "--model_dir", str(root / "model"),
            "--log_dir", str(root / "logs"), *extra]


def launch(n: int, flags: list[str], *launcher_flags: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(LAUNCHER), "-n", str(n), *launcher_flags, "--",
                           *unet2d_command(*flags, "--distribution", "multi_worker")[1:]],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def reference(data_dir: Path, replicas: int, border_w0: float = 0.0):
    """One model in this process trained on the replicas' batches, gradients averaged: what both engines must give.
    ``border_w0``: with --border_weights (the labels then carry the weight map to the loss)."""
    from common import compat
    from data_loading.data_loader import Dataset, StreamOptions
    from model.unet import build_unet
    from runtime.loop.losses import partial_losses, weight_decay
    from runtime.loop.optimizer import FusedAdam

    compat.set_mixed_bfloat16(False)
    model = build_unet(123, matmul_filter_gradient=True, base_filters=TEST_BASE_FILTERS)
    optimizer = FusedAdam(learning_rate=1e-4)
    optimizer.build(model.trainable_variables)
    options = StreamOptions(batch_size=1, seed=123, augment=False, num_workers=replicas, border_w0=border_w0)
    data = Dataset.isbi(data_dir, options, fold=0, need_test=False)
    streams = [iter(data.train_fn(shard=shard)) for shard in range(replicas)]
    rng = compat.rng_state_variables(model)
    for _ in range(GLOBAL_STEPS):
        state = [v.numpy() for v in rng]
        total = None
        for stream in streams:
            for variable, value in zip(rng, state, strict=True):  # every replica draws dropout from the same state
                variable.assign(value)
            images, labels = next(stream)
            with tf.GradientTape() as tape:
                ce, dice = partial_losses(model(images, training=True), labels)
                loss = ce + dice + weight_decay(model.trainable_variables, 0.0005)
            gradients = tape.gradient(loss, model.trainable_variables)
            total = gradients if total is None else [a + b for a, b in zip(total, gradients, strict=True)]
        optimizer.apply_gradients(zip([g / replicas for g in total], model.trainable_variables, strict=True))
    return model, optimizer


def restored(checkpoint_prefix: str):
    from common import compat
    from model.unet import build_unet
    from runtime.loop.optimizer import FusedAdam

    compat.set_mixed_bfloat16(False)
    model = build_unet(123, base_filters=TEST_BASE_FILTERS)
    optimizer = FusedAdam(learning_rate=1e-4)
    optimizer.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=optimizer).restore(checkpoint_prefix).expect_partial()
    return model, optimizer


def assert_same_training(got, expected) -> None:
    """Weights and both Adam moments within float tolerance of the reference, tensor by tensor.

    Adam's first step moves each weight by about +-lr whatever the gradient's
    size, so a gradient that is zero up to round-off may move either way: the
    weights are compared by the distance relative to how far training moved
    them, the moments by the distance relative to their size.
    """
    (model, optimizer), (ref_model, ref_optimizer) = got, expected
    initial = [v.numpy() for v in restored_initial()]
    for variable, ref, start in zip(model.trainable_variables, ref_model.trainable_variables, initial, strict=True):
        moved = np.linalg.norm(ref.numpy() - start)
        assert np.linalg.norm(variable.numpy() - ref.numpy()) <= 1e-3 * moved + 1e-9, variable.path
    pairs = [list(zip(_slots(optimizer, model, variable), _slots(ref_optimizer, ref_model, variable), strict=True))
             for variable in ref_model.trainable_variables]
    # Round-off in a sum scales with its terms, not with the sum: a bias whose gradient
    # cancels to ~1e-7 (bottleneck_conv1, CI: 1.3e-3 relative apart) is judged against
    # a floor of 1e-5 of the largest moment of its kind. A missing all-reduce or
    # average puts the large tensors 50-100% off, far above it.
    floors = [1e-5 * max(np.linalg.norm(slots[kind][1].numpy()) for slots in pairs) for kind in range(len(pairs[0]))]
    for variable, slots in zip(ref_model.trainable_variables, pairs, strict=True):
        for (mine, theirs), floor in zip(slots, floors, strict=True):
            distance = np.linalg.norm(mine.numpy() - theirs.numpy())
            assert distance <= 1e-3 * np.linalg.norm(theirs.numpy()) + floor, (variable.path, distance, floor)
    assert int(optimizer.iterations.numpy()) == int(ref_optimizer.iterations.numpy()) == GLOBAL_STEPS


def _slots(optimizer, model, ref_variable):
    from common.compat import adam_slots

    variable = next(v for v in model.trainable_variables if v.path == ref_variable.path)
    return adam_slots(optimizer, variable)


def restored_initial():
    from model.unet import build_unet

    return build_unet(123, base_filters=TEST_BASE_FILTERS).trainable_variables


@pytest.fixture(scope="module")
def two_replica_reference(isbi_dir):
    return reference(isbi_dir, 2)


@pytest.fixture(scope="module")
def two_replica_weighted_reference(isbi_dir):
    return reference(isbi_dir, 2, border_w0=10.0)


@pytest.mark.serial  # two worker processes in step
def test_two_workers_hold_identical_state_equal_to_one_worker(isbi_dir, tmp_path, two_replica_reference):
    result = ok(launch(2, train_flags(isbi_dir, tmp_path, 2, "--log_all_workers")))
    folders = [tmp_path / "model" / "model_checkpoint" / f"worker_{rank}" for rank in (0, 1)]
    prefixes = [tf.train.latest_checkpoint(str(folder)) for folder in folders]
    assert all(p and p.endswith(f"checkpoint-{GLOBAL_STEPS}") for p in prefixes), prefixes
    readers = [tf.train.load_checkpoint(p) for p in prefixes]
    names = readers[0].get_variable_to_shape_map()
    assert names == readers[1].get_variable_to_shape_map()
    for name in names:  # weights, Adam moments, step, dropout state: bit for bit
        np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name), err_msg=name)
    assert_same_training(restored(prefixes[0]), two_replica_reference)
    setup = merged_data(read_log(tmp_path / "logs" / "worker_0" / "log.json"), "SETUP")
    assert setup["engine"] == "multi_worker" and setup["workers"] == 2 and setup["replicas"] == 2
    assert "launch_workers.py: worker 1 is process" in result.stderr


def test_mirrored_on_two_logical_cpus_equals_one_worker_with_border_weights(isbi_dir, tmp_path,
                                                                           two_replica_weighted_reference):
    """With --border_weights, so the weight maps are shown to reach each replica's loss with its own batch."""
    ok(run_cli(*train_flags(isbi_dir, tmp_path, 2, "--border_weights"), "--distribution", "mirrored",
               env={"UNET2D_CPU_REPLICAS": "2"}, timeout=900))
    prefix = tf.train.latest_checkpoint(str(tmp_path / "model" / "model_checkpoint"))
    assert prefix.endswith(f"checkpoint-{GLOBAL_STEPS}")
    assert_same_training(restored(prefix), two_replica_weighted_reference)
    setup = merged_data(read_log(tmp_path / "logs" / "log.json"), "SETUP")
    assert setup["engine"] == "mirrored" and setup["workers"] == 1 and setup["replicas"] == 2
    # Evaluation with --tta (8 views in the graph) scores under the engine as in one plain process.
    scores = []
    for name, engine, env in (("mirrored", ["--distribution", "mirrored"], {"UNET2D_CPU_REPLICAS": "2"}),
                              ("single", [], {})):
        ok(run_cli("--data_dir", str(isbi_dir), "--exec_mode", "evaluate", "--fold", "0", "--batch_size", "2",
                   "--dtype", "fp32", "--tta", "--overlays", "0", "--model_dir", str(tmp_path / "model"),
                   "--log_dir", str(tmp_path / name), *engine, env=env, timeout=600))
        scores.append(final_eval(read_log(tmp_path / name / "log.json")))
    for key in ("eval_dice_score", "eval_ce_loss", "eval_v_rand_thinned"):
        assert scores[0][key] == pytest.approx(scores[1][key], rel=1e-5), key


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs TF_CONFIG"),
    ("{not json", "TF_CONFIG is malformed"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}), "TF_CONFIG is malformed"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}),
     "is not in its cluster of 1"),
    (json.dumps({"cluster": {"worker": ["no-port"]}, "task": {"type": "worker", "index": 0}}), "host:port"),
])
def test_bad_tf_config_is_one_line_and_status_2(tmp_path, monkeypatch, tf_config, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    env = {"TF_CONFIG": tf_config} if tf_config is not None else {}
    result = run_cli("--synth_data", "--exec_mode", "train", "--max_steps", "1", "--distribution", "multi_worker",
                     "--model_dir", str(tmp_path / "m"), "--log_dir", str(tmp_path), env=env, timeout=120)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and message in last and last.startswith("unet2d.py: error:"), result.stderr
    assert "Traceback" not in result.stderr


def start_launcher(n: int, flags: list[str]) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, str(LAUNCHER), "-n", str(n), "--all_output", "--",
                             *unet2d_command(*flags, "--distribution", "multi_worker")[1:]],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def worker_pids(stderr_lines: list[str]) -> dict[int, int]:
    return {int(m.group(1)): int(m.group(2)) for line in stderr_lines
            if (m := re.search(r"worker (\d+) is process (\d+)", line))}


def read_until(process: subprocess.Popen, pattern: str, timeout: float) -> list[str]:
    seen, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return seen
        assert time.monotonic() < deadline, f"no '{pattern}' in time"
    raise AssertionError(f"ended before '{pattern}': {''.join(seen)[-2000:]}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_all(process: subprocess.Popen, pids: dict[int, int]) -> None:
    """End what this test started, by PID only."""
    for pid in [*pids.values(), process.pid]:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=60)


@contextlib.contextmanager
def two_workers_at_step(flags: list[str], step: int, steps: int) -> Iterator[tuple[subprocess.Popen, dict[int, int]]]:
    """Two workers under the launcher, once worker 0 has logged ``step``; everything started is ended after."""
    launcher = start_launcher(2, flags)
    pids: dict[int, int] = {}
    try:
        read_until(launcher, rf"^\[0\] DLL .* - \({step}, {steps}\) ", 600)
        pids.update(worker_pids([launcher.stderr.readline() for _ in range(2)]))
        yield launcher, pids
    finally:
        stop_all(launcher, pids)


@pytest.mark.serial  # two worker processes in step
def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_resume_continues(isbi_dir, tmp_path):
    """Started from a trained model with its encoder frozen (--init_from, --freeze_encoder): both workers load it;
    the resumed run takes its own checkpoint, not the source, and the encoder stays the source's to the byte."""
    source = write_source_checkpoint(tmp_path / "source")
    flags = train_flags(isbi_dir, tmp_path, 2, "--max_steps", "400",  # 200 per worker: still running when signalled
                        "--init_from", source, "--freeze_encoder")
    with two_workers_at_step(flags, 2, 200) as (launcher, pids):
        os.kill(pids[1], signal.SIGTERM)  # rank 1 alone
        out, err = launcher.communicate(timeout=300)
    stops = re.findall(r"\[(\d)\] unet2d.py: stopped by SIGTERM after step (\d+)", out)
    assert sorted(rank for rank, _ in stops) == ["0", "1"] and len({step for _, step in stops}) == 1, out[-3000:]
    step = int(stops[0][1])
    assert launcher.returncode == 128 + signal.SIGTERM
    assert re.search(rf"\[1\] unet2d.py: stopped by SIGTERM after step {step}; the chief \(worker 0\) wrote the "
                     "checkpoint; run the same command with --resume_training", out), out[-3000:]
    assert re.search(rf"\[0\] unet2d.py: stopped by SIGTERM after step {step}; wrote checkpoint \S+-{step};", out)
    saved = tf.train.latest_checkpoint(str(tmp_path / "model" / "model_checkpoint"))
    assert saved.endswith(f"checkpoint-{step}")
    # Resumed by one worker (another count than wrote it): from the chief's checkpoint, one step more.
    result = ok(run_cli(*flags, "--max_steps", str(step + 1), "--resume_training", timeout=600))
    records = read_log(tmp_path / "logs" / "log.json")
    assert [r["data"]["step"] for r in records if "restored" in r.get("data", {})][-1] == step
    assert any(r.get("step") == [step + 1, step + 1] for r in records), result.stdout[-2000:]
    started = [r["data"]["initialised_from"] for r in records if "initialised_from" in r.get("data", {})]
    assert started == [source], started  # the first run's chief only: the resumed run did not read the source
    final, first = (layer_weights(p) for p in (saved.rsplit("-", 1)[0] + f"-{step + 1}", source))
    encoder = [name for name in first if name.startswith(("input_", "down"))]
    assert len(encoder) == 8 and all(a.tobytes() == b.tobytes() for name in encoder
                                     for a, b in zip(final[name], first[name], strict=True))


@pytest.mark.serial  # two worker processes in step
def test_a_killed_worker_ends_the_job_and_leaves_no_process(isbi_dir, tmp_path):
    flags = train_flags(isbi_dir, tmp_path, 2, "--max_steps", "400")
    with two_workers_at_step(flags, 1, 200) as (launcher, pids):
        os.kill(pids[1], signal.SIGKILL)
        killed_at = time.monotonic()
        launcher.communicate(timeout=180)
        assert time.monotonic() - killed_at < 120
    assert launcher.returncode == 128 + signal.SIGKILL
    assert not any(alive(pid) for pid in pids.values())


@pytest.mark.serial  # two worker processes in step
def test_two_workers_split_predict_and_write_the_single_workers_masks(isbi_dir, tmp_path):
    import tifffile

    stack = tmp_path / "stack.tif"  # 3 slices: worker 0 segments slices 0 and 2, worker 1 slice 1
    tifffile.imwrite(stack, tifffile.imread(isbi_dir / "test-volume.tif")[:3, :200, :300])
    ok(run_cli(*train_flags(isbi_dir, tmp_path, 1), "--max_steps", "1"))
    predict = ["--exec_mode", "predict", "--predict_input", str(stack), "--dtype", "fp32", "--overlays", "0",
               "--predict_strategy", "tile", "--model_dir", str(tmp_path / "model")]
    ok(run_cli(*predict, "--log_dir", str(tmp_path / "one")))
    single = tifffile.imread(tmp_path / "model" / "predictions" / "stack-masks.tif")
    (tmp_path / "model" / "predictions" / "stack-masks.tif").unlink()
    ok(launch(2, [*predict, "--log_dir", str(tmp_path / "two")]))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "model" / "predictions" / "stack-masks.tif"), single)
    assert set(np.unique(single)) <= {0, 255}
    logged = merged_data(read_log(tmp_path / "two" / "log.json"), "PREDICT")
    assert logged["slices"] == 3
    # An --ensemble of the model with itself, split over the two workers: the same masks again.
    model = str(tmp_path / "model")
    ensemble = [*predict[:-1], str(tmp_path / "ensemble"), "--ensemble", model, model]
    ok(launch(2, [*ensemble, "--log_dir", str(tmp_path / "three")]))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "ensemble" / "predictions" / "stack-masks.tif"), single)
