"""Where checkpoints live and how they are written, found and cleared.

Checkpoints go to ``<model_dir>/model_checkpoint`` (``.../worker_N`` per
worker with --log_all_workers). Starting afresh clears that folder only, in
Python, never the model dir itself and never through a shell. Reading
takes the newest checkpoint that reads back whole: a damaged one (a full
disk, a killed copy) is reported and passed over, never deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from common.compat import stack_name
from common.errors import UserInputError
from runtime.loop import portable

CHECKPOINT_FOLDER = "model_checkpoint"
CHECKPOINT_NAME = "checkpoint"  # files checkpoint-<step>.index and checkpoint-<step>.data-*
STATE_FILE = "checkpoint"  # TensorFlow's small text file naming the latest
DAMAGED_FOLDER = "damaged"
KEEP_LAST = 3
_INDEX_FILE = re.compile(rf"^{CHECKPOINT_NAME}-(\d+)\.index$")


def checkpoint_dir(model_dir: Path, worker: int | None = None) -> Path:
    folder = Path(model_dir) / CHECKPOINT_FOLDER
    return folder / f"worker_{worker}" if worker is not None else folder


def clear_checkpoints(folder: Path) -> bool:
    """Delete the previous run's checkpoints; True if there were any."""
    if folder.is_symlink():
        raise UserInputError(f"refusing to clear {folder}: it is a symbolic link")
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise UserInputError(f"refusing to clear {folder}: it is a file, not a checkpoint folder")
    if folder.name != CHECKPOINT_FOLDER and folder.parent.name != CHECKPOINT_FOLDER:
        raise AssertionError(f"only checkpoint folders are ever cleared, not {folder}")
    shutil.rmtree(folder)
    return True


def remove_partial(folder: Path) -> list[Path]:
    """Remove what a failed save left in a checkpoint folder: TensorFlow's ``<prefix>_temp`` folders, never
    a checkpoint that the ``checkpoint`` index names."""
    left = sorted(folder.glob(f"{CHECKPOINT_NAME}-*_temp*"))
    for path in left:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return left


def make_manager(checkpoint: tf.train.Checkpoint, folder: Path, keep: int = KEEP_LAST) -> tf.train.CheckpointManager:
    """Checkpoints named checkpoint-<step>, the newest ``keep`` kept.

    TensorFlow writes each checkpoint's files under temporary names and
    updates the small ``checkpoint`` index last, by an atomic rename: a crash
    mid-write leaves the previous checkpoint as the latest, intact.
    """
    return tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=keep, checkpoint_name=CHECKPOINT_NAME)


class PeriodicSaver:
    """Decides when training writes its next checkpoint: every N steps or M minutes."""

    def __init__(self, every_steps: int, every_minutes: float) -> None:
        self.every_steps = every_steps
        self.every_seconds = 60.0 * every_minutes
        self._last = time.monotonic()

    def due(self, step: int) -> bool:
        by_steps = self.every_steps > 0 and step % self.every_steps == 0
        by_time = self.every_seconds > 0 and time.monotonic() - self._last >= self.every_seconds
        return by_steps or by_time

    def saved(self) -> None:
        self._last = time.monotonic()


def saved_checkpoints(folder: Path) -> list[str]:
    """Every checkpoint in ``folder``, newest (highest step) first, found by its file names.

    Not through the small ``checkpoint`` state file: a garbled or missing one
    must not hide intact checkpoints beside it.
    """
    if not folder.is_dir():
        return []
    steps = [int(match.group(1)) for file in folder.iterdir() if (match := _INDEX_FILE.match(file.name))]
    return [str(folder / f"{CHECKPOINT_NAME}-{step}") for step in sorted(steps, reverse=True)]


def no_checkpoint(folder: Path) -> UserInputError:
    return UserInputError(f"no checkpoint in {folder}: train first, or point --model_dir at a trained model")


def latest(folder: Path) -> str | None:
    """The newest checkpoint's path prefix, read or not; None when there is none."""
    found = saved_checkpoints(folder)
    return found[0] if found else None


def damage(path: str) -> str | None:
    """Why the checkpoint at ``path`` cannot be read whole; None when every tensor reads back.

    TensorFlow checks each tensor's CRC as it reads it, so this finds a
    truncated or overwritten data file as well as a garbled index.
    """
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as error:  # noqa: BLE001 - TensorFlow raises OpError, IndexError, ValueError... for damage
        lines = str(error).strip().splitlines()
        return lines[0] if lines else type(error).__name__
    return None


