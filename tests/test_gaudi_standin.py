"""The Gaudi path, with a stand-in for habana_frameworks.tensorflow that records its calls.

There is no Gaudi (and no Habana software) on the machines that run these
tests, so the stand-in below takes the place of the real module: the tests
check that the code calls the real API in the right order and reacts to its
answers as the recipe does (device type, bf16 conversion variable, Gaudi2's
parallel input mapping, prefetching to the HPU device). The HPU kernels
themselves are not exercised here.
"""

from __future__ import annotations

import json
import socket
import sys
import types

import pytest

from common import compat
from data_loading.data_loader import StreamOptions, SyntheticDataset
from runtime.cli.arguments import DEFAULT_BF16_CONFIG, parse_config
from runtime.cli.setup import configure_tensorflow, stream_options
from runtime.execution.device import select_device
from runtime.execution.distribution import Workers


@pytest.fixture
def habana(monkeypatch):
    calls: list[str] = []
    package = types.ModuleType("habana_frameworks")
    module = types.ModuleType("habana_frameworks.tensorflow")
    device_module = types.ModuleType("habana_frameworks.tensorflow.habana_device")
    module.load_habana_module = lambda: calls.append("load_habana_module")
    device_module.get_type = lambda: calls.append("get_type") or "GAUDI2"
    module.habana_device = device_module
    package.tensorflow = module
    for name, value in (("habana_frameworks", package), ("habana_frameworks.tensorflow", module),
                        ("habana_frameworks.tensorflow.habana_device", device_module)):
        monkeypatch.setitem(sys.modules, name, value)
    return calls


def test_gaudi_is_selected_and_loaded_first(habana):
    device = select_device(no_hpu=False)
    assert habana == ["load_habana_module", "get_type"]
    assert (device.kind, device.name, device.gaudi_type) == ("HPU", "/device:HPU:0", "GAUDI2")
    assert device.is_gaudi2


def test_multi_worker_on_gaudi_uses_habanas_strategy(habana, monkeypatch):
    """HPUStrategy (habana_frameworks.tensorflow.distribute), asked with TF_CONFIG's cluster, after the module loads."""
    from runtime.execution.distribution import make_workers

    class HPUStrategy:
        num_replicas_in_sync = 2

        def __init__(self):
            habana.append("HPUStrategy")
            self.extended = types.SimpleNamespace(worker_devices=("/job:worker/replica:0/task:1/device:HPU:0",))

    distribute = types.ModuleType("habana_frameworks.tensorflow.distribute")
    distribute.HPUStrategy = HPUStrategy
    monkeypatch.setitem(sys.modules, "habana_frameworks.tensorflow.distribute", distribute)
    with socket.socket() as chief, socket.socket() as free:  # worker 0 answers; worker 1 (us) gets a free port
        chief.bind(("127.0.0.1", 0))
        chief.listen(8)
        free.bind(("127.0.0.1", 0))
        ports = [chief.getsockname()[1], free.getsockname()[1]]
        free.close()
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                    "task": {"type": "worker", "index": 1}}))
        device = select_device(no_hpu=False)
        workers = make_workers("multi_worker", device.kind, cluster_timeout=30)
    assert habana == ["load_habana_module", "get_type", "HPUStrategy"]
    assert (workers.rank, workers.size, workers.replicas, workers.is_chief) == (1, 2, 2, False)
    assert workers.replica_shards() == [1] and workers.gradient_scale == 0.5
    assert "HPUStrategy" in workers.engine


def test_no_hpu_flag_skips_gaudi(habana):
    assert select_device(no_hpu=True).kind == "CPU"
    assert habana == []


def test_without_habana_software_the_cpu_is_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "habana_frameworks", None)  # import fails as on a machine without it
    assert select_device(no_hpu=False).kind == "CPU"


def test_bf16_on_gaudi_sets_the_conversion_config_not_keras_policy(habana, monkeypatch):
    monkeypatch.setenv("TF_BF16_CONVERSION", "unset")  # restored (to absent) after the test
    config = parse_config(["--synth_data", "--dtype", "bf16"])
    configure_tensorflow(config, select_device(no_hpu=False), Workers(), bf16=True)
    import os
    assert os.environ["TF_BF16_CONVERSION"] == str(DEFAULT_BF16_CONFIG)
    assert compat.compute_dtype() == "float32"


