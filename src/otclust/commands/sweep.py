"""otclust sweep: one hyper-parameter over several values and seeds, ACC against the value."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from otclust import experiments
from otclust.budget import describe_length
from otclust.commands.common import HelpFormatter, add_training_options, config_from_args
from otclust.errors import UserError
from otclust.report import plot_sweep
from otclust.runs import atomic_write_text

TABLES = ["sweep.csv", "sweep.md", "runs.csv", "sweep.png"]


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="train for each value of one hyper-parameter and several seeds; plot ACC against it",
        description=(
            "Run `otclust fit` for every value of --values and every seed: --param NAME (no '=') names what "
            "is swept, a method parameter (e.g. sinkhorn_eps, cluster_weight) or a fit setting (lr, batch-size, epochs, ...). "
            "Writes OUT/sweep.csv and OUT/sweep.md (mean ± std of ACC/NMI/ARI per value), OUT/runs.csv "
            "(one row per run) and OUT/sweep.png (ACC with std error bars against the value, log axis when "
            "the values span more than 10x). Each run's folder is OUT/NAME=VALUE/seed<S>. Every other "
            "option is the same as for `otclust fit`, including --param KEY=VALUE for fixed parameters. A failing run is "
            "reported in the table instead of stopping the sweep (the exit status is then 1)."
        ),
        epilog="example: otclust sweep --method ot-kmeans --data digits --param eps --values 0.003,0.01,0.03,0.1 --seeds 3 --out runs/sweep-eps",
        formatter_class=HelpFormatter,
    )
    add_training_options(parser)
    parser.add_argument("--values", required=True, help="comma-separated values of the swept parameter, e.g. 0.003,0.01,0.03,0.1")
    parser.add_argument("--seeds", default="3", help="number of seeds (3 = seeds 0,1,2) or a list like 0,1,2 (one seed alone: 5,)")
    parser.add_argument("--out", default=None, help="folder for the tables, the plot and the run folders (default: runs/sweep-METHOD-NAME)")
    parser.add_argument("--overwrite", action="store_true", help="redo every run and replace the tables in --out")
    parser.add_argument("--resume", action="store_true", help="keep the runs of --out that already finished with the same settings; run the rest")
    parser.add_argument("--verbose", action="store_true", help="print each run's epoch lines too")
    parser.set_defaults(run=run)


def split_swept_name(params: list[str]) -> tuple[str, list[str]]:
    """--param entries: the single one without '=' is swept; the KEY=VALUE ones are fixed."""
    names = [p for p in params if "=" not in p]
    fixed = [p for p in params if "=" in p]
    if len(names) != 1:
        found = f"got {', '.join(names)}" if names else "got none"
        raise UserError(f"name exactly one swept parameter as --param NAME (without '='), e.g. --param eps --values 0.01,0.1; {found}")
    return names[0].strip(), fixed


# What may stay of a swept value in its folder's name; anything else (a path separator, a colon
# of folder:PATH, a space) becomes '_'.
_UNSAFE_IN_FOLDER_NAME = re.compile(r"[^A-Za-z0-9._=+,-]")
_MAX_FOLDER_NAME = 100  # well under every file system's 255


def run_folder_names(key: str, raw_values: list[str]) -> dict[str, str]:
    """The folder (under --out) of each swept value: NAME=VALUE, made a plain folder name.

    A value is text the user typed, e.g. --param data --values folder:../../x: taken as it is, its
    '/' made nested folders and its '..' put runs (and their --overwrite) outside --out. So no
    separator, no '..', no leading dot; two values that become one name (or differ only in case,
    one folder on macOS and Windows) get -2, -3. The value itself stays in the tables and config.yaml.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    for raw in raw_values:
        name = _UNSAFE_IN_FOLDER_NAME.sub("_", f"{key}={raw}")[:_MAX_FOLDER_NAME].replace("..", "__")
        if name.startswith("."):
            name = "_" + name[1:]
        unique, number = name, 2
        while unique.lower() in taken:
            unique, number = f"{name}-{number}", number + 1
        taken.add(unique.lower())
        names[raw] = unique
    return names


