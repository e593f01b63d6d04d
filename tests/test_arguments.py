"""The CLI contract of the recipe's README: names, aliases, choices, defaults, and early errors."""

from __future__ import annotations

import pytest

from runtime.cli.arguments import parse_args
from tests.conftest import ROOT, run_cli, run_main

# The recipe README's defaults; dtype is the one deliberate change (its bf16 is auto's choice where bf16 is native).
README_DEFAULTS = {
    "exec_mode": "train_and_evaluate", "model_dir": "/tmp/unet2d", "data_dir": None,
    "log_dir": None, "batch_size": 8, "dtype": "auto", "fold": None, "max_steps": 6400,
    "log_every": 100, "evaluate_every": 0, "warmup_steps": 200, "weight_decay": 0.0005,
    "learning_rate": 0.0001, "seed": 123, "dump_config": None, "augment": True, "benchmark": False,
    "xla": False, "resume_training": False, "no_hpu": False, "synth_data": False,
    "disable_ckpt_saving": False, "use_horovod": False, "distribution": "none", "tensorboard_logging": False,
    "log_all_workers": False, "tf_verbosity": None,
}


def test_defaults_are_the_readmes():
    args = vars(parse_args(["--synth_data"]))
    for name, value in README_DEFAULTS.items():
        if name != "synth_data":
            assert args[name] == value, name
    assert args["bf16_config_path"].endswith("bf16_config/unet.json")


def test_each_run_logs_into_its_own_model_dir_unless_told_otherwise():
    from pathlib import Path

    from common.config import RunConfig

    def log_dir(*argv: str) -> Path:
        return RunConfig.from_flags(vars(parse_args(["--synth_data", *argv]))).outputs.log_dir

    assert log_dir() == Path("/tmp/unet2d")  # the recipe's default for both
    assert log_dir("--model_dir", "/a") == Path("/a") and log_dir("--model_dir", "/b") == Path("/b")
    assert log_dir("--model_dir", "/a", "--log_dir", "/logs") == Path("/logs")


@pytest.mark.parametrize("argv, name, value", [
    (["-b", "2"], "batch_size", 2),
    (["-d", "fp32"], "dtype", "fp32"),
    (["--dtype", "bf16"], "dtype", "bf16"),
    ([], "base_filters", 64),
    (["--base_filters", "8"], "base_filters", 8),
    (["--xla"], "xla", True),
    (["--use_xla"], "xla", True),
    (["--no-augment"], "augment", False),
    (["--augment"], "augment", True),
    (["--benchmark"], "benchmark", True),
    (["--benchmark", "--no-benchmark"], "benchmark", False),
    (["--tf_verbosity", "2"], "tf_verbosity", 2),
    (["--use_horovod"], "distribution", "horovod"),
    (["--distribution", "multi_worker"], "distribution", "multi_worker"),
])
def test_aliases(argv, name, value):
    assert getattr(parse_args(["--synth_data", *argv]), name) == value


def test_every_recipe_mode_runs_with_what_it_needs_and_no_other_mode_is_taken(capsys):
    """The recipe's five modes (plus export) parse with the inputs each needs; anything else is exit 2."""
    from runtime.cli.arguments import EXEC_MODES

    assert set(EXEC_MODES) == {"train", "evaluate", "train_and_evaluate", "predict", "train_and_predict", "export"}
    for mode in EXEC_MODES:
        parse_args(["--data_dir", "x", "--fold", "0", "--exec_mode", mode])  # SystemExit if refused
    for argv in (["--exec_mode", "training", "--data_dir", "x"], ["--exec_mode", "evaluate", "--data_dir", "x"]):
        with pytest.raises(SystemExit) as stopped:
            parse_args(argv)
        assert stopped.value.code == 2
    assert "needs --fold" in capsys.readouterr().err  # evaluate without a fold has no validation slices


def every_flag() -> list[str]:
    """Each option string of unet2d.py's parser (aliases and --no- forms included), --help's own aside."""
    from runtime.cli.arguments import build_parser

    return [option for action in build_parser()._actions for option in action.option_strings
            if option not in ("-h", "--help")]


def test_help_explains_every_flag():
    """--help names every option of the parser, with a help text for each (argparse prints none for an empty one)."""
    from runtime.cli.arguments import build_parser

    parser = build_parser()
    text = parser.format_help()
    assert len(every_flag()) >= 60
    for action in parser._actions:
        assert action.help, action.option_strings
        for option in action.option_strings:
            assert option in text, option
    result = run_cli("--help")  # what a user sees: the same text, without TensorFlow being imported
    assert result.returncode == 0 and result.stdout.split()[:3] == text.split()[:3]


