"""Logging in NVIDIA dllogger's formats.

stdout gets ``DLL <datetime> - <step> <key> : <value> ...`` lines and
``<log_dir>/log.json`` gets ``DLLL {json}`` lines (timestamp, datetime,
elapsedtime, type, step, data), so tools written for the original recipe's
logs read ours. dllogger is not on PyPI: when it is importable it does the
writing, otherwise ``_Writer`` below produces the same formats.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from common.errors import UserInputError, write_failure

Step = tuple | int | str


def _plain(value: Any) -> Any:
    """NumPy and TensorFlow scalars as Python numbers, so json.dumps takes them."""
    if hasattr(value, "numpy"):
        value = value.numpy()
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, tuple):  # steps like (3, 100): printed as a tuple, stored as a JSON list
        return tuple(_plain(v) for v in value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _ends_mid_line(path: Path) -> bool:
    """True if a non-empty file's last line has no newline (its writer was killed mid-run)."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with open(path, "rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"


class _Writer:
    """Same output as dllogger's StdOutBackend + JSONStreamBackend."""

    def __init__(self, stdout: TextIO | None, json_file: TextIO | None) -> None:
        self._stdout = stdout
        self._json = json_file
        self._start = datetime.now()

    def _stamp(self) -> tuple[datetime, float]:
        now = datetime.now()
        return now, (now - self._start).total_seconds()

    def log(self, step: Step, data: Mapping[str, Any]) -> None:
        # The file first: whoever watches stdout (a user, a test, a launcher) may kill
        # the run the moment a line shows, and that line must be on disk already.
        now, elapsed = self._stamp()
        if self._json is not None:
            record = {"timestamp": str(now.timestamp()), "datetime": str(now),
                      "elapsedtime": str(elapsed), "type": "LOG", "step": step, "data": dict(data)}
            self._json.write(f"DLLL {json.dumps(record)}\n")
            self._json.flush()
        if self._stdout is not None:
            metrics = " ".join(f"{key} : {value} " for key, value in data.items())
            print(f"DLL {now} - {step} {metrics}", file=self._stdout, flush=True)

    def metadata(self, metric: str, metadata: Mapping[str, Any]) -> None:
        if self._json is None:
            return
        now, elapsed = self._stamp()
        record = {"timestamp": str(now.timestamp()), "elapsedtime": str(elapsed), "datetime": str(now),
                  "type": "METADATA", "metric": metric, "metadata": dict(metadata)}
        self._json.write(f"DLLL {json.dumps(record)}\n")

    def flush(self) -> None:
        for stream in (self._stdout, self._json):
            if stream is not None:
                stream.flush()


class _DlloggerWriter:
    """The real dllogger package, when installed."""

    def __init__(self, dllogger: Any, stdout: bool, json_path: Path | None, append: bool) -> None:
        backends = []  # the file before stdout, as in _Writer.log
        if json_path is not None:
            backends.append(dllogger.JSONStreamBackend(dllogger.Verbosity.VERBOSE, str(json_path),
                                                       append=append))
        if stdout:
            backends.append(dllogger.StdOutBackend(dllogger.Verbosity.VERBOSE))
        self._logger = dllogger.Logger(backends=backends)

    def log(self, step: Step, data: Mapping[str, Any]) -> None:
        self._logger.log(step=step, data=dict(data), verbosity=0)

    def metadata(self, metric: str, metadata: Mapping[str, Any]) -> None:
        self._logger.metadata(metric, dict(metadata))

    def flush(self) -> None:
        self._logger.flush()


class Logger:
    """What the run loop logs through; values may be tensors or NumPy scalars."""

    def __init__(self, stdout: bool, json_path: Path | None, append: bool = False) -> None:
        try:
            import dllogger
        except ImportError:
            dllogger = None
        self.json_path = json_path
        self.status_line: Any = None  # a ProgressBar sharing the terminal, cleared around each line
        if dllogger is not None:
            self._writer: Any = _DlloggerWriter(dllogger, stdout, json_path, append)
            return
        self._json_file = None
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            cut_short = append and _ends_mid_line(json_path)
            self._json_file = open(json_path, "a" if append else "w", encoding="utf-8")
            if cut_short:  # a killed run's last line: keep the next one whole
                self._json_file.write("\n")
        self._writer = _Writer(sys.stdout if stdout else None, self._json_file)

    def log(self, step: Step, data: Mapping[str, Any]) -> None:
        if self.status_line is not None:
            self.status_line.clear()
        try:
            self._writer.log(_plain(step), {key: _plain(value) for key, value in data.items()})
            self._writer.flush()
        except OSError as error:
            self._abandon_file()
            raise write_failure("the log", self.json_path.parent if self.json_path else "stdout", error) from None

    def _abandon_file(self) -> None:
        """After a failed write: close the file without retrying its buffer (the close still frees it), so that
        neither close() nor the garbage collector reports the same failure again; stdout carries on."""
        json_file = getattr(self, "_json_file", None)
        if json_file is None:
            return
        try:
            json_file.close()
        except OSError:
            pass
        self._json_file = None
        self._writer = _Writer(self._writer._stdout, None)
        if self.status_line is not None:
            self.status_line.restore()

    def metadata(self, metric: str, metadata: Mapping[str, Any]) -> None:
        self._writer.metadata(metric, metadata)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self.flush()
        if getattr(self, "_json_file", None) is not None:
            self._json_file.close()
            self._json_file = None


# Reading logs back ------------------------------------------------------

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


def final_eval(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last evaluation summary of a run (the one after training), or None."""
    evals = [r["data"] for r in records
             if r.get("type") == "LOG" and r.get("step") == [] and "eval_dice_score" in r.get("data", {})]
    return evals[-1] if evals else None


def runs(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The records of each run that wrote to one log, in order, each group starting at a PARAMETER line
    (a line logged before its run's PARAMETER, such as a lock warning, stays with the run before)."""
    grouped: list[list[dict[str, Any]]] = []
    for record in records:
        if record.get("step") == "PARAMETER" or not grouped:
            grouped.append([])
        grouped[-1].append(record)
    return grouped
