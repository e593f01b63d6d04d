"""Data parallelism behind one small interface: one worker, Horovod, or TensorFlow's tf.distribute.

The training loop never imports an engine. It asks a ``Workers`` object,
chosen once by ``make_workers``, for:

* ``replica_shards()``: which of the ``replicas`` input shards this process
  feeds (one per local replica), so every replica has its own slices and its
  own augmentation stream;
* ``scope()``: where the model and optimizer are built (tf.distribute
  mirrors their variables there);
* ``compile_step(fn)``: a step that runs ``fn`` once per local replica on its
  own batch and returns the outputs averaged over all replicas;
* ``gradient_scale``: what the loss is multiplied by so that the engine's
  all-reduce ends up with the mean gradient over replicas, as Horovod's
  ``DistributedGradientTape`` does (tf.distribute's optimizers sum);
* ``wrap_tape``, ``broadcast``, ``any`` and ``sum_across_workers`` for the
  rest (Horovod's tape, the first-step broadcast, the stop vote, and
  assembling predictions made in parts).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from common.compat import coordinated_job
from common.errors import UserInputError, WorkerLost
from runtime.execution.cluster import wait_for_peers
from runtime.execution.signals import STOP

ENGINES = ("none", "horovod", "mirrored", "multi_worker")
StepFn = Callable[..., tuple[tf.Tensor, ...]]
# A collective that has waited this long for a peer is taken as a hung peer (a step may take a
# minute on a CPU, and an evaluation longer). A peer that dies is found sooner, by the heartbeats
# of TensorFlow's coordination service, which MultiWorkerMirroredStrategy starts.
COLLECTIVE_TIMEOUT_S = 900.0


class Workers:
    """One worker with one replica: rank 0 of 1."""

    rank = 0
    size = 1  # worker processes
    local_rank = 0
    local_size = 1
    replicas_per_worker = 1
    gradient_scale = 1.0
    engine = "none"
    has_chief = False  # TF_CONFIG with a "chief" job: TensorFlow's worker i is our rank i + 1

    @property
    def replicas(self) -> int:
        return self.size * self.replicas_per_worker

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def replica_shards(self) -> list[int]:
        first = self.rank * self.replicas_per_worker
        return list(range(first, first + self.replicas_per_worker))

    def scope(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def compile_step(self, fn: StepFn, jit_compile: bool | None = None) -> Callable[[list[tuple]], tuple]:
        step = tf.function(fn, jit_compile=jit_compile)
        return lambda batches: step(*batches[0])

    def wrap_tape(self, tape: tf.GradientTape) -> Any:
        return tape

    def broadcast(self, variables: Sequence[tf.Variable]) -> None:
        """Make every worker start from rank 0's values (no-op for one worker)."""

    def any(self, flag: bool) -> bool:
        """True on every worker if it is true on any: workers must stop at the same step."""
        return flag

    def sum_across_workers(self, array: np.ndarray) -> np.ndarray:
        """The element-wise sum of ``array`` over the worker processes (each gives one of the same shape)."""
        return array


    def describe(self) -> str:
        return "single worker"

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Name what the run does (for a stop signal's line) and, with peers, turn their loss into WorkerLost."""
        with STOP.during(name):
            if self.size == 1:
                yield
            else:
                with peers_alive(name, self.rank, self.has_chief):
                    yield


class HorovodWorkers(Workers):
    """Horovod: one replica per process, gradients all-reduced by its tape, state broadcast from rank 0."""

    engine = "horovod"

    def __init__(self) -> None:
        try:
            self._hvd = importlib.import_module("horovod.tensorflow")
        except ImportError as error:
            raise UserInputError(
                f"--distribution horovod needs Horovod ({error}); install it with "
                "'HOROVOD_WITH_TENSORFLOW=1 pip install horovod' on the TF 2.15 stack "
                "(scripts/setup_env.sh tf2.15), or habana-horovod on Gaudi; on TensorFlow 2.16+ "
                "use --distribution multi_worker") from None
        self._hvd.init()
        self.rank = self._hvd.rank()
        self.size = self._hvd.size()
        self.local_rank = self._hvd.local_rank()
        self.local_size = self._hvd.local_size()

    def wrap_tape(self, tape: tf.GradientTape) -> Any:
        return self._hvd.DistributedGradientTape(tape)

    def broadcast(self, variables: Sequence[tf.Variable]) -> None:
        self._hvd.broadcast_variables(list(variables), root_rank=0)

    def any(self, flag: bool) -> bool:
        votes = self._hvd.allreduce(tf.constant(1.0 if flag else 0.0), op=self._hvd.Sum, name="stop_vote")
        return float(votes) > 0

    def sum_across_workers(self, array: np.ndarray) -> np.ndarray:
        summed = self._hvd.allreduce(tf.constant(array), op=self._hvd.Sum, name="sum_across_workers")
        return summed.numpy()

    def describe(self) -> str:
        return f"Horovod worker {self.rank} of {self.size}"


# What a collective raises when a peer has died, hung, or aborted the job's collectives.
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
               tf.errors.CancelledError)


