"""The run's one configuration: built once from the checked flags, frozen, in sections."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from common.config import RunConfig
from runtime.cli.arguments import parse_args, parse_config
from tests.conftest import ROOT


def test_every_flag_lands_in_the_configuration_and_the_sections_agree():
    args = parse_args(["--exec_mode", "evaluate", "--data_dir", "d", "--fold", "2", "--num_classes", "3",
                       "--batch_size", "4", "--seed", "9", "--ensemble", "a", "b", "--model_dir", "m"])
    config = RunConfig.from_flags(vars(args))
    assert dict(config.flags) == vars(args)  # the PARAMETER line logs every flag as parsed
    section_fields = {f.name for section in (config.data, config.model, config.training, config.evaluation,
                                             config.distribution, config.outputs)
                      for f in dataclasses.fields(section)}
    # Read by the entry point from ``flags`` only: what it needs before TensorFlow starts, and derived flags.
    outside = {"exec_mode", "tf_verbosity", "use_horovod"}
    assert set(vars(args)) - section_fields == outside
    assert config.data.num_classes == config.model.num_classes == config.evaluation.num_classes == 3
    assert config.data.batch_size == config.training.batch_size == config.evaluation.batch_size == 4
    assert config.data.seed == config.model.seed == config.training.seed == 9
    assert config.evaluation.ensemble == ("a", "b") and config.outputs.export_dir == Path("m") / "export"
    assert config.evaluates and config.scores_validation and not (config.trains or config.predicts)


def test_the_configuration_is_frozen():
    config = parse_config(["--synth_data"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.training.max_steps = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.flags["max_steps"] = 1  # type: ignore[index]


def test_below_the_entry_point_no_function_takes_the_namespace():
    """Only the flag parser (runtime/cli/arguments.py) handles argparse.Namespace; everything below takes the
    configuration's sections or plain values."""
    offenders = []
    for path in [*ROOT.glob("runtime/**/*.py"), *ROOT.glob("common/*.py"), *ROOT.glob("data_loading/*.py"),
                 *ROOT.glob("model/*.py"), ROOT / "unet2d.py"]:
        if path.name == "arguments.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            annotation = node.annotation if isinstance(node, ast.arg) else None
            if annotation is not None and "Namespace" in ast.unparse(annotation):
                offenders.append(f"{path.relative_to(ROOT)}: {node.arg}")
    assert offenders == []
