"""Reading the DLLL records of a log.json back: the results of a run, for scripts and tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtime.errors import UserInputError


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every record of a dllogger JSON-stream file (lines prefixed ``DLLL ``)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UserInputError(f"cannot read log {path}: {error.strerror}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.startswith("DLLL "):
            continue
        try:
            records.append(json.loads(line[len("DLLL "):]))
        except ValueError:
            raise UserInputError(f"{path}:{number} is not a valid DLLL record") from None
    return records


def merged_data(records: list[dict[str, Any]], step: Any) -> dict[str, Any]:
    """All data logged under one step label, later values winning.

    Step labels: ``"DATA"``, ``"SETUP"``, ``"CHECKPOINT"``..., ``[]`` for the
    summaries (evaluation metrics, throughput), ``[k, n]`` for training step k of n.
    """
    merged: dict[str, Any] = {}
    for record in records:
        if record.get("type") == "LOG" and record.get("step") == step:
            merged.update(record["data"])
    return merged
