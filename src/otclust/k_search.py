"""`--clusters auto` end to end: search K, then train for it.

The search run trains the network with the range's largest K (over-clustering) and chooses K on
its read-out's features (`otclust.choose_k`, through the read-out stage). A network trained for 15
clusters keeps apart, in its features, groups that 10 clusters would hold together, so reading it
out at the chosen K costs accuracy even when that K is right (docs/results.md section 5). With
`refit` (the default, as in scikit-learn's searches) a second run then trains from scratch with
the chosen K, the same seed and every other setting: the run of a user who had known K. It
costs a second training, and none when the largest K is chosen (the search run is then that
run). The search run is kept in OUT/k-search/, its choice in the final metrics.json
('k_selection', with "refit": true and the search's "search_seconds"; "seconds" is the refit's).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from otclust import distributed as dist_utils
from otclust.choose_k import DEFAULT_K_RANGE, largest_k
from otclust.config import FitConfig
from otclust.engine import FitResult, Trainer
from otclust.errors import UserError
from otclust.runs import RUN_FILES, SEARCH_FOLDER, remove_search_run


def finished_search(out: Path | None) -> dict | None:
    """The K choice of a finished search run kept in OUT/k-search/ (with the run's seconds), else None."""
    if out is None:
        return None
    metrics = Path(out) / SEARCH_FOLDER / "metrics.json"
    if not metrics.is_file():
        return None
    try:
        searched = json.loads(metrics.read_text())
        return {**searched["k_selection"], "search_seconds": searched.get("seconds")}
    except (OSError, ValueError, KeyError):
        raise UserError(f"cannot read the K search's results in {metrics}: start again without --resume (with --overwrite)") from None


def fit_default_k_range(config: FitConfig, n_samples: int) -> tuple[FitConfig, str | None]:
    """Plain --clusters auto on a set too small for its default range: the range narrowed to the
    largest K that can be chosen among n_samples, with a warning saying so (for a Trainer's
    `warn`). A range the user gave (auto:MIN-MAX) is theirs, and is checked, not changed
    (check_cluster_count)."""
    if str(config.clusters).strip() != "auto":
        return config, None
    k_min, k_max = DEFAULT_K_RANGE
    top = largest_k(n_samples)
    if not k_min <= top < k_max:
        return config, None
    note = f"--clusters auto searches K in {k_min}-{k_max}, but among {n_samples} samples K can be chosen up to {top}: searching {k_min}-{top}"
    return dataclasses.replace(config, clusters=f"auto:{k_min}-{top}"), note


def fit_model(config: FitConfig, dataset, eval_dataset=None, out: Path | None = None, progress: bool = True, log=None, resume: bool = False, input_neighbors=None, warn=None) -> tuple[Trainer, FitResult]:
    """Train as `config` says and return the trainer of the final run with its result: one run for
    a fixed K, or under --clusters auto the search run and, with config.refit, a run with the
    chosen K. `out` (a prepared run folder, or None to keep everything in memory) receives the
    final run. `log` and `warn` go to each Trainer."""

    def trainer_for(run_config: FitConfig, folder: Path | None) -> Trainer:
        trainer = Trainer(run_config, out_dir=folder, progress=progress, log=log, warn=warn)
        trainer.input_neighbors = input_neighbors
        return trainer

    def train(run_config: FitConfig, folder: Path | None, resume_run: bool) -> tuple[Trainer, FitResult]:
        trainer = trainer_for(run_config, folder)
        if narrowed:
            trainer.warn(narrowed)
        return trainer, trainer.fit(dataset, eval_dataset=eval_dataset, resume=resume_run)

    config, narrowed = fit_default_k_range(config, dataset.n_samples)
    if not (config.k_range and config.refit):
        return train(config, out, resume)
    selection = finished_search(out) if resume else None
    searched_here = selection is None  # the search run printed the data set's notes already
    if selection is None:
        trainer, result = train(config, out, resume)
        selection = {**result.metrics["k_selection"], "search_seconds": result.metrics.get("seconds")}
        if selection["chosen"] == config.training_clusters:
            return trainer, result  # the search run already trained with the chosen K
        if out is not None and trainer.is_main:
            _keep_search_run(Path(out))
        dist_utils.barrier()
        resume_refit = False
    else:
        resume_refit = out is not None and (Path(out) / "model.pt").is_file()
    where = f"; the search run is kept in {Path(out) / SEARCH_FOLDER}" if out is not None else ""
    trainer = trainer_for(dataclasses.replace(config, clusters=int(selection["chosen"])), out)
    trainer.data_notes_shown = searched_here
    trainer.log(f"training again from scratch with the chosen K = {selection['chosen']} (the search trained with {selection['training_clusters']}){where}; --no-refit skips this")
    result = trainer.fit(dataset, eval_dataset=eval_dataset, resume=resume_refit)
    result.metrics["k_selection"] = {**selection, "refit": True}
    if trainer.out is not None:
        trainer.out.write_final_metrics(result.metrics)
    return trainer, result


def _keep_search_run(out: Path) -> None:
    """Move the search run's files into OUT/k-search/, so that OUT can hold the final run."""
    search = out / SEARCH_FOLDER
    remove_search_run(search)  # an earlier run's, which --overwrite replaces
    search.mkdir(exist_ok=True)
    for name in RUN_FILES:
        if (out / name).exists():
            os.replace(out / name, search / name)
