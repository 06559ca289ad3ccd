"""Figures and one HTML page that show what a run learned (`otclust report RUN_DIR`).

`write_report(run_dir)` writes RUN_DIR/figures/*.png and RUN_DIR/report.html, a self-contained
page (every figure embedded as base64 PNG, each linking to its file beside the page):

* training curves from metrics.jsonl (losses; ACC/NMI/ARI when labels exist; mean confidence and
  the share of clusters in use);
* the Hungarian-matched confusion matrix (labels only);
* a 2-D t-SNE map of the model's embedding (or its cluster probabilities), coloured by cluster and,
  with labels, by true class;
* cluster sizes against the prior the OT constraint aimed at;
* per cluster, its most and least confident images (image data only).

The data are reloaded as the run loaded them and predicted again with model.pt, so the figures
show the model as saved; a run fitted behind a pretrained backbone gets its images embedded by
the same frozen network first (from the embedding cache fit filled), and its grids show the
images. Parts that need labels, images, the data themselves or a backbone's weights file are
left out with a note when these are missing, never broken. Figures use matplotlib's Agg canvas through
`matplotlib.figure.Figure` (no pyplot), so a report never opens a window or changes the
backend of the caller.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from otclust import __version__
from otclust.checkpoint import CheckpointRefused
from otclust.choose_k import K_CRITERION_TEXT, TOLERANCE
from otclust.config import CONFIG_FIELDS, FitConfig
from otclust.data import conform, load_dataset
from otclust.data.embeddings import features_for_model
from otclust.engine import embed_in_batches, load_trained, predict_in_batches, select_device
from otclust.errors import UserError
from otclust.metrics import hungarian_mapping, matched_confusion_matrix
from otclust.models.pretrained import is_pretrained, refuse_unused_weights
from otclust.ot.priors import parse_cluster_proportions
from otclust.runs import SEARCH_FOLDER, atomic_write_text

FIXED_FIGURES = ("curves.png", "confusion.png", "tsne.png", "sizes.png", "k_selection.png")
GUIDE = "docs/reports.md"


@dataclass
class Section:
    title: str
    text: str = ""
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name in figures/, caption)
    notes: list[str] = field(default_factory=list)
    grid: bool = False  # many small figures side by side (the cluster image grids)


# --------------------------------------------------------------------------------------------
# Reading a run folder
# --------------------------------------------------------------------------------------------


def read_history(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash: the others still plot
    return rows


def read_config(run: Path):
    import yaml

    path = run / "config.yaml"
    if run.is_file():
        folder = "its folder, " + str(run.parent) if run.name == "model.pt" else "the --out folder of 'otclust fit'"
        raise UserError(f"{run} is a file, not a run folder: pass {folder}")
    if not run.is_dir():
        raise UserError(f"run folder not found: {run} (pass the --out folder of 'otclust fit')")
    if not path.is_file():
        # compare and sweep write their own tables and figure; their runs are one level down.
        for table, figure in (("comparison.md", "comparison.png"), ("sweep.md", "sweep.png")):
            if (run / table).is_file():
                raise UserError(f"{run} holds the tables of several runs: open {run / table} (and {figure}), or report one run, e.g. {next(run.glob('*/seed*'), run / '...')}")
        raise UserError(f"{run} is not a run folder (no config.yaml): pass the --out folder of 'otclust fit'")
    try:
        values = yaml.safe_load(path.read_bytes().decode("utf-8", "surrogateescape")) or {}
    except yaml.YAMLError:
        raise UserError(f"{path} is not valid YAML: was it edited by hand?") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} does not hold the KEY: VALUE settings fit writes: was it edited by hand?")
    return FitConfig(**{k: v for k, v in values.items() if k in CONFIG_FIELDS})


def read_final_metrics(run: Path, notes: list[str]) -> dict:
    """metrics.json, or {} with a note when it is missing or damaged (the rest still reports)."""
    path = run / "metrics.json"
    if not path.is_file():
        return {}
    try:
        final = json.loads(path.read_bytes().decode("utf-8", "surrogateescape"))
    except ValueError:
        notes.append(f"{path.name} could not be read (damaged?): the run's final scores are left out")
        return {}
    return final if isinstance(final, dict) else {}


def read_assignments(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(cluster, confidence, label or None) per sample from assignments.csv, or None."""
    import csv

    path = run / "assignments.csv"
    if not path.is_file():
        return None
    # surrogateescape: the path column holds the bytes of names that are not valid UTF-8.
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        return None
    try:
        clusters = np.array([int(r["cluster"]) for r in rows])
        confidence = np.array([float(r["confidence"]) for r in rows])
        labels = np.array([int(r["label"]) for r in rows]) if "label" in rows[0] else None
    except (KeyError, TypeError, ValueError):
        return None  # not the file fit writes (edited, cut short): reported as no assignments
    return clusters, confidence, labels


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(temp, format="png")
    temp.replace(path)


