"""Side by side with lightly: SimCLR on the same small CNN, otclust's data path against lightly's.

    .venv-bench/bin/python benchmarks/peer_lightly.py                  # Fashion-MNIST, all three parts
    .venv-bench/bin/python benchmarks/peer_lightly.py --quick          # digits, under a minute on an idle 2-core CPU
    .venv-bench/bin/python benchmarks/peer_lightly.py --check          # the two NT-Xent losses agree?

Needs lightly (requirements-bench.txt; `make bench-peer` makes the venv .venv-bench and runs this).
On a GPU, `--device cuda --amp` runs both peers there with float16 autocast and loss scaling, as
`otclust fit` trains on CUDA: lightly's views are made on the CPU by its DataLoader and copied
over, otclust's on the GPU from the data set held there, as fit does.
CI does not install lightly, so this is a benchmark, not a test.

Both peers train the same network with the same settings: otclust's SmallCNN backbone and the
SimCLR projection head CLOT puts on it (ProjectionHead, 512 hidden, CLOT's projection_dim), built
from the same seed (same initial weights), Adam with CLOT's recipe (lr 1e-3, weight decay 1e-4,
here at a constant rate), the same batch size, the same number of torch threads, the same images
(uint8, standardised with the same mean and std), two views per image, NT-Xent at CLOT's
temperature. What differs is each library's own part:

  lightly   SimCLRTransform (per image, on PIL images) set as close to otclust's preset for the
            data as its arguments allow, LightlyDataset.from_torch_dataset over a torch Dataset
            that returns PIL images (as torchvision's MNIST does), a torch DataLoader with
            lightly's MultiViewCollate, lightly's NTXentLoss; each view through the model on its
            own, as lightly's SimCLR example does (--peer-forward joint: one forward of both).
  otclust   the SimCLR part of CLOT's training step with nothing else: the engine's batch
            iterator (otclust.engine.iterate_batches: a shuffled index into the uint8 tensor),
            the method's BatchAugmenter twice (Clot.views), one forward of both views through
            backbone and projection head, otclust.losses.nt_xent_loss as Clot.training_step calls
            it. CLOT's cluster heads and OT loss are left out (lightly has no counterpart); --check
            verifies that this step's loss equals the `contrastive` part of Clot.training_step.

Measured, the two peers interleaved so that drift of the machine's load hits both:
  (a) step images/s: forward + loss + backward + optimizer step on a ready batch (the two views
      already made), --steps steps per round, --rounds rounds alternating between the peers;
      the median round. Images, not views: one image is two views.
  (b) epoch images/s: whole epochs, data preparation included (loading, augmentation, collate,
      shuffling), i.e. (steps x batch) / wall time of the epoch, over the epochs that both peers
      trained (alternating; once one peer has reached the target the other trains alone).
      "data s/epoch" is the part of the epoch spent getting the next batch of views ready
      (lightly: waiting on the DataLoader's iterator; otclust: indexing + the two augmentations),
      "data images/s" the images (two views each) made ready per second of it. With lightly's
      --workers > 0 its preparation overlaps the steps and "data" is only the wait.
  (c) time to ACC >= --target of a k-means read-out (scikit-learn KMeans, --kmeans-init restarts)
      of the backbone features of all images, scored with otclust.metrics.cluster_accuracy;
      evaluated every --eval-every epochs; training wall time only (evaluation time excluded),
      capped at --max-epochs epochs and --max-minutes of training time per peer. The epochs of
      (c) are also the epochs timed for (b).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import otclust  # noqa: E402
from otclust.data import load_dataset  # noqa: E402
from otclust.data.augment import BatchAugmenter, Normalizer, augment_config_from_dict  # noqa: E402
from otclust.engine import iterate_batches  # noqa: E402
from otclust.losses import nt_xent_loss  # noqa: E402
from otclust.methods import InputSpec  # noqa: E402
from otclust.methods.clot import ClotParams  # noqa: E402
from otclust.metrics import cluster_accuracy  # noqa: E402
from otclust.models import ProjectionHead  # noqa: E402
from otclust.models.backbones import SmallCNN  # noqa: E402
from otclust.models.pretrained import import_torchvision  # noqa: E402

CLOT = ClotParams()  # temperature and projection size as CLOT's defaults
LR, WEIGHT_DECAY = 1e-3, 1e-4  # configs/clot-fashion-mnist.yaml (lr) and FitConfig's default (weight decay)


def import_lightly():
    """lightly imports torchvision, whose PyPI build cannot load its ops next to a CPU torch:
    otclust's workaround first (otclust.models.pretrained.import_torchvision)."""
    import_torchvision()
    try:
        import lightly
        from lightly.data import LightlyDataset, MultiViewCollate
        from lightly.loss import NTXentLoss
        from lightly.transforms import SimCLRTransform
    except ImportError:
        sys.exit("this benchmark needs lightly: pip install -r requirements-bench.txt (or `make bench-peer`)")
    return lightly, LightlyDataset, MultiViewCollate, NTXentLoss, SimCLRTransform


