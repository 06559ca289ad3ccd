"""The checkpoint file (model.pt): what it holds, how it is written, read and upgraded.

People share trained models, so reading one must never run code. A checkpoint therefore holds
only what `torch.load(..., weights_only=True)` accepts: tensors, numbers, strings, bools, None,
lists, tuples and dicts. Everything otclust keeps that is not of these kinds (numpy arrays in a
method's state, numpy's random-generator state, the estimator's labels) is turned into tensors
or plain values on writing (`to_plain`) and back on reading. Every reader (fit --resume,
predict, evaluate, report, OTClust.load) goes through `read_checkpoint`.

Format 1 (otclust before this format) pickled numpy objects, which only full unpickling reads;
`read_checkpoint` refuses such a file with one line that names `otclust upgrade-checkpoint`,
which converts a file the user trusts (`upgrade_checkpoint`; it unpickles, so it runs only when
asked for).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import random
import warnings
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from otclust.errors import UserError
from otclust.readout import readout_state, take_legacy_readout
from otclust.runs import atomic_write_bytes

CHECKPOINT_FORMAT = "otclust-checkpoint-2"
OLD_FORMATS = ("otclust-checkpoint-1",)
REQUIRED_KEYS = ("config", "spec", "model")


class CheckpointRefused(UserError):
    """A file refused because loading it could run code (or, for format 1, only unpickling reads it).
    Callers that work around an unreadable checkpoint (the report) must not work around this."""

# A format-1 checkpoint's pickle is a few hundred kB (its tensors live in other zip members);
# anything much larger is not one, and is not scanned.
_MAX_SCANNED_PICKLE = 64 * 2**20


def to_plain(value, where: str = "checkpoint"):
    """`value` with numpy arrays as tensors, numpy scalars as numbers and paths as strings;
    a TypeError for anything else that `weights_only` loading would refuse (a bug to fix where
    that value is made, so it fails when written, not when a user loads the file)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor, torch.dtype, torch.Size)):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{where}: a numpy array of dtype {value.dtype} cannot be stored in a checkpoint")
        if value.dtype.kind == "u" and value.dtype != np.uint8:
            value = value.astype(np.int64)  # torch's wider unsigned types are not fully supported
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {key: to_plain(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_plain(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored in a checkpoint (tensors and plain values only)")


def trained_state(method, config) -> dict:
    """What a trained model needs to predict again: the core of every checkpoint."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": to_plain(config.to_dict(), "config"),
        "spec": to_plain(asdict(method.spec), "spec"),
        "model": method.state_dict(),
        "method_state": to_plain(method.method_state(), "method_state"),
        "readout": to_plain(readout_state(method), "readout"),  # the fitted read-out (otclust.readout)
    }


def capture_rng_state() -> dict:
    """Every random generator a run draws from, as plain values."""
    state = {"torch": torch.get_rng_state(), "numpy": to_plain(np.random.get_state(), "numpy random state"), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(_as_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """random.setstate wants nested tuples (a checkpoint keeps them, this is for safety)."""
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def write_checkpoint(state: dict, path) -> None:
    """Serialise in memory, then replace `path` atomically: a failed write leaves the old file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def checkpoint_file(path) -> Path:
    """The model.pt a --checkpoint names: the file itself, or the one in a run folder (what
    `otclust fit` prints and `otclust report` takes)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise UserError(f"{path} is a folder without a model.pt: pass the run folder of otclust fit, or its model.pt")
        return path / "model.pt"
    return path


def read_checkpoint(path) -> dict:
    """Load an otclust checkpoint without running any code it may hold; UserError for anything else."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (pass a run folder of otclust fit, or its model.pt)")
    try:
        with warnings.catch_warnings():
            # torch's notices about a file it then refuses (a pickle protocol it did not write):
            # the file is judged below, in one line.
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever fails here, the file is not one we can read
        if _pickled_format(path) in OLD_FORMATS:
            raise CheckpointRefused(old_format_message(path)) from None
        if _names_python_objects(error):
            raise CheckpointRefused(
                f"refused to load {path}: it holds Python objects other than tensors and plain values, which otclust "
                "never writes and which could run code when loaded; use a model.pt written by otclust fit or OTClust.save"
            ) from None
        raise UserError(f"cannot read checkpoint {path} ({type(error).__name__}): it is truncated, damaged or not an otclust model.pt") from None
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} is not an otclust checkpoint")
    if checkpoint.get("format") in OLD_FORMATS:
        raise CheckpointRefused(old_format_message(path))
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an otclust checkpoint (format {checkpoint.get('format')!r}, this otclust reads {CHECKPOINT_FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint.get(key), dict)]
    if missing:
        raise UserError(f"{path} is not a complete otclust checkpoint: {', '.join(missing)} missing")
    return checkpoint


def _names_python_objects(error: Exception) -> bool:
    """Whether torch's weights-only unpickler stopped at a reference to Python code (a global,
    a class, a call), rather than at bytes that are no pickle at all (garbage, truncation)."""
    text = str(error).lower()
    return "weights only" in text and any(word in text for word in ("global", "class", "reduce", "function"))


def old_format_message(path) -> str:
    return (
        f"{path} was written by an older otclust (format 1), which only full unpickling reads, and unpickling can run code: "
        f"if you trust the file, convert it with 'otclust upgrade-checkpoint {path} NEW.pt' and use NEW.pt"
    )


def _pickled_format(path: Path) -> str | None:
    """The otclust format string inside a torch zip file's pickle, found by reading the pickle's
    opcodes only (pickletools never builds or calls anything), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info for info in archive.infolist() if info.filename.endswith("/data.pkl") or info.filename == "data.pkl"]
            if len(names) != 1 or names[0].file_size > _MAX_SCANNED_PICKLE:
                return None
            data = archive.read(names[0])
        for opcode, argument, _ in pickletools.genops(data):
            if isinstance(argument, str) and argument.startswith("otclust-checkpoint-"):
                return argument
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, pickle.UnpicklingError):
        return None
    return None


def plain_checkpoint(checkpoint: dict) -> dict:
    """A format-1 checkpoint (already unpickled) in format 2."""
    if not isinstance(checkpoint, dict) or checkpoint.get("format") not in OLD_FORMATS:
        raise TypeError("not a format-1 checkpoint")
    converted = dict(checkpoint)
    for key in ("config", "spec", "method_state", "history", "estimator_params", "labels", "rng", "seconds", "epoch"):
        if key in converted:
            converted[key] = to_plain(converted[key], key)
    converted["format"] = CHECKPOINT_FORMAT
    return converted


def upgrade_checkpoint(old, new, warn=print) -> dict:
    """Convert a format-1 checkpoint the user trusts. This unpickles `old` (it may run code a
    crafted file holds), so only `otclust upgrade-checkpoint` calls it, at the user's request,
    and only for a file whose pickle is tagged format 1; `warn` receives the warning first."""
    old = Path(old)
    if not old.is_file():
        raise UserError(f"checkpoint not found: {old}")
    try:
        read_checkpoint(old)
    except CheckpointRefused:
        pass
    else:
        raise UserError(f"{old} is already in the current format ({CHECKPOINT_FORMAT}): nothing to convert")
    if _pickled_format(old) not in OLD_FORMATS:
        raise UserError(f"{old} is not an otclust checkpoint of format 1: nothing to convert")
    warn(f"warning: reading {old} unpickles it, which runs any code a crafted file holds: convert only files you trust")
    try:
        checkpoint = torch.load(old, map_location="cpu", weights_only=False)
        converted = plain_checkpoint(checkpoint)
    except Exception as error:  # noqa: BLE001
        raise UserError(f"cannot convert {old} ({type(error).__name__}): it is damaged or not an otclust checkpoint") from None
    write_checkpoint(converted, new)
    return read_checkpoint(new)  # proves the new file loads the safe way


def upgrade_clot_state(method, state_dict: dict, prefix: str) -> None:
    """A CLOT state dict of an earlier version, brought to today's in place: no per-head masses,
    no feature sizes (its 'auto' sizes then came from predictions), and the read-out in the
    weights (readout_weight/readout_bias, or feature_centers before that)."""
    if prefix + "head_mass" not in state_dict:
        state_dict[prefix + "head_mass"] = state_dict.get(prefix + "predicted_mass", method.predicted_mass).expand_as(method.head_mass).clone()
    if prefix + "feature_sizes" not in state_dict:
        state_dict[prefix + "feature_sizes"] = torch.zeros_like(method.feature_sizes)
        method.params = replace(method.params, auto_sizes="predictions")
    legacy = take_legacy_readout(state_dict, prefix, method.params.head_temperature)
    if legacy is not None:
        method.readout_fits, method.predictor = {legacy.name: legacy}, legacy.name