def _palette(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        cmap = colormaps["tab10"]
        return [cmap(i) for i in range(n)]
    if n <= 20:
        cmap = colormaps["tab20"]
        return [cmap(i) for i in range(n)]
    cmap = colormaps["turbo"]
    return [cmap(0.05 + 0.9 * i / max(1, n - 1)) for i in range(n)]


def _unit_axis_with_legend_on_top(ax, ncol: int) -> None:
    """A [0, 1] axis with head-room above 1 for the legend, so curves near 1 stay visible."""
    ax.set_ylim(0, 1.22 if ncol > 1 else 1.3)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper center", ncol=ncol, frameon=False)


def plot_curves(path: Path, history: list[dict], clusters: int) -> list[str]:
    """Losses, scores (when labels exist) and confidence/cluster use per epoch; returns notes."""
    notes = []
    epochs = [row["epoch"] for row in history]
    loss_keys = [k for k in history[0] if k == "loss" or k.startswith("loss_")]
    for row in history[1:]:
        loss_keys += [k for k in row if (k == "loss" or k.startswith("loss_")) and k not in loss_keys]
    scored = [row for row in history if "acc" in row]
    use_rows = [row for row in history if "mean_confidence" in row]
    panels = 1 + bool(scored) + bool(use_rows)
    fig = _figure(4.6 * panels, 3.4)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    for key in loss_keys:
        xs = [row["epoch"] for row in history if key in row]
        ys = [row[key] for row in history if key in row]
        label = "total loss" if key == "loss" else key[len("loss_"):]
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=2.2 if key == "loss" else 1.3, label=label)
    ax.set_title("losses")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    i = 1
    if scored:
        ax = axes[i]
        i += 1
        for key, colour in (("acc", "C0"), ("nmi", "C1"), ("ari", "C2")):
            ax.plot([r["epoch"] for r in scored], [r[key] for r in scored], marker="o" if len(scored) < 30 else None, markersize=3, color=colour, label=key.upper())
        _unit_axis_with_legend_on_top(ax, ncol=3)
        ax.set_title("scores against the labels")
        ax.set_xlabel("epoch")
    else:
        notes.append("no labels: the ACC/NMI/ARI curves are left out")
    if use_rows:
        ax = axes[i]
        ax.plot([r["epoch"] for r in use_rows], [r["mean_confidence"] for r in use_rows], marker="o" if len(use_rows) < 30 else None, markersize=3, color="C4", label="mean confidence")
        ax.plot([r["epoch"] for r in use_rows], [r["nonempty_clusters"] / clusters for r in use_rows], marker="s" if len(use_rows) < 30 else None, markersize=3, color="C7", label=f"share of the {clusters} clusters used")
        _unit_axis_with_legend_on_top(ax, ncol=1)
        ax.set_title("confidence and cluster use")
        ax.set_xlabel("epoch")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs) == 1:
        notes.append("only one epoch was recorded, so each curve is a single point")
    _save(fig, path)
    return notes


def plot_confusion(path: Path, labels: np.ndarray, clusters: np.ndarray, class_names: list[str] | None) -> None:
    matrix, order = matched_confusion_matrix(labels, clusters)
    classes = np.unique(labels)
    names = [class_names[c] if class_names is not None and c < len(class_names) else str(c) for c in classes]
    rows, cols = matrix.shape
    fraction = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    cell = 0.42 if max(rows, cols) <= 20 else max(0.08, 8.0 / max(rows, cols))
    fig = _figure(max(4.5, 2.2 + cell * cols), max(3.8, 1.6 + cell * rows))
    ax = fig.subplots()
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the cluster")
    if max(rows, cols) <= 20:
        for r in range(rows):
            for c in range(cols):
                if matrix[r, c]:
                    ax.text(c, r, str(matrix[r, c]), ha="center", va="center", fontsize=7, color="white" if fraction[r, c] > 0.55 else "black")
    if cols <= 40:
        ax.set_xticks(range(cols), names, rotation=45 if max(len(n) for n in names) > 2 else 0, ha="right" if max(len(n) for n in names) > 2 else "center", fontsize=8)
    if rows <= 40:
        ax.set_yticks(range(rows), [str(k) for k in order], fontsize=8)
    ax.set_xlabel("true class")
    ax.set_ylabel("cluster (matched order)")
    ax.set_title("Hungarian-matched confusion matrix (counts)")
    _save(fig, path)