class Net(nn.Module):
    """otclust's small CNN and CLOT's projection head."""

    def __init__(self, channels: int, image_size: tuple[int, int]):
        super().__init__()
        self.backbone = SmallCNN(channels, image_size)
        self.head = ProjectionHead(self.backbone.out_dim, out_dim=CLOT.projection_dim)

    def forward(self, x):
        return self.head(self.backbone(x))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def new_model(spec: InputSpec, seed: int, device: torch.device = torch.device("cpu")):
    seed_all(seed)
    model = Net(spec.channels, spec.image_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    return model, optimizer


_SCALERS: "weakref.WeakKeyDictionary[torch.optim.Optimizer, torch.amp.GradScaler]" = weakref.WeakKeyDictionary()


def optimize(args, optimizer, compute_loss) -> torch.Tensor:
    """One optimizer step on compute_loss(), the same for both peers: under --amp the forward runs
    in autocast (float16 on CUDA with loss scaling, bfloat16 on the CPU), as `otclust fit` does."""
    device = args.device
    with torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16, enabled=args.amp):
        loss = compute_loss()
    scaler = _SCALERS.setdefault(optimizer, torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda"))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def synchronize(args) -> None:
    """Wait for the GPU, so that a timer read afterwards counts the work queued before it."""
    if args.device.type == "cuda":
        torch.cuda.synchronize(args.device)


class ArrayImages(torch.utils.data.Dataset):
    """uint8 images as PIL images with their labels, as torchvision's MNIST dataset returns them."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray):
        self.images = images.permute(0, 2, 3, 1).numpy()  # N x H x W x C
        self.labels = labels
        self.transform = None  # set by LightlyDataset.from_torch_dataset

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        from PIL import Image

        array = self.images[index]
        image = Image.fromarray(array[:, :, 0], mode="L") if array.shape[2] == 1 else Image.fromarray(array, mode="RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def lightly_settings(config, channels: int) -> dict:
    """SimCLRTransform arguments nearest otclust's augmentation preset `config`."""
    return dict(
        min_scale=config.crop_scale[0],
        hf_prob=config.hflip_prob,
        rr_prob=1.0 if config.rotation_degrees > 0 else 0.0,
        rr_degrees=config.rotation_degrees if config.rotation_degrees > 0 else None,
        cj_prob=config.jitter_prob,
        cj_strength=1.0,
        cj_bright=config.brightness,
        cj_contrast=config.contrast,
        cj_sat=config.saturation,
        cj_hue=0.0,
        random_gray_scale=config.grayscale_prob if channels == 3 else 0.0,
        gaussian_blur=config.blur_prob,
    )


# --- the two peers ---------------------------------------------------------------------------


class LightlyPeer:
    name = "lightly"

    def __init__(self, args, images, labels, spec, augment_config):
        lightly, LightlyDataset, MultiViewCollate, NTXentLoss, SimCLRTransform = import_lightly()
        self.version = lightly.__version__
        self.settings = lightly_settings(augment_config, spec.channels)
        self.transform = SimCLRTransform(input_size=spec.image_size[0], normalize={"mean": spec.mean, "std": spec.std}, **self.settings)
        self.dataset = LightlyDataset.from_torch_dataset(ArrayImages(images, labels), transform=self.transform)
        self.collate = MultiViewCollate()
        self.criterion = NTXentLoss(temperature=CLOT.temperature)
        self.args = args
        self.joint = args.peer_forward == "joint"

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"lightly {self.version} SimCLRTransform(input_size={self.args.size}, {shown}, normalize=data mean/std)"

    def loader(self, epoch: int):
        generator = torch.Generator().manual_seed(self.args.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=self.args.batch_size, shuffle=True, drop_last=True,
            num_workers=self.args.workers, collate_fn=self.collate, generator=generator,
            pin_memory=self.args.device.type == "cuda",
        )

    def batches(self, epoch: int):
        device = self.args.device
        for (x0, x1), _labels, _names in self.loader(epoch):
            yield x0.to(device, non_blocking=True), x1.to(device, non_blocking=True)

    def step(self, model, optimizer, views) -> torch.Tensor:
        x0, x1 = views

        def loss():
            if self.joint:
                z0, z1 = model(torch.cat([x0, x1])).chunk(2)
            else:  # lightly's SimCLR example: z0 = model(x0); z1 = model(x1)
                z0, z1 = model(x0), model(x1)
            return self.criterion(z0, z1)

        return optimize(self.args, optimizer, loss)


class OtclustPeer:
    name = "otclust"

    def __init__(self, args, images, labels, spec, augment_config):
        self.images = images.to(args.device)  # held on the device, as `fit` holds a data set that fits
        self.config = augment_config
        self.augmenter = BatchAugmenter(augment_config, Normalizer(spec.mean, spec.std))
        self.args = args

    def describe(self) -> str:
        c = self.config
        return (
            f"otclust {otclust.__version__} BatchAugmenter(crop_scale={c.crop_scale}, aspect_ratio={tuple(round(r, 3) for r in c.aspect_ratio)}, "
            f"rotation_degrees={c.rotation_degrees}, hflip_prob={c.hflip_prob}, brightness={c.brightness}, contrast={c.contrast}, "
            f"saturation={c.saturation}, jitter_prob={c.jitter_prob}, grayscale_prob={c.grayscale_prob}, blur_prob={c.blur_prob}, "
            f"noise_std={c.noise_std}, erase_prob={c.erase_prob})"
        )

    def views(self, batch):
        return self.augmenter(batch), self.augmenter(batch)  # Clot.views(batch, 2)

    def batches(self, epoch: int):
        for batch, _indices in iterate_batches(self.images, self.args.batch_size, shuffle=True, drop_last=True):
            yield self.views(batch)

    def step(self, model, optimizer, views) -> torch.Tensor:
        return optimize(self.args, optimizer, lambda: otclust_loss(model, views))


def otclust_loss(model, views) -> torch.Tensor:
    """The contrastive part of Clot.training_step: one forward of both views, NT-Xent on z_a, z_b."""
    view_a, view_b = views
    features = model.backbone(torch.cat([view_a, view_b]))
    z_a, z_b = model.head(features).chunk(2)
    return nt_xent_loss(z_a.float(), z_b.float(), CLOT.temperature, gather=CLOT.gather_negatives)


# --- measurements ------------------------------------------------------------------------------


def measure_steps(peers, spec, args) -> dict:
    """(a): images/s of the training step on a ready batch, rounds alternating between peers."""
    state = {}
    for peer in peers:
        model, optimizer = new_model(spec, args.seed, args.device)
        seed_all(args.seed)
        views = next(iter(peer.batches(0)))
        model.train()
        for _ in range(args.warmup):
            peer.step(model, optimizer, views)
        state[peer.name] = (model, optimizer, views, [])
    for _ in range(args.rounds):
        for peer in peers:
            model, optimizer, views, rounds = state[peer.name]
            synchronize(args)
            started = time.perf_counter()
            for _ in range(args.steps):
                peer.step(model, optimizer, views)
            synchronize(args)
            rounds.append(args.steps * args.batch_size / (time.perf_counter() - started))
    return {name: statistics.median(rounds) for name, (_, _, _, rounds) in state.items()}


def run_epoch(peer, model, optimizer, epoch: int) -> dict:
    """One epoch; wall time, time spent getting the next views ready, images trained on."""
    model.train()
    seed_all(peer.args.seed * 1000 + epoch)
    data_seconds = 0.0
    images = 0
    losses = []
    started = time.perf_counter()
    batches = peer.batches(epoch)
    while True:
        before = time.perf_counter()
        try:
            views = next(batches)
            synchronize(peer.args)  # on a GPU: the copy or the augmentation queued there is data time
        except StopIteration:
            data_seconds += time.perf_counter() - before
            break
        data_seconds += time.perf_counter() - before
        losses.append(peer.step(model, optimizer, views))
        images += len(views[0])
    synchronize(peer.args)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "data_seconds": data_seconds, "images": images, "loss": float(torch.stack(losses).mean()) if losses else float("nan")}


