"""Does the test suite catch injected bugs? Apply deliberate one-line faults, one at a time, to a
temporary copy of src/ (never the real tree), run the tests meant to catch each, and print a table.

    PYTHONPATH=src python benchmarks/mutations.py            # every fault
    python benchmarks/mutations.py --only clot-targets-same-view --show-output
    python benchmarks/mutations.py --list

Each fault names a file under src/otclust, the exact text of (part of) one line, which of its
occurrences to change (1-based; a following line may be included to make it unique), and the
replacement. The copy of src/ goes first on
PYTHONPATH of a pytest run over the fault's tests (a snapshot of the repository's tests/, benchmarks/ and
pyproject.toml taken at the start, so editing them meanwhile changes nothing), so the tests
import the faulty package; a fault is caught when at least one
of those tests fails. Before the faults, the same tests run on an unmodified copy, which must pass
(otherwise "caught" would mean nothing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Fault:
    name: str
    description: str
    file: str  # relative to src/otclust
    old: str  # the exact text of the faulty line's original (a substring of one line)
    new: str
    tests: list[str] = field(default_factory=list)
    occurrence: int = 1  # which occurrence of `old` in the file (1-based)


M = "tests/methods/"
FAULTS = [
    Fault(
        "clot-targets-same-view",
        "CLOT: each view learns its own Q instead of the other view's",
        "methods/clot.py",
        "0.5 * (soft_cross_entropy(logits_a, q_b) + soft_cross_entropy(logits_b, q_a))",
        "0.5 * (soft_cross_entropy(logits_a, q_a) + soft_cross_entropy(logits_b, q_b))",
        [M + "test_method_mechanisms.py", M + "test_clot.py::test_clot_beats_pixel_kmeans_where_only_learned_invariances_separate_the_classes"],
    ),
    Fault(
        "clot-targets-not-rescaled",
        "CLOT: Q rows left at 1/N instead of rescaled to sum to 1",
        "methods/clot.py",
        "return [plan * (plan.shape[0] * (world_size() if distributed else 1)) for plan in plans]",
        "return list(plans)",
        [M + "test_method_mechanisms.py", M + "test_clot.py::test_pseudo_labels_are_balanced_and_follow_the_predictions"],
    ),
    Fault(
        "clot-eps-is-lambda",
        "CLOT: Sinkhorn eps = lambda instead of 1/lambda (P^lambda becomes P^(1/lambda))",
        "methods/clot.py",
        "plans = self.solve_transports(log_ps, eps=p.sinkhorn_eps, sizes=sizes,",
        "plans = self.solve_transports(log_ps, eps=1.0 / p.sinkhorn_eps, sizes=sizes,",
        [M + "test_method_mechanisms.py", M + "test_clot.py::test_pseudo_labels_are_balanced_and_follow_the_predictions"],
    ),
    Fault(
        "sinkhorn-column-update-is-a-row-update",
        "Sinkhorn: the column half-step normalises rows again (columns never meet b)",
        "ot/sinkhorn.py",
        "                solver.col_update(careful)",
        "                solver.row_update(careful)",
        ["tests/ot/test_sinkhorn.py", "tests/ot/test_sinkhorn_properties.py"],
    ),
    Fault(
        "sinkhorn-prior-reversed",
        "Sinkhorn: cluster prior b applied to the clusters in reverse order",
        "ot/sinkhorn.py",
        '        b = as_marginal(b, k, "b", s, pot_dtype)',
        '        b = as_marginal(b, k, "b", s, pot_dtype).flip(0)',
        ["tests/ot/test_sinkhorn.py", "tests/ot/test_sinkhorn_properties.py"],
    ),
    Fault(
        "semi-relaxed-no-damping",
        "Semi-relaxed Sinkhorn: KL damping dropped (columns forced to b like balanced OT)",
        "ot/unbalanced.py",
        "damping = 1.0 if math.isinf(tau) else tau / (tau + eps)",
        "damping = 1.0",
        ["tests/ot/test_unbalanced.py", "tests/ot/test_sinkhorn_properties.py"],
    ),
    Fault(
        "swav-frozen-prototypes-get-gradient",
        "SwAV: missing stop-gradient (detach) on the prototypes while they are frozen",
        "methods/swav.py",
        "weight = layer.weight.detach() if frozen else layer.weight",
        "weight = layer.weight",
        [M + "test_swav.py"],
    ),
    Fault(
        "hungarian-minimises",
        "ACC: Hungarian matching minimises agreement instead of maximising it",
        "metrics.py",
        "    rows, cols = linear_sum_assignment(table, maximize=True)\n    return float(",
        "    rows, cols = linear_sum_assignment(table, maximize=False)\n    return float(",
        ["tests/test_metrics.py", "tests/test_metrics_properties.py"],
    ),
    Fault(
        "hungarian-wrong-axis",
        "Cluster-to-class map: assignment on the transposed table (classes read as clusters)",
        "metrics.py",
        "    rows, cols = linear_sum_assignment(table, maximize=True)\n    return {",
        "    rows, cols = linear_sum_assignment(table.T, maximize=True)\n    return {",
        ["tests/test_metrics.py", "tests/test_metrics_properties.py"],
    ),
    Fault(
        "deepcluster-no-classifier-reset",
        "DeepCluster: classifier weights not re-initialised at each re-clustering",
        "methods/deepcluster.py",
        "            layer.weight.normal_(0, 0.01)",
        "            pass",
        [M + "test_method_mechanisms.py", M + "test_deepcluster.py"],
    ),
    Fault(
        "deepcluster-optimizer-state-kept",
        "DeepCluster: Adam's moments of the classifier kept across re-clusterings",
        "methods/deepcluster.py",
        "                optimizer.state.pop(param, None)\n            return",
        "                pass\n            return",
        [M + "test_method_mechanisms.py", M + "test_deepcluster.py"],
    ),
    Fault(
        "deepcluster-no-uniform-sampling",
        "DeepCluster: batches not drawn uniformly over pseudo-labels",
        "methods/deepcluster.py",
        "        return uniform_label_order(self.pseudo_labels)",
        "        return None",
        [M + "test_deepcluster.py", M + "test_method_mechanisms.py"],
    ),
    Fault(
        "deepcluster-targets-shuffled",
        "DeepCluster: each image trained towards another image's pseudo-label",
        "methods/deepcluster.py",
        "multi_head_cross_entropy(logits, self.pseudo_labels[indices])",
        "multi_head_cross_entropy(logits, self.pseudo_labels[indices[torch.randperm(len(indices))]])",
        [M + "test_deepcluster.py"],
    ),
    Fault(
        "deepercluster-targets-shuffled",
        "DeeperCluster: each image trained towards another image's group and sub-cluster",
        "methods/deepercluster.py",
        "        features = self.backbone(view)",
        "        features, indices = self.backbone(view), indices[torch.randperm(len(indices), device=indices.device)]",
        [M + "test_deepercluster.py"],
    ),
    Fault(
        "ot-kmeans-one-sinkhorn-step",
        "OT k-means: the plan stops after one Sinkhorn iteration (cluster sizes barely constrained)",
        "ot/kmeans_loss.py",
        "    result = sinkhorn(-cost.detach(), eps=eps, b=weights, n_iters=n_iters, tol=tol)",
        "    result = sinkhorn(-cost.detach(), eps=eps, b=weights, n_iters=1, tol=tol)",
        [M + "test_ot_kmeans.py", "tests/ot/test_kmeans_loss.py"],
    ),
    Fault(
        "pca-not-whitened",
        "PCA: projected but not whitened (scales left at 1)",
        "methods/deepcluster.py",
        "self.pca_scale.copy_(values.rsqrt().float())",
        "self.pca_scale.copy_(torch.ones_like(values).float())",
        [M + "test_method_mechanisms.py", M + "test_deepcluster.py", M + "test_deepercluster.py"],
    ),
    Fault(
        "nt-xent-positives-misaligned",
        "NT-Xent: each anchor's positive is its neighbour's other view (off by one)",
        "losses/nt_xent.py",
        "    partners = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)",
        "    partners = torch.cat([torch.arange(n, 2 * n).roll(1), torch.arange(0, n).roll(1)]).to(z.device)",
        ["tests/losses/test_nt_xent.py", M + "test_clot.py::test_clot_beats_pixel_kmeans_where_only_learned_invariances_separate_the_classes"],
    ),
    Fault(
        "nt-xent-temperature-ignored",
        "NT-Xent: softmax temperature ignored",
        "losses/nt_xent.py",
        "    logits = (z @ z.T) / temperature",
        "    logits = z @ z.T",
        ["tests/losses/test_nt_xent.py"],
    ),
    Fault(
        "swav-temperature-ignored",
        "SwAV swapped prediction: softmax temperature ignored",
        "losses/swapped_prediction.py",
        "torch.log_softmax(s / temperature, dim=1)",
        "torch.log_softmax(s, dim=1)",
        ["tests/losses/test_swapped_prediction.py", M + "test_swav.py"],
    ),
    Fault(
        "known-prior-ignored",
        "Known cluster sizes ignored: OT targets fall back to equal sizes",
        "methods/base.py",
        "            return match_prior_to_mass(self.cluster_prior, self.predicted_mass)",
        "            return torch.full_like(self.cluster_prior, 1.0 / len(self.cluster_prior))",
        [M + "test_method_mechanisms.py", M + "test_clot.py", M + "test_sela.py", "tests/ot/test_priors.py"],
    ),
    Fault(
        "sela-labels-not-refreshed",
        "SeLa: labels never recomputed (the random initial labels are trained on)",
        "methods/sela.py",
        "            self.update_labels(trainer.train_data)",
        "            pass",
        [M + "test_sela.py", M + "test_sela.py::test_sela_beats_pixel_kmeans_where_only_learned_invariances_separate_the_classes"],
    ),
    Fault(
        "swav-prototypes-not-normalised",
        "SwAV: prototypes not re-normalised to the unit sphere before each step",
        "methods/swav.py",
        "            layer.weight.copy_(F.normalize(layer.weight, dim=1))",
        "            pass",
        [M + "test_swav.py"],
        occurrence=2,
    ),
    Fault(
        "swav-rows-first",
        "SwAV codes: Sinkhorn starts with the sample (row) normalisation, not the prototypes'",
        "methods/swav.py",
        "n_iters=p.sinkhorn_iters - 1, warm_start=first_column,",
        "n_iters=p.sinkhorn_iters - 1, warm_start=None,",
        [M + "test_swav.py"],
    ),
    Fault(
        "drc-ap-loss-on-rows",
        "DRC: the cluster-level (probability) InfoNCE taken over samples instead of cluster columns",
        "losses/drc.py",
        "return _info_nce(p_a.T, p_b.T, temperature, normalize)",
        "return _info_nce(p_a, p_b, temperature, normalize)",
        ["tests/losses/test_drc_losses.py", M + "test_drc.py"],
    ),
    Fault(
        "kmeans-empty-clusters-kept",
        "k-means: empty clusters never split",
        "methods/deepcluster.py",
        "    for i in torch.nonzero(counts == 0).flatten().tolist():",
        "    for i in []:",
        [M + "test_deepcluster.py"],
    ),
    Fault(
        "knn-cells-self-neighbour",
        "kNN search by cells: a row's own similarity not masked (a row becomes its own nearest neighbour)",
        "readout/neighbors.py",
        'similarity[rows[:, None] == members[None, :]] = -float("inf")',
        "similarity = similarity",
        ["tests/readout/test_neighbors.py"],
    ),
    Fault(
        "knn-cells-probes-overwrite",
        "kNN search by cells: every probed cell writes its best rows into the same k slots (only the last cell searched counts)",
        "readout/neighbors.py",
        "at = (rows - first)[:, None], slots[:, None] * k + columns",
        "at = (rows - first)[:, None], columns[None, :]",
        ["tests/readout/test_neighbors.py"],
    ),
    Fault(
        "readout-head-start-ignored",
        "read-out: the run started from the head's partition is computed but never a candidate",
        "readout/kmeans.py",
        "            ends.append(started)",
        "            pass",
        ["tests/readout/test_readout_kmeans.py"],
    ),
    Fault(
        "amp-skipped-step-advances-schedule",
        "engine: a step that float16 loss scaling skips still advances the learning-rate schedule",
        "engine.py",
        "                if scale is None or scale >= previous:",
        "                if True:",
        ["tests/test_engine.py"],
    ),
    Fault(
        "sinkhorn-batched-sparse-checks-skip-rate",
        "batched Sinkhorn with check_every > 1: the iterations the over-relaxation measures its rate at go untested, so it never relaxes",
        "ot/batched.py",
        "    return it % check_every == 0 or it >= n_iters or (overrelax and (it == _RATE_START or _omega_may_change(it)))",
        "    return it % check_every == 0 or it >= n_iters",
        ["tests/ot/test_batched.py"],
    ),
    Fault(
        "clot-mining-exact-ignored",
        "CLOT's neighbour mining: neighbor_search=exact still searches by cells",
        "readout/neighbors.py",
        "    if search == \"exact\" or (search == \"auto\" and n_rows < cells_from):",
        "    if search == \"auto\" and n_rows < cells_from:",
        ["tests/readout/test_neighbors.py", "tests/methods/test_clot.py"],
    ),
    Fault(
        "size-bound-potential-sign",
        "the dual lower bound of the size-constrained cost adds the column potentials instead of subtracting them (no longer a bound)",
        "ot/kmeans_loss.py",
        "    return float((cost - g[None, :]).min(dim=1).values.mean() + (weights * g).sum())",
        "    return float((cost + g[None, :]).min(dim=1).values.mean() + (weights * g).sum())",
        ["tests/ot/test_kmeans_loss.py"],
    ),
    Fault(
        "readout-dual-bound-inverted",
        "read-out restart choice: skips the partitions whose dual bound is below the best cost (those that may win) instead of above",
        "readout/kmeans.py",
        "size_constrained_lower_bound(points, end.centers, matched) >= best_cost",
        "size_constrained_lower_bound(points, end.centers, matched) < best_cost",
        ["tests/readout/test_readout_kmeans.py"],
    ),
    Fault(
        "grey-content-tolerance-loose",
        "image folders: a colour file counts as grey with its channels 12 levels further apart than the tolerance",
        "data/decode.py",
        "        if int((chunk.max(axis=1) - chunk.min(axis=1)).max(initial=0)) > tolerance:",
        "        if int((chunk.max(axis=1) - chunk.min(axis=1)).max(initial=0)) > tolerance + 12:",
        ["tests/data/test_folders.py"],
    ),
    Fault(
        "luma-weights-reversed",
        "the luma of RGB images weighs blue as PIL weighs red (BGR order)",
        "data/decode.py",
        "LUMA_WEIGHTS = (19595, 38470, 7471)",
        "LUMA_WEIGHTS = (7471, 38470, 19595)",
        ["tests/data/test_folders.py", "tests/data/test_datasets.py"],
    ),
    Fault(
        "checkpoint-last-epoch-not-written",
        "engine: the last epoch's checkpoint and history are not written when the interval has not passed",
        "engine.py",
        "if self.out is not None and (last or epoch == start_epoch or time.perf_counter() - saved >= self.checkpoint_every_seconds):",
        "if self.out is not None and (epoch == start_epoch or time.perf_counter() - saved >= self.checkpoint_every_seconds):",
        ["tests/test_engine.py"],
    ),
    Fault(
        "budget-epoch-cap-ignored",
        "budget: a handful of images gets the floor's tens of thousands of passes again",
        "budget.py",
        "return max(1, min(math.ceil(samples / max(per_epoch, 1)), math.ceil(MAX_DEFAULT_EPOCHS * scale)))",
        "return max(1, math.ceil(samples / max(per_epoch, 1)))",
        ["tests/test_budget.py"],
    ),
    Fault(
        "predict-folder-decoded-at-working-resolution",
        "predict: a folder decoded at the default working resolution and resized after, not at the model's size",
        "commands/predict.py",
        "    if image_size is None and spec.startswith(\"folder:\"):",
        "    if False:",
        ["tests/commands/test_predict.py"],
    ),
    Fault(
        "folder-deeper-images-skipped",
        "folder loader: images in folders below a class subfolder not read",
        "data/formats.py",
        "            files += sub[0]",
        "            files += []",
        ["tests/data/test_folders.py"],
    ),
]


def apply(fault: Fault, src_root: Path) -> int:
    """Write the fault into the copy under src_root; returns its 1-based line number."""
    path = src_root / "otclust" / fault.file
    text = path.read_text()
    starts = [m.start() for m in re.finditer(re.escape(fault.old), text)]
    if len(starts) < fault.occurrence:
        raise SystemExit(f"{fault.name}: the text to replace occurs {len(starts)} times in {fault.file}, expected occurrence {fault.occurrence}")
    start = starts[fault.occurrence - 1]
    path.write_text(text[:start] + fault.new + text[start + len(fault.old) :])
    return text.count("\n", 0, start) + 1


def run_tests(src_root: Path, tests: list[str], show: bool, timeout: int, repo: Path) -> tuple[int, list[str], str]:
    env = dict(os.environ, PYTHONPATH=str(src_root), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "--no-header", *tests]
    try:
        proc = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, ["(timed out)"], ""
    output = proc.stdout + proc.stderr
    if proc.returncode in (4, 5):  # pytest's usage error / nothing collected: a bad selection, not a catch
        raise SystemExit(f"pytest could not run {' '.join(tests)}:\n{output[-2000:]}")
    if show:
        print(output[-6000:])
    failed = sorted({m.group(2).split(" - ")[0] for m in re.finditer(r"^(FAILED|ERROR) (\S+)", output, re.M)})
    return proc.returncode, failed, output


def check_isolation(src_root: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(src_root))
    where = subprocess.run([sys.executable, "-c", "import otclust; print(otclust.__file__)"], cwd=ROOT, env=env, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(src_root)):
        raise SystemExit(f"the tests would import otclust from {where}, not from the faulty copy {src_root}")


def short(test_id: str) -> str:
    return test_id.replace("tests/", "").replace(".py::", "::")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="fault names to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    parser.add_argument("--show-output", action="store_true", help="print each pytest run's output")
    parser.add_argument("--skip-baseline", action="store_true", help="do not first run the tests on the unmodified copy")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per pytest run")
    args = parser.parse_args()
    faults = [f for f in FAULTS if not args.only or f.name in args.only]
    if args.list:
        for f in FAULTS:
            print(f"{f.name:40s} {f.file:28s} {f.description}")
        return
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="otclust-mutants-") as tmp:
        clean = Path(tmp) / "clean"
        shutil.copytree(ROOT / "src", clean, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        check_isolation(clean)
        repo = Path(tmp) / "repo"  # the tests as they are now, run from here
        shutil.copytree(ROOT / "tests", repo / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        # some tests run a benchmark script; they import it from benchmarks/ next to tests/ (never the faulty src/)
        shutil.copytree(ROOT / "benchmarks", repo / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
        shutil.copytree(ROOT / "configs", repo / "configs")  # tests of the recipes read them
        if not args.skip_baseline:
            tests = sorted({t for f in faults for t in f.tests})
            code, failed, output = run_tests(clean, tests, args.show_output, args.timeout * 3, repo)
            if code != 0:
                print(output[-4000:])
                raise SystemExit(f"the tests fail without any fault ({', '.join(failed)}): fix them first")
            print(f"baseline: {len(tests)} test selections pass on the unmodified copy", flush=True)
        for fault in faults:
            work = Path(tmp) / fault.name
            shutil.copytree(clean, work)
            line = apply(fault, work)
            t0 = time.perf_counter()
            code, failed, _ = run_tests(work, fault.tests, args.show_output, args.timeout, repo)
            caught = code != 0
            rows.append((fault, line, failed, caught, time.perf_counter() - t0))
            print(f"{fault.name}: {'caught' if caught else 'NOT caught'} ({time.perf_counter() - t0:.0f} s) {' '.join(map(short, failed))}", flush=True)
            shutil.rmtree(work)
    print()
    print("| fault | file:line | caught by (test ids) | caught? |")
    print("|---|---|---|---|")
    for fault, line, failed, caught, _ in rows:
        by = "<br>".join(short(t) for t in failed) if failed else "none"
        print(f"| {fault.description} (`{fault.name}`) | src/otclust/{fault.file}:{line} | {by} | {'yes' if caught else '**no**'} |")
    survived = [fault.name for fault, _, _, caught, _ in rows if not caught]
    print(f"\n{len(rows) - len(survived)}/{len(rows)} faults caught in {time.perf_counter() - started:.0f} s" + (f"; survived: {', '.join(survived)}" if survived else ""))
    sys.exit(1 if survived else 0)


if __name__ == "__main__":
    main()
