"""Our dllogger-format writer: DLL lines on stdout, DLLL JSON lines in log.json."""

from __future__ import annotations

import json
import re

import numpy as np

from runtime.reporting.dllog import Logger


def test_formats(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "dllogger", None)  # force our own writer
    logger = Logger(stdout=True, json_path=tmp_path / "log.json")
    logger.log((3, 10), {"train_ce_loss": np.float32(0.5), "IPS": 2.0})
    logger.log((), {"eval_dice_score": 0.9})
    logger.close()
    out = capsys.readouterr().out.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+"
    assert re.fullmatch(rf"DLL {stamp} - \(3, 10\) train_ce_loss : 0\.5  IPS : 2\.0 ", out[0])
    assert out[1].endswith("- () eval_dice_score : 0.9 ")
    lines = (tmp_path / "log.json").read_text().splitlines()
    first = json.loads(lines[0].removeprefix("DLLL "))
    assert lines[0].startswith("DLLL {")
    assert first["type"] == "LOG" and first["step"] == [3, 10] and first["data"]["train_ce_loss"] == 0.5
    assert {"timestamp", "datetime", "elapsedtime"} <= first.keys()
    assert json.loads(lines[1][5:])["step"] == []
