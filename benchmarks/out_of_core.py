"""SeLa trained out of core: a memory-mapped image set larger than the memory budget, end to end.

    PYTHONPATH=src python benchmarks/out_of_core.py                        # 300,000 images of 1x32x32 (307 MB), budget 64 MB
    PYTHONPATH=src python benchmarks/out_of_core.py --images 1000000 --budget-mb 200 --steps 50

A synthetic set (ten blurred templates plus noise, uint8 N x 1 x 32 x 32) is written chunk by
chunk into a ``.npy`` file (never whole in memory) and opened memory-mapped, as the folder
loader does when decoded images exceed ``--memory-budget``: ``ImageDataset(out_of_core=True)``.
The engine then keeps it mapped, and every batch is gathered from the file and moved on its own
(``otclust.data.place_for_training`` / ``prefetch_to_device``). SeLa (MLP backbone) labels the
whole set once through its 8-bit chunked solver (``otclust.ot.large``: forced by a tiny
``dense_label_limit_gb``), trains ``--steps`` steps, and the whole set is predicted.

Reported: peak RSS (``resource.getrusage``), which counts the file's pages the process has
touched (clean page cache, which the kernel drops under pressure), and peak anonymous memory
(``RssAnon`` of /proc/self/status, sampled every 20 ms): what the process itself allocated,
which is what has to stay under the budget.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def write_synthetic(path: Path, n: int, side: int = 32, clusters: int = 10, chunk: int = 20000) -> np.ndarray:
    rng = np.random.default_rng(0)
    templates = rng.uniform(0, 255, (clusters, 1, 4, 4)).repeat(side // 4, axis=2).repeat(side // 4, axis=3)
    labels = rng.integers(0, clusters, n)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 1, side, side))
    for start in range(0, n, chunk):
        part = labels[start : start + chunk]
        noise = rng.normal(0, 40, (len(part), 1, side, side))
        out[start : start + chunk] = np.clip(templates[part] + noise, 0, 255).astype(np.uint8)
    out.flush()
    del out
    return labels


class AnonSampler(threading.Thread):
    """Peak RssAnon of this process, sampled."""

    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.peak, self.running = every, 0, True

    @staticmethod
    def read() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def run(self):
        while self.running:
            self.peak = max(self.peak, self.read())
            time.sleep(self.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300_000)
    parser.add_argument("--budget-mb", type=float, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dir", default=None, help="where the synthetic .npy goes (default: a temporary folder)")
    args = parser.parse_args()

    import torch

    from otclust.config import FitConfig
    from otclust.data import ImageDataset
    from otclust.data.decode import SETTINGS, format_bytes
    from otclust.engine import Trainer
    from otclust.methods.sela import Sela

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    SETTINGS.memory_budget = args.budget_mb * 1e6
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "synthetic.npy"
        started = time.perf_counter()
        labels = write_synthetic(path, args.images)
        written = time.perf_counter() - started
        sampler = AnonSampler()
        sampler.start()
        data = np.load(path, mmap_mode="c")
        out_of_core = data.nbytes > SETTINGS.memory_budget
        assert out_of_core, "make --images larger or --budget-mb smaller: the set must exceed the budget"
        dataset = ImageDataset(torch.from_numpy(data), labels, "synthetic", out_of_core=True)

        steps = args.steps
        Sela.epoch_order = lambda self, trainer, epoch: torch.randperm(len(trainer.train_data))[: steps * args.batch_size]
        config = FitConfig(
            method="sela", backbone="mlp", clusters=10, epochs=1, batch_size=args.batch_size, lr=1e-3,
            params={"label_updates": 1, "dense_label_limit_gb": 1e-6},
        )  # fmt: skip
        trainer = Trainer(config, progress=False, log=lambda m: None)
        baseline = AnonSampler.read()  # torch and the interpreter, before anything of the data set
        started = time.perf_counter()
        result = trainer.fit(dataset)
        seconds = time.perf_counter() - started
        sampler.running = False
        sampler.join()
        solve = result.method.last_label_solve[0]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"SeLa out of core: {args.images} images 1x32x32 uint8 ({format_bytes(data.nbytes)}), memory budget {format_bytes(SETTINGS.memory_budget)}, "
              f"{steps} steps of batch {args.batch_size}, 1 whole-set labelling, whole-set prediction\n")  # fmt: skip
        print("| data | budget | labelling path | train + label + predict (s) | peak RSS (incl. mapped file pages) | peak anonymous RSS | of which before fit (torch etc.) | ACC |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        print(
            f"| {format_bytes(data.nbytes)} memory-mapped | {format_bytes(SETTINGS.memory_budget)} | {solve['path']} "
            f"(8-bit codes, {solve['n_iters']} Sinkhorn iterations) | {seconds:.1f} | {peak / 2**20:.0f} MiB | "
            f"{sampler.peak / 2**20:.0f} MiB | {baseline / 2**20:.0f} MiB | {result.metrics.get('acc', float('nan')):.3f} |"
        )
        print(f"\n(writing the synthetic file took {written:.1f} s; trainer.train_data is the mapped tensor: "
              f"{trainer.train_data.data_ptr() == dataset.data.data_ptr()})", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
