"""The ISBI 2012 scores as the organisers compute them: V_Rand and V_Info after border thinning, best threshold.

The challenge's leaderboard (Arganda-Carreras et al. 2015, "Crowdsourcing
the creation of image segmentation algorithms for connectomics", Front.
Neuroanat. 9:142; Fiji's "Segmentation evaluation after border thinning"
script) scores a submitted probability map, not a mask:

1. the map is binarised at a threshold (a pixel is cell when its cell
   probability exceeds it), and the cells are the 4-connected regions;
2. the predicted borders are thinned to one pixel, so that a thick but
   correct membrane costs nothing: here the regions of step 1 are grown back
   over the membrane pixels, flooding from the most to the least cell-like,
   until they meet along a one-pixel line (a marker-controlled watershed).
   The regions keep their number and identity; membrane fragments inside one
   cell vanish;
3. V_Rand and V_Info are taken over the label's cell pixels only
   (foreground-restricted), with N^2 normalisation, every predicted border
   pixel inside a true cell counting as a cell of its own (as Fiji's
   ``RandError``/``VariationOfInformation`` treat the proposal's 0 label);
4. each score is averaged over the slices, per threshold, and the best
   over the thresholds 0.0, 0.1, ..., 0.9 is reported with its threshold.

With ``--finer_sweep`` the same scores are also taken over 0.95, 0.98 and
0.99 and the best of all 13 is logged as well, under ``*_finer`` names: after
a short training a full-width model still gives faint membranes P(cell)
above 0.9, and the organisers' sweep stops short of its best cells
(docs/data.md). The organisers' scores stay as they are beside them.

``runtime.inference.metrics`` keeps today's scores of the thresholded mask as
is (no thinning, the class decision); both are logged, under different names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from scipy.ndimage import binary_erosion
from skimage.segmentation import watershed

from common.files import atomic_output
from runtime.inference.metrics import MEMBRANE, cell_regions

THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(10))  # the organisers' sweep, 0.0 to 0.9
FINER_THRESHOLDS = (*THRESHOLDS, 0.95, 0.98, 0.99)  # --finer_sweep: on where the organisers stop
BEST_THRESHOLD_FILE = "best_threshold.json"  # in the model dir: evaluate writes it, --cell_threshold best reads it


def cell_probability(probabilities: np.ndarray) -> np.ndarray:
    """P(cell) of each pixel of an H x W x K probability map: everything but the membrane class."""
    return 1.0 - probabilities[..., MEMBRANE]


def thinned_regions(cell_prob: np.ndarray, threshold: float) -> np.ndarray:
    """Cells of ``cell_prob > threshold`` (1..n, 4-connected), grown over the membrane to one-pixel borders (0)."""
    cell = cell_prob > threshold
    markers = cell_regions(cell.astype(np.uint8))
    if markers.max() == 0:
        return markers  # no cell at all: every pixel is border
    # Only the cells' edge pixels start the flood; their interiors are settled already (2-3x faster).
    interior = binary_erosion(cell, border_value=1)
    regions = watershed(-cell_prob, np.where(interior, 0, markers), connectivity=1, mask=~interior,
                        watershed_line=True)
    regions[interior] = markers[interior]
    return regions


def _entropy(sizes: np.ndarray, total: float) -> float:
    p = sizes[sizes > 0] / total
    return float(-np.sum(p * np.log(p)))


def foreground_restricted_scores(true_regions: np.ndarray, predicted_regions: np.ndarray) -> tuple[float, float]:
    """(V_Rand, V_Info) over the true cell pixels, N^2-normalised, each predicted 0 pixel a singleton cell."""
    inside = true_regions != 0
    truth = true_regions[inside].astype(np.int64)
    predicted = predicted_regions[inside].astype(np.int64)
    n = float(truth.size)
    singletons = predicted == 0
    pairs = truth[~singletons] * (int(predicted.max(initial=0)) + 1) + predicted[~singletons]
    joint = np.unique(pairs, return_counts=True)[1].astype(np.float64)
    true_sizes = np.unique(truth, return_counts=True)[1].astype(np.float64)
    predicted_sizes = np.unique(predicted[~singletons], return_counts=True)[1].astype(np.float64)
    lone = float(np.count_nonzero(singletons))  # each a region (and a joint cell) of one pixel

    sum_joint = (np.sum(joint ** 2) + lone) / n ** 2
    sum_true = np.sum(true_sizes ** 2) / n ** 2
    sum_predicted = (np.sum(predicted_sizes ** 2) + lone) / n ** 2
    v_rand = 2.0 * sum_joint / (sum_true + sum_predicted)

    lone_entropy = lone / n * np.log(n)  # lone cells of probability 1/n each
    h_true = _entropy(true_sizes, n)
    h_predicted = _entropy(predicted_sizes, n) + lone_entropy
    mutual = h_true + h_predicted - (_entropy(joint, n) + lone_entropy)
    v_info = 1.0 if h_true + h_predicted == 0 else max(0.0, 2.0 * mutual / (h_true + h_predicted))
    return float(v_rand), float(v_info)


def slice_sweep(truth: np.ndarray, cell_prob: np.ndarray,
                thresholds: Sequence[float] = THRESHOLDS) -> np.ndarray | None:
    """[thresholds, 2] (V_Rand, V_Info) of one slice of class ids against its P(cell); None without true cells."""
    true_regions = cell_regions(truth)
    if not true_regions.any():
        return None
    return np.array([foreground_restricted_scores(true_regions, thinned_regions(cell_prob, t))
                     for t in thresholds])


def best_of_means(means: np.ndarray, thresholds: Sequence[float]) -> dict[str, float]:
    """The best of each score in a [thresholds, 2] table of means, and its (lowest best) threshold: over the
    organisers' thresholds under the organisers' names and, when ``thresholds`` goes on past them, over all of
    them under ``*_finer`` names."""
    organisers = [row for row, threshold in enumerate(thresholds) if threshold in THRESHOLDS]
    sweeps = {"": organisers}
    if len(organisers) < len(thresholds):
        sweeps["_finer"] = list(range(len(thresholds)))
    scores = {}
    for suffix, rows in sweeps.items():
        for column, name in enumerate(("eval_v_rand_thinned", "eval_v_info_thinned")):
            best = rows[int(np.argmax(means[rows, column]))]
            scores[name + suffix] = float(means[best, column])
            scores[f"{name}{suffix}_threshold"] = float(thresholds[best])
    return scores


def best_over_thresholds(sweeps: Iterable[np.ndarray | None],
                         thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """Per-threshold means over the slices, then their best (``best_of_means``)."""
    scored = [sweep for sweep in sweeps if sweep is not None]
    if not scored:
        return {}
    return best_of_means(np.mean(scored, axis=0), thresholds)


def thinned_scores(true_masks: Sequence[np.ndarray], cell_probs: Sequence[np.ndarray],
                   thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
    """The organisers' protocol over a stack: class-id truths against P(cell) maps."""
    return best_over_thresholds((slice_sweep(t, p, thresholds) for t, p in zip(true_masks, cell_probs, strict=True)),
                                thresholds)