_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}")  # graph-execution noise before the message
_TASK = re.compile(r"/job:(chief|worker)(?:/replica:\d+)?/task:(\d+)")


def lost_worker(message: str, rank: int, has_chief: bool = False) -> str | None:
    """The peer TensorFlow's error names ("worker 1"), in our ranks; None if it names none but us.

    The coordination service lists the tasks that stopped sending heartbeats
    after the word "unhealthy"; those are looked at first.
    """
    unhealthy = message.find("unhealthy")
    for text in ([message[unhealthy:]] if unhealthy >= 0 else []) + [message]:
        for job, task in _TASK.findall(text):
            peer = int(task) + (1 if job == "worker" and has_chief else 0)
            if peer != rank:
                return f"worker {peer}"
    return None


@contextlib.contextmanager
def peers_alive(phase: str, rank: int, has_chief: bool = False) -> Iterator[None]:
    """Turn a collective's failure over a lost peer into one line, not a graph-execution traceback."""
    try:
        yield
    except PEER_ERRORS as error:
        text = str(error)
        lines = [_FUNCTION_NODE.sub("", line).strip() for line in text.splitlines() if line.strip()]
        telling = [line for line in lines if "aborted" in line or "connect" in line or "timed out" in line]
        detail = f"{type(error).__name__}: {(telling or lines or ['no message'])[0]}"
        raise WorkerLost(phase, detail[:300], lost_worker(text, rank, has_chief)) from None


class StrategyWorkers(Workers):
    """tf.distribute: variables mirrored on every replica, the optimizer sums the replicas' gradients."""

    def __init__(self, strategy: tf.distribute.Strategy, engine: str, rank: int = 0, size: int = 1) -> None:
        self.strategy = strategy
        self.engine = engine
        self.rank, self.size = rank, size  # local workers size their threads from the launcher's environment
        self.replicas_per_worker = strategy.num_replicas_in_sync // size
        self.gradient_scale = 1.0 / strategy.num_replicas_in_sync
        self._sum = tf.function(self._replica_sum)

    def scope(self) -> contextlib.AbstractContextManager:
        return self.strategy.scope()

    def _per_replica(self, values: Sequence[Any]) -> Any:
        """This process's replicas' values (one each) as one distributed value."""
        first = self.rank * self.replicas_per_worker
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: values[context.replica_id_in_sync_group - first])

    def compile_step(self, fn: StepFn, jit_compile: bool | None = None) -> Callable[[list[tuple]], tuple]:
        strategy = self.strategy

        def replicated(inputs: tuple) -> tuple[tf.Tensor, ...]:
            outputs = strategy.run(fn, args=inputs)
            return tuple(strategy.reduce(tf.distribute.ReduceOp.MEAN, output, axis=None) for output in outputs)

        step = tf.function(replicated, jit_compile=jit_compile)

        def run(batches: list[tuple]) -> tuple[tf.Tensor, ...]:
            inputs = tuple(self._per_replica([batch[i] for batch in batches]) for i in range(len(batches[0])))
            return tuple(output.numpy() for output in step(inputs))  # waits here, inside the run's phase

        return run

    def _replica_sum(self, values: Any) -> tf.Tensor:
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None)

    def any(self, flag: bool) -> bool:
        if self.size == 1:  # one process: its replicas share its signals
            return flag
        votes = self._sum(self._per_replica([tf.constant(1.0 if flag else 0.0)] * self.replicas_per_worker))
        return float(votes) > 0

    def sum_across_workers(self, array: np.ndarray) -> np.ndarray:
        if self.size == 1:
            return array
        zeros = np.zeros_like(array)  # the other local replicas add nothing
        parts = [tf.constant(array)] + [tf.constant(zeros)] * (self.replicas_per_worker - 1)
        return self._sum(self._per_replica(parts)).numpy()

    def describe(self) -> str:
        devices = ", ".join(self.strategy.extended.worker_devices)
        return (f"{self.engine}: worker {self.rank} of {self.size}, {self.strategy.num_replicas_in_sync} "
                f"replicas in all ({devices} here)")


_PORT = re.compile(r".:\d{1,5}$")  # host:port


