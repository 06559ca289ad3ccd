"""otclust compare: several methods on one data set, several seeds each, one table."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from otclust import experiments
from otclust.budget import describe_length
from otclust.commands.common import HelpFormatter, add_data_options, config_from_args
from otclust.data import parse_spec
from otclust.errors import UserError
from otclust import methods
from otclust.methods import METHOD_MODULES, get_method_class
from otclust.models import BACKBONES
from otclust.report import plot_comparison
from otclust.runs import atomic_write_text

TABLES = ["comparison.md", "comparison.csv", "runs.csv", "comparison.png"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="run several methods with several seeds on one data set and tabulate mean ± std",
        description=(
            "Run each method of --methods on --data with seeds 0..S-1, each with its recipe "
            "CONFIGS_DIR/<method>-<data>.yaml when there is one (else the method's defaults), and write "
            "OUT/comparison.md and OUT/comparison.csv: mean ± std of ACC, NMI, ARI and minutes per run, "
            "with OUT/comparison.png (every seed's scores, method by method), "
            "two rows per method (the k-means baseline first, when --methods names it, as 'all' does): the trained network scored by its head and by the "
            "read-out fitted after training (--readout in fit; smoothed k-means unless the recipe names another). Each run's folder is OUT/<method>/seed<S>. "
            "Methods not implemented in this installation are skipped and listed; a failing run is "
            "reported in the table instead of stopping the comparison (the exit status is then 1)."
        ),
        formatter_class=HelpFormatter,
    )
    add_data_options(parser)
    parser.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (every implemented method)")
    parser.add_argument("--seeds", default="3", help="number of seeds (3 = seeds 0,1,2) or a list like 0,1,2 (one seed alone: 5,)")
    parser.add_argument("--out", default=None, help="folder for the tables and the run folders (default: runs/compare-DATA)")
    parser.add_argument("--configs-dir", default="configs", help="folder of <method>-<data>.yaml recipes")
    budget = parser.add_argument_group("budget (applied to every method)")
    budget.add_argument("--epochs-scale", type=float, default=None, metavar="F", help="multiply each recipe's epochs (or the default budget) by F (e.g. 0.1 for a quick look)")
    budget.add_argument("--epochs", type=int, default=None, help="train every method for this many epochs instead of its recipe's")
    budget.add_argument("--batch-size", type=int, default=None, help="images per step for every method")
    parser.add_argument("--clusters", "-k", type=int, default=None, help="number of clusters K (default: the recipe's, else 10)")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--backbone", default=None, metavar="|".join(BACKBONES) + "|LIBRARY:NAME", help="network for every method (default: each recipe's choice); a pretrained timm:NAME / torchvision:NAME / otclust:RUN/model.pt embeds the data once and every method clusters the embeddings")
    parser.add_argument("--weights", default=None, metavar="PATH", help="weights file of a pretrained --backbone")
    parser.add_argument("--cluster-proportions", default=None, metavar="uniform|auto|P1,P2,..|FILE", help="cluster-size prior for every method")
    parser.add_argument("--eval-every", type=int, default=None, help="score every N epochs (the last epoch is always scored)")
    parser.add_argument("--overwrite", action="store_true", help="redo every run and replace the tables in --out")
    parser.add_argument("--resume", action="store_true", help="keep the runs of --out that already finished with the same settings; run the rest")
    parser.add_argument("--verbose", action="store_true", help="print each run's epoch lines too")
    parser.set_defaults(run=run)


def ordered_methods(text: str) -> tuple[list[str], list[str]]:
    """(methods to run, k-means first; methods named but not implemented here)."""
    available = methods.available_methods()  # looked up on the registry module each time (tests substitute it)
    if text.strip() == "all":
        names = list(available)
    else:
        names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--methods is empty: give names like kmeans,clot or 'all'")
    unknown = [n for n in names if n not in METHOD_MODULES]
    if unknown:
        raise UserError(f"unknown method(s) {', '.join(unknown)}: known methods are {', '.join(METHOD_MODULES)}")
    names = list(dict.fromkeys(names))
    if "kmeans" in names:
        names = ["kmeans"] + [n for n in names if n != "kmeans"]
    return [n for n in names if n in available], [n for n in names if n not in available]


def method_config(args, method: str, data: str):
    """The FitConfig of one method: its defaults < its recipe file < the options of compare."""
    data_name = parse_spec(data)[0]
    recipe = Path(args.configs_dir) / f"{method}-{data_name}.yaml"
    namespace = argparse.Namespace(
        config=str(recipe) if recipe.is_file() else None,
        method=method,
        data=data,
        split=args.split,
        download=args.download,
        image_size=args.image_size,
        clusters=args.clusters,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        backbone=args.backbone,
        weights=args.weights,
        cluster_proportions=args.cluster_proportions,
        eval_every=args.eval_every,
        param=[],
        augment=[],
    )
    config = config_from_args(namespace)
    if args.epochs_scale is not None:
        if config.epochs is not None:
            config.epochs = max(1, round(config.epochs * args.epochs_scale))
        elif config.steps is not None:
            config.steps = max(1, round(config.steps * args.epochs_scale))
        else:  # the default budget, fixed when the data's size is known
            config.budget_scale = args.epochs_scale
        config.warmup_epochs = round(config.warmup_epochs * args.epochs_scale)
        if config.epochs is not None:
            config.warmup_epochs = min(config.warmup_epochs, config.epochs - 1)
    return config, (recipe if recipe.is_file() else None)


def run(args) -> int:
    data = args.data or "digits"
    data_name = parse_spec(data)[0]
    seeds = experiments.parse_seeds(args.seeds)
    # NaN passes '<= 0' and failed in round(); inf would multiply the epochs without end.
    if args.epochs_scale is not None and not (math.isfinite(args.epochs_scale) and args.epochs_scale > 0):
        raise UserError(f"--epochs-scale must be a positive finite number, got {args.epochs_scale}")
    if args.configs_dir != "configs" and not Path(args.configs_dir).is_dir():
        raise UserError(f"--configs-dir {args.configs_dir} is not a folder")
    methods, skipped = ordered_methods(args.methods)
    if not methods:
        raise UserError(f"{', '.join(skipped)}: not implemented in this installation; choose among {', '.join(experiments_available())}")
    configs = {m: method_config(args, m, data) for m in methods}  # bad options fail here, before any run
    out = Path(args.out) if args.out else Path("runs") / f"compare-{data_name}"
    experiments.check_outputs(out, TABLES, args.overwrite, args.resume)
    out.mkdir(parents=True, exist_ok=True)

    for name in skipped:
        print(f"skipped {name}: not implemented in this installation")
    total = len(methods) * len(seeds)
    print(f"comparing {', '.join(methods)} on {data} with seeds {', '.join(map(str, seeds))}: {total} runs; tables in {out}")
    cache = experiments.DataCache()
    outcomes: list[experiments.RunOutcome] = []
    done = 0
    title = f"{data}: {len(seeds)} seed{'s' if len(seeds) != 1 else ''} a method"
    for method in methods:
        config, recipe = configs[method]
        where = f"recipe {recipe}" if recipe else "method defaults"
        for seed in seeds:
            done += 1
            run_config = _with_seed(config, seed)
            outcome = experiments.run_one(run_config, out / method / f"seed{seed}", method, cache, overwrite=args.overwrite, reuse=args.resume, verbose=args.verbose)
            outcomes.append(outcome)
            budget = f", {describe_length(config)}" if get_method_class(method).trainable else ""
            print(f"[{done}/{total}] {method} seed {seed} ({where}{budget}): {outcome.describe()}", flush=True)
            # The figure with the tables after every run, so an interrupted comparison keeps both.
            plotted = plot_comparison(out / "comparison.png", title, figure_rows(methods, outcomes), baseline="kmeans")
            tables = write_tables(out, data, seeds, methods, skipped, configs, outcomes, plotted)
    print()
    print(tables["comparison.md"])
    print(f"\nwritten: {out / 'comparison.md'}, {out / 'comparison.csv'}" + (f", {out / 'comparison.png'}" if plotted else ""))
    failed = sum(not o.ok for o in outcomes)
    if failed:
        print(f"{failed} of {total} runs failed: see the table", file=sys.stderr)
        return 1  # the tables are written, but a script must learn that runs are missing from them
    return 0


def experiments_available() -> list[str]:
    return methods.available_methods()


def _with_seed(config, seed: int):
    import dataclasses

    return dataclasses.replace(config, seed=seed, params=dict(config.params), augment=dict(config.augment))


def predictor_rows(runs) -> list[tuple[str, str, bool]]:
    """(where the scores are in metrics.json, predictor name, whether it is the runs' own) for
    the two rows of a method: its head and its read-out."""
    finished = [o.metrics for o in runs if o.ok] or [{}]
    used = finished[0].get("predictor", "head")
    readout = next((m["readout"]["name"] for m in finished if "readout" in m), "smoothed")
    return [("head", "head", used == "head"), ("readout", readout, used == readout)]


def figure_rows(methods: list[str], outcomes) -> list[tuple[str, list[dict], list[dict] | None]]:
    """For plot_comparison: each method's finished runs scored by its default predictor, and by
    its head too when that is not the default."""
    rows = []
    for method in methods:
        runs = [o for o in outcomes if o.group == method and o.ok]
        if not runs:
            continue
        default = next((key for key, _, used in predictor_rows(runs) if used), "head")
        scores = [experiments.predictor_scores(o.metrics, default) for o in runs]
        head = [experiments.predictor_scores(o.metrics, "head") for o in runs] if default != "head" else None
        rows.append((method, scores, head))
    return rows


def write_tables(out: Path, data: str, seeds: list[int], methods: list[str], skipped: list[str], configs: dict, outcomes, plotted: bool) -> dict[str, str]:
    """Build (and write, after every run, so an interrupted comparison keeps what it has) the tables."""
    rows_md, rows_csv = [], []
    for method in methods:
        runs = [o for o in outcomes if o.group == method]
        if not runs:
            continue
        config, recipe = configs[method]
        recipe_text = recipe.name if recipe else "defaults"
        epochs = (config.epochs or "budget") if get_method_class(method).trainable else "-"  # k-means trains no network
        for predictor, name, used in predictor_rows(runs):
            summary = experiments.summarize(outcomes, method, predictor)
            label = name + (" (default)" if used else "")
            rows_md.append([method, label, recipe_text, str(epochs), *experiments.summary_cells(summary)])
            csv_fields = {"method": method, "predictor": name, "default": used, "recipe": str(recipe) if recipe else "", "epochs": epochs}
            rows_csv.append({**csv_fields, **experiments.summary_csv_fields(summary)})
    for name in skipped:
        rows_md.append([name, "-", "-", "-", "n/a", "n/a", "n/a", "n/a", "skipped: not implemented"])
        skipped_fields = {"method": name, "predictor": "", "default": "", "recipe": "", "epochs": ""}
        rows_csv.append({**skipped_fields, **experiments.summary_csv_fields(experiments.Summary(name, 0, 0, {}, {}, ["not implemented"]))})
    header = ["method", "predictor", "recipe", "epochs", "ACC", "NMI", "ARI", "minutes/run", "runs"]
    lines = [
        f"# Comparison on {data}",
        "",
        f"Mean ± std over seeds {', '.join(map(str, seeds))} (std over the runs that finished; 0 for a single run). "
        "ACC is Hungarian-matched accuracy; minutes are wall-clock time per run (training and read-out). Each trained "
        "network is scored twice: by its head (the method's own prediction) and by the read-out fitted after "
        "training (otclust.readout); 'default' marks the predictor the method uses when --readout is not given.",
        "",
        experiments.markdown_table(header, rows_md),
    ]
    lines += experiments.missing_scores_note(outcomes)
    if plotted:
        lines += ["", "![Every seed's scores, method by method](comparison.png)"]
    lines += ["", f"Per-run scores: runs.csv; run folders: <method>/seed<S>/ in {out}."]
    tables = {
        "comparison.md": "\n".join(lines) + "\n",
        "comparison.csv": experiments.csv_text(rows_csv),
        "runs.csv": experiments.csv_text(experiments.runs_csv_rows(outcomes, "method")),
    }
    for name, text in tables.items():
        atomic_write_text(out / name, text)
    return tables