def newest_intact(folder: Path, warn: Callable[[str], None]) -> tuple[str | None, list[str]]:
    """The newest checkpoint that reads back whole, and the damaged newer ones passed over.

    Each damaged one is reported through ``warn`` and left where it is. None
    when the folder holds no checkpoint; a one-line error when it holds only
    damaged ones.
    """
    found = saved_checkpoints(folder)
    damaged: list[str] = []
    for path in found:
        reason = damage(path)
        if reason is None:
            return path, damaged
        damaged.append(path)
        warn(f"checkpoint {path} is damaged ({reason}); trying the one before it")
    if damaged:
        raise UserInputError(f"every checkpoint in {folder} is damaged ({len(damaged)} found, newest "
                             f"{Path(damaged[0]).name}); they are kept for inspection, nothing was loaded")
    return None, []


def set_aside(damaged: list[str], folder: Path) -> list[Path]:
    """Move damaged checkpoints into ``<folder>/damaged/``, where training will not overwrite them.

    A resumed run saves checkpoints of the same steps again; left in place, a
    damaged one would be replaced, and it is the user's to inspect or delete.
    """
    target = folder / DAMAGED_FOLDER
    target.mkdir(exist_ok=True)
    moved = []
    for path in damaged:
        prefix = Path(path)
        for file in sorted(prefix.parent.glob(prefix.name + ".*")):
            destination = target / file.name
            suffix = 1
            while destination.exists():  # never replace an earlier set-aside copy
                destination = target / f"{file.name}.{suffix}"
                suffix += 1
            os.replace(file, destination)
            moved.append(destination)
    return moved


def state_names(folder: Path) -> str | None:
    """The latest checkpoint as TensorFlow's state file names it (None if the file is missing or garbled)."""
    try:
        return tf.train.latest_checkpoint(str(folder)) if folder.is_dir() else None
    except (ValueError, tf.errors.OpError):  # a file that is not even UTF-8 gets past TensorFlow's own checks
        return None


def write_state(folder: Path, newest: str) -> None:
    """Point the ``checkpoint`` state file at ``newest``, listing the older checkpoints beside it.

    Written atomically, so that TensorFlow's CheckpointManager rotates the
    checkpoints that are really there (and only those), even after the old
    state file was garbled, lost, or named a checkpoint set aside as damaged.
    """
    step = int(newest.rsplit("-", 1)[1])
    kept = [path for path in reversed(saved_checkpoints(folder)) if int(path.rsplit("-", 1)[1]) <= step]
    # The manager deletes only checkpoints stamped later than last_preserved_timestamp.
    stamps = [Path(f"{path}.index").stat().st_mtime for path in kept]
    lines = [f'model_checkpoint_path: "{Path(newest).name}"']
    lines += [f'all_model_checkpoint_paths: "{Path(path).name}"' for path in kept]
    lines += [f"all_model_checkpoint_timestamps: {stamp!r}" for stamp in stamps]
    lines += [f"last_preserved_timestamp: {min(stamps) - 1.0!r}"]
    temporary = folder / f".{STATE_FILE}.part"
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(temporary, folder / STATE_FILE)


def model_geometry(shapes: list[list[int]]) -> dict[str, int]:
    """The two flags that change a UNet's variable shapes, read off its variables' shapes.

    The first 3x3 convolution is the only kernel with one input channel, so its
    output channels are --base_filters; the 1x1 output convolution's output
    channels are --num_classes.
    """
    found = {}
    for shape in shapes:
        if len(shape) == 4 and list(shape[:3]) == [3, 3, 1]:
            found.setdefault("--base_filters", int(shape[3]))
        elif len(shape) == 4 and list(shape[:2]) == [1, 1]:
            found.setdefault("--num_classes", int(shape[3]))
    return found