@torch.no_grad()
def kmeans_acc(model, images, labels, spec, args) -> float:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    model.eval()
    normalize = Normalizer(spec.mean, spec.std)
    features = torch.cat([model.backbone(normalize(images[start : start + 1024].to(args.device))).float().cpu() for start in range(0, len(images), 1024)]).numpy()
    with threadpool_limits(args.threads):
        predicted = KMeans(n_clusters=args.clusters, n_init=args.kmeans_init, random_state=args.seed).fit_predict(features)
    return cluster_accuracy(labels, predicted)


def train_to_target(peers, spec, images, labels, args, log) -> dict:
    """(b) and (c): both peers train epoch by epoch, alternating; every --eval-every epochs a
    k-means read-out is scored (outside the timed training)."""
    runs = {}
    for peer in peers:
        model, optimizer = new_model(spec, args.seed, args.device)
        runs[peer.name] = {"peer": peer, "model": model, "optimizer": optimizer, "epochs": [], "train_seconds": 0.0,
                           "eval_seconds": 0.0, "evals": [], "reached": None, "stopped": None}
    epochs_wanted = args.max_epochs if args.target is not None else args.throughput_epochs
    while True:
        active = [run for run in runs.values() if run["stopped"] is None]
        if not active:
            break
        for run in active:
            peer = run["peer"]
            epoch = len(run["epochs"])
            timed = run_epoch(peer, run["model"], run["optimizer"], epoch)
            run["epochs"].append(timed)
            run["train_seconds"] += timed["seconds"]
            done = epoch + 1
            line = f"{peer.name} epoch {done}: {timed['seconds']:.1f} s ({timed['data_seconds']:.1f} s data), {timed['images'] / timed['seconds']:.0f} images/s, loss {timed['loss']:.4f}"
            if args.target is not None and (done % args.eval_every == 0 or done >= args.max_epochs or run["train_seconds"] >= 60 * args.max_minutes):
                started = time.perf_counter()
                acc = kmeans_acc(run["model"], images, labels, spec, args)
                run["eval_seconds"] += time.perf_counter() - started
                run["evals"].append((done, run["train_seconds"], acc))
                line += f", k-means ACC {acc:.4f} after {run['train_seconds']:.0f} s of training"
                if acc >= args.target:
                    run["reached"] = (done, run["train_seconds"], acc)
                    run["stopped"] = "reached"
            log(line)
            if run["stopped"] is None and (done >= epochs_wanted or (args.target is not None and run["train_seconds"] >= 60 * args.max_minutes)):
                run["stopped"] = "cap"
    return runs


