"""benchmarks/ablation.py's bookkeeping: which runs it starts, how it picks the best, what its tables say.

No training here: unet2d is replaced by a recorder, the rows are made up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks import ablation

pytestmark = pytest.mark.one_stack  # benchmark bookkeeping: the same on every stack


def row(config: str, seed: int, dice: float, v_rand: float, split_seed: int | None = 123) -> dict:
    return {"config": config, "seed": seed, "split_seed": split_seed, "base_filters": 8, "steps": 400,
            "train_minutes": 1.0, "eval_dice_score": dice, "eval_v_rand_thinned": v_rand,
            "eval_v_rand_thinned_threshold": 0.5, "eval_v_info_thinned": 0.9, "eval_v_info_thinned_threshold": 0.5}


def test_the_best_is_the_largest_smaller_gain_over_the_recipe():
    rows = [row("recipe", s, 0.80, 0.80) for s in (1, 2)]
    rows += [row("+ tile", s, 0.79, 0.95) for s in (1, 2)]  # far better cells, worse pixels
    rows += [row("+ elastic", s, 0.82, 0.84) for s in (1, 2)]  # better at both
    assert ablation.best_config(rows) == "+ elastic"
    assert ablation.best_config([r for r in rows if r["config"] != "recipe"]) == "+ tile"  # V_Rand alone


def test_gains_count_in_the_recipes_spread_of_each_score():
    """Dice varies less from seed to seed than V_Rand here: a smaller raw Dice gain can be the larger in spreads."""
    rows = [row("recipe", 1, 0.80, 0.80), row("recipe", 2, 0.82, 0.90)]  # spreads: 0.01 Dice, 0.05 V_Rand
    rows += [row("+ elastic", s, d + 0.015, v + 0.03) for s, d, v in ((1, 0.80, 0.80), (2, 0.82, 0.90))]
    rows += [row("+ tile", s, d + 0.012, v + 0.10) for s, d, v in ((1, 0.80, 0.80), (2, 0.82, 0.90))]
    assert ablation.recipe_spreads(rows) == pytest.approx((0.01, 0.05))
    gains = ablation.smaller_gains(rows)
    assert gains["+ elastic"] == pytest.approx(0.6) and gains["+ tile"] == pytest.approx(1.2)
    assert ablation.best_config(rows) == "+ tile"  # raw gains would pick "+ elastic" (0.015 against 0.012)
    assert ablation.recipe_spreads(rows[:1]) is None  # one seed: no spread, the raw gains rank


def test_tables_pair_each_seed_with_its_recipe_and_keep_splits_apart():
    rows = [row("recipe", 1, 0.80, 0.80), row("recipe", 2, 0.70, 0.70),
            row("+ elastic", 1, 0.81, 0.90), row("+ elastic", 2, 0.73, 0.75),
            row("recipe", 1, 0.5, 0.5, split_seed=None)]
    settings = {"command": "c", "measured": "today", "tensorflow": "2.x", "steps": 400}
    text = ablation.markdown({"rows": rows, "settings": {"8-split123": settings, "8": settings}})
    fixed, by_seed = text.split("## --base_filters 8, split by seed")
    assert "## --base_filters 8, fixed split" in fixed and "`--split_seed 123`" in fixed
    assert "| + elastic | 2 | +0.0200 (+0.0100..+0.0300) | +0.0750 (+0.0500..+0.1000) |" in fixed
    assert "| recipe | 2 | 0.7500 ± 0.0500 |" in fixed and "+ elastic **(best)**" in fixed
    assert "0.5000" in by_seed and "0.5000" not in fixed and "Minus the recipe" not in by_seed


def test_one_seed_marks_the_best_in_its_rows_and_shows_no_spread():
    rows = [row("recipe", 123, 0.80, 0.70), row("+ elastic", 123, 0.82, 0.75)]
    settings = {"command": "c", "measured": "today", "tensorflow": "2.x", "steps": 400}
    text = ablation.markdown({"rows": rows, "settings": {"8-split123": settings}})
    assert "| + elastic **(best)** | 123 | 0.8200 |" in text
    assert "Means over the seeds" not in text and "± 0.0000" not in text
    assert "| + elastic | 1 | +0.0200 (+0.0200..+0.0200) | +0.0500 (+0.0500..+0.0500) |" in text


def test_no_configuration_is_marked_best_when_all_lose_to_the_recipe():
    rows = [row("recipe", 123, 0.84, 0.74), row("+ elastic", 123, 0.83, 0.48), row("+ tile", 123, 0.83, 0.55)]
    assert ablation.best_config(rows) == "+ tile"  # the picture still compares the nearest one with the recipe
    settings = {"command": "c", "measured": "today", "tensorflow": "2.x", "steps": 400}
    assert "**(best)** |" not in ablation.markdown({"rows": rows, "settings": {"8-split123": settings}})


def test_runs_fix_the_split_and_rescoring_evaluates_the_trained_model(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(ablation, "unet2d", lambda *flags, log_dir: calls.append((flags, log_dir)) or [])
    args = argparse.Namespace(data_dir=Path("data"), base_filters=8, steps=400, split_seed=123, work=tmp_path,
                              resume=False)
    trained = ablation.run_config("+ elastic", 7, args)
    assert trained["split_seed"] == 123 and trained["seed"] == 7
    flags = calls[0][0]
    assert flags[:2] == ("--exec_mode", "train_and_evaluate") and "--tta" not in flags
    for flag, value in (("--seed", "7"), ("--split_seed", "123"), ("--input_mode", "tile"), ("--max_steps", "400")):
        assert flags[flags.index(flag) + 1] == value
    assert "--elastic" in flags and "--border_weights" not in flags and "--resume_training" not in flags
    calls.clear()
    ablation.run_config("tile + elastic + TTA", 7, args)
    (with_tta, _), (without, _) = calls  # scored with --tta, then again without, for the time it adds
    assert with_tta[:2] == without[:2] == ("--exec_mode", "evaluate") and "--tta" in with_tta
    model_dir = with_tta[with_tta.index("--model_dir") + 1]
    assert model_dir == flags[flags.index("--model_dir") + 1]  # the elastic model of the same seed and split


@pytest.mark.parametrize("split_seed", [None, 5])
def test_model_dirs_differ_by_width_seed_and_split(tmp_path, split_seed):
    args = argparse.Namespace(base_filters=8, split_seed=split_seed, work=tmp_path)
    wider = argparse.Namespace(base_filters=16, split_seed=split_seed, work=tmp_path)
    dirs = {ablation.model_dir(args, "recipe", 1), ablation.model_dir(args, "recipe", 2),
            ablation.model_dir(wider, "recipe", 1), ablation.model_dir(args, "+ tile", 1)}
    assert len(dirs) == 4


def test_resume_continues_from_the_checkpoint_and_counts_every_part(monkeypatch, tmp_path):
    def window(done, ms):
        return {"type": "LOG", "step": [done, 400], "data": {"iter duration [ms]": ms}}

    log = [{"type": "LOG", "step": "CHECKPOINT", "data": {"message": "no checkpoint in m; starting at step 0"}},
           window(1, 20_000.0), window(50, 10_000.0), window(70, 10_000.0),  # killed after step 70
           {"type": "LOG", "step": "CHECKPOINT", "data": {"restored": "ckpt-60", "step": 60}},
           window(61, 20_000.0), window(100, 10_000.0)]
    assert ablation.mean_step_seconds(log) == pytest.approx((20 + 49 * 10 + 20 * 10 + 20 + 39 * 10) / 110)
    calls = []
    monkeypatch.setattr(ablation, "unet2d", lambda *flags, log_dir: calls.append(flags) or log)
    args = argparse.Namespace(data_dir=Path("data"), base_filters=8, steps=400, split_seed=123, work=tmp_path,
                              resume=True)
    trained = ablation.run_config("recipe", 7, args)
    assert "--resume_training" in calls[0] and calls[0][calls[0].index("--checkpoint_minutes") + 1] == "10"
    assert trained["resumed_at_step"] == 60
    assert trained["train_minutes"] == pytest.approx(400 * ablation.mean_step_seconds(log) / 60, abs=0.01)
    text = "\n".join(ablation.table([{**row("recipe", 7, 0.8, 0.8), **trained}]))
    assert f"| {trained['train_minutes']} (resumed) |" in text and "(resumed): picked up from" in text
    assert "Minus the recipe" not in text  # no other configuration to pair with it


def test_a_section_keeps_every_command_that_wrote_its_rows():
    old = {"command": "python -m benchmarks.ablation --configs recipe", "steps": 400, "tensorflow": "2.x",
           "measured": "yesterday", "note": "kept"}
    settings = ablation.record_run(old, "python -m benchmarks.ablation --configs '+ tile' --resume", 400)
    settings = ablation.record_run(settings, "python -m benchmarks.ablation --configs '+ tile' --resume", 400)
    assert settings["commands"] == ["python -m benchmarks.ablation --configs recipe",
                                    "python -m benchmarks.ablation --configs '+ tile' --resume"]
    assert "command" not in settings and settings["note"] == "kept" and settings["measured"] != "yesterday"
    rows = [row("recipe", 123, 0.80, 0.70), row("+ tile", 123, 0.82, 0.75)]
    text = ablation.markdown({"rows": rows, "settings": {"8-split123": settings}})
    assert "`python -m benchmarks.ablation --configs recipe`\n\n`python -m benchmarks.ablation --configs '+ tile'" \
           " --resume`\n\nLast measured" in text
    assert ablation.record_run(None, "c", 400)["commands"] == ["c"]
