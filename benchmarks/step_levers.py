"""What makes one training step faster on this machine: a table of step times, levers side by side.

    python benchmarks/step_levers.py --data fashion-mnist --method clot --threads 2
    python benchmarks/step_levers.py --data folder:DIR --method clot --threads 2 --rounds 6

Each lever is a whole training step of the method as `otclust fit` runs it (augmentation, the
network on both views, the losses, OT, backward, Adam), on random batches of the data set:

- float32: the default;
- channels-last: the network's weights (and so its activations) in NHWC memory order;
- torch.compile: the backbone compiled by TorchInductor (compile time reported apart);
- bfloat16 autocast: what `--cpu-amp` runs (otclust.precision); on a CPU without native
  bfloat16 oneDNN emulates it, and the row says so;
- bfloat16 + channels-last.

The levers take turns in blocks of --steps steps, --rounds times after one round that is dropped,
so that a drift of the machine's speed falls on all of them alike; the table gives the median
block. The ratio column compares
with float32 in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust import allocator  # noqa: E402
from otclust.data import load_dataset  # noqa: E402
from otclust.precision import cpu_computes_bfloat16  # noqa: E402
from train_step import ready_method  # noqa: E402

LEVERS = {
    "float32": {},
    "channels-last": {"channels_last": True},
    "torch.compile": {"compile": True},
    "bfloat16 autocast (--cpu-amp)": {"bf16": True},
    "bfloat16 + channels-last": {"bf16": True, "channels_last": True},
}


def make_step(name: str, dataset, batch_size: int, params: dict, channels_last=False, compile=False, bf16=False):
    """A function running one training step of `name` with the lever applied; warmed up."""
    method, optimizer = ready_method(name, dataset, batch_size, params)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    if compile:
        method.backbone = torch.compile(method.backbone)
    generator = torch.Generator().manual_seed(0)

    def step():
        indices = torch.randint(0, len(dataset.data), (batch_size,), generator=generator)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            loss = method.training_step(dataset.data[indices], indices)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    started = time.perf_counter()
    for _ in range(3):
        step()
    return step, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--method", default="clot")
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE of the method (default: its code defaults)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=None, help="working resolution of a folder (default: fit's choice)")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--rounds", type=int, default=8, help="blocks per lever (after one dropped round)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from otclust.config import coerce_param

    params = {key: coerce_param(value) for key, _, value in (pair.partition("=") for pair in args.param)}
    dataset = load_dataset(args.data, image_size=args.image_size)
    allocator.reuse_freed_blocks()  # as `fit` trains an in-memory set (otclust.allocator)
    steps, warmups = {}, {}
    for label, lever in LEVERS.items():
        steps[label], warmups[label] = make_step(args.method, dataset, args.batch_size, params, **lever)
    blocks = {label: [] for label in LEVERS}
    for round_ in range(args.rounds + 1):  # the first round warms caches and allocators, and is dropped
        for label, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            if round_:
                blocks[label].append(1000 * (time.perf_counter() - started) / args.steps)
    native = cpu_computes_bfloat16()
    print(f"{args.method} on {args.data} ({'x'.join(map(str, dataset.data.shape[1:]))}), batch {args.batch_size}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"native bfloat16: {'yes' if native else 'no (emulated)'}; median of {args.rounds} blocks of {args.steps} steps")
    print("| lever | ms/step (median) | blocks (ms/step) | vs float32 | first 3 steps, s |")
    print("| --- | --- | --- | --- | --- |")
    reference = statistics.median(blocks["float32"])
    for label, times in blocks.items():
        median = statistics.median(times)
        print(f"| {label} | {median:.1f} | {', '.join(f'{t:.0f}' for t in times)} | {reference / median:.2f}x | {warmups[label]:.1f} |")


if __name__ == "__main__":
    main()
