"""train_and_evaluate.sh end to end at a few steps per fold, its average checked against the per-fold logs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from runtime.parse_results import final_eval, read_log
from tests.conftest import ROOT, TEST_WIDTH
from tests.horovod_support import require_horovod

SCRIPT = ROOT / "train_and_evaluate.sh"


def run_script(*args, timeout=1200, **extra_env):
    env = {**os.environ, "PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "3", **extra_env}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)


def check_average(results, env_name, stdout, ran=range(5)):
    """The printed averages are those of the folds that ran, and no other fold ran."""
    logs = {k: results / f"{env_name}_fold{k}.log" for k in range(5)}
    assert [k for k, log in logs.items() if log.is_file()] == list(ran)
    folds = []
    for k in ran:
        run_dir = results / f"{env_name}_fold{k}"
        log_json = run_dir / "log.json" if (run_dir / "log.json").exists() else run_dir / "worker_0" / "log.json"
        folds.append(final_eval(read_log(log_json)))
    challenge = r"\(ISBI 2012 challenge score: thinned, best threshold\)"
    for key, printed_as in (("eval_dice_score", "dice score"), ("eval_v_rand", "V_Rand of the mask"),
                            ("eval_v_info", "V_Info of the mask"), ("eval_v_rand_thinned", f"V_Rand {challenge}"),
                            ("eval_v_info_thinned", f"V_Info {challenge}")):
        printed = float(re.search(rf"Evaluation {printed_as}: ([0-9.e-]+)", stdout).group(1))
        assert printed == pytest.approx(sum(fold[key] for fold in folds) / len(folds), rel=1e-9), key
    assert f"(average of {len(folds)} folds)" in stdout


def auto_dtype() -> str:
    """What --dtype auto runs as on this machine: the 5-fold script names its runs after it."""
    done = subprocess.run([sys.executable, "-m", "runtime.cli.machine", "--dtype_only"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.one_stack  # one worker: the Python under the script is the same on both stacks
@pytest.mark.slow
def test_five_folds_one_worker_then_their_ensemble(isbi_dir, tmp_path):
    result = run_script(isbi_dir, tmp_path, 1, "auto", 1, "--max_steps", "1", "--log_every", "1", *TEST_WIDTH,
                        ENSEMBLE="1")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    env_name = f"{auto_dtype()}_1hpu"
    check_average(tmp_path, env_name, result.stdout)
    ensemble = tmp_path / f"{env_name}_ensemble"
    restored = [r["data"] for r in read_log(ensemble / "log.json") if r.get("step") == "CHECKPOINT"]
    assert [Path(p).parts[-3] for p in restored[0]["ensemble"]] == [f"{env_name}_fold{k}" for k in range(5)]
    masks = list((ensemble / "predictions").glob("*-masks.tif"))
    assert len(masks) == 1 and tifffile.imread(masks[0]).shape == (30, 512, 512)


@pytest.mark.slow
@pytest.mark.serial  # two workers in step
def test_two_workers_on_a_subset_of_folds(isbi_dir, tmp_path):
    """Horovod under mpirun on the TF 2.15 stack; TensorFlow's multi-worker engine through the launcher on 2.16+.

    One fold is enough to see the engine; FOLDS keeps the other four from running (five folds: 110-260 s).
    An earlier run's fold 0 in the same folder stays out of the average.
    """
    import tensorflow as tf

    horovod_stack = tuple(int(v) for v in tf.__version__.split(".")[:2]) < (2, 16)
    if horovod_stack:
        require_horovod()
    stale = tmp_path / "fp32_2hpu_fold0"
    stale.mkdir()
    (stale / "log.json").write_text('DLLL {"type": "LOG", "step": [], "data": {"eval_dice_score": 9.0}}\n')
    result = run_script(isbi_dir, tmp_path, 1, "fp32", 2, "--max_steps", "2", "--log_every", "1", *TEST_WIDTH,
                        FOLDS="3")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    check_average(tmp_path, "fp32_2hpu", result.stdout, ran=[3])
    if horovod_stack:
        assert "--use_horovod" in result.stdout and "mpirun" in result.stdout
    else:
        assert "launch_workers.py -n 2" in result.stdout and "--distribution multi_worker" in result.stdout
        setup = [line for line in (tmp_path / "fp32_2hpu_fold3.log").read_text().splitlines() if " SETUP " in line]
        assert setup and "engine : multi_worker" in setup[0] and "replicas : 2" in setup[0], setup


@pytest.mark.one_stack
@pytest.mark.parametrize("args, message", [
    ((), "expected at least 5 arguments"),
    (("DATA", "out", "8", "fp16", "1"), "precision must be auto, fp32 or bf16"),
    (("DATA", "out", "0", "bf16", "1"), "batch_size must be a positive integer"),
    (("DATA", "out", "8", "bf16", "two"), "workers must be a positive integer"),
    (("/nonexistent", "out", "8", "bf16", "1"), "data_dir is not a folder"),
    (("DATA", "out", "8", "bf16", "1", "FOLDS=5"), "FOLDS must hold fold numbers 0-4"),
    (("DATA", "out", "8", "bf16", "1", "FOLDS=0,1"), "FOLDS must hold fold numbers 0-4"),
    (("DATA", "out", "8", "bf16", "1", "FOLDS=1 2 1"), "FOLDS repeats a fold"),
    (("DATA", "out", "8", "bf16", "1", "FOLDS=  "), "FOLDS is empty"),
])
def test_usage_errors(isbi_dir, tmp_path, args, message):
    env = dict(a.split("=", 1) for a in args if a.startswith("FOLDS="))
    args = tuple(str(isbi_dir) if a == "DATA" else str(tmp_path / a) if a == "out" else a
                 for a in args if not a.startswith("FOLDS="))
    result = run_script(*args, **env)
    assert result.returncode == 2 and "usage:" in result.stderr and message in result.stderr


@pytest.mark.one_stack
@pytest.mark.slow
def test_stops_at_the_first_failed_fold(isbi_copy, tmp_path):
    (isbi_copy / "train-labels.tif").write_bytes(b"broken")
    result = run_script(isbi_copy, tmp_path / "out", 1, "fp32", 1, "--max_steps", "1", *TEST_WIDTH)
    assert result.returncode == 1
    assert "fold 0 failed" in result.stderr and "fp32_1hpu_fold0.log" in result.stderr
    assert not (tmp_path / "out" / "fp32_1hpu_fold1.log").exists()