def test_help_names_each_default_once_and_only_where_it_says_something(capsys):
    """No "(default: None)" after a text that says what happens without the flag, no second default after one
    the text names, in both entry points."""
    import re

    from predict import parse_args as predict_args
    from runtime.cli.arguments import build_parser

    with pytest.raises(SystemExit):
        predict_args(["--help"])
    texts = {"predict.py": capsys.readouterr().out, "unet2d.py": build_parser().format_help()}
    for name, text in texts.items():
        text = " ".join(text.split())
        assert "(default: None)" not in text and "(default: False)" not in text, name
        entries = re.split(r" (?=-{1,2}[a-z])", text)
        assert len(entries) > 10, name
        for entry in entries:
            assert len(re.findall(r"[\[(]default", entry)) <= 1, entry


def test_usage_doc_lists_every_flag():
    """docs/usage.md says it lists every flag: each long option appears in it."""
    usage = (ROOT / "docs" / "usage.md").read_text()
    missing = [flag for flag in every_flag() if flag.startswith("--") and f"`{flag}" not in usage]
    assert missing == [], f"not in docs/usage.md: {missing}"


@pytest.mark.parametrize("argv, message", [
    (["--synth_data", "--fold", "5"], "--fold must be in 0..4"),
    (["--synth_data", "--fold", "-1"], "--fold must be in 0..4"),
    (["--synth_data", "--batch_size", "0"], "--batch_size must be at least 1"),
    (["--synth_data", "--benchmark", "--max_steps", "10", "--warmup_steps", "10"],
     "must be greater than --warmup_steps"),
    (["--exec_mode", "train"], "needs --train_images/--train_labels or --data_dir"),
    (["--data_dir", "x", "--exec_mode", "evaluate"], "needs --fold"),
    (["--synth_data", "--dtype", "fp16"], "invalid choice"),
    (["--synth_data", "--base_filters", "0"], "--base_filters must be in 1..1024"),
    *[(["--synth_data", f"--learning_rate={rate}"], "--learning_rate must be a finite number above 0")
      for rate in ("nan", "inf", "0", "-1")],
    *[(["--synth_data", f"--weight_decay={decay}"], "--weight_decay must be a finite number of 0 or more")
      for decay in ("nan", "-inf", "-0.1")],
    *[(["--synth_data", "--elastic", f"--elastic_sigma={sigma}"], "--elastic_sigma must be a number of pixels")
      for sigma in ("nan", "-1", "1000")],
    (["--synth_data", "--elastic", "--elastic_grid", "1"], "--elastic_grid must be in 2..64"),
    (["--synth_data", "--lr_warmup_steps", "-1"], "--lr_warmup_steps must be 0 or more"),
    (["--synth_data", "--seed", "-1"], "--seed must be in 0..4294967295"),
    (["--synth_data", "--split_seed", str(2 ** 32)], "--split_seed must be in 0..4294967295"),
    (["--synth_data", "--exec_mode", "train", "--finer_sweep"], "--exec_mode train does not evaluate"),
    (["--data_dir", "x", "--border_class_weights", "uniform"], "add --border_weights"),
    (["--data_dir", "x", "--border_weights", "--border_class_weights", "none"], "invalid choice"),
])
def test_bad_flags_give_one_line_and_status_2(argv, message):
    result = run_cli(*argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_finer_sweep_goes_wherever_evaluation_runs():
    for argv in (["--exec_mode", "evaluate"], ["--exec_mode", "train_and_evaluate"],
                 ["--exec_mode", "train", "--evaluate_every", "100"]):
        assert parse_args(["--data_dir", "x", "--fold", "0", *argv, "--finer_sweep"]).finer_sweep


def test_export_and_predicting_own_stack_need_no_data_dir():
    assert parse_args(["--exec_mode", "export"]).exec_mode == "export"
    args = parse_args(["--exec_mode", "predict", "--predict_input", "stack.tif", "--predict_strategy", "tile"])
    assert args.predict_strategy == "tile" and args.overlays == 3
    with pytest.raises(SystemExit):
        parse_args(["--exec_mode", "predict"])  # the test volume lives in --data_dir


def test_bad_prediction_input_is_refused_before_any_work(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "colour.png")
    result = run_main("--exec_mode", "predict", "--predict_input", str(tmp_path), "--model_dir",
                      str(tmp_path / "empty"), "--log_dir", str(tmp_path / "logs"))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "must be a grey image" in last and "Traceback" not in result.stderr, last
