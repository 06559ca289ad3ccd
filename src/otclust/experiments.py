"""Several runs of `otclust fit` and their mean ± std: the shared runner of `compare` and `sweep`.

A run is a FitConfig and a folder. `run_one` trains it (reusing the data already loaded for an
earlier run of the same data) and never raises for a failed run: the failure is recorded in the
outcome, so one diverging seed or one broken method does not end a comparison of many. Results
are grouped (by method, or by swept value) and summarised as mean ± std over the seeds that
finished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from otclust.config import CONFIG_FIELDS, FitConfig, coerce_param
from otclust.data import load_dataset
from otclust.data.embeddings import pretrained_training_data
from otclust.errors import UserError
from otclust.k_search import fit_model
from otclust.methods import get_method_class
from otclust.methods.base import build_params, override_params, renamed_parameters
from otclust.models.pretrained import is_pretrained
from otclust.runs import check_creatable, prepare_output_folder

SCORES = ("acc", "nmi", "ari")
# The predictors a run is scored with (metrics.json): "run" is the run's own (top-level scores),
# "head" the method's own prediction, "readout" the read-out fitted after training.
PREDICTORS = ("run", "head", "readout")


def predictor_scores(metrics: dict, predictor: str = "run") -> dict:
    """ACC/NMI/ARI of one predictor of a run's metrics.json ({} when that run did not score it)."""
    source = metrics if predictor == "run" else metrics.get(predictor) or {}
    return {key: source[key] for key in SCORES if key in source}


@dataclass
class RunOutcome:
    """What one run left: its scores, or why it failed."""

    group: str  # the method (compare) or the swept value as written (sweep)
    seed: int
    out: Path
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    reused: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def describe(self) -> str:
        if not self.ok:
            return f"FAILED: {self.error}"
        scores = "  ".join(f"{k.upper()} {self.metrics[k]:.3f}" for k in SCORES if k in self.metrics)
        minutes = self.metrics.get("seconds", self.seconds) / 60
        text = f"{scores + '  ' if scores else ''}{minutes:.2f} min"
        return text + ("  (reused)" if self.reused else "")


@dataclass
class Summary:
    """Mean ± std over the finished runs of one group (std is 0 for a single run)."""

    group: str
    runs: int
    ok: int
    mean: dict
    std: dict
    errors: list[str]

    def cell(self, key: str, digits: int = 3) -> str:
        if key not in self.mean:
            return "n/a"
        return f"{self.mean[key]:.{digits}f} ± {self.std[key]:.{digits}f}"


class DataCache:
    """Loads each (data, split, image size) once for all the runs that share it."""

    def __init__(self):
        self._loaded: dict[tuple, object] = {}

    def get(self, config: FitConfig):
        key = (config.data, config.split, bool(config.download), config.image_size)
        if key not in self._loaded:
            self._loaded[key] = load_dataset(config.data, split=config.split, download=config.download, image_size=config.image_size, backbone=config.backbone)
        return self._loaded[key]


def parse_seeds(text: str | int) -> list[int]:
    """'3' -> [0, 1, 2]; '0,4,7' -> [0, 4, 7]."""
    raw = str(text).strip()
    try:
        if "," in raw:
            seeds = [int(s) for s in raw.split(",") if s.strip()]
        else:
            seeds = list(range(int(raw)))
    except ValueError:
        raise UserError(f"--seeds takes a count (3 = seeds 0,1,2) or a list like 0,1,2; got '{text}'") from None
    if not seeds and "," not in raw:
        raise UserError(f"--seeds {raw} is a count (3 = seeds 0,1,2) and asks for no run: give at least 1, or a list such as '0,' for seed 0 alone")
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must give at least one seed, none negative or repeated; got '{text}'")
    return seeds


def config_field_name(name: str) -> str | None:
    """The FitConfig field a swept name refers to ('batch-size' -> 'batch_size'), else None."""
    key = name.strip().replace("-", "_")
    if key in CONFIG_FIELDS and key not in ("params", "augment", "method", "seed"):
        return key
    return None


