"""A zoo package says what its model learned from: the ISBI 2012 files only when they are the real ones."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from data_loading.isbi import verification_problem
from runtime.inference import zoo
from runtime.loop.model_card import dataset_of


def test_the_training_data_is_named_by_what_it_is(tmp_path, isbi_dir):
    tifffile.imwrite(tmp_path / "train-volume.tif", np.zeros((30, 512, 512), np.uint8))  # the ISBI layout only
    assert dataset_of({"data_dir": str(tmp_path)}) == "layout"
    assert dataset_of({"data_dir": str(tmp_path / "gone")}) == "layout"
    assert dataset_of({"train_images": ["mine.tif"], "data_dir": str(isbi_dir)}) == "own"
    assert dataset_of({"synth_data": True}) == "random" and dataset_of({}) == ""
    real = verification_problem(isbi_dir / "train-volume.tif", "train-volume.tif") is None
    assert dataset_of({"data_dir": str(isbi_dir)}) == ("isbi2012" if real else "layout")


@pytest.mark.parametrize("dataset, isbi", [("isbi2012", True), ("layout", False), ("own", False), ("", False)])
def test_tags_and_citations_follow_the_data(dataset, isbi):
    cited = " ".join(entry["text"] for entry in zoo.citations(dataset))
    assert ("ISBI 2012" in cited) == isbi and "U-Net" in cited
    assert ("isbi2012" in zoo.tags(dataset)) == isbi and "unet" in zoo.tags(dataset)
