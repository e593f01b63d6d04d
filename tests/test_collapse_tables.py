"""benchmarks/collapse.py's bookkeeping: where each run lives, and what its paired table claims.

No training here: the rows are made up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import collapse

pytestmark = pytest.mark.one_stack  # benchmark bookkeeping: the same on every stack


def row(config: str, seed: int, dice: float, v_rand: float, extra: str = "") -> dict:
    return {"config": config, "seed": seed, "fold": 2, "base_filters": 8, "steps": 400, "deterministic": True,
            "extra": extra, "collapsed": False, "eval_dice_score": dice, "eval_v_rand_thinned": v_rand,
            "eval_v_rand_thinned_threshold": 0.9}


def test_a_fix_under_test_never_shares_the_model_dir_of_the_run_without_it(tmp_path):
    args = argparse.Namespace(work=tmp_path, data_dir=Path("data"))
    plain, _ = collapse.command(row("combination", 1, 0, 0), args, "train_and_evaluate")
    folder, flags = collapse.command(row("combination", 1, 0, 0, extra="--lr_warmup_steps 100"), args, "evaluate")
    assert folder != plain and folder.parent == plain.parent == tmp_path
    assert flags[-2:] == ["--lr_warmup_steps", "100"] and flags[flags.index("--exec_mode") + 1] == "evaluate"


def test_the_paired_interval_is_students_over_the_seeds_differences():
    """Differences 0.01, 0.02, 0.03: mean 0.02, standard deviation 0.01, t(0.975, 2 df) = 4.303, so the 95 %
    interval is 0.02 -/+ 4.303 * 0.01 / sqrt(3) = [-0.0048, +0.0448]: three wins out of three, yet not clear of 0."""
    rows = [row("recipe", seed, 0.80, 0.70) for seed in (1, 2, 3)]
    rows += [row("combination-he", seed, 0.80 + gain, 0.70 + 2 * gain) for seed, gain in ((1, .01), (2, .02), (3, .03))]
    rows.append(row("combination-he", 4, 0.99, 0.99))  # no recipe run of seed 4: left out of the pairs
    line = next(line for line in collapse.paired(rows) if line.startswith("| combination-he | recipe |"))
    dice, v_rand = line.split(" | ")[3:]
    assert dice == "3 of 3, +0.0200 [-0.0048, +0.0448] (+0.0100, +0.0300)"
    assert v_rand.rstrip(" |") == "3 of 3, +0.0400 [-0.0097, +0.0897] (+0.0200, +0.0600)"
    # Once one run is rescored with --finer_sweep the column appears, '-' for the pairs not all rescored.
    rows[0] |= {"eval_v_rand_thinned_finer": 0.75, "eval_v_rand_thinned_finer_threshold": 0.95}
    line = next(line for line in collapse.paired(rows) if line.startswith("| combination-he | recipe |"))
    assert line.split(" | ")[5].rstrip(" |") == "-"  # no number is made up


def test_the_phase_table_counts_the_runs_a_shorter_training_would_have_ended_in_one_class():
    """Phases to steps 0, 90, 230 (and one run that did not log): at step 50 two are still one class, at 100 one."""
    rows = [row("combination", seed, 0.8, 0.8) | {"one_class_until": until}
            for seed, until in ((1, 0), (2, 90), (3, 230))]
    rows.append(row("combination", 4, 0.8, 0.8))  # ran before the share was logged: not counted either way
    line = next(line for line in collapse.phases(rows) if line.startswith("| combination |"))
    assert line == "| combination | 3 | 2 | 1 | 1 | 1 | 0 | 0 | 230 |"
