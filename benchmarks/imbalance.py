"""Clusters of unequal size: CLOT with a uniform, a known and an estimated ('auto') size prior on
long-tailed versions of a data set (any other --cluster-proportions value, e.g. auto:p2ot, may be
named in --modes too).

    python benchmarks/imbalance.py --config configs/clot-digits.yaml --ratios 10,50 --seeds 0,1,2
    python benchmarks/imbalance.py --config configs/clot-fashion-mnist.yaml --largest-class 1000 --set epochs=20


A long-tailed set keeps n_c = n_max * ratio^(-c/(C-1)) samples of class c (class 0 the largest),
drawn once with a fixed generator so every mode sees the same images. The known prior is the
multiset of those class proportions given in shuffled order (the method must match sizes to
clusters itself). Labels are used only to score. Prints a Markdown table: the run's predictor
(--set readout=... to choose it) and, beside it, the cluster head's ACC from the same network.
"""

from __future__ import annotations

import argparse
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


def long_tailed(dataset, ratio: float, seed: int = 0, largest_class: int | None = None):
    labels = dataset.labels
    classes = np.unique(labels)
    largest = min(np.bincount(labels)[classes])
    if largest_class is not None:
        largest = min(largest, largest_class)
    rng = np.random.default_rng(seed)
    keep = []
    for rank, cls in enumerate(classes):
        count = max(1, int(round(largest * ratio ** (-rank / (len(classes) - 1)))))
        members = np.flatnonzero(labels == cls)
        keep.append(rng.choice(members, size=count, replace=False))
    indices = np.sort(np.concatenate(keep))
    return dataset.subset(indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--ratios", default="10,50")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default="uniform,known,auto")
    parser.add_argument("--set", action="append", default=[], help="FitConfig override KEY=VALUE")
    parser.add_argument("--param", action="append", default=[], help="method parameter KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--largest-class",
        type=int,
        default=None,
        help="size of the largest class (default: the smallest class of the full set); a smaller value makes a "
        "cheaper benchmark on large data sets such as Fashion-MNIST",
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    values = load_config_file(args.config)
    method_class = get_method_class(values.get("method", "clot"))
    merged = dict(method_class.default_config)
    merged.update(values)
    merged.update({k: coerce_param(v) for k, _, v in (p.partition("=") for p in args.set)})
    overrides = {k: coerce_param(v) for k, _, v in (p.partition("=") for p in args.param)}
    merged["params"] = override_params(method_class.Params, merged.get("params") or {}, overrides)
    base = FitConfig(**merged)
    full = load_dataset(base.data, split=base.split)

    print("| data | ratio | N | prior | ACC | NMI | ARI | head ACC | minutes/run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for ratio in [float(r) for r in args.ratios.split(",")]:
        dataset = long_tailed(full, ratio, largest_class=args.largest_class)
        proportions = np.bincount(dataset.labels) / len(dataset.labels)
        shuffled = np.random.default_rng(1).permutation(proportions)
        for mode in args.modes.split(","):
            prior = ",".join(f"{p:.6f}" for p in shuffled) if mode == "known" else mode
            scores = []
            for seed in [int(s) for s in args.seeds.split(",")]:
                config = FitConfig(**{**base.to_dict(), "seed": seed, "cluster_proportions": prior, "eval_every": base.epochs})
                started = time.perf_counter()
                result = Trainer(config, progress=False, log=lambda m: None).fit(dataset)
                m = result.metrics  # the run's predictor's scores, and the head's beside them
                scores.append([m["acc"], m["nmi"], m["ari"], m["head"]["acc"], (time.perf_counter() - started) / 60])
                print(f"ratio {ratio:g} {mode} seed {seed}: ACC {m['acc']:.4f} ({m['predictor']}), head {m['head']['acc']:.4f}", file=sys.stderr, flush=True)
            s = np.array(scores)
            cells = " | ".join(f"{s[:, i].mean():.3f} ± {s[:, i].std():.3f}" for i in range(4))
            print(f"| {base.data} | {ratio:g} | {len(dataset.labels)} | {mode} | {cells} | {s[:, 4].mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()
