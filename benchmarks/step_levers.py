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
- bfloat16 + channels-last;
- (CLOT) bfloat16 with the pseudo-labels' Sinkhorn testing its stopping rule every 8 iterations
  instead of every one (`sinkhorn_check_every`): fewer operations, and on a GPU fewer waits.

With --device cuda the levers are those of a GPU: float32; float16 autocast (what `fit` runs on
CUDA by default); float16 + channels-last; float16 + torch.compile of the backbone; and float16
at 4x the batch, for what a larger batch buys per image; and (CLOT) float16 with Sinkhorn's
stopping rule tested every 8 iterations, each test being a wait for the GPU. Each block ends by waiting for the GPU,
and the table adds images/s, the one column comparable across batch sizes.

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
from otclust.data.datasets import place_for_training  # noqa: E402
from otclust.precision import cpu_computes_bfloat16  # noqa: E402
from train_step import device_synchronizer, ready_method  # noqa: E402

LEVERS = {
    "float32": {},
    "channels-last": {"channels_last": True},
    "torch.compile": {"compile": True},
    "bfloat16 autocast (--cpu-amp)": {"half": True},
    "bfloat16 + channels-last": {"half": True, "channels_last": True},
    "bfloat16, Sinkhorn tested every 8 iterations": {"half": True, "params": {"sinkhorn_check_every": 8}},
}
CUDA_LEVERS = {
    "float32": {},
    "float16 autocast (fit's default)": {"half": True},
    "float16 + channels-last": {"half": True, "channels_last": True},
    "float16 + torch.compile": {"half": True, "compile": True},
    "float16, 4x the batch": {"half": True, "batch_factor": 4},
    "float16, Sinkhorn tested every 8 iterations": {"half": True, "params": {"sinkhorn_check_every": 8}},
}
# Levers that set a method parameter run only for the methods that have it.
LEVER_METHODS = {"sinkhorn_check_every": ("clot",)}


def make_step(name: str, dataset, batch_size: int, params: dict, channels_last=False, compile=False, half=False, device="cpu", batch_factor=1, extra_params=None):
    """A function running one training step of `name` with the lever applied, and ending when the
    device has finished it; warmed up. `half`: autocast in bfloat16 on the CPU, float16 on CUDA."""
    batch_size *= batch_factor
    method, optimizer = ready_method(name, dataset, batch_size, {**params, **(extra_params or {})}, device=device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    if compile:
        method.backbone = torch.compile(method.backbone)
    device = next(method.parameters()).device
    data = place_for_training(dataset, device)
    synchronize = device_synchronizer(device)
    generator = torch.Generator().manual_seed(0)

    def step():
        indices = torch.randint(0, len(data), (batch_size,), generator=generator).to(device)
        context = torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16) if half else contextlib.nullcontext()
        with context:
            loss = method.training_step(data[indices], indices)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize()

    started = time.perf_counter()
    for _ in range(3):
        step()
    return step, time.perf_counter() - started, batch_size


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
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the levers differ, see above)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from otclust.config import coerce_param

    params = {key: coerce_param(value) for key, _, value in (pair.partition("=") for pair in args.param)}
    dataset = load_dataset(args.data, image_size=args.image_size)
    allocator.reuse_freed_blocks()  # as `fit` trains an in-memory set (otclust.allocator)
    levers = CUDA_LEVERS if args.device.startswith("cuda") else LEVERS
    levers = {label: lever for label, lever in levers.items() if all(args.method in LEVER_METHODS[key] for key in lever.get("params", {}))}
    steps, warmups, batches = {}, {}, {}
    for label, lever in levers.items():
        steps[label], warmups[label], batches[label] = make_step(args.method, dataset, args.batch_size, params, device=args.device, extra_params=lever.get("params"), **{k: v for k, v in lever.items() if k != "params"})
    blocks = {label: [] for label in levers}
    for round_ in range(args.rounds + 1):  # the first round warms caches and allocators, and is dropped
        for label, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            if round_:
                blocks[label].append(1000 * (time.perf_counter() - started) / args.steps)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else f"native bfloat16: {'yes' if cpu_computes_bfloat16() else 'no (emulated)'}"
    print(f"{args.method} on {args.data} ({'x'.join(map(str, dataset.data.shape[1:]))}), batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{where}; median of {args.rounds} blocks of {args.steps} steps")
    print("| lever | ms/step (median) | blocks (ms/step) | images/s | vs float32 (per image) | first 3 steps, s |")
    print("| --- | --- | --- | --- | --- | --- |")
    reference = batches["float32"] / statistics.median(blocks["float32"])
    for label, times in blocks.items():
        median = statistics.median(times)
        rate = batches[label] / median  # images per millisecond
        print(f"| {label} | {median:.1f} | {', '.join(f'{t:.0f}' for t in times)} | {1000 * rate:.0f} | {rate / reference:.2f}x | {warmups[label]:.1f} |")


if __name__ == "__main__":
    main()