def test_gaudi2_input_pipeline_is_parallel_and_prefetches_to_the_hpu(habana):
    config = parse_config(["--synth_data", "--batch_size", "2", "--seed", "1"])
    options = stream_options(config.data, Workers(), select_device(no_hpu=False))
    assert options.parallel_map and options.prefetch_device == "/device:HPU:0"


def copy_targets(dataset) -> list[str]:
    """The devices a tf.data pipeline copies its elements to (prefetch_to_device's copy stage), last stage first."""
    targets = []
    while dataset is not None:
        if type(dataset).__name__ == "_CopyToDeviceDataset":
            targets.append(dataset._target_device)
        dataset = getattr(dataset, "_input_dataset", None)
    return targets


def test_streams_prefetch_to_the_device_they_are_given():
    """The Gaudi pipeline's prefetch_to_device stage, pointed at the CPU (the only device here), and still fed."""
    options = StreamOptions(batch_size=1, seed=0, prefetch_device="/device:CPU:0")
    data = SyntheticDataset(options)
    for stream in (data.train_fn(), data.eval_fn(count=1), data.test_fn(count=1)):
        assert copy_targets(stream) == ["/device:CPU:0"]
    assert copy_targets(SyntheticDataset(StreamOptions(batch_size=1, seed=0)).train_fn()) == []
    images, _ = next(iter(data.train_fn()))
    assert images.shape == (1, 572, 572, 1)


# The recipe's Gaudi op lists, entry for entry (UNET2D_REFERENCE.md, "Precision and devices").
RECIPE_ALLOWLIST = {
    "BatchMatMul", "BatchMatMulV2", "BiasAdd", "BiasAddGrad", "Conv2D", "Conv2DBackpropFilter",
    "Conv2DBackpropInput", "Conv3D", "Conv3DBackpropFilter", "Conv3DBackpropFilterV2", "Conv3DBackpropInput",
    "Conv3DBackpropInputV2", "HabanaConv2DWithPadding", "HabanaConv2DWithPaddingBackpropFilter",
    "HabanaConv2DWithPaddingBackpropInput", "HabanaInstanceNorm", "HabanaInstanceNormGrad", "LeakyRelu",
    "LeakyReluGrad", "MatMul", "MaxPool", "MaxPoolV2", "MaxPoolGrad", "MaxPoolGradV2", "Relu", "ReluGrad"}
RECIPE_CONDITIONAL = {
    "Add", "AddN", "AddV2", "CollectiveReduceV2", "CollectiveReduceV3", "Concat", "ConcatV2", "Equal", "Exp",
    "GreaterEqual", "HabanaClampBwd", "HabanaClampFwd", "HabanaDropout", "HabanaDropoutGrad", "HorovodAllgather",
    "HorovodAllreduce", "HpuCollectiveGather", "HpuCollectiveGatherV2", "HpuCollectiveReduce", "Identity", "Log1p",
    "L2Loss", "Max", "Mean", "Mul", "Neg", "Pad", "PadV2", "Pow", "RealDiv", "Reciprocal", "Reshape",
    "ResizeNearestNeighbor", "ResizeNearestNeighborGrad", "Select", "Shape", "ShapeN", "Slice", "Square", "Tile"}


def test_bf16_config_holds_the_recipe_lists_exactly():
    config = json.loads(DEFAULT_BF16_CONFIG.read_text())
    assert set(config) == {"allowlist", "conditional_list", "strict_conditional_list",
                           "non_convertible_exceptions", "convertible_exceptions"}
    for key, expected in (("allowlist", RECIPE_ALLOWLIST), ("conditional_list", RECIPE_CONDITIONAL)):
        assert len(config[key]) == len(set(config[key])), f"{key} repeats an entry"
        assert set(config[key]) == expected, f"{key}: missing {expected - set(config[key])}, " \
                                             f"extra {set(config[key]) - expected}"
    assert config["strict_conditional_list"] == []
    assert config["non_convertible_exceptions"] == [[".*KEEP_FP32_PRECISION.*", ""]]
    assert config["convertible_exceptions"] == [[".*FORCE_BF16_PRECISION.*", ""]]
