"""The benchmark script runs end to end at one tiny setting (the measurements themselves are not tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from tests.conftest import ROOT

# Every test here runs unet2d.py processes. The script's own code is the same on every stack; the --benchmark
# runs it starts are tested on both stacks in tests/test_cli.py.
pytestmark = [pytest.mark.slow, pytest.mark.one_stack]

def test_benchmark_script_runs_end_to_end(isbi_dir, tmp_path):
    command = [sys.executable, "-m", "benchmarks.benchmark", "--data_dir", str(isbi_dir),
               "--modes", "train", "predict",
               "--dtypes", "auto", "--base_filters", "8", "--batch_sizes", "1", "--steps", "2", "--warmup", "1",
               "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [(r["mode"], r["dtype"], r["batch_size"]) for r in report["results"]] == [
        ("train", "auto", 1), ("predict", "auto", 1)]
    for result in report["results"]:
        assert result["images_per_s"] > 0 and result["peak_rss_gib"] > 0.3
        assert result["precision"].startswith(("bf16 (auto: ", "fp32 (auto: "))
        assert 0 < result["time_to_first_step_s"] < 600
        assert 0 < result["of_ceiling"] < 2  # a step cannot beat its own kernels by much
    (ceiling,) = report["kernel_ceiling"]
    assert ceiling["seconds"]["backward_filter"] > 0 and len(report["kernel_ceiling_layers"][0]["layers"]) == 23
    assert {p["threads"] for p in report["input_pipeline"]} >= {1}
    assert "| train | auto | 1 |" in (tmp_path / "results.md").read_text()
    assert {"cpu", "isa", "native_bf16", "tensorflow"} <= report["machine"].keys()
    with Image.open(tmp_path / "results.png") as picture:
        assert picture.size == (1200, 400)