@dataclass(frozen=True)
class ClusterConfig:
    """This worker's place in TF_CONFIG's cluster: ranks run over the chief (if any), then the workers."""

    rank: int
    addresses: list[str]
    has_chief: bool

    @property
    def size(self) -> int:
        return len(self.addresses)


def read_tf_config() -> ClusterConfig:
    """TF_CONFIG, checked; a one-line error if it cannot be used (before this worker joins anything)."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise UserInputError("--distribution multi_worker needs TF_CONFIG (the cluster and this worker's task), "
                             "as Kubeflow, Vertex AI or scripts/launch_workers.py set it")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        workers = list(cluster.get("chief", [])) + list(cluster["worker"])
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserInputError(f"TF_CONFIG is malformed ({type(error).__name__}: {error}); expected "
                             '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}') \
            from None
    if kind not in ("worker", "chief") or not all(isinstance(a, str) and _PORT.search(a) for a in workers):
        raise UserInputError(f"TF_CONFIG is malformed: task type {kind!r} (expected worker or chief) and "
                             "cluster addresses host:port")
    rank = index + (1 if kind == "worker" and "chief" in cluster else 0)
    if not 0 <= rank < len(workers) or (kind == "chief" and index != 0):
        raise UserInputError(f"TF_CONFIG is malformed: task {kind} {index} is not in its cluster of {len(workers)}")
    if len(set(workers)) != len(workers):
        raise UserInputError(f"TF_CONFIG is malformed: two tasks share an address in {workers}")
    return ClusterConfig(rank, workers, "chief" in cluster)


def _cpu_replicas() -> list[str] | None:
    """UNET2D_CPU_REPLICAS=N splits a machine without GPUs into N logical CPU devices (to try mirrored)."""
    count = int(os.environ.get("UNET2D_CPU_REPLICAS", "0") or 0)
    if count < 2 or tf.config.list_physical_devices("GPU"):
        return None
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    return [f"/cpu:{index}" for index in range(count)]


def _bound_cluster_start(cluster: ClusterConfig, timeout: float) -> None:
    """TensorFlow's own registration wait, bounded too (a peer seen by wait_for_peers may die before it).

    MultiWorkerMirroredStrategy configures the coordination service itself
    unless it already is; configured here first, it is the same set-up with
    ``cluster_register_timeout_in_ms`` set (TensorFlow's default is an hour).
    """
    from tensorflow.python.eager import context

    jobs = {"chief": 1, "worker": cluster.size - 1} if cluster.has_chief else {"worker": cluster.size}
    leader = "/job:chief/replica:0/task:0" if cluster.has_chief else "/job:worker/replica:0/task:0"
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=leader, cluster_register_timeout_in_ms=int(timeout * 1000),
        coordinated_jobs=[coordinated_job(name, count) for name, count in jobs.items() if count])


def _say(line: str) -> None:
    print(f"unet2d.py: {line}", file=sys.stderr, flush=True)


def _multi_worker(device_kind: str, cluster_timeout: float) -> StrategyWorkers:
    cluster = read_tf_config()
    with STOP.during("waiting for the other workers"):
        started = time.monotonic()
        wait_for_peers(cluster.addresses, cluster.rank, cluster_timeout, _say)
        remaining = max(cluster_timeout - (time.monotonic() - started), 30.0)
    with STOP.during("joining the cluster"), peers_alive("joining the cluster", cluster.rank, cluster.has_chief):
        if device_kind == "HPU":  # Gaudi: Habana's own collective strategy over HCCL
            distribute = importlib.import_module("habana_frameworks.tensorflow.distribute")
            workers = StrategyWorkers(distribute.HPUStrategy(), "multi_worker (HPUStrategy)", cluster.rank,
                                      cluster.size)
        else:
            _bound_cluster_start(cluster, remaining)
            # Peers that stop answering end the job instead of leaving the others in an all-reduce forever.
            options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
            with STOP.around_blocking_call():  # TensorFlow's start holds the GIL until every task registered
                strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            workers = StrategyWorkers(strategy, "multi_worker", cluster.rank, cluster.size)
    workers.has_chief = cluster.has_chief
    return workers


def make_workers(engine: str, device_kind: str = "CPU", cluster_timeout: float = 300.0) -> Workers:
    """The engine's Workers; call before any TensorFlow op runs (tf.distribute must set up the runtime first)."""
    if engine == "horovod":
        return HorovodWorkers()
    if engine == "mirrored":
        strategy = tf.distribute.MirroredStrategy(devices=_cpu_replicas())
        return StrategyWorkers(strategy, "mirrored")
    if engine == "multi_worker":
        return _multi_worker(device_kind, cluster_timeout)
    return Workers()