# --- correctness -------------------------------------------------------------------------------


def check(args, spec, images) -> bool:
    """lightly's NTXentLoss and otclust's nt_xent_loss on the same embeddings; and the otclust
    step's loss against Clot.training_step's `contrastive` part."""
    _, _, _, NTXentLoss, _ = import_lightly()
    ok = True
    generator = torch.Generator().manual_seed(args.seed)
    for n, dim, temperature in ((256, 128, CLOT.temperature), (7, 16, 0.1), (64, 128, 1.0)):
        z_a = torch.randn(n, dim, generator=generator, dtype=torch.float64, requires_grad=True)
        z_b = torch.randn(n, dim, generator=generator, dtype=torch.float64, requires_grad=True)
        ours = nt_xent_loss(z_a, z_b, temperature)
        theirs = NTXentLoss(temperature=temperature)(z_a, z_b)
        grad_ours = torch.autograd.grad(ours, (z_a, z_b))
        grad_theirs = torch.autograd.grad(theirs, (z_a, z_b))
        diff = abs(ours.item() - theirs.item())
        grad_diff = max(float((g - h).abs().max()) for g, h in zip(grad_ours, grad_theirs))
        passed = diff < 1e-5 and grad_diff < 1e-7
        ok &= passed
        print(f"check NT-Xent N={n} dim={dim} T={temperature}: otclust {ours.item():.8f}, lightly {theirs.item():.8f}, "
              f"|diff| {diff:.2e}, max |grad diff| {grad_diff:.2e}: {'PASS' if passed else 'FAIL'}")
    # float32, as training calls them
    z_a, z_b = torch.randn(256, 128, generator=generator), torch.randn(256, 128, generator=generator)
    diff = abs(float(nt_xent_loss(z_a, z_b, CLOT.temperature)) - float(NTXentLoss(temperature=CLOT.temperature)(z_a, z_b)))
    ok &= diff < 1e-5
    print(f"check NT-Xent float32 N=256 dim=128 T={CLOT.temperature}: |diff| {diff:.2e}: {'PASS' if diff < 1e-5 else 'FAIL'}")

    # The otclust peer's step computes what Clot.training_step's NT-Xent computes.
    from otclust.methods.clot import Clot

    clot = Clot(args.clusters, spec, ClotParams(cluster_weight=0.0, n_heads=1))
    model = Net(spec.channels, spec.image_size)
    model.backbone.load_state_dict(clot.backbone.state_dict())
    model.head.load_state_dict(clot.projection_head.state_dict())
    batch = images[: min(args.batch_size, len(images))]
    indices = torch.arange(len(batch))
    torch.manual_seed(args.seed)
    parts = clot.training_step(batch, indices)
    torch.manual_seed(args.seed)
    peer = OtclustPeer(args, images, None, spec, clot.augmenter.config)
    ours = otclust_loss(model, peer.views(batch)).detach()
    diff = abs(float(parts["contrastive"]) - float(ours))
    passed = diff < 1e-5
    ok &= passed
    print(f"check otclust step vs Clot.training_step (cluster_weight 0): contrastive {float(parts['contrastive']):.6f}, "
          f"benchmark step {float(ours):.6f}, |diff| {diff:.2e}: {'PASS' if passed else 'FAIL'}")
    return ok


