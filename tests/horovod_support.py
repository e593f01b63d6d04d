"""Whether this environment can run the Horovod tests (the TF 2.15 stack with Horovod and OpenMPI).

On the current-TensorFlow stack Horovod does not build, so these tests are
skipped there; scripts/run_tests.sh sets UNET2D_REQUIRE_HOROVOD=1 for the TF
2.15 run, where a missing Horovod is then a failure rather than a skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

MPIRUN = ["mpirun", "--allow-run-as-root", "--bind-to", "none", "--oversubscribe", "-np", "2"]  # two local ranks


def horovod_available() -> bool:
    return importlib.util.find_spec("horovod") is not None and shutil.which("mpirun") is not None


def require_horovod() -> None:
    if horovod_available():
        return
    if os.environ.get("UNET2D_REQUIRE_HOROVOD") == "1":
        pytest.fail("Horovod and mpirun are required in this run (UNET2D_REQUIRE_HOROVOD=1)")
    pytest.skip("Horovod runs on the TF 2.15 stack (scripts/setup_env.sh tf2.15)")
