"""TensorFlow's C++ start-up lines stay out of a normal run's output; asked for, they come back."""

from __future__ import annotations

import os
import subprocess

import pytest

from common.quiet_start import NOISE
from tests.conftest import ROOT, unet2d_command

START_UP_LINES = [  # as TF 2.21 and TF 2.15 print them on a CPU-only machine
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796204689.738525    5652 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.",
    "I0000 00:00:1796204691.926482    5652 port.cc:153] oneDNN custom operations are on.",
    "E0000 00:00:1796206702.574502    9272 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the "
    "appropriate compiler flags.",
    "2026-12-02 09:43:22.372729: I external/local_tsl/tsl/cuda/cudart_stub.cc:31] Could not find cuda drivers",
    "2026-12-02 09:43:22.418308: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:9261] Unable to "
    "register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered",
    "2026-12-02 09:43:23.411631: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could "
    "not find TensorRT",
]
REAL_ERRORS = [
    "E0000 00:00:1796206702.574502    9272 grpc_server_lib.cc:99] Could not start gRPC server",
    "2026-12-02 09:43:22.418308: E tensorflow/core/framework/op_kernel.cc:1] OP_REQUIRES failed",
    "unet2d.py: error: --data_dir is not a folder: x",
    "Traceback (most recent call last):",
]


@pytest.mark.parametrize("line", START_UP_LINES)
def test_start_up_noise_is_recognised(line):
    assert NOISE.match(line)


@pytest.mark.parametrize("line", REAL_ERRORS)
def test_real_errors_pass(line):
    assert not NOISE.match(line)


def _run(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(unet2d_command("--synth_data", "--exec_mode", "train", "--max_steps", "1", "--dtype",
                                         "fp32", "--model_dir", str(tmp_path / "m"), "--log_dir", str(tmp_path / "l"),
                                         *extra),
                          cwd=ROOT, env={**env, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_default_run_prints_only_its_own_lines(tmp_path):
    result = _run(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("DLL "), result.stdout[:500]
    assert not any(NOISE.match(line) for line in result.stderr.splitlines()), result.stderr[:2000]


@pytest.mark.slow
def test_tf_verbosity_brings_tensorflows_lines_back(tmp_path):
    result = _run(tmp_path, "--tf_verbosity", "0")
    assert result.returncode == 0, result.stderr[-2000:]
    assert any(NOISE.match(line) for line in result.stderr.splitlines()), result.stderr[:2000]  # oneDNN's notice
