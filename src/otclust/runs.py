"""The run folder: what a training run leaves behind, written so that nothing is half-written
and nothing of the user's is overwritten without --overwrite.

Layout: config.yaml, model.pt (checkpoint, rewritten atomically during training: see
engine.CHECKPOINT_EVERY_SECONDS), metrics.jsonl (one row per epoch, rewritten with it), metrics.json (final), assignments.csv (one row per sample); under
--clusters auto with a refit (otclust.k_search), the search run's files in k-search/.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import yaml

from otclust.errors import UserError

RUN_FILES = ("config.yaml", "model.pt", "metrics.jsonl", "metrics.json", "assignments.csv", "report.html")
SEARCH_FOLDER = "k-search"  # --clusters auto: the run that chose K, when a second run trained with it


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see a partial
    file, and a write that fails (disk full, no permission) leaves the previous file as it was,
    removes the temporary one and ends with a one-line UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: the folder {path.parent} does not exist; create it or choose another path")
    existed = path.exists()
    # mkstemp's file is private (0600): the result gets the mode of the file it replaces, else
    # the one a plain open() would give (0666 less the umask), so a shared model stays shareable.
    mode = stat.S_IMODE(path.stat().st_mode) if existed else 0o666 & ~_umask()
    temp = None
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the rename must never publish a file whose bytes are not on disk yet
        os.chmod(temp, mode)
        os.replace(temp, path)
        temp = None
    except OSError as error:
        kept = f"the previous {path.name} is kept unchanged" if existed else "nothing was written"
        raise UserError(f"could not write {path} ({error.strerror or type(error).__name__}): {kept}; free some space or fix the folder's permissions, then try again") from None
    finally:
        if temp is not None and os.path.exists(temp):
            os.unlink(temp)


def _umask() -> int:
    try:  # Linux says it without changing it (os.umask can only be read by setting it)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)
    os.umask(current)
    return current


def atomic_write_text(path: Path, text: str) -> None:
    # surrogateescape: a file name that is not valid UTF-8 reaches Python as lone surrogates
    # (os.fsdecode); it is written back as the name's own bytes, so the path still opens the file.
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def _resumable(out: Path) -> bool:
    """A checkpoint to go on from, or a finished --clusters auto search whose refit had not started."""
    return (out / "model.pt").is_file() or (out / SEARCH_FOLDER / "metrics.json").is_file()


def prepare_output_folder(out: str | Path, overwrite: bool = False, resume: bool = False, check_only: bool = False) -> Path:
    """Check the output folder before any work starts, so a long run cannot fail at its end.

    With check_only nothing is created or removed (used before the data are loaded).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose another --out")
    try:
        existing = [name for name in RUN_FILES if (out / name).exists()]
        not_empty = out.exists() and any(out.iterdir())
    except OSError as error:
        raise UserError(f"cannot look into the output folder {out} ({error.strerror or type(error).__name__}): choose another --out") from None
    if resume:
        if not _resumable(out):
            raise UserError(f"cannot resume: {out / 'model.pt'} does not exist; start a new run without --resume")
        remove_stale_temporary_files(out)
        return out
    if not_empty and not overwrite:
        what = f"it holds {', '.join(existing)}" if existing else "it is not empty"
        # Something to resume but no final metrics: a run that stopped (killed, out of time).
        unfinished = _resumable(out) and not (out / "metrics.json").is_file()
        resumable = "; it is an unfinished run: --resume continues it," if unfinished else ":"
        raise UserError(f"output folder {out} already exists and {what}{resumable} pass --overwrite, or choose another --out")
    if check_only:
        check_creatable(out)
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            # Only otclust's own files go; anything else the user keeps there stays.
            for name in existing:
                (out / name).unlink()
            remove_stale_temporary_files(out)
            remove_search_run(out / SEARCH_FOLDER)
    except OSError as error:
        raise UserError(f"cannot create the output folder {out} ({error.strerror or type(error).__name__}): choose an --out you can write to") from None
    return out


def remove_search_run(search: Path) -> None:
    """An earlier run's K search (k-search/): its files, and the folder if nothing else is left."""
    if not search.is_dir():
        return
    for name in RUN_FILES:
        (search / name).unlink(missing_ok=True)
    remove_stale_temporary_files(search)
    if not any(search.iterdir()):
        search.rmdir()


def remove_stale_temporary_files(out: Path) -> None:
    """The temporary files of writes that a killed process left unfinished (only ours, by name)."""
    for name in RUN_FILES:
        for temp in out.glob(f".{name}.*.tmp"):
            temp.unlink(missing_ok=True)


def check_creatable(out: Path, what: str = "the output folder") -> None:
    """Fail before any work when `out` cannot be made: an ancestor is a file, or not writable."""
    out = Path(out)
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == out:
        return
    if not ancestor.is_dir():
        raise UserError(f"cannot create {what} {out}: {ancestor} is a file; choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {what} {out}: {ancestor} is not writable; choose another --out")


def check_output_files(paths: list[Path], overwrite: bool, kind: str) -> None:
    """Check the file(s) a command writes (predict's CSV, evaluate's JSON, embed's .npy and its
    side files; paths[0] is --out) before any work, so that a long computation cannot end in a
    traceback or replace a file of the user's unasked: --out must name a file, in a folder that
    can be made, and none of the files may exist without --overwrite."""
    paths = [Path(path) for path in paths]
    out = paths[0]
    if out.is_dir():
        raise UserError(f"--out {out} is a folder: give a {kind} file name")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        verb = "exists" if len(existing) == 1 else "exist"
        raise UserError(f"{', '.join(existing)} already {verb}: pass --overwrite or choose another --out")
    check_creatable(out, f"the {kind} file")


class RunWriter:
    """Writes the files of one run folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @property
    def checkpoint_path(self) -> Path:
        return self.folder / "model.pt"

    def write_config(self, config: dict) -> None:
        atomic_write_text(self.folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def write_history(self, history: list[dict]) -> None:
        # Rewritten whole with each checkpoint so a resumed run never holds rows of epochs it redid.
        atomic_write_text(self.folder / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))

    def write_final_metrics(self, metrics: dict) -> None:
        atomic_write_text(self.folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")

    def write_assignments(self, proba: np.ndarray, labels: np.ndarray | None, paths: list[str] | None, class_names: list[str] | None = None) -> None:
        write_assignments_csv(self.folder / "assignments.csv", proba, labels, paths, class_names)


def write_assignments_csv(path: Path, proba: np.ndarray, labels: np.ndarray | None = None, paths: list[str] | None = None, class_names: list[str] | None = None) -> None:
    """One row per sample: index, path (if known), cluster, confidence, label (if known) and the
    label's class name (when the data name their classes: folders 1, 2, 10 are labels 0, 2, 1,
    sorted as text, which the id alone does not tell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    named = labels is not None and class_names is not None and len(class_names) > int(np.max(labels, initial=-1))
    header = ["index"] + (["path"] if paths is not None else []) + ["cluster", "confidence"] + (["label"] if labels is not None else []) + (["class"] if named else [])
    writer.writerow(header)
    clusters = proba.argmax(axis=1)
    confidence = proba.max(axis=1)
    for i in range(len(proba)):
        row = [i] + ([paths[i]] if paths is not None else []) + [int(clusters[i]), f"{confidence[i]:.4f}"]
        if labels is not None:
            row.append(int(labels[i]))
        if named:
            row.append(class_names[int(labels[i])])
        writer.writerow(row)
    atomic_write_text(Path(path), buffer.getvalue())
