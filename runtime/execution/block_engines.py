"""Who computes the blocks of a blockwise prediction: this process, or the workers of a Dask cluster.

Blocks are independent tasks that write their own chunks (runtime/loop/blockwise.py),
so the prediction does not ask which engine runs them. ``DaskBlocks`` starts
a local cluster of processes (``--workers N``, one thread each) or joins a
running scheduler (``--scheduler ADDRESS``: started by hand with ``dask
scheduler`` / ``dask worker``, by dask-jobqueue on Slurm, by
dask-kubernetes). A worker lost midway has its blocks given to the others by
Dask itself; each block rewrites all its chunks, so the result is the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

from common.errors import UserInputError, WorkerLost

ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
              "TF_CPP_MIN_LOG_LEVEL": "2"}


class BlockEngine:
    """Runs ``job`` on every block and yields each result as it comes."""

    def run(self, job: Callable[[object], int], blocks: Sequence[object]) -> Iterator[int]:
        for block in blocks:
            yield job(block)

    def close(self) -> None:
        """Let go of any workers."""


LOCAL = BlockEngine()


class ClusterUnreachable(WorkerLost):
    """The Dask scheduler did not answer in time (exit status 4, as a cluster that does not start)."""

    def __init__(self, address: str, timeout: float, detail: str) -> None:
        Exception.__init__(self, f"no Dask scheduler answered at {address} within {timeout:g} s ({detail}); "
                                 "start one (dask scheduler; dask worker ADDRESS) or check the address")


class DaskBlocks(BlockEngine):
    """Blocks as tasks of a Dask cluster: a local one of ``workers`` processes, or the one at ``scheduler``."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None, timeout: float = 60.0) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError as error:
            raise UserInputError(f"--workers and --scheduler need Dask distributed ({error}); "
                                 "pip install distributed") from None
        self.cluster = None
        if scheduler:
            try:
                self.client = Client(scheduler, timeout=timeout)
            except (OSError, TimeoutError) as error:
                raise ClusterUnreachable(scheduler, timeout, str(error).splitlines()[0][:200]) from None
        else:
            threads = {k: os.environ.get(k, v) for k, v in ONE_THREAD.items()}  # TensorFlow's too: one core each
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None, host="127.0.0.1", env=threads)
            self.client = Client(self.cluster, timeout=timeout)
        self.client.run(_start_tensorflow_quietly)  # every worker, before its first block
    def run(self, job: Callable[[object], int], blocks: Sequence[object]) -> Iterator[int]:
        from distributed import as_completed

        if not blocks:
            return
        shared = self.client.scatter(job, broadcast=True)  # the job once to every worker, not once per block
        futures = self.client.map(_run_block, [shared] * len(blocks), blocks, pure=False)
        for future in as_completed(futures):
            yield future.result()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def _run_block(job: Callable[[object], int], block: object) -> int:
    return job(block)


def _start_tensorflow_quietly() -> None:
    """TensorFlow imported on a worker without its start-up lines, as in unet2d.py and predict.py."""
    from common.quiet_start import tensorflow_start_quietly

    with tensorflow_start_quietly(True):
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
