"""predict.py segments as the model was trained: the input mode its zoo package records."""

from __future__ import annotations

import zipfile

import yaml

from predict import strategy_of
from runtime.inference.export import ZOO_DESCRIPTION, ZOO_PACKAGE, trained_input_mode


def described(folder, mode):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ZOO_DESCRIPTION).write_text(yaml.safe_dump({"config": {"unet2d": {"input_mode": mode}}}))
    return folder


def test_the_input_mode_is_read_wherever_a_model_is_named(tmp_path):
    export = tmp_path / "export"
    described(export / ZOO_PACKAGE, "tile")
    (export / "saved_model").mkdir()
    (export / "saved_model" / "saved_model.pb").write_bytes(b"")
    (export / "unet2d.keras").write_bytes(b"")
    for named in (export, export / "unet2d.keras", export / "saved_model", export / ZOO_PACKAGE,
                  export / ZOO_PACKAGE / ZOO_DESCRIPTION):
        assert trained_input_mode(named) == "tile", named
    with zipfile.ZipFile(tmp_path / "package.zip", "w") as archive:
        archive.writestr(ZOO_DESCRIPTION, yaml.safe_dump({"config": {"unet2d": {"input_mode": "resize"}}}))
    assert trained_input_mode(tmp_path / "package.zip") == "resize"
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "unet2d.keras").write_bytes(b"")
    assert trained_input_mode(tmp_path / "bare" / "unet2d.keras") is None
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / ZOO_DESCRIPTION).write_text("config: [unclosed")
    assert trained_input_mode(tmp_path / "odd") is None


def test_the_strategy_follows_the_models_and_says_so(tmp_path, capsys):
    tile, resize = described(tmp_path / "t", "tile"), described(tmp_path / "r", "resize")
    assert strategy_of([tile]) == "tile" and "--strategy tile, as the model was trained" in capsys.readouterr().err
    assert strategy_of([tile, tile]) == "tile"
    assert strategy_of([tile, resize]) == "resize"  # an ensemble trained both ways: the recipe's
    assert strategy_of([tmp_path / "nothing"]) == "resize"
