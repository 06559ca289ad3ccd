"""Time to accuracy: wall time and ACC/NMI/ARI of a recipe and its faster variants, side by side.

    python benchmarks/time_to_accuracy.py --config configs/clot-digits.yaml --seeds 0,1,2 --target 0.97 \\
        --variant "recipe" --variant "100 epochs: epochs=100" \\
        --variant "100 epochs, 10 restarts: epochs=100 readout.restarts=10"

Each variant is the recipe plus overrides, written `LABEL: KEY=VALUE ...` where KEY is a
FitConfig field (epochs, batch_size, lr, schedule, ...), `param.NAME` a method parameter,
`readout.NAME` a read-out setting (restarts, neighbors, rounds, choice) and `augment.NAME` an
augmentation setting. The first variant is the reference the speed-up is measured against.
Every variant trains on the same data: the recipe's, or `--data SPEC` (e.g.
`--data fashion-mnist:DIR --variant "gpu: device=cuda"`); a variant may not change it.

Every run is a whole `Trainer.fit` in memory: training, the end-of-training read-out and the
prediction of every image, as a user waits for it (labels only score). Runs go seed by seed,
each seed through every variant in turn, so that load on a shared machine falls on all variants
alike; still, compare rows of one table, not tables of different days. Columns:

- train min: the epochs (the sum of metrics.jsonl's per-epoch seconds; no in-training scoring,
  since eval_every is set to the run length);
- read-out min: everything after the last epoch (fitting the read-out, predicting all images,
  and scoring the head beside it);
- total min: wall time of the whole fit call, data placement included.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.config import FitConfig, coerce_param, load_config_file  # noqa: E402
from otclust.data import load_dataset  # noqa: E402
from otclust.engine import Trainer  # noqa: E402
from otclust.methods import get_method_class  # noqa: E402
from quality import append_csv_row  # noqa: E402  (benchmarks/, the script's own folder)

SECTIONS = ("param", "readout", "augment")
# Every variant trains on the one data set loaded at the start (--data, else the recipe's): a
# variant that changed it would be compared with runs on other images.
DATA_FIELDS = ("data", "split", "download", "image_size")


def parse_variant(text: str) -> tuple[str, dict, dict]:
    """'LABEL: k=v param.x=v' -> (label, FitConfig overrides, {section: overrides})."""
    label, _, rest = text.partition(":")
    fields: dict = {}
    sections: dict = {name: {} for name in SECTIONS}
    for pair in rest.split():
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"variant {label!r}: {pair!r} is not KEY=VALUE")
        section, dot, name = key.partition(".")
        if dot and section in SECTIONS:
            sections[section][name] = coerce_param(value)
        elif dot:
            raise SystemExit(f"variant {label!r}: {key!r}: prefixes are {', '.join(s + '.' for s in SECTIONS)}")
        elif key in DATA_FIELDS:
            raise SystemExit(f"variant {label!r}: {key!r} would change the data; every variant runs on the same data (--data)")
        else:
            fields[key] = coerce_param(value)
    return label.strip(), fields, sections


def build_config(recipe: dict, fields: dict, sections: dict, seed: int) -> FitConfig:
    merged = {**recipe, **fields, "seed": seed}
    merged["params"] = {**(recipe.get("params") or {}), **sections["param"]}
    merged["readout_params"] = {**(recipe.get("readout_params") or {}), **sections["readout"]}
    merged["augment"] = {**(recipe.get("augment") or {}), **sections["augment"]}
    merged["eval_every"] = merged.get("epochs") or 1
    return FitConfig(**merged)


def mean_std(values) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.3f} ± {values.std():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the recipe of today (configs/...)")
    parser.add_argument("--variant", action="append", default=[], help="'LABEL: KEY=VALUE ...' (repeat; the first is the reference; default: the recipe alone)")
    parser.add_argument("--data", default=None, help="the data set of every variant, e.g. fashion-mnist:DIR (default: the recipe's)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--target", type=float, default=None, help="ACC a run must reach to count in the 'reached' column")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--csv", default=None, help="append one row per run to this CSV file")
    parser.add_argument("--out", default=None, help="keep each run's folder (model.pt, metrics) as OUT/VARIANT-seedS; writing it adds a little to the times")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    values = load_config_file(args.config)
    recipe = {**get_method_class(values.get("method", "clot")).default_config, **values}
    if args.data:
        recipe["data"] = args.data
    variants = [parse_variant(text) for text in (args.variant or ["recipe"])]
    seeds = [int(s) for s in args.seeds.split(",")]
    # Validate every variant before the first (possibly long) run.
    for label, fields, sections in variants:
        build_config(recipe, fields, sections, seeds[0])
    first = build_config(recipe, {}, {name: {} for name in SECTIONS}, seeds[0])
    dataset = load_dataset(first.data, split=first.split, download=first.download, image_size=first.image_size)
    load = os.getloadavg()[0]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, load average {load:.2f} at start, {len(seeds)} seeds x {len(variants)} variants", file=sys.stderr)

    rows = []
    for seed in seeds:
        for label, fields, sections in variants:
            config = build_config(recipe, fields, sections, seed)
            started = time.perf_counter()
            # Notes only (e.g. --cpu-amp falling back to float32 on a CPU without bfloat16).
            folder = None if args.out is None else Path(args.out) / f"{re.sub('[^A-Za-z0-9.]+', '-', label).strip('-')}-seed{seed}"
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
            result = Trainer(config, folder, progress=False, log=lambda message: message.startswith("note") and print(message, file=sys.stderr, flush=True)).fit(dataset)
            total = time.perf_counter() - started
            train = sum(row.get("seconds", 0.0) for row in result.history)
            row = {
                "variant": label, "seed": seed, "epochs": config.epochs, "predictor": result.metrics.get("predictor"),
                **{key: result.metrics.get(key, float("nan")) for key in ("acc", "nmi", "ari")},
                "head_acc": result.metrics.get("head", {}).get("acc", float("nan")),
                "train_min": train / 60, "readout_min": (total - train) / 60, "total_min": total / 60,
                "load": os.getloadavg()[0],
            }
            rows.append(row)
            print(f"{label} seed {seed}: ACC {row['acc']:.4f} NMI {row['nmi']:.4f} ARI {row['ari']:.4f} ({row['predictor']}; head {row['head_acc']:.4f}) "
                  f"train {row['train_min']:.2f} + read-out {row['readout_min']:.2f} = {row['total_min']:.2f} min, load {row['load']:.1f}", file=sys.stderr, flush=True)
            if args.csv:
                append_csv_row(args.csv, row)

    reference = np.mean([r["total_min"] for r in rows if r["variant"] == variants[0][0]])
    reached = f" | reached {args.target}" if args.target is not None else ""
    print(f"\n{first.method} on {first.data}, seeds {args.seeds}, {args.threads or 'default'} threads; recipe {args.config}")
    print(f"| variant | epochs | predictor | ACC | NMI | ARI | head ACC | train min | read-out min | total min | speed-up{reached} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | ---" + (" | ---" if reached else "") + " |")
    for label, _, _ in variants:
        mine = [r for r in rows if r["variant"] == label]
        total = np.mean([r["total_min"] for r in mine])
        hit = f" | {sum(r['acc'] >= args.target for r in mine)}/{len(mine)}" if args.target is not None else ""
        print(f"| {label} | {mine[0]['epochs']} | {mine[0]['predictor']} | {mean_std([r['acc'] for r in mine])} | {mean_std([r['nmi'] for r in mine])} | "
              f"{mean_std([r['ari'] for r in mine])} | {mean_std([r['head_acc'] for r in mine])} | {np.mean([r['train_min'] for r in mine]):.2f} | "
              f"{np.mean([r['readout_min'] for r in mine]):.2f} | {total:.2f} | {reference / total:.2f}x{hit} |")


if __name__ == "__main__":
    main()