def _flag_hint(path: str, model: tf.keras.Model | None) -> str:
    """Which flag the checkpoint was trained with another value of, e.g. ' (trained with another
    --base_filters: 64, this run 8)'; empty when neither differs or either side cannot be read."""
    if model is None:
        return ""
    try:
        saved = model_geometry([list(shape) for shape in tf.train.load_checkpoint(path)
                                .get_variable_to_shape_map().values()])
    except (ValueError, tf.errors.OpError):
        return ""
    wanted = model_geometry([[int(size) for size in variable.shape] for variable in model.variables])
    differ = [f"another {flag}: {saved[flag]}, this run {wanted[flag]}" for flag in ("--base_filters", "--num_classes")
              if flag in saved and flag in wanted and saved[flag] != wanted[flag]]
    return f" (trained with {'; '.join(differ)})" if differ else ""


def restore(checkpoint: tf.train.Checkpoint, path: str, partial: bool = False) -> str | None:
    """Load ``path`` into ``checkpoint``; a checkpoint of another model is the user's error, in one line.

    A checkpoint of the other stack (Keras 2 against Keras 3) is read by its
    structure (runtime/loop/portable.py); the returned line then says so and
    what could not be carried over. None: read as it was written.
    """
    if portable.written_by_other_keras(path):
        try:
            return _restore_across_stacks(checkpoint, path)
        except (ValueError, KeyError, tf.errors.OpError) as error:
            written = portable.writer_of(path) or "the other Keras"
            raise UserInputError(f"checkpoint {path} was written by {written} and does not fit this model on "
                                 f"{stack_name()}: {error}") from None
    status = None
    try:  # Keras 2 may fail in restore() itself, Keras 3 in the assertion
        status = checkpoint.restore(path)
        (status.expect_partial() if partial else status).assert_existing_objects_matched()
        return None
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        if status is not None:
            status.expect_partial()  # no second report of the same mismatch when the checkpoint is collected
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = _flag_hint(path, getattr(checkpoint, "model", None))
        raise UserInputError(f"checkpoint {path} does not fit this model{hint}: {first_line}") from None


def _restore_across_stacks(checkpoint: tf.train.Checkpoint, path: str) -> str:
    """The other stack's checkpoint into ``checkpoint``'s model (and optimizer, step and generator state, when
    it tracks them); ValueError when it is not the other stack's or not this model."""
    state = portable.read_state(path)
    model = checkpoint.model
    written = portable.writer_of(path) or f"Keras {state.keras}"
    optimizer = getattr(checkpoint, "optimizer", None)
    if optimizer is None:
        portable.load_weights(state, model)
        step = getattr(checkpoint, "step", None)
        if step is not None and state.step is not None:
            step.assign(state.step)
        return f"read {path}, written by {written}, on {stack_name()}: weights and step"
    rng = list(getattr(checkpoint, "rng", None) or [])
    missing = portable.load_training_state(state, model, optimizer, checkpoint.step, rng)
    return (f"read {path}, written by {written}, on {stack_name()}: weights, Adam's moments and "
            "iteration count, and the step" + (f"; not carried over: {', '.join(missing)}" if missing else ""))


def restore_model(model: tf.keras.Model, folder: Path, warn: Callable[[str], None],
                  step: tf.Variable | None = None, note: Callable[[str], None] | None = None) -> str:
    """Load the model weights (and the step it was trained to, if asked) of the newest intact checkpoint.
    ``note`` hears how a checkpoint of the other stack was read."""
    path, _ = newest_intact(folder, warn)
    if path is None:
        raise no_checkpoint(folder)
    parts = {"model": model} if step is None else {"model": model, "step": step}
    across = restore(tf.train.Checkpoint(**parts), path, partial=True)
    if across and note is not None:
        note(across)
    return path


def model_shape(path: str) -> tuple[int, int]:
    """(width, classes) of the UNet in a checkpoint, from its kernels' shapes: the first convolution's
    3x3x1xF gives the width (--base_filters), the 1x1 output convolution's last dimension the classes."""
    shapes = [shape for shape in tf.train.load_checkpoint(path).get_variable_to_shape_map().values()
              if len(shape) == 4]
    widths = {shape[3] for shape in shapes if shape[:3] == [3, 3, 1]}
    classes = {shape[3] for shape in shapes if shape[:2] == [1, 1]}
    if len(widths) != 1 or len(classes) != 1:
        raise ValueError(f"{path} does not hold one UNet (first kernels {sorted(widths)}, outputs {sorted(classes)})")
    return widths.pop(), classes.pop()