def run(args) -> int:
    import sys

    if args.seed is not None:
        raise UserError("sweep takes its seeds from --seeds (a count or a list), not --seed")
    name, fixed = split_swept_name(args.param)
    base = config_from_args(_with_params(args, fixed))
    experiments.check_swept_name(base, name)
    raw_values = [v.strip() for v in args.values.split(",") if v.strip()]
    values = experiments.parse_values(args.values)
    seeds = experiments.parse_seeds(args.seeds)
    configs = {raw: experiments.with_value(base, name, value) for raw, value in zip(raw_values, values)}  # bad values fail here
    key = name.replace("-", "_")
    out = Path(args.out) if args.out else Path("runs") / f"sweep-{base.method}-{key}"
    experiments.check_outputs(out, TABLES, args.overwrite, args.resume)
    out.mkdir(parents=True, exist_ok=True)
    folders = run_folder_names(key, raw_values)

    total = len(values) * len(seeds)
    print(f"sweeping {key} over {', '.join(raw_values)} for {base.method} on {base.data}, seeds {', '.join(map(str, seeds))}: {total} runs in {out}")
    cache = experiments.DataCache()
    outcomes: list[experiments.RunOutcome] = []
    done = 0
    for raw in raw_values:
        for seed in seeds:
            done += 1
            config = dataclasses.replace(configs[raw], seed=seed, params=dict(configs[raw].params), augment=dict(configs[raw].augment))
            outcome = experiments.run_one(config, out / folders[raw] / f"seed{seed}", raw, cache, overwrite=args.overwrite, reuse=args.resume, verbose=args.verbose)
            outcomes.append(outcome)
            print(f"[{done}/{total}] {key}={raw} seed {seed}: {outcome.describe()}", flush=True)
            write_tables(out, key, base, raw_values, values, seeds, outcomes)
    summaries = [experiments.summarize(outcomes, raw) for raw in raw_values]
    plotted = plot_sweep(out / "sweep.png", key, values, summaries)
    md = write_tables(out, key, base, raw_values, values, seeds, outcomes, plotted)
    print()
    print(md)
    failed = sum(not o.ok for o in outcomes)
    if not plotted and failed < total:
        print("no ACC to plot: the data have no labels", file=sys.stderr)
    print(f"\nwritten: {out / 'sweep.csv'}, {out / 'sweep.md'}" + (f", {out / 'sweep.png'}" if plotted else ""))
    if failed:
        print(f"{failed} of {total} runs failed: see the table", file=sys.stderr)
        return 1  # the tables are written, but a script must learn that runs are missing from them
    return 0


def _with_params(args, fixed: list[str]):
    namespace = argparse.Namespace(**vars(args))
    namespace.param = fixed
    return namespace


def write_tables(out: Path, key: str, base, raw_values: list[str], values: list, seeds: list[int], outcomes, plotted: bool = False) -> str:
    rows_md, rows_csv = [], []
    for raw in raw_values:
        if not any(o.group == raw for o in outcomes):
            continue
        summary = experiments.summarize(outcomes, raw)
        rows_md.append([raw, *experiments.summary_cells(summary)])
        rows_csv.append({"param": key, "value": raw, **experiments.summary_csv_fields(summary)})
    lines = [
        f"# Sweep of {key}: {base.method} on {base.data}",
        "",
        f"Each value trained for {describe_length(base)} with K = {base.clusters} and seeds {', '.join(map(str, seeds))}; "
        "mean ± std over the runs that finished.",
        "",
        experiments.markdown_table([key, "ACC", "NMI", "ARI", "minutes/run", "runs"], rows_md),
    ]
    if plotted:
        lines += ["", f"![ACC against {key}](sweep.png)"]
    lines += experiments.missing_scores_note(outcomes)
    lines += ["", f"Per-run scores: runs.csv; run folders: {key}=VALUE/seed<S>/."]
    if any(name != f"{key}={raw}" for raw, name in run_folder_names(key, raw_values).items()):
        lines[-1] += " Characters a folder name cannot hold safely ('/', ':', '..', ...) are '_' there; runs.csv's run_dir names each run's folder."
    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "sweep.md", md)
    atomic_write_text(out / "sweep.csv", experiments.csv_text(rows_csv))
    atomic_write_text(out / "runs.csv", experiments.csv_text(experiments.runs_csv_rows(outcomes, key)))
    return md
