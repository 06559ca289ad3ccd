"""Every method with its code defaults (no --config) on data sets no recipe was tuned for.

    python benchmarks/generalization.py                                  # the whole suite, 3 seeds
    python benchmarks/generalization.py --datasets digits,shapes-300 --methods kmeans,clot --seeds 0 --set epochs=1

For each data set of benchmarks/suite_data.py (built offline on first use, cached in
bench-out/suite-data), k-means on pixels runs first, then each method, each as a plain
`otclust fit --method M --data ... --clusters K --seed S --out ... --no-progress` in its own
process, exactly as a user without a recipe would type it. The number of clusters is the number
of classes; labels are used only to score. Runs go seed by seed (every data set and method for
seed 0, then seed 1...), so a suite stopped early still has a full table for its first seeds.

Resumable: a run whose metrics.json exists and that was made with the same extra flags is not
run again (delete OUT/runs/DATA/METHOD/seedS to redo one). Each run's output is kept in
OUT/runs/DATA/METHOD/seedS.log. The table (ACC/NMI/ARI mean ± std over seeds, minutes of wall
clock per run including data loading) is printed and written to OUT/table.md after every run,
with a check of the suite's goal: every method above k-means on pixels on every data set, CLOT
first or within one standard deviation of the best.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import suite_data  # noqa: E402

REPO = suite_data.REPO
BASELINE = "kmeans"
# strokes is left out by default for time (it is one more 28x28 grey set); --datasets adds it.
DEFAULT_DATASETS = ("digits", "fmnist-10k", "fmnist-test", "shapes", "shapes-300", "fmnist-lt", "textures")


def all_methods() -> list[str]:
    from otclust.methods import available_methods

    names = available_methods()
    return [BASELINE] + [m for m in names if m != BASELINE]


def flags_from_sets(pairs: list[str]) -> list[str]:
    """``--set`` KEY=VALUE pairs as `otclust fit` flags: epochs=1 -> --epochs 1; param.sinkhorn_eps=0.05 ->
    --param sinkhorn_eps=0.05; augment.x=y -> --augment x=y; readout.x=y -> --readout-param x=y;
    no-amp=true -> --no-amp."""
    flags = []
    for pair in pairs:
        key, equals, value = pair.partition("=")
        key = key.strip()
        if not key or not equals:
            raise SystemExit(f"--set {pair!r}: write KEY=VALUE, e.g. --set epochs=1")
        group, dot, name = key.partition(".")
        if dot and group in ("param", "augment", "readout"):
            flags += ["--readout-param" if group == "readout" else f"--{group}", f"{name}={value}"]
        elif value.lower() == "true":
            flags.append("--" + key.replace("_", "-"))
        else:
            flags += ["--" + key.replace("_", "-"), value]
    return flags


def baseline_flags(flags: list[str]) -> list[str]:
    """The flags k-means on pixels runs with: a ``--param`` that k-means does not have (a study of
    the trained methods, ``--set param.n_heads=5``) is left out, so the baseline row still runs;
    every other flag passes, a k-means parameter included."""
    import dataclasses

    from otclust.methods import get_method_class

    known = {field.name for field in dataclasses.fields(get_method_class(BASELINE).Params)}
    kept, i = [], 0
    while i < len(flags):
        if flags[i] == "--param" and i + 1 < len(flags) and flags[i + 1].partition("=")[0] not in known:
            i += 2
            continue
        kept.append(flags[i])
        i += 1
    return kept


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty-src" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    dataset: str
    method: str
    seed: int
    metrics: dict | None  # metrics.json, None when the run failed
    wall_seconds: float
    cpu_seconds: float  # user + system time of the run's processes: comparable on a loaded machine
    commit: str
    error: str | None = None


def run_folder(out: Path, dataset: str, method: str, seed: int) -> Path:
    return out / "runs" / dataset / method / f"seed{seed}"


def read_finished(folder: Path, extra_flags: list[str]) -> RunResult | None:
    """The result stored in ``folder`` if it finished with the same extra flags, else None."""
    metrics_path, record_path = folder / "metrics.json", folder / "suite-run.json"
    if not metrics_path.is_file() or not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    if record.get("extra_flags") != extra_flags:
        return None
    metrics = json.loads(metrics_path.read_text())
    return RunResult(record["dataset"], record["method"], record["seed"], metrics, record["wall_seconds"], record.get("cpu_seconds", float("nan")), record["commit"])


def fit_command(suite_set: suite_data.SuiteSet, method: str, seed: int, folder: Path, extra_flags: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "otclust", "fit", "--method", method, *suite_set.fit_args(),
        "--seed", str(seed), "--out", str(folder), "--overwrite", "--no-progress", *extra_flags,
    ]  # fmt: skip


def run_one(suite_set, method: str, seed: int, out: Path, extra_flags: list[str], threads: int, timeout_minutes: float | None, commit: str) -> RunResult:
    folder = run_folder(out, suite_set.name, method, seed)
    folder.parent.mkdir(parents=True, exist_ok=True)
    command = fit_command(suite_set, method, seed, folder, extra_flags)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [env.get("PYTHONPATH")])])
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    log_path = folder.with_suffix(".log")
    failed_path = folder.with_suffix(".failed.json")
    failed_path.unlink(missing_ok=True)
    started = time.perf_counter()
    # Runs go one at a time, so the children's resource usage grows by exactly this run's.
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    error = None
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        # Own process group: a timeout stops the run and any data-loading workers it started.
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = process.wait(timeout=None if timeout_minutes is None else timeout_minutes * 60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            code = process.wait()
            error = f"stopped after {timeout_minutes:g} min (--timeout-minutes)"
        except BaseException:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            raise
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage_before.ru_utime) + (usage.ru_stime - usage_before.ru_stime)
    record = {"dataset": suite_set.name, "method": method, "seed": seed, "wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2), "commit": commit,
              "extra_flags": extra_flags, "threads": threads, "command": command,
              "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if error is None and code != 0:
        tail = [line.strip() for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        error = f"exit {code}: {tail[-1][:200] if tail else 'no output'}"
    if error is None and not (folder / "metrics.json").is_file():
        error = "finished without metrics.json"
    if error is not None:
        failed_path.write_text(json.dumps({**record, "error": error}, indent=2) + "\n")
        return RunResult(suite_set.name, method, seed, None, wall, cpu, commit, error)
    (folder / "suite-run.json").write_text(json.dumps(record, indent=2) + "\n")
    return RunResult(suite_set.name, method, seed, json.loads((folder / "metrics.json").read_text()), wall, cpu, commit)


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarise(results: list[RunResult], datasets: list[str], methods: list[str], seeds: list[int]) -> dict:
    """(dataset, method) -> counts and mean/std of acc, nmi, ari, minutes."""
    cells = {}
    for dataset in datasets:
        for method in methods:
            runs = [r for r in results if r.dataset == dataset and r.method == method and r.seed in seeds]
            done = [r for r in runs if r.metrics is not None and "acc" in r.metrics]
            cell = {"done": len(done), "failed": [r for r in runs if r.metrics is None], "seeds": len(seeds)}
            for key in ("acc", "nmi", "ari"):
                if done:
                    cell[key] = mean_std([r.metrics[key] for r in done])
            if done:
                cell["minutes"] = float(np.mean([r.wall_seconds / 60 for r in done]))
                cell["cpu_minutes"] = float(np.mean([r.cpu_seconds / 60 for r in done]))
            cells[dataset, method] = cell
    return cells


def format_table(cells: dict, datasets: list[str], methods: list[str]) -> str:
    lines = ["| data set | method | ACC | NMI | ARI | minutes | CPU min | seeds |", "|---|---|---|---|---|---|---|---|"]
    for dataset in datasets:
        for method in methods:
            cell = cells[dataset, method]
            if cell["done"]:
                scores = [f"{m:.3f} ± {s:.3f}" if cell["done"] > 1 else f"{m:.3f}" for m, s in (cell[k] for k in ("acc", "nmi", "ari"))]
                minutes = f"{cell['minutes']:.1f} | {cell['cpu_minutes']:.1f}"
            else:
                scores, minutes = ["-"] * 3, "- | -"
            seeds = f"{cell['done']}/{cell['seeds']}"
            if cell["failed"]:
                seeds += f" ({len(cell['failed'])} failed: {cell['failed'][0].error})"
            lines.append(f"| {dataset} | {method} | {' | '.join(scores)} | {minutes} | {seeds} |")
    return "\n".join(lines)


def goal_check(cells: dict, datasets: list[str], methods: list[str]) -> list[str]:
    """The suite's goal, per data set: which methods do not beat k-means on pixels (mean ACC), and
    whether CLOT is first or within one standard deviation (the larger of the two) of the best."""
    lines = []
    for dataset in datasets:
        scored = {m: cells[dataset, m]["acc"] for m in methods if cells[dataset, m]["done"]}
        if not scored:
            continue
        parts = []
        if BASELINE in scored:
            base = scored[BASELINE][0]
            below = [m for m, (acc, _) in scored.items() if m != BASELINE and acc <= base]
            parts.append(f"methods at or below k-means ({base:.3f}): {', '.join(below) if below else 'none'}")
        best = max((m for m in scored if m != BASELINE), key=lambda m: scored[m][0], default=None)
        if "clot" in scored and best is not None:
            (clot, clot_std), (top, top_std) = scored["clot"], scored[best]
            if best == "clot":
                parts.append("CLOT first")
            elif min(cells[dataset, "clot"]["done"], cells[dataset, best]["done"]) < 2:
                parts.append(f"CLOT {clot:.3f} vs best {best} {top:.3f} (one seed: no std to compare with)")
            else:
                within = top - clot <= max(clot_std, top_std)
                parts.append(f"CLOT {clot:.3f} vs best {best} {top:.3f}: {'within' if within else 'NOT within'} one std")
        lines.append(f"- {dataset}: " + "; ".join(parts))
    return lines


def write_report(path: Path, header: list[str], table: str, legend: list[str], checks: list[str]) -> None:
    text = "\n".join([*header, "", table, "", "Data sets:", *legend, "", "Goal check (mean ACC):", *checks]) + "\n"
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    os.replace(temp, path)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DEFAULT_DATASETS), help=f"comma-separated, of {', '.join(suite_data.SUITE)}; 'dev' for the development sets (default: {','.join(DEFAULT_DATASETS)})")
    parser.add_argument("--methods", default=None, help="comma-separated (default: every method); k-means on pixels always runs first")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="OMP/MKL threads per run (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "generalization", help="results folder (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra `otclust fit` flag for every run: epochs=1 -> --epochs 1, param.sinkhorn_eps=0.05 -> --param sinkhorn_eps=0.05 (repeatable)")  # fmt: skip
    parser.add_argument("--folder-image-size", type=int, default=None,
                        help="pass --image-size N for the photo-folder sets only (default: none, otclust chooses)")  # fmt: skip
    parser.add_argument("--data-root", type=Path, default=suite_data.DEFAULT_ROOT, help="generated data cache (default: %(default)s)")
    parser.add_argument("--fashion-dir", type=Path, default=None, help=f"Fashion-MNIST idx folder (default: {suite_data.FASHION_SYSTEM_DIR})")
    parser.add_argument("--timeout-minutes", type=float, default=None, help="stop a run after this long and mark it failed (default: none)")
    parser.add_argument("--dry-run", action="store_true", help="build the data and print the commands; run nothing")
    args = parser.parse_args(argv)
    # Runs start in the repository root; paths the user gave are meant from where they stand.
    args.out, args.data_root = args.out.resolve(), args.data_root.resolve()
    if args.fashion_dir is not None:
        args.fashion_dir = args.fashion_dir.resolve()

    dataset_names = [name for part in parse_list(args.datasets) for name in (suite_data.DEV_SETS if part == "dev" else [part])]
    unknown = [d for d in dataset_names if d not in suite_data.SUITE]
    if unknown:
        parser.error(f"unknown data set(s) {', '.join(unknown)}: use {', '.join(suite_data.SUITE)}")
    methods = parse_list(args.methods) if args.methods else all_methods()
    known = all_methods()
    if [m for m in methods if m not in known]:
        parser.error(f"unknown method(s) {', '.join(m for m in methods if m not in known)}: use {', '.join(known)}")
    methods = [BASELINE] + [m for m in methods if m != BASELINE]
    seeds = [int(s) for s in parse_list(args.seeds)]
    base_flags = flags_from_sets(args.set)

    # Build (or find) every set first, so generation time never counts as a run's minutes.
    sets: dict[str, suite_data.SuiteSet] = {}
    legend = []
    for name in dataset_names:
        started = time.perf_counter()
        try:
            sets[name] = suite_data.build(name, args.data_root, args.fashion_dir)
        except suite_data.SuiteDataUnavailable as error:
            print(f"skipping {name}: {error}", file=sys.stderr)
            legend.append(f"- {name}: skipped ({error})")
            continue
        s = sets[name]
        print(f"data {name}: {s.n_samples} samples, K={s.clusters} ({time.perf_counter() - started:.0f} s to build or find)", file=sys.stderr)
        legend.append(f"- {name}: {s.kind}; N={s.n_samples}, K={s.clusters}; `{' '.join(s.fit_args()).replace(str(REPO) + '/', '')}`")
    datasets = list(sets)

    def flags_for(s: suite_data.SuiteSet, method: str) -> list[str]:
        flags = baseline_flags(base_flags) if method == BASELINE else base_flags
        if s.is_folder and args.folder_image_size:
            return flags + ["--image-size", str(args.folder_image_size)]
        return flags

    if args.dry_run:
        for seed in seeds:
            for name in datasets:
                for method in methods:
                    print(" ".join(fit_command(sets[name], method, seed, run_folder(args.out, name, method, seed), flags_for(sets[name], method))))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    command_line = "python benchmarks/generalization.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        "# Generalisation suite: every method with its code defaults (no --config)",
        "",
        f"Command: `{command_line}`  ",
        f"Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} logical CPUs, {args.threads} thread(s) per run; "
        f"started {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; otclust commit {commit}  ",
        f"Extra fit flags: {' '.join(base_flags) or 'none'}"
        + (f"; photo folders at --image-size {args.folder_image_size}" if args.folder_image_size else ""),
        "",
        "ACC/NMI/ARI: mean ± sample std over the seeds that finished; minutes: wall clock per run, data loading included;",
        "CPU min: user + system CPU time per run (less sensitive to other jobs on the machine than wall clock).",
    ]

    results: list[RunResult] = []
    total = len(seeds) * len(datasets) * len(methods)
    done = 0
    table_path = args.out / "table.md"

    def refresh() -> str:
        cells = summarise(results, datasets, methods, seeds)
        table = format_table(cells, datasets, methods)
        commits = sorted({r.commit for r in results})
        extra = [f"Warning: rows come from several commits ({', '.join(commits)}): resumed runs were made with older code."] if len(commits) > 1 else []
        write_report(table_path, header + extra, table, legend, goal_check(cells, datasets, methods))
        return table

    for seed in seeds:
        for name in datasets:
            for method in methods:
                done += 1
                flags = flags_for(sets[name], method)
                folder = run_folder(args.out, name, method, seed)
                result = read_finished(folder, flags)
                if result is not None:
                    how = "kept"
                else:
                    print(f"[{done}/{total}] {name} {method} seed {seed} ...", file=sys.stderr, flush=True)
                    result = run_one(sets[name], method, seed, args.out, flags, args.threads, args.timeout_minutes, commit)
                    how = "ran"
                results.append(result)
                if result.metrics is None:
                    print(f"[{done}/{total}] {name} {method} seed {seed}: FAILED ({result.error}); log {folder.with_suffix('.log')}", file=sys.stderr, flush=True)
                else:
                    m = result.metrics
                    print(f"[{done}/{total}] {name} {method} seed {seed}: ACC {m.get('acc', float('nan')):.3f} NMI {m.get('nmi', float('nan')):.3f} "
                          f"ARI {m.get('ari', float('nan')):.3f}, {result.wall_seconds / 60:.2f} min, {result.cpu_seconds / 60:.2f} CPU min ({how})", file=sys.stderr, flush=True)  # fmt: skip
                refresh()

    print(table_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
