"""benchmarks/threshold_sweep.py's bookkeeping: which threshold is best within which sweep, and its table.

No model here: the per-threshold means are made up.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import threshold_sweep as sweep

pytestmark = pytest.mark.one_stack  # benchmark bookkeeping: the same on every stack


def made_up_means() -> np.ndarray:
    """V_Rand rising up to 0.98 then falling; V_Info best at 0.5, inside the organisers' sweep."""
    v_rand = [0.1 * k for k in range(10)] + [0.95, 0.97, 0.96]
    v_info = [0.5 - abs(0.5 - 0.1 * k) for k in range(10)] + [0.3, 0.2, 0.1]
    return np.stack([v_rand, v_info], axis=1)


def test_the_finer_sweep_looks_past_the_organisers_last_threshold():
    assert sweep.ABOVE == (0.95, 0.98, 0.99)
    row = sweep.summary("+ tile", made_up_means())
    assert (row["organisers_v_rand"], row["organisers_v_rand_threshold"]) == (pytest.approx(0.9), 0.9)
    assert (row["finer_v_rand"], row["finer_v_rand_threshold"]) == (pytest.approx(0.97), 0.98)
    assert row["organisers_v_info_threshold"] == row["finer_v_info_threshold"] == 0.5  # nothing better above
    assert row["v_rand_at"] == {"0.9": pytest.approx(0.9), "0.95": 0.95, "0.98": 0.97, "0.99": 0.96}
    recipe = {**sweep.summary("recipe", made_up_means() * 0.5), "base_filters": 64, "seed": 123}
    text = sweep.markdown({"commands": ["c1", "c2"], "measured": "today", "tensorflow": "2.x",
                           "rows": [{**row, "base_filters": 64, "seed": 123}, recipe]})
    assert "`c1`\n\n`c2`\n\nLast measured today" in text
    assert text.index("| recipe | 64 |") < text.index("| + tile | 64 | 123 | 0.9000 (0.9) | 0.5000 (0.5) | 0.9700 "
                                                       "(0.98) | 0.5000 (0.5) | 0.9000 / 0.9500 / 0.9700 / 0.9600 |")
    assert "| V_Rand, organisers' | V_Rand, finer |" in text
    assert text.rstrip().endswith("| + tile | 1 | +0.4500 (+0.4500..+0.4500) | +0.4850 (+0.4850..+0.4850) |")


def test_the_validation_slices_come_from_the_training_log(tmp_path):
    records = [{"type": "LOG", "step": "PARAMETER", "data": {}},
               {"type": "LOG", "step": "DATA", "data": {"train_slices": [0, 1], "val_slices": [19, 17]}}]
    (tmp_path / "log.json").write_text("".join(f"DLLL {json.dumps(r)}\n" for r in records))
    assert sweep.validation_slices(tmp_path) == [19, 17]
    (tmp_path / "log.json").write_text(f"DLLL {json.dumps(records[0])}\n")
    with pytest.raises(SystemExit, match="no DATA record"):
        sweep.validation_slices(tmp_path)