def plot_sizes(path: Path, clusters: np.ndarray, n_clusters: int, prior: np.ndarray, prior_label: str, labels: np.ndarray | None) -> None:
    counts = np.bincount(clusters, minlength=n_clusters).astype(float)
    share = counts / max(counts.sum(), 1)
    order = np.argsort(-share, kind="stable")
    xs = np.arange(n_clusters)
    fig = _figure(max(5.5, min(16, 1.8 + 0.35 * n_clusters)), 3.6)
    ax = fig.subplots()
    ax.bar(xs, share[order], color="C0", alpha=0.8, label="cluster sizes (largest first)")
    ax.step(np.r_[xs - 0.5, xs[-1] + 0.5], np.r_[np.sort(prior)[::-1], np.sort(prior)[::-1][-1]], where="post", color="black", linewidth=1.6, label=prior_label)
    if labels is not None:
        classes = np.sort(np.bincount(labels)[np.bincount(labels) > 0] / len(labels))[::-1]
        k = min(len(classes), n_clusters)
        ax.plot(xs[:k], classes[:k], linestyle="none", marker="D", markersize=5, color="C3", label="true class sizes (largest first)")
    if n_clusters <= 40:
        ax.set_xticks(xs, [str(k) for k in order], fontsize=8)
        ax.set_xlabel("cluster")
    else:
        ax.set_xlabel("clusters, largest first")
    ax.set_ylabel("share of the samples")
    empty = int((counts == 0).sum())
    ax.set_title("cluster sizes against the prior" + (f" ({empty} empty)" if empty else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_k_selection(path: Path, selection: dict) -> None:
    """The K-selection curve of --clusters auto: the criterion per K, the chosen K marked."""
    ks = sorted(int(k) for k in selection["curve"])
    values = [selection["curve"][str(k)] for k in ks]
    legend, axis, _ = K_CRITERION_TEXT[selection.get("criterion", "stability")]
    fig = _figure(5.5, 3.4)
    ax = fig.subplots()
    ax.plot(ks, values, marker="o", color="C0", label=legend)
    chosen = int(selection["chosen"])
    ax.axvline(chosen, color="C3", linestyle="--", linewidth=1.2, label=f"chosen K = {chosen}")
    if selection.get("criterion", "stability") == "stability":
        ax.axhspan(max(values) - TOLERANCE, max(values), color="C1", alpha=0.12, linewidth=0)
    close = [int(k) for k in selection.get("close", [])]
    if close:
        ax.plot(close, [selection["curve"][str(k)] for k in close], linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                markeredgecolor="C1", label=f"as stable, within {TOLERANCE}")
    ax.set_xticks(ks)
    ax.set_xlabel("K")
    ax.set_ylabel(axis)
    trained = f"search network trained with {selection['training_clusters']} clusters" + ("; then trained again with the chosen K" if selection.get("refit") else "")
    ax.set_title(f"choosing K in {ks[0]}-{ks[-1]} ({trained})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def tsne_map(features: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = features.astype(np.float32)
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    # Exact gradients are faster than Barnes-Hut on a few hundred points, and as good.
    method = "exact" if len(x) <= 300 else "barnes_hut"
    # The BLAS work here (PCA of at most a few thousand rows) is small: one BLAS thread does it in
    # milliseconds, while a multi-threaded BLAS on a busy machine was measured 100x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        if x.shape[1] > 50 and len(x) > 50:
            x = PCA(n_components=50, random_state=seed).fit_transform(x)
        return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", method=method, max_iter=500 if method == "exact" else 1000, random_state=seed).fit_transform(x)


def plot_map(path: Path, points: np.ndarray, clusters: np.ndarray, labels: np.ndarray | None, class_names: list[str] | None, what: str, mapping: dict[int, int] | None = None) -> None:
    """Scatter of the 2-D map; with labels, each cluster takes the colour of its matched class,
    so a good clustering looks the same in both panels (unmatched clusters are grey crosses)."""
    panels = 2 if labels is not None else 1
    fig = _figure(5.6 * panels, 5.0)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    size = float(np.clip(3000 / len(points), 3, 18))

    def name_of(c):
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    # (title, [(mask, colour, marker, legend label)])
    groups = []
    cluster_ids = np.unique(clusters)
    if labels is not None:
        classes = np.unique(labels)
        class_colour = dict(zip(classes.tolist(), _palette(len(classes))))
        mapping = mapping or {}
        ordered = sorted(cluster_ids.tolist(), key=lambda c: (c not in mapping, classes.tolist().index(mapping[c]) if c in mapping else c))
        groups.append(("coloured by cluster (the colour of its matched class)", [
            (clusters == c, class_colour[mapping[c]] if c in mapping else (0.45, 0.45, 0.45, 1.0), "o" if c in mapping else "x",
             f"{c} \u2192 {name_of(mapping[c])}" if c in mapping else f"{c} (unmatched)") for c in ordered]))
        groups.append(("coloured by true class", [(labels == c, class_colour[c], "o", name_of(c)) for c in classes.tolist()]))
    else:
        groups.append(("coloured by cluster", [(clusters == c, colour, "o", str(c)) for c, colour in zip(cluster_ids.tolist(), _palette(len(cluster_ids)))]))
    for ax, (title, series) in zip(axes, groups):
        for mask, colour, marker, label in series:
            ax.scatter(points[mask, 0], points[mask, 1], s=size, color=colour, marker=marker, label=label, linewidths=0 if marker == "o" else 0.8, alpha=0.8)
        ax.set_title(f"t-SNE of the {what},\n{title}", fontsize=9.5)
        ax.set_xticks([])
        ax.set_yticks([])
        if len(series) <= 20:
            ax.legend(fontsize=7, markerscale=max(1.0, 16 / size), loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    _save(fig, path)


def _tiles(images: np.ndarray, count: int, scale: int) -> np.ndarray:
    """A row of `count` tiles (H x count*(W+pad) x 3 floats in [0, 1]); missing tiles stay blank."""
    n, c, h, w = images.shape
    pad = max(1, scale)
    row = np.ones((h * scale, count * (w * scale + pad) - pad, 3), dtype=np.float32)
    for i in range(min(n, count)):
        tile = images[i].astype(np.float32) / 255.0
        tile = np.repeat(tile, 3, axis=0) if c == 1 else tile
        tile = tile.transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
        x = i * (w * scale + pad)
        row[:, x : x + w * scale] = tile
    return row


def plot_cluster_grid(path: Path, best: np.ndarray, best_conf: np.ndarray, worst: np.ndarray, worst_conf: np.ndarray, count: int, image_hw: tuple[int, int], title: str, best_names: list[str] | None = None, worst_names: list[str] | None = None) -> None:
    h, w = image_hw
    scale = max(1, math.ceil(40 / max(h, w)))
    fig = _figure(max(3.0, min(11.0, 0.75 * count + 0.6)), 2.9)
    axes = fig.subplots(2, 1)
    for ax, images, conf, names, label in ((axes[0], best, best_conf, best_names, "most confident"), (axes[1], worst, worst_conf, worst_names, "least confident")):
        row = _tiles(images, count, scale)
        ax.imshow(row, interpolation="nearest")
        step = w * scale + max(1, scale)
        ticks = [i * step + (w * scale) / 2 for i in range(len(conf))]
        texts = [f"{p:.2f}" + (f"\n{names[i]}" if names is not None else "") for i, p in enumerate(conf)]
        ax.set_xticks(ticks, texts, fontsize=6.5)
        ax.tick_params(length=0, pad=1)
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_sweep(path: Path, name: str, values: list, summaries: list) -> bool:
    """ACC (mean ± std error bars; NMI and ARI lighter) against a swept value; False if no ACC."""
    points = [(v, s) for v, s in zip(values, summaries) if "acc" in s.mean]
    if not points:
        return False
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in points)
    fig = _figure(5.8, 3.8)
    ax = fig.subplots()
    if numeric:
        xs = np.array([float(v) for v, _ in points])
        log = bool((xs > 0).all() and xs.max() / xs.min() > 10)
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xs, [f"{x:g}" for x in xs])  # ticks at the swept values, written plainly
    else:
        xs = np.arange(len(points), dtype=float)
        log = False
        ax.set_xticks(xs, [str(v) for v, _ in points])
    for key, style in (("acc", dict(color="C0", linewidth=2.0, marker="o")), ("nmi", dict(color="C1", linewidth=1.0, marker="s", alpha=0.6)), ("ari", dict(color="C2", linewidth=1.0, marker="^", alpha=0.6))):
        mean = np.array([s.mean.get(key, np.nan) for _, s in points])
        std = np.array([s.std.get(key, np.nan) for _, s in points])
        ax.errorbar(xs, mean, yerr=std, capsize=4 if key == "acc" else 2, label=key.upper(), **style)
    ax.set_xlabel(name + (" (log scale)" if log else ""))
    ax.set_ylabel("score (mean ± std over seeds)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, which="both")
    runs = max(s.ok for _, s in points)
    ax.set_title(f"ACC against {name} ({runs} seed{'s' if runs != 1 else ''} per value)", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_comparison(path: Path, title: str, rows: list[tuple[str, list[dict], list[dict] | None]], baseline: str | None = None) -> bool:
    """One panel per score (ACC, NMI, ARI), one line per method, top to bottom in the table's
    order: each seed's score as a small dot, the mean as a large one with the std as a bar, and
    the head's mean as a hollow diamond when the method predicts by its read-out. `rows`:
    (method, its runs' scores by its default predictor, by its head or None); `baseline`: the
    method drawn as a dashed line across each panel too (k-means on pixels). False if no scores."""
    rows = [(name, runs, head) for name, runs, head in rows if any("acc" in r for r in runs)]
    if not rows:
        return False
    fig = _figure(9.0, 1.2 + 0.42 * len(rows))
    axes = fig.subplots(1, 3, sharey=True)
    ys = np.arange(len(rows))[::-1]  # the table's first row at the top
    for ax, key in zip(axes, ("acc", "nmi", "ari")):
        for y, (name, runs, head) in zip(ys, rows):
            values = np.array([r[key] for r in runs if key in r])
            if not len(values):
                continue
            color = "0.45" if name == baseline else "C0"
            ax.scatter(values, np.full(len(values), y), s=12, color=color, alpha=0.45, zorder=2)
            ax.errorbar(values.mean(), y, xerr=values.std(), fmt="o", color=color, markersize=7, capsize=3, zorder=3)
            heads = np.array([r[key] for r in head or [] if key in r])
            if len(heads):
                ax.scatter(heads.mean(), y, s=45, marker="D", facecolors="none", edgecolors="C3", zorder=3)
            if name == baseline:
                ax.axvline(values.mean(), color="0.45", linestyle="--", linewidth=1, zorder=1)
        ax.set_xlim(0, 1.02)
        ax.set_title(key.upper(), fontsize=10)
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(ys, [name for name, _, _ in rows])
    axes[0].set_ylim(-0.7, len(rows) - 0.3)
    handles = [
        axes[0].scatter([], [], s=12, color="C0", alpha=0.45, label="one seed"),
        axes[0].errorbar([], [], xerr=[], fmt="o", color="C0", label="mean ± std"),
        axes[0].scatter([], [], s=45, marker="D", facecolors="none", edgecolors="C3", label="head (mean)"),
    ]
    if baseline in [name for name, _, _ in rows]:
        handles.append(axes[0].axvline(np.nan, color="0.45", linestyle="--", linewidth=1, label=f"{baseline} (mean)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)
    return True


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def _prior(method, config, n_clusters: int) -> tuple[np.ndarray, str]:
    if method is not None and n_clusters != method.n_clusters:
        return np.full(n_clusters, 1.0 / n_clusters), "1/K (reference; K was chosen after training)"
    if method is not None:
        mode = method.prior_mode
        if mode == "auto":
            # The sizes the method trained towards: CLOT's come from its features, not its masses.
            return method.estimated_sizes().detach().cpu().numpy(), "prior: auto (as estimated at the end of training)"
        return method.cluster_prior.detach().cpu().numpy(), "prior: uniform (1/K)" if mode == "uniform" else "prior: known sizes (largest first)"
    try:
        mode, sizes = parse_cluster_proportions(config.cluster_proportions, n_clusters)
    except UserError:
        mode, sizes = "uniform", None
    if mode == "known":
        return sizes.numpy(), "prior: known sizes (largest first)"
    label = "prior: uniform (1/K)" if mode == "uniform" else "1/K (reference; the prior was auto)"
    return np.full(n_clusters, 1.0 / n_clusters), label


def _clean_figures(folder: Path) -> None:
    """Remove the figures a previous report wrote (only ours), so none of a former K lingers."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and (path.name in FIXED_FIGURES or (path.name.startswith("cluster_") and path.suffix == ".png")):
            path.unlink()


def write_report(run_dir, overwrite: bool = True, device: str = "auto", max_points: int = 3000, images_per_row: int = 8, max_cluster_grids: int = 100, batch_size: int = 512, log=None, weights: str | None = None) -> Path:
    """Write RUN_DIR/figures/*.png and RUN_DIR/report.html; returns the page's path.

    `weights`: a run fitted behind a pretrained backbone, its weights file where it is now, if it
    moved since fit (checked against the sha256 the run recorded, as predict checks it).

    With overwrite=False an existing report.html is an error (`otclust report` without
    --overwrite); `otclust fit --report` rewrites it, since it just rewrote the whole run.
    """
    if log is None:
        import sys

        def log(message):
            print(message, file=sys.stderr, flush=True)

    run = Path(run_dir)
    config = read_config(run)
    page = run / "report.html"
    if page.exists() and not overwrite:
        raise UserError(f"{page} already exists: pass --overwrite to write it again")
    refuse_unused_weights(weights, config.backbone, "run")
    device_obj = select_device(device)  # a device this machine lacks is the user's to fix: exit 2
    history = read_history(run)
    notes: list[str] = []
    final = read_final_metrics(run, notes)
    sections: list[Section] = []

    # The model and its data, predicted again.
    method = dataset = proba = None
    if (run / "model.pt").is_file():
        try:
            method, _ = load_trained(run / "model.pt", device=device)
        except CheckpointRefused:
            raise  # a file that could run code is refused outright, never worked around
        except UserError as error:
            notes.append(f"model.pt could not be loaded ({error}): the map and the image grids are left out")
    else:
        notes.append("no model.pt: the map and the image grids are left out")
    images = None  # the images of the grids, when the data are images
    if method is not None:
        dataset, images = _load_run_data(config, method, notes, device, lambda message: log(f"report: {message}"), weights)
    if dataset is not None:
        trained_on = final.get("n_samples")
        if isinstance(trained_on, int) and trained_on != dataset.n_samples:
            notes.append(f"the run's data now hold {dataset.n_samples} samples, and it was fitted on {trained_on}: the figures show the data as they are now")
        log(f"report: predicting {dataset.n_samples} samples of {dataset.name}")
        proba = predict_in_batches(method, dataset.data, device_obj, batch_size)

    # Only now: a refused checkpoint or device leaves no figures/ folder behind.
    figures = run / "figures"
    figures.mkdir(exist_ok=True)
    _clean_figures(figures)

    if proba is not None:
        clusters = proba.argmax(axis=1)
        labels = dataset.labels
        class_names = dataset.class_names
        source = f"the {len(clusters)} samples of {dataset.name} (split {config.split}), predicted again with model.pt"
    else:
        saved = read_assignments(run)
        if saved is None:
            clusters = labels = None
            class_names = None
            source = ""
        else:
            clusters, _, labels = saved
            class_names = None
            source = f"the {len(clusters)} samples of assignments.csv"
    k = config.training_clusters  # the head's K, which the per-epoch rows score
    # The predictions' K: the read-out's, which --clusters auto chooses after training.
    k_final = proba.shape[1] if proba is not None else int(final.get("clusters", k))
    if clusters is not None:
        k_final = max(k_final, int(clusters.max()) + 1)

    # 1. Training curves.
    section = Section("Training curves", "One point per epoch from metrics.jsonl. The losses should fall; with labels, ACC/NMI/ARI should rise and level off. "
                      "Mean confidence is the average top cluster probability; the share of clusters used falling below 1 means some clusters emptied (collapse).")
    if history:
        section.notes += plot_curves(figures / "curves.png", history, k)
        section.figures.append(("curves.png", "losses, scores and cluster use per epoch"))
    else:
        section.notes.append("no per-epoch history (metrics.jsonl is missing or empty: the method has no training loop, e.g. k-means)")
    sections.append(section)

    # 2. Confusion matrix.
    section = Section("Confusion matrix", "Rows are clusters, columns true classes. Clusters are re-ordered by the Hungarian matching that defines ACC, "
                      "so a good clustering puts its counts on the diagonal; the colour is the share of each cluster's samples. "
                      "A row spread over several columns is a mixed cluster; two dark cells in one column mean a class split in two.")
    if clusters is None:
        section.notes.append("no assignments to show (no model output and no assignments.csv)")
    elif labels is None:
        section.notes.append("no labels: the confusion matrix is left out")
    else:
        plot_confusion(figures / "confusion.png", labels, clusters, class_names)
        section.figures.append(("confusion.png", f"on {source}"))
    sections.append(section)

    # 3. t-SNE map.
    section = Section("Map of the learned features", "A 2-D t-SNE of what the model computes for each sample. Well separated islands of one colour "
                      "mean clusters the model is sure of; with labels, compare the two panels: where the colours of the right one mix inside "
                      "an island, the model merged classes. Distances between islands mean little in t-SNE.")
    if proba is not None:
        _map_section(section, figures, method, dataset, proba, clusters, labels, class_names, device_obj, batch_size, max_points, log)
    else:
        section.notes.append("left out: it needs the model and the run's data")
    sections.append(section)

    # 4. Cluster sizes.
    section = Section("Cluster sizes against the prior", "Bars: the share of samples in each cluster, largest first. Black line: the sizes the OT constraint "
                      "aimed at during training (uniform 1/K unless --cluster-proportions said otherwise), also largest first, since a known prior is matched "
                      "to clusters by rank. With labels, red diamonds give the true class sizes. Methods without an OT constraint (k-means, DeepCluster) ignore the prior.")
    if clusters is not None:
        prior, prior_label = _prior(method, config, k_final)
        plot_sizes(figures / "sizes.png", clusters, k_final, prior, prior_label, labels)
        section.figures.append(("sizes.png", f"on {source}"))
    else:
        section.notes.append("no assignments to show")
    sections.append(section)

    # 4b. How K was chosen (--clusters auto).
    if "k_selection" in final:
        criterion = final["k_selection"].get("criterion", "stability")
        if criterion == "stability":
            how = ("then for each K k-means was run on random 80% subsets of the read-out's features and the labellings compared (mean adjusted Rand index). "
                   "The chosen K is " + K_CRITERION_TEXT[criterion][2] + ".")
        else:
            how = f"then K was chosen by the {K_CRITERION_TEXT[criterion][1]} criterion on the read-out's features: {K_CRITERION_TEXT[criterion][2]}."
        refit = (" A second network then trained from scratch with the chosen K, with the same seed and settings; it is the model of this run "
                 f"(the search run is in {SEARCH_FOLDER}/).") if final["k_selection"].get("refit") else ""
        close = final["k_selection"].get("close", [])
        ties = (f" K = {', '.join(map(str, close))} scored within {TOLERANCE} of the best too (circled): the criterion cannot tell them from the chosen K, "
                "and which of them comes out can change with its random subsamples; if the data's purpose suggests one of them, train with --clusters K.") if close else ""
        section = Section("Choosing K", "The run was given --clusters auto: a network trained with the largest K of the range, " + how + refit + ties)
        plot_k_selection(figures / "k_selection.png", final["k_selection"])
        section.figures.append(("k_selection.png", f"{K_CRITERION_TEXT[criterion][1]} per K"))
        sections.append(section)

    # 5. Image grids.
    section = Section("The clusters' most and least confident images", "For each cluster (largest first): top row, the images the model is surest belong to it; bottom row, "
                      "the members it is least sure of (the number under each image is its probability for the cluster, with its true class when labels exist). "
                      "The top row shows what the cluster means; the bottom row shows where it bleeds into others.", grid=True)
    if proba is not None and images is not None:
        section.figures += _cluster_grids(figures, images, proba, clusters, labels, class_names, images_per_row, max_cluster_grids, section.notes)
    elif dataset is not None and images is None:
        section.notes.append("the data are feature vectors, not images: no image grids")
    else:
        section.notes.append("left out: it needs the model and the run's images")
    sections.append(section)

    page_html = _html(run, config, final, history, notes, sections, __version__)
    atomic_write_text(page, page_html)
    for note in notes:  # what the page leaves out, said where the user is looking too
        log(f"report: note: {note}")
    return page


def _map_section(section: Section, figures: Path, method, dataset, proba, clusters, labels, class_names, device, batch_size: int, max_points: int, log) -> None:
    """t-SNE of the model's embedding (its cluster probabilities if it has none) on a random subset."""
    import torch

    pick = np.sort(np.random.default_rng(0).choice(len(proba), size=min(max_points, len(proba)), replace=False))
    if len(pick) < 10:
        section.notes.append(f"only {len(pick)} samples: too few for a map")
        return
    what = "embedding"
    try:
        features = embed_in_batches(method, dataset.data[torch.from_numpy(pick)], device, batch_size)
        if features.ndim != 2 or not np.isfinite(features).all():
            raise ValueError("no finite 2-D embedding")
    except Exception:  # noqa: BLE001 - a method without an embedding (k-means): use its probabilities
        features, what = proba[pick], "cluster probabilities"
    log(f"report: t-SNE of {len(pick)} samples")
    try:
        points = tsne_map(features)
    except Exception as error:  # noqa: BLE001 - e.g. 1-D features: the rest of the report still stands
        section.notes.append(f"t-SNE failed on the model's {what} ({type(error).__name__}: {error}); map left out")
        return
    mapping = hungarian_mapping(labels, clusters) if labels is not None else None
    plot_map(figures / "tsne.png", points, clusters[pick], None if labels is None else labels[pick], class_names, what, mapping)
    sub = f"{len(pick)} of {len(proba)} samples, picked at random" if len(pick) < len(proba) else f"all {len(pick)} samples"
    section.figures.append(("tsne.png", f"t-SNE of the model's {what}; {sub}"))
    if labels is None:
        section.notes.append("no labels: only the colouring by cluster is shown")


def _load_run_data(config, method, notes: list[str], device: str = "auto", log=None, weights: str | None = None):
    """(the model's input, the images to show or None) as the run trained on them, or (None, None)
    with a note (data moved, deleted, not downloaded; a pretrained backbone's weights gone).

    A run fitted behind a pretrained backbone trained on the images' embeddings: the images go
    through the same frozen network (read from the embedding cache fit filled, as predict does),
    and the grids show the images themselves."""
    try:
        dataset = load_dataset(config.data, split=config.split, download=False, image_size=config.image_size, backbone=config.backbone)
    except UserError as error:
        notes.append(f"the run's data could not be loaded again ({error}); the map and the image grids are left out")
        return None, None
    images = None if dataset.is_features else dataset
    if images is not None and is_pretrained(config.backbone):
        try:
            dataset = features_for_model(config, images, weights=weights, device=device, progress=False, log=log)
        except CheckpointRefused:
            raise  # an otclust: backbone whose model.pt could run code: refused outright, as the run's own
        except UserError as error:
            notes.append(f"the run's backbone {config.backbone} could not embed the images again ({error}); the map and the image grids are left out")
            return None, None
    spec = method.spec
    if spec.is_features != dataset.is_features or (spec.is_features and dataset.data.shape[1] != spec.feature_dim):
        notes.append(f"{dataset.name} no longer matches the model's input: the map and the image grids are left out")
        return None, None
    if not spec.is_features and (dataset.channels, dataset.image_size) != (spec.channels, tuple(spec.image_size)):
        dataset = images = conform(dataset, spec.channels, tuple(spec.image_size))
    return dataset, images


def _cluster_grids(figures: Path, dataset, proba, clusters, labels, class_names, count: int, max_grids: int, notes: list[str]) -> list[tuple[str, str]]:
    import torch

    k = proba.shape[1]
    sizes = np.bincount(clusters, minlength=k)
    order = [int(c) for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    empty = k - len(order)
    if empty:
        notes.append(f"{empty} of {k} clusters are empty and have no grid")
    if len(order) > max_grids:
        notes.append(f"grids for the {max_grids} largest of {len(order)} clusters only")
        order = order[:max_grids]
    mapping = hungarian_mapping(labels, clusters) if labels is not None else {}
    width = max(2, len(str(k - 1)))
    data = dataset.data
    out = []

    def name_of(c):
        return class_names[c] if class_names is not None and c < len(class_names) else str(c)

    for c in order:
        members = np.flatnonzero(clusters == c)
        conf = proba[members, c]
        ranked = members[np.argsort(-conf, kind="stable")]
        best = ranked[:count]
        # The least confident `count`, least first; none when the top row already shows them all.
        worst = np.ascontiguousarray(ranked[::-1][:count] if len(ranked) > count else ranked[:0])
        file = f"cluster_{c:0{width}d}.png"
        matched = f", matched to class {name_of(mapping[c])}" if c in mapping else (", unmatched" if labels is not None else "")
        title = f"cluster {c}: {len(members)} images ({100 * len(members) / len(clusters):.1f}%){matched}"
        plot_cluster_grid(
            figures / file,
            data[torch.from_numpy(best)].numpy(), proba[best, c], data[torch.from_numpy(worst)].numpy(), proba[worst, c],
            count, dataset.image_size, title,
            [name_of(labels[i]) for i in best] if labels is not None else None,
            [name_of(labels[i]) for i in worst] if labels is not None else None,
        )
        out.append((file, "" if len(worst) else "all its images are in the top row"))
    return out


def _img(run: Path, name: str, caption: str) -> str:
    data = base64.b64encode((run / "figures" / name).read_bytes()).decode("ascii")
    src = f"figures/{name}"
    return (f'<figure><a href="{src}" title="open {html.escape(src)}"><img src="data:image/png;base64,{data}" alt="{html.escape(caption or name)}"></a>'
            f"<figcaption>{html.escape(caption) + ' &middot; ' if caption else ''}<a href=\"{src}\">{html.escape(src)}</a></figcaption></figure>")


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1180px; padding: 16px 24px 48px; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; } p.text { color: #333; max-width: 62em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.95em; } td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: left; }
th { background: #f4f4f4; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff7e0; border-left: 4px solid #e0a800; padding: 6px 10px; margin: 6px 0; font-size: 0.93em; }
figure { margin: 0.8em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; } figcaption a { color: #777; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 6px 18px; }
.grid figure { margin: 0.3em 0; }
footer { margin-top: 3em; font-size: 0.85em; color: #777; }
"""


def _html(run: Path, config, final: dict, history: list[dict], notes: list[str], sections: list[Section], version: str) -> str:
    esc = html.escape
    title = f"{config.method} on {config.data}"
    selection = final.get("k_selection")
    if selection:
        trained = "then trained with it" if selection.get("refit") else f"the head has {selection['training_clusters']}"
        k_text = f"{selection['chosen']} (chosen in {selection['range'][0]}-{selection['range'][1]}; {trained})"
    else:
        k_text = config.clusters
    rows = [("method", config.method), ("data", f"{config.data} (split {config.split})"), ("clusters K", k_text),
            ("epochs", f"{len(history)} of {config.epochs}" if history and len(history) != config.epochs else config.epochs),
            ("seed", config.seed), ("batch size / lr", f"{config.batch_size} / {config.lr:g}"),
            ("cluster prior", config.cluster_proportions)]
    if config.params:
        rows.append(("parameters", ", ".join(f"{k}={v}" for k, v in config.params.items())))
    if "n_samples" in final:
        rows.append(("samples", final["n_samples"]))
    if "nonempty_clusters" in final:
        rows.append(("clusters used", f"{final['nonempty_clusters']} of {final.get('clusters', config.clusters)}"))
    if "seconds" in final:
        rows.append(("training time", f"{final['seconds'] / 60:.1f} min" if final["seconds"] >= 120 else f"{final['seconds']:.1f} s"))
    summary = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in rows)
    if "acc" in final:
        scores = ("<table><tr><th>ACC</th><th>NMI</th><th>ARI</th></tr><tr>"
                  + "".join(f'<td class="num">{final[k]:.4f}</td>' for k in ("acc", "nmi", "ari")) + "</tr></table>")
    elif final:
        scores = '<div class="note">no labels: ACC/NMI/ARI were not computed; the label-based parts below are left out.</div>'
    else:
        scores = '<div class="note">no metrics.json: the run did not finish; the figures show its last checkpoint.</div>'
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>otclust report: {esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>otclust report: {esc(title)}</h1>",
        f'<p class="sub">run folder <code>{esc(str(run.resolve()))}</code></p>',
        scores, f"<table>{summary}</table>",
    ]
    parts += [f'<div class="note">{esc(n)}</div>' for n in notes]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        if section.text and (section.figures or not section.notes):
            parts.append(f'<p class="text">{esc(section.text)}</p>')
        parts += [f'<div class="note">{esc(n)}</div>' for n in section.notes]
        if section.figures:
            figures = "".join(_img(run, name, caption) for name, caption in section.figures)
            parts.append(f'<div class="grid">{figures}</div>' if section.grid else figures)
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts.append(f"<footer>written by otclust {esc(version)} on {when}. How to read this page: {GUIDE} in the otclust sources.</footer>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
