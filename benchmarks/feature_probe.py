"""What a trained run's features follow: the classes, or something else in the images?

    python benchmarks/feature_probe.py --run runs/NAME [--data folder:DIR] [--threads 1]

A diagnosis, not a clustering result (it uses the labels). The run's backbone features of every
image are scored against each factor the images vary in: a linear probe (5-fold logistic
regression, held-out accuracy, beside the majority share), and the NMI between the factor and
the run's predicted clusters and k-means clusters of the features. The factors are the labels
and the mean brightness of each image, and, for a shape folder that
`benchmarks/suite_data.py` generated (found from its suite.json), the nuisances it drew: the
background's kind, the object's hue, its brightness (HSV value) and its size, replayed from the
generator. Continuous factors are cut into bins of equal counts. When a run's clusters follow a
nuisance more than the labels, that nuisance is what the objective found easiest to be
consistent about. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import colorsys
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from otclust.data import conform, load_dataset  # noqa: E402
from otclust.engine import embed_in_batches, load_trained, predict_in_batches  # noqa: E402

SHAPE_SETS = ("shapes", "shapes-300", "dev-shapes")


def equal_count_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """0..bins-1 by quantile, so that each bin holds about as many samples."""
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, values, side="right")


def shape_scene_factors(folder: Path, paths: list[str]) -> dict[str, np.ndarray]:
    """The generator's nuisances for each file of a generated shape folder, replayed from suite.json."""
    import suite_data

    meta = json.loads((folder / "suite.json").read_text())
    params = meta["params"]
    kinds = list(suite_data.BACKGROUNDS)
    background, contrast, hue, value, radius = [], [], [], [], []
    for path in paths:
        index = int(Path(path).stem)
        scene: dict = {}
        suite_data.draw_shape_photo(params["seed"], index, tuple(params["size"]), bool(params["mixed"]), scene=scene)
        h, _, v = colorsys.rgb_to_hsv(*(np.asarray(scene["colour"]) / 255.0))
        background.append(kinds.index(scene["background"]))
        contrast.append(scene["background_contrast"])
        hue.append(int(h * 6) % 6)
        value.append(v)
        radius.append(scene["radius"])
    return {
        "background kind (5)": np.array(background),
        "background contrast (3 bins)": equal_count_bins(np.array(contrast), 3),
        "object hue (6 sectors)": np.array(hue),
        "object value (3 bins)": equal_count_bins(np.array(value), 3),
        "object size (3 bins)": equal_count_bins(np.array(radius), 3),
    }


def probe(features: np.ndarray, target: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    return float(cross_val_score(model, features, target, cv=folds).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder of otclust fit (its model.pt)")
    parser.add_argument("--data", default=None, help="labelled data (default: the run's own)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.cluster import KMeans

    method, config = load_trained(Path(args.run) / "model.pt", device="cpu")
    spec = args.data or config.data
    dataset = load_dataset(spec, image_size=tuple(method.spec.image_size))
    if dataset.labels is None or dataset.is_features:
        sys.exit("feature_probe.py needs labelled images")
    dataset = conform(dataset, method.spec.channels, tuple(method.spec.image_size))
    device = torch.device("cpu")
    features = embed_in_batches(method, dataset.data, device)
    proba = predict_in_batches(method, dataset.data, device)
    clusters = proba.argmax(axis=1)
    kmeans = KMeans(proba.shape[1], n_init=10, random_state=args.seed).fit_predict(features)  # the predictor's K

    factors = {"labels (the classes)": np.asarray(dataset.labels)}
    brightness = dataset.data.float().mean(dim=(1, 2, 3)).numpy()
    factors["image brightness (4 bins)"] = equal_count_bins(brightness, 4)
    folder = Path(spec.split(":", 1)[1]) if spec.startswith("folder:") else None
    if folder is not None and (folder / "suite.json").is_file():
        if json.loads((folder / "suite.json").read_text())["name"] in SHAPE_SETS:
            factors.update(shape_scene_factors(folder, dataset.paths))

    print(f"run {args.run} ({method.predictor} predictor), data {spec}: {len(features)} images, features {features.shape[1]}-d\n")
    print("| factor | linear probe | majority | NMI with the run's clusters | NMI with k-means on features |")
    print("| --- | --- | --- | --- | --- |")
    for name, scores in factor_rows(features, clusters, kmeans, factors, args.seed):
        print(f"| {name} | " + " | ".join(f"{score:.3f}" for score in scores) + " |")


def factor_rows(features, clusters, kmeans, factors: dict[str, np.ndarray], seed: int = 0):
    """(factor, (probe accuracy, majority share, NMI with clusters, NMI with k-means)) per factor."""
    from sklearn.metrics import normalized_mutual_info_score as nmi

    for name, target in factors.items():
        majority = np.bincount(target).max() / len(target)
        yield name, (probe(features, target, seed), majority, nmi(target, clusters), nmi(target, kmeans))


if __name__ == "__main__":
    main()
