"""Clustering quality of one recipe over several seeds: mean ± std of ACC / NMI / ARI and minutes.

    python benchmarks/quality.py --config configs/clot-digits.yaml --seeds 0,1,2
    python benchmarks/quality.py --config configs/clot-fashion-mnist.yaml --seeds 0,1,2 --param sinkhorn_eps=0.1

Each run is a full `otclust fit` in memory (no run folder); labels are used only to score.
Prints a Markdown table; --csv appends one row per run to a file for ablation tables.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.config import FitConfig, coerce_param, load_config_file  # noqa: E402
from otclust.data import load_dataset  # noqa: E402
from otclust.engine import Trainer  # noqa: E402
from otclust.methods import get_method_class  # noqa: E402
from otclust.methods.base import override_params  # noqa: E402


def parse_pairs(pairs):
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        out[key] = coerce_param(value)
    return out


def append_csv_row(path: str, row: dict) -> None:
    """Append one run's row to a CSV file, writing the header when the file is new."""
    new = not Path(path).exists()
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML recipe (configs/...)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--param", action="append", default=[], help="method parameter override KEY=VALUE")
    parser.add_argument("--set", action="append", default=[], help="FitConfig override KEY=VALUE (epochs=20, data=...)")
    parser.add_argument("--augment", action="append", default=[], help="augmentation override KEY=VALUE")
    parser.add_argument("--label", default=None, help="row name in the table (default: the overrides)")
    parser.add_argument("--csv", default=None, help="append per-run rows to this CSV file")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    values = load_config_file(args.config)
    method_name = values.get("method", "clot")
    merged = dict(get_method_class(method_name).default_config)
    merged.update(values)
    merged.update(parse_pairs(args.set))
    # A --param under any of a parameter's names (sinkhorn_eps, or the former lam) replaces the recipe's.
    merged["params"] = override_params(get_method_class(method_name).Params, merged.get("params") or {}, parse_pairs(args.param))
    merged["augment"] = {**(merged.get("augment") or {}), **parse_pairs(args.augment)}
    label = args.label or " ".join(args.param + args.set + args.augment) or "default"
    base = FitConfig(**merged)
    dataset = load_dataset(base.data, split=base.split, download=base.download, image_size=base.image_size)

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        config = FitConfig(**{**base.to_dict(), "seed": seed, "eval_every": base.epochs})
        started = time.perf_counter()
        result = Trainer(config, progress=False, log=lambda message: None).fit(dataset)
        minutes = (time.perf_counter() - started) / 60
        row = {"label": label, "config": args.config, "seed": seed, **{k: result.metrics.get(k, float("nan")) for k in ("acc", "nmi", "ari")}, "minutes": minutes}
        rows.append(row)
        last_eval = result.history[-1] if result.history else {}
        # A method that refits its predictor after training (clot predict_by=kmeans) scores differently
        # from its last in-training evaluation; both are shown.
        before = f"  (last training epoch: ACC {last_eval['acc']:.4f} NMI {last_eval['nmi']:.4f})" if "acc" in last_eval and round(row["acc"], 4) != last_eval["acc"] else ""
        print(f"seed {seed}: ACC {row['acc']:.4f}  NMI {row['nmi']:.4f}  ARI {row['ari']:.4f}  {minutes:.2f} min{before}", file=sys.stderr, flush=True)
        if args.csv:
            append_csv_row(args.csv, row)

    def stat(key):
        values = np.array([r[key] for r in rows])
        return f"{values.mean():.3f} ± {values.std():.3f}"

    print(f"| recipe | data | seeds | ACC | NMI | ARI | minutes/run |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {method_name} {label} | {base.data} | {len(rows)} | {stat('acc')} | {stat('nmi')} | {stat('ari')} | {np.mean([r['minutes'] for r in rows]):.2f} |")


if __name__ == "__main__":
    main()
