"""How well a labelled network learns a data set: the ceiling a clustering run works under.

    python benchmarks/supervised_ceiling.py --data folder:DIR --image-size 64 --epochs 150

A diagnosis, not a clustering result (it uses the labels): the small CNN otclust trains by
default (`small-cnn`: three strided convolutions, then a fully connected layer) and the variant
that pools globally (`pooled-cnn`: four strided convolutions, global average pooling, then a
fully connected layer), built as `otclust fit --backbone` builds them, each
trained with labels on a random 80 % of the set (cross-entropy, Adam 1e-3, batch 64, the default
augmentation of the data's kind) and scored on the other 20 %. When even this is low, no
setting of a self-supervised run will find the classes from scratch, and a pretrained backbone
(docs/pretrained.md) is the way to go. Prints a Markdown table of held-out ACC every `--every`
epochs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from otclust.data.augment import BatchAugmenter, Normalizer, default_augment_config  # noqa: E402
from otclust.data.datasets import load_dataset  # noqa: E402
from otclust.models import build_backbone  # noqa: E402


def build(arch: str, channels: int, size: tuple[int, int], classes: int) -> nn.Module:
    """otclust's backbone of that name (as `otclust fit --backbone` builds it) and a linear classifier."""
    backbone = build_backbone(arch, channels, size, None)
    return nn.Sequential(backbone, nn.Linear(backbone.out_dim, classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a labelled data spec, e.g. folder:DIR or digits")
    parser.add_argument("--image-size", type=int, default=None, help="as otclust fit's (default: the loader's choice)")
    parser.add_argument("--archs", default="small-cnn,pooled-cnn", help="backbones, as otclust fit --backbone names them")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--every", type=int, default=50, help="score every this many epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data, image_size=args.image_size)
    if data.labels is None or data.is_features:
        sys.exit("supervised_ceiling.py needs labelled images")
    images, labels = data.data, torch.as_tensor(data.labels).long()
    classes = int(labels.max()) + 1
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(args.seed))
    train, test = order[: int(0.8 * len(order))], order[int(0.8 * len(order)):]
    unit = images[train].float() / 255
    normalizer = Normalizer(unit.mean((0, 2, 3)).tolist(), unit.std((0, 2, 3)).tolist())
    augment = BatchAugmenter(default_augment_config(images.shape[1], data.image_size), normalizer)
    scores: dict[str, dict[int, float]] = {}
    for arch in args.archs.split(","):
        torch.manual_seed(args.seed)
        net = build(arch, images.shape[1], data.image_size, classes)
        optimizer = torch.optim.Adam(net.parameters(), 1e-3)
        started, scores[arch] = time.perf_counter(), {}
        for epoch in range(1, args.epochs + 1):
            net.train()
            for batch in train[torch.randperm(len(train))].split(64):
                loss = F.cross_entropy(net(augment(images[batch])), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if epoch % args.every == 0 or epoch == args.epochs:
                net.eval()
                with torch.no_grad():
                    predicted = torch.cat([net(normalizer(images[b])).argmax(1) for b in test.split(256)])
                scores[arch][epoch] = (predicted == labels[test]).float().mean().item()
                print(f"{arch} epoch {epoch}: held-out ACC {scores[arch][epoch]:.3f} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    epochs = sorted(next(iter(scores.values())))
    print(f"{data.name}, {len(train)} images to train, {len(test)} held out, {classes} classes, {data.image_size[0]}x{data.image_size[1]}\n")
    print("| network | " + " | ".join(f"epoch {e}" for e in epochs) + " |")
    print("| --- |" + " --- |" * len(epochs))
    for arch, by_epoch in scores.items():
        print(f"| {arch} | " + " | ".join(f"{by_epoch[e]:.3f}" for e in epochs) + " |")


if __name__ == "__main__":
    main()
