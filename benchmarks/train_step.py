"""Where the time of one training step goes, for any method.

    python benchmarks/train_step.py --data fashion-mnist --methods clot --batch-size 256 --steps 20

Phases: augmentation (the method's augmenter), forward (time inside the method's modules that
hold parameters, outermost call only), OT (every Sinkhorn / OT k-means loss call), loss and other
work inside training_step (parameter-free layers included), backward, optimizer. The goal
of issue 6 is that everything but the network's own forward + backward stays under 15% of the
step on CPU. Prints one Markdown row per method.

    python benchmarks/train_step.py --data fashion-mnist --methods clot --device cuda --amp
    python benchmarks/train_step.py --data fashion-mnist --methods clot --param n_heads=5 ... --weights RUN

--weights starts from a trained run's network (same method and params) instead of a fresh one:
late in training the pseudo-labels are sharper and Sinkhorn needs more iterations.

On a GPU (--device cuda) the step's end waits for the device, so ms/step is the true step time,
but the phases are not synchronised: each is the CPU time spent issuing its work, which is what
bounds a step when its kernels are small, and a "gpu wait" column gives what the GPU still had
to do once the CPU had issued the whole step. ops/step counts the operators one step dispatches
(forward, backward and Adam), each at least one kernel launch on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.config import FitConfig  # noqa: E402
from otclust.data import load_dataset  # noqa: E402
from otclust.data.datasets import place_for_training  # noqa: E402
from otclust.checkpoint import checkpoint_file, read_checkpoint  # noqa: E402
from otclust.engine import Trainer, build_method, restore_method_state  # noqa: E402
from otclust.methods import InputSpec, available_methods, get_method_class  # noqa: E402


class Timed:
    """Wraps a callable object, adding its wall time to a named phase; a call made from inside
    another timed call of the same phase is not counted again."""

    active: set = set()

    def __init__(self, inner, phase, timers):
        self.inner, self.phase, self.timers = inner, phase, timers

    def __call__(self, *args, **kwargs):
        key = (id(self.timers), self.phase)
        if key in Timed.active:
            return self.inner(*args, **kwargs)
        Timed.active.add(key)
        started = time.perf_counter()
        try:
            with torch.profiler.record_function(f"phase:{self.phase}"):  # for count_ops
                return self.inner(*args, **kwargs)
        finally:
            Timed.active.discard(key)
            self.timers[self.phase] += time.perf_counter() - started

    def __getattr__(self, name):
        return getattr(self.inner, name)


def instrument(method, timers):
    method.augmenter = Timed(method.augmenter, "augment", timers)
    # OT: the base's solve_transport and solve_transports (CLOT's heads together, SwAV, SeLa),
    # and solvers a method calls itself.
    method.solve_transport = Timed(method.solve_transport, "ot", timers)
    method.solve_transports = Timed(method.solve_transports, "ot", timers)
    module = sys.modules[type(method).__module__]
    for solver in ("sinkhorn", "sinkhorn_labels", "ot_kmeans_loss", "soft_kmeans_loss"):
        if hasattr(module, solver):
            setattr(module, solver, Timed(getattr(module, solver), "ot", timers))
    # Time the outermost network call only: methods may call nested modules (an autoencoder's
    # encoder) directly, and counting every level would count the same work twice.
    state = {"depth": 0, "start": 0.0}

    def pre(_mod, _inputs):
        if state["depth"] == 0:
            state["start"] = time.perf_counter()
        state["depth"] += 1

    def post(_mod, _inputs, _output):
        state["depth"] -= 1
        if state["depth"] == 0:
            timers["forward"] += time.perf_counter() - state["start"]

    for module in method.modules():
        if module is not method and any(p.requires_grad for p in module.parameters(recurse=False)):
            module.register_forward_pre_hook(pre)
            module.register_forward_hook(post)


def ready_method(name: str, dataset, batch_size: int, params: dict | None = None, device: str = "cpu", weights=None):
    """`name` built for `dataset` as `otclust fit` builds it, on `device`, at the start of its first
    epoch, with its Adam optimizer: (method, optimizer), or None for a method without a training
    step. `weights`: a run (folder or model.pt) of the same method and params whose trained
    network (and mined neighbours) replace the fresh ones, for steps as late in training."""
    torch.manual_seed(0)
    config = FitConfig(method=name, clusters=10, batch_size=batch_size, epochs=1, params=params or {}, device=device)
    trainer = Trainer(config, progress=False, log=lambda message: None)
    method = build_method(config, InputSpec.from_dataset(dataset))
    if weights is not None:
        checkpoint = read_checkpoint(checkpoint_file(weights))
        method.load_state_dict(checkpoint["model"])
        restore_method_state(method, checkpoint)
    method = method.to(trainer.device)
    if not method.trainable:
        return None
    trainer.method, trainer.train_data = method, place_for_training(dataset, trainer.device)
    trainer.config = trainer._resolve_budget(len(dataset.data))  # the run's length, which some schedules are fractions of
    method.on_fit_start(trainer)
    method.on_epoch_start(trainer, 0)
    return method, torch.optim.Adam(method.parameter_groups(), lr=config.lr)


def device_synchronizer(device: torch.device):
    """A function that waits until `device` has done the work queued on it (nothing on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def count_ops(step) -> Counter:
    """Operators the step dispatches (outermost aten calls), by phase: on a GPU each is at least
    one kernel launch, a few microseconds of CPU time however small the kernel. Phases are the
    `phase:NAME` ranges of Timed and of the step; the rest is the forward and the losses."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()

    def phase(event):
        while event is not None and not event.name.startswith("phase:"):
            event = event.cpu_parent
        return "forward+loss" if event is None else event.name[len("phase:"):]

    return Counter(phase(e) for e in prof.events() if e.name.startswith("aten::") and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::")))


def profile(name, dataset, batch_size, steps, warmup=3, device="cpu", amp=False, params=None, weights=None):
    ready = ready_method(name, dataset, batch_size, params, device=device, weights=weights)
    if ready is None:
        return None
    method, optimizer = ready
    data = place_for_training(dataset, next(method.parameters()).device)
    device = data.device
    synchronize = device_synchronizer(device)
    timers = defaultdict(float)
    instrument(method, timers)
    generator = torch.Generator().manual_seed(0)
    total = 0.0

    def one_step():
        indices = torch.randint(0, len(data), (batch_size,), generator=generator).to(device)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            parts = method.training_step(data[indices], indices)
        with torch.profiler.record_function("phase:backward"):
            parts["loss"].backward()
        with torch.profiler.record_function("phase:optimizer"):
            optimizer.step()

    for step in range(warmup + steps):
        if step == warmup:
            timers.clear()
            synchronize()
            total = 0.0
        indices = torch.randint(0, len(data), (batch_size,), generator=generator).to(device)
        batch = data[indices]
        started = time.perf_counter()
        inner_before = sum(timers.values())
        with torch.autocast(device.type, enabled=amp):
            parts = method.training_step(batch, indices)
        step_time = time.perf_counter() - started
        timers["loss+other"] += step_time - (sum(timers.values()) - inner_before)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        t1 = time.perf_counter()
        optimizer.step()
        t2 = time.perf_counter()
        synchronize()  # the step's end waits for the device, so that steps do not overlap
        t3 = time.perf_counter()
        timers["backward"] += t1 - t0
        timers["optimizer"] += t2 - t1
        if device.type == "cuda":
            timers["gpu wait"] += t3 - t2  # what the GPU still had to do once the CPU had issued it all
        total += t3 - started
    per_phase = {k: v / steps for k, v in timers.items()}
    return per_phase, total / steps, count_ops(one_step)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--methods", default="clot", help="comma-separated, or 'all'")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true", help="the step under autocast (float16 on CUDA, bfloat16 on the CPU)")
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE of the method (default: its code defaults), e.g. a recipe's params")
    parser.add_argument("--weights", default=None, help="a run (folder or model.pt) of one method with these --param values: its trained network steps, as late in training")
    args = parser.parse_args()
    from otclust.config import coerce_param

    params = {key: coerce_param(value) for key, _, value in (pair.partition("=") for pair in args.param)}
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    names = available_methods() if args.methods == "all" else args.methods.split(",")
    phases = ["augment", "forward", "ot", "loss+other", "backward", "optimizer"] + (["gpu wait"] if args.device.startswith("cuda") else [])
    print(f"{args.data} on {args.device}{' with autocast' if args.amp else ''}, batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"| method | ms/step | " + " | ".join(f"{p} %" for p in phases) + " | outside fwd+bwd % | ops/step |")
    print("| --- | --- | " + " | ".join("---" for _ in phases) + " | --- | --- |")
    by_phase = {}
    for name in names:
        measured = profile(name, dataset, args.batch_size, args.steps, device=args.device, amp=args.amp, params=params, weights=args.weights)
        if measured is None:
            print(f"| {name} | (no training step) |" + " |" * (len(phases) + 2))
            continue
        timers, per_step, ops = measured
        by_phase[name], ops = ops, sum(ops.values())
        share = {p: 100 * timers.get(p, 0.0) / per_step for p in phases}
        outside = 100 - share["forward"] - share["backward"]
        print(f"| {name} | {1000 * per_step:.1f} | " + " | ".join(f"{share[p]:.1f}" for p in phases) + f" | {outside:.1f} | {ops} |", flush=True)
    print("\noperators of one step, by phase:")
    for name, counts in by_phase.items():
        print(f"- {name}: " + ", ".join(f"{phase} {counts[phase]}" for phase in ["augment", "forward+loss", "ot", "backward", "optimizer"]))


if __name__ == "__main__":
    main()