def with_value(config: FitConfig, name: str, value) -> FitConfig:
    """A copy of `config` with a FitConfig field or a method parameter set to `value`."""
    new = dataclasses.replace(config, params=dict(config.params), augment=dict(config.augment))
    key = config_field_name(name)
    if key is not None:
        default = getattr(FitConfig(), key)
        if isinstance(default, bool) and not isinstance(value, bool):
            raise UserError(f"{name} takes true or false, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(default, (int, float)) and not isinstance(default, bool) and not isinstance(value, type(default)):
            raise UserError(f"{name} takes a {type(default).__name__}, got {value!r}")
        if key == "cluster_proportions":
            value = str(value)
        setattr(new, key, value)
    else:
        params_class = get_method_class(config.method).Params
        new.params = override_params(params_class, new.params, {name.strip().replace("-", "_"): value})
        # A value of the wrong type fails here, before the sweep's first run, not as its own run's failure.
        build_params(params_class, new.params, config.method, warn=False)
    return new.validate()


def check_swept_name(config: FitConfig, name: str) -> None:
    """A swept name must be a FitConfig field or a parameter of the method: fail before any run."""
    if config_field_name(name) is not None:
        return
    params_class = get_method_class(config.method).Params
    names = [f.name for f in dataclasses.fields(params_class)]
    if name.strip().replace("-", "_") not in [*names, *renamed_parameters(params_class)]:  # former names warn when built
        fields = sorted(CONFIG_FIELDS - {"params", "augment", "method", "seed"})
        raise UserError(
            f"cannot sweep '{name}': it is neither a parameter of {config.method} ({', '.join(names) or 'none'}) "
            f"nor a fit setting ({', '.join(fields)})"
        )


def parse_values(text: str) -> list:
    """'0.003,0.01,0.1' -> [0.003, 0.01, 0.1]; words stay strings (e.g. linear,cosine)."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError("--values needs at least one value, e.g. --values 0.01,0.1,1")
    if len(set(parts)) != len(parts):
        raise UserError(f"--values repeats a value: {text}")
    return [coerce_param(p) for p in parts]


def run_one(
    config: FitConfig,
    out: Path,
    group: str,
    data: DataCache,
    overwrite: bool = False,
    reuse: bool = False,
    verbose: bool = False,
) -> RunOutcome:
    """Train one configuration into `out`; failures are returned, not raised.

    With `reuse`, a folder that already holds a finished run of the same configuration
    (config.yaml and metrics.json) is read back instead of trained again.
    """
    import json

    import yaml

    out = Path(out)
    outcome = RunOutcome(group=group, seed=config.seed, out=out)
    if reuse and (out / "metrics.json").is_file() and (out / "config.yaml").is_file():
        try:
            saved = yaml.safe_load((out / "config.yaml").read_text())
            metrics = json.loads((out / "metrics.json").read_text())
            current = config.to_dict()
            selection = metrics.get("k_selection") or {}
            if config.k_range and selection.get("refit") and selection.get("range") == list(config.k_range):
                current["clusters"] = selection["chosen"]  # the refit's config names the K it trained with
            if _same_config(saved, current):
                outcome.metrics = metrics
                outcome.seconds = float(outcome.metrics.get("seconds", 0.0))
                outcome.reused = True
                return outcome
        except (OSError, ValueError, yaml.YAMLError):
            pass  # unreadable: train again below
    if reuse and any((out / name).exists() for name in ("config.yaml", "model.pt", "metrics.jsonl")):
        overwrite = True  # a stale or unfinished run of this experiment: replace it
    started = time.perf_counter()
    try:
        prepare_output_folder(out, overwrite=overwrite, check_only=True)
        dataset = data.get(config)
        log = (lambda message: print(f"    {message}", flush=True)) if verbose else (lambda message: None)
        input_neighbors = None
        if is_pretrained(config.backbone):  # frozen stage: embeddings (cached once for all runs) in place of images
            dataset, _, input_neighbors = pretrained_training_data(config, dataset, progress=False, log=log)
        prepare_output_folder(out, overwrite=overwrite)
        _, result = fit_model(config, dataset, out=out, progress=False, log=log, input_neighbors=input_neighbors)
        outcome.metrics = result.metrics
    except UserError as error:
        outcome.error = str(error)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - one failing run must not end the others
        outcome.error = f"{type(error).__name__}: {error}".splitlines()[0]
        if verbose:
            traceback.print_exc()
    outcome.seconds = time.perf_counter() - started
    return outcome


def _same_config(saved: dict, current: dict) -> bool:
    ignore = {"device", "download"}
    return {k: v for k, v in (saved or {}).items() if k not in ignore} == {k: v for k, v in current.items() if k not in ignore}


def summarize(outcomes: list[RunOutcome], group: str, predictor: str = "run") -> Summary:
    """Mean ± std of one group's runs, scored by `predictor` (PREDICTORS)."""
    runs = [o for o in outcomes if o.group == group]
    done = [o for o in runs if o.ok]
    mean, std = {}, {}
    for key in (*SCORES, "minutes"):
        values = [o.metrics["seconds"] / 60 if key == "minutes" else predictor_scores(o.metrics, predictor).get(key) for o in done]
        values = [v for v in values if v is not None]
        if values:
            mean[key] = float(np.mean(values))
            std[key] = float(np.std(values))
    errors = [f"seed {o.seed}: {o.error}" for o in runs if not o.ok]
    return Summary(group=group, runs=len(runs), ok=len(done), mean=mean, std=std, errors=errors)


def missing_scores_note(outcomes: list[RunOutcome]) -> list[str]:
    """Lines for a results table that has no scores at all: no run finished, or the data have no
    labels (the two used to be told apart by neither, so a failed comparison blamed the labels)."""
    finished = [o for o in outcomes if o.ok]
    if outcomes and not finished:
        return ["", "No run finished, so there are no scores: the runs column (and runs.csv) says why each failed."]
    if finished and all("acc" not in o.metrics for o in finished):
        return ["", "The data have no labels, so ACC/NMI/ARI could not be computed."]
    return []


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_cells(summary: Summary) -> list[str]:
    """ACC, NMI, ARI, minutes and a status cell, for a Markdown row."""
    status = f"{summary.ok}/{summary.runs} runs"
    if summary.errors:
        status += "; failed: " + "; ".join(summary.errors)
    return [summary.cell("acc"), summary.cell("nmi"), summary.cell("ari"), summary.cell("minutes", 2), status]


def summary_csv_fields(summary: Summary) -> dict:
    row = {"runs": summary.runs, "ok": summary.ok}
    for key in (*SCORES, "minutes"):
        row[f"{key}_mean"] = _round(summary.mean.get(key))
        row[f"{key}_std"] = _round(summary.std.get(key))
    row["errors"] = " | ".join(summary.errors)
    return row


def _round(value):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, 5)


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def runs_csv_rows(outcomes: list[RunOutcome], group_column: str) -> list[dict]:
    """One row per run (runs.csv), for re-analysis beyond mean ± std."""
    rows = []
    for o in outcomes:
        row = {group_column: o.group, "seed": o.seed, "status": "ok" if o.ok else "failed", "predictor": o.metrics.get("predictor", "")}
        row.update({key: _round(o.metrics.get(key)) for key in SCORES})
        head, readout = predictor_scores(o.metrics, "head"), predictor_scores(o.metrics, "readout")
        row.update({f"head_{key}": _round(head.get(key)) for key in SCORES})
        row["readout"] = (o.metrics.get("readout") or {}).get("name", "")
        row.update({f"readout_{key}": _round(readout.get(key)) for key in SCORES})
        row.update({"minutes": _round(o.metrics.get("seconds", o.seconds) / 60), "run_dir": str(o.out), "error": o.error or ""})
        rows.append(row)
    return rows


def check_outputs(out: Path, names: list[str], overwrite: bool, resume: bool = False) -> None:
    """Refuse to overwrite a previous result table unless asked."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: choose another --out")
    check_creatable(out)
    if overwrite or resume:
        return
    existing = [n for n in names if (out / n).exists()]
    if existing:
        raise UserError(f"{out} already holds {', '.join(existing)}: pass --overwrite to redo it, --resume to keep finished runs, or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty: pass --overwrite, or choose another --out")
