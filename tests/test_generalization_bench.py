"""benchmarks/generalization.py: flags passed through, the table and goal check, and resumption."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import generalization as gen  # noqa: E402


def test_set_pairs_become_fit_flags():
    flags = gen.flags_from_sets(["epochs=1", "batch_size=64", "param.sinkhorn_eps=0.05", "augment.rotation_degrees=15", "readout.auto_min_excess=0.5", "no-amp=true"])
    assert flags == ["--epochs", "1", "--batch-size", "64", "--param", "sinkhorn_eps=0.05", "--augment", "rotation_degrees=15", "--readout-param", "auto_min_excess=0.5", "--no-amp"]
    with pytest.raises(SystemExit):
        gen.flags_from_sets(["epochs"])


def test_the_baseline_drops_only_parameters_kmeans_does_not_have():
    """`--set param.n_heads=5` studies the trained methods; k-means on pixels still runs first."""
    flags = gen.flags_from_sets(["param.n_heads=5", "epochs=1", "param.kmeans_restarts=3"])
    assert gen.baseline_flags(flags) == ["--epochs", "1", "--param", "kmeans_restarts=3"]


def result(dataset, method, seed, acc):
    return gen.RunResult(dataset, method, seed, {"acc": acc, "nmi": acc / 2, "ari": acc / 4}, 60.0, 30.0, "abc")


def test_table_and_goal_check_use_means_and_sample_std():
    results = [result("d", "kmeans", s, 0.5) for s in (0, 1)]
    results += [result("d", "clot", 0, 0.70), result("d", "clot", 1, 0.80)]  # mean 0.75, std 0.0707
    results += [result("d", "swav", 0, 0.78), result("d", "swav", 1, 0.80)]  # mean 0.79: best, within one std
    results += [result("d", "sela", 0, 0.40), result("d", "sela", 1, 0.60)]  # mean 0.50: not above k-means
    methods = ["kmeans", "clot", "swav", "sela"]
    cells = gen.summarise(results, ["d"], methods, [0, 1])
    table = gen.format_table(cells, ["d"], methods)
    assert "| d | clot | 0.750 ± 0.071 | 0.375 ± 0.035 | 0.188 ± 0.018 | 1.0 | 0.5 | 2/2 |" in table
    (check,) = gen.goal_check(cells, ["d"], methods)
    assert "methods at or below k-means (0.500): sela" in check
    assert "best swav 0.790: within one std" in check
    cells["d", "clot"]["acc"] = (0.70, 0.0)  # same gap, no spread: not within
    cells["d", "swav"]["acc"] = (0.79, 0.05)
    assert "NOT within" in gen.goal_check(cells, ["d"], methods)[0]


def test_suite_runs_kmeans_first_writes_the_table_and_resumes(tmp_path, capsys):
    argv = ["--datasets", "digits", "--methods", "kmeans", "--seeds", "0", "--threads", "1", "--out", str(tmp_path)]
    assert gen.main(argv) == 0
    folder = tmp_path / "runs" / "digits" / "kmeans" / "seed0"
    metrics = json.loads((folder / "metrics.json").read_text())
    record = json.loads((folder / "suite-run.json").read_text())
    assert record["cpu_seconds"] > 0 and record["wall_seconds"] > 0
    table = (tmp_path / "table.md").read_text()
    assert f"| digits | kmeans | {metrics['acc']:.3f} |" in table
    stamp = (folder / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert gen.main(argv) == 0
    assert "(kept)" in capsys.readouterr().err
    assert (folder / "metrics.json").stat().st_mtime_ns == stamp
    # Other extra flags make it another run, not the kept one.
    assert gen.read_finished(folder, []) is not None
    assert gen.read_finished(folder, ["--epochs", "1"]) is None