def save_best_threshold(model_dir: Path, step: int, scores: dict[str, float]) -> None:
    """Keep the evaluation's best V_Rand threshold beside the checkpoints, for ``--cell_threshold best``: that of
    the finer sweep when it ran, the widest one."""
    suffix = "_finer" if "eval_v_rand_thinned_finer" in scores else ""
    record = {"step": step, "cell_threshold": scores[f"eval_v_rand_thinned{suffix}_threshold"],
              "eval_v_rand_thinned": scores[f"eval_v_rand_thinned{suffix}"],
              "sweep": "finer" if suffix else "organisers"}
    with atomic_output(Path(model_dir) / BEST_THRESHOLD_FILE) as temporary:  # never half-written
        temporary.write_text(json.dumps(record) + "\n", encoding="utf-8")


def load_best_threshold(model_dir: Path) -> tuple[float, int]:
    """The threshold ``save_best_threshold`` kept, and the step it was found at; ValueError (with the reason)
    when there is none."""
    path = Path(model_dir) / BEST_THRESHOLD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        value, step = float(record["cell_threshold"]), int(record["step"])
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: evaluate this model on labelled slices first "
                         "(--exec_mode evaluate), or pass a number") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is unreadable ({error}); evaluate again or pass a number") from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{path} holds {value}, not a threshold in [0, 1)")
    return value, step