# --- main ---------------------------------------------------------------------------------------


def seconds_text(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist", help="an otclust data set of images: fashion-mnist (70,000 28x28, default) or digits (1,797 8x8)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (and k-means threads) for both peers")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes for lightly (0: in the main process, as otclust's augmentation runs)")
    parser.add_argument("--peer-forward", choices=("separate", "joint"), default="separate", help="lightly side: model(x0), model(x1) as lightly's example (separate) or one forward of both views as CLOT")
    parser.add_argument("--augment", choices=("default", "matched"), default="default",
                        help="otclust side: its own preset for the data (default), or matched: noise and erasing off and lightly's aspect range, so both make the same kinds of change")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where both peers train")
    parser.add_argument("--amp", action="store_true", help="both peers under autocast (float16 with loss scaling on CUDA, bfloat16 on the CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="(a) timed steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="(a) rounds, alternating between the peers")
    parser.add_argument("--warmup", type=int, default=3, help="(a) untimed steps first")
    parser.add_argument("--throughput-epochs", type=int, default=2, help="(b) epochs per peer when --target none (0: skip (b))")
    parser.add_argument("--target", default="0.70", help="(c) ACC to reach, or 'none' to skip (c) and time --throughput-epochs epochs only")
    parser.add_argument("--eval-every", type=int, default=2, help="(c) epochs between k-means read-outs")
    parser.add_argument("--max-epochs", type=int, default=30, help="(c) cap on epochs per peer")
    parser.add_argument("--max-minutes", type=float, default=15.0, help="(c) cap on training minutes per peer (evaluation not counted)")
    parser.add_argument("--kmeans-init", type=int, default=10, help="(c) KMeans n_init")
    parser.add_argument("--skip-steps", action="store_true", help="skip (a)")
    parser.add_argument("--quick", action="store_true", help="a short check: digits, target 0.80, at most 10 epochs, 3 rounds of 3 steps")
    parser.add_argument("--check", action="store_true", help="only check that the two NT-Xent losses (and the otclust step against Clot's) agree; exit 1 if not")
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.target, args.max_epochs, args.eval_every = "digits", "0.80", 10, 2
        args.steps, args.rounds, args.warmup, args.max_minutes = 3, 3, 1, 3.0
    args.target = None if str(args.target).lower() == "none" else float(args.target)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA GPU is visible")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    images, labels = dataset.data, dataset.labels
    if not torch.is_tensor(images) or images.dtype != torch.uint8:
        sys.exit(f"--data {args.data}: this benchmark needs images (uint8), not feature vectors")
    spec = InputSpec.from_dataset(dataset)
    args.size = spec.image_size[0]
    if args.check:
        sys.exit(0 if check(args, spec, images) else 1)

    augment = None if args.augment == "default" else {"noise_std": 0.0, "erase_prob": 0.0, "aspect_ratio": [3 / 4, 4 / 3]}
    augment_config = augment_config_from_dict(augment, spec.channels, spec.image_size)
    peers = [LightlyPeer(args, images, labels, spec, augment_config), OtclustPeer(args, images, labels, spec, augment_config)]

    def log(message):
        print(f"# {message}", file=sys.stderr, flush=True)

    started_at = datetime.datetime.now().astimezone()
    load_before = load_average()
    log(f"load average {load_before}" + ("" if args.skip_steps else "; (a) step throughput..."))
    steps = {} if args.skip_steps else measure_steps(peers, spec, args)
    for name, rate in steps.items():
        log(f"(a) {name}: {rate:.0f} images/s per training step")
    log("(b)/(c) epochs...")
    if args.target is None and args.throughput_epochs == 0:
        runs = {peer.name: {"epochs": [], "evals": [], "reached": None} for peer in peers}
    else:
        runs = train_to_target(peers, spec, images, labels, args, log)
    load_after = load_average()

    n = len(images)
    print(f"## Side by side with lightly: SimCLR, {args.data} ({n:,} images {spec.image_size[0]}x{spec.image_size[1]}x{spec.channels})")
    print()
    gpu = torch.cuda.get_device_name(args.device) if args.device.type == "cuda" else "no GPU"
    print(f"- date {started_at:%Y-%m-%d %H:%M %Z}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}; "
          f"load average (1/5/15 min) {load_before} at start, {load_after} at end")
    print(f"- python {platform.python_version()}, torch {torch.__version__}, lightly {peers[0].version}, otclust {otclust.__version__}")
    precision = ("float16 autocast + loss scaling" if args.device.type == "cuda" else "bfloat16 autocast") if args.amp else "float32"
    print(f"- device {args.device}, {precision}; batch {args.batch_size}, {args.threads} torch threads, lightly DataLoader workers {args.workers}, seed {args.seed}, "
          f"Adam lr {LR} weight decay {WEIGHT_DECAY} (constant), NT-Xent T={CLOT.temperature}, SmallCNN + ProjectionHead(512 -> {CLOT.projection_dim})")
    print(f"- lightly: {peers[0].describe()}, LightlyDataset.from_torch_dataset + MultiViewCollate + DataLoader, NTXentLoss; "
          f"forward {'of both views at once' if args.peer_forward == 'joint' else 'of each view on its own (lightly example)'}")
    print(f"- otclust: {peers[1].describe()} ({args.augment} preset), engine.iterate_batches, one forward of both views, nt_xent_loss")
    print()
    target = "-" if args.target is None else f"{args.target:.2f}"
    print(f"| peer | (a) step images/s | (b) epoch images/s | s/epoch | data s/epoch | data images/s | (c) training time to ACC >= {target} | last ACC (epoch) | epochs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    # (b) over the epochs both peers trained, alternating (a peer that stopped at the target
    # leaves the other training alone, under whatever load then is).
    common = min(len(runs[peer.name]["epochs"]) for peer in peers)
    for peer in peers:
        run = runs[peer.name]
        epochs = run["epochs"][:common]
        seconds = sum(e["seconds"] for e in epochs)
        data_seconds = sum(e["data_seconds"] for e in epochs)
        trained = sum(e["images"] for e in epochs)
        throughput = f"{trained / seconds:.0f}" if epochs else "-"
        data = f"{data_seconds / len(epochs):.1f}" if epochs else "-"
        data_rate = f"{trained / data_seconds:.0f}" if epochs else "-"
        per_epoch = f"{seconds / len(epochs):.1f}" if epochs else "-"
        step = f"{steps[peer.name]:.0f}" if peer.name in steps else "-"
        if args.target is None:
            reach, last = "-", "-"
        elif run["reached"]:
            reach = f"{seconds_text(run['reached'][1])} s (epoch {run['reached'][0]})"
        else:
            reach = f"not reached in {seconds_text(run['train_seconds'])} s ({len(run['epochs'])} epochs)"
        if args.target is not None:
            last = f"{run['evals'][-1][2]:.3f} ({run['evals'][-1][0]})" if run["evals"] else "-"
        print(f"| {peer.name} | {step} | {throughput} | {per_epoch} | {data} | {data_rate} | {reach} | {last} | {len(run['epochs'])} |")
    print()
    notes = f"(b), s/epoch and data: the {common} epoch(s) both peers trained, alternating."
    if args.workers > 0:
        notes += f" lightly's {args.workers} DataLoader workers prepare batches while the step runs: its 'data' is only the wait for them."
    if args.target is not None:
        notes += (f" (c): training time only, k-means read-outs every {args.eval_every} epochs not counted"
                  " (so the epoch reached is the first evaluated one at or above the target).")
    print(notes)
    if args.target is not None:
        print()
        for peer in peers:
            run = runs[peer.name]
            history = ", ".join(f"{e}: {acc:.3f}" for e, _, acc in run["evals"])
            print(f"- {peer.name} k-means ACC by epoch: {history} (evaluation took {run['eval_seconds']:.0f} s, not counted)")


if __name__ == "__main__":
    main()
