"""Training with and without otclust.allocator's reuse of freed blocks, side by side in one run.

    python benchmarks/allocator.py                                  # 600 generated shape photos, 64x64
    python benchmarks/allocator.py --data fashion-mnist --epochs 1 --threads 2

Runs the same `otclust fit` twice, one after the other in fresh processes: once as shipped, and
once with `otclust.allocator.reuse_freed_blocks` switched off (glibc's own handling of freed
memory, as before 2026-12-03). Both use the same seed and settings, so their losses must agree
to the last digit; the script checks that. Reports the mean seconds of an epoch after the first
(from the run's history), the whole run's wall time, user and system CPU seconds, minor page
faults and peak RSS of the process (its own getrusage at exit). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import suite_data  # noqa: E402

RUNNER = """
import atexit, json, os, resource, sys

def report():
    u = resource.getrusage(resource.RUSAGE_SELF)
    with open(os.environ["ALLOCATOR_BENCH_USAGE"], "w") as f:
        json.dump({"user_s": u.ru_utime, "sys_s": u.ru_stime, "faults": u.ru_minflt, "peak_mib": u.ru_maxrss / 1024}, f)

atexit.register(report)
if sys.argv[1] == "off":
    import otclust.allocator
    otclust.allocator.reuse_freed_blocks = lambda: False
from otclust.cli import main
sys.argv = ["otclust"] + sys.argv[2:]
sys.exit(main())
"""


def run(mode: str, fit_args: list[str], threads: int, out: Path) -> dict:
    usage = out.parent / f"{mode}-usage.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "ALLOCATOR_BENCH_USAGE": str(usage)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUNNER, mode, "fit", *fit_args, "--out", str(out), "--overwrite", "--no-progress"],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"otclust fit failed ({mode}):\n{done.stderr[-2000:]}")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [row for row in history if "epoch" in row and "seconds" in row]
    later = [row["seconds"] for row in epochs[1:]] or [row["seconds"] for row in epochs]
    return {
        "epoch_s": sum(later) / len(later),
        "wall_s": wall,
        **json.loads(usage.read_text()),
        "losses": [row.get("loss") for row in epochs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="data spec for otclust fit (default: the suite's dev-shapes photos)")
    parser.add_argument("--clusters", type=int, default=None, help="K (default: the suite set's, else 10)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.data is None:
        shapes = suite_data.build("dev-shapes")
        data, clusters = shapes.data, shapes.clusters
    else:
        data, clusters = args.data, args.clusters or 10
    fit_args = ["--data", data, "--clusters", str(args.clusters or clusters), "--epochs", str(args.epochs), "--seed", str(args.seed), "--readout", "head"]
    with tempfile.TemporaryDirectory() as tmp:
        rows = {mode: run(mode, fit_args, args.threads, Path(tmp) / mode) for mode in ("off", "on")}
    same = rows["off"]["losses"] == rows["on"]["losses"]
    print(f"otclust fit {' '.join(fit_args)}, {args.threads} thread(s)\n")
    print("| freed blocks | s/epoch | wall s | user s | system s | minor page faults | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for mode, label in (("off", "glibc's handling"), ("on", "reused (otclust.allocator)")):
        r = rows[mode]
        print(f"| {label} | {r['epoch_s']:.2f} | {r['wall_s']:.1f} | {r['user_s']:.1f} | {r['sys_s']:.1f} | {r['faults']:,} | {r['peak_mib']:.0f} |")
    print(f"\nsame losses in every epoch: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
