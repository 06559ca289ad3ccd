"""otclust sweep and compare on tiny runs: tables, plot, run folders, recipes, skipped methods and
failing runs reported instead of crashing."""

import csv

import numpy as np
import pytest
import yaml
from PIL import Image

import otclust.methods
from otclust.cli import main
from otclust.config import FitConfig
from otclust.errors import UserError
from otclust.experiments import check_swept_name, parse_seeds, parse_values, with_value


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(c * 4, 1, size=(40, 5)) for c in range(3)]).astype(np.float32)
    np.save(root / "x.npy", features)
    np.save(root / "x.labels.npy", np.repeat(np.arange(3), 40))
    return f"features:{root / 'x.npy'}"


TINY = ["--clusters", "3", "--epochs", "1", "--batch-size", "40", "--device", "cpu"]


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_sweep_writes_tables_plot_and_one_folder_per_run(blobs, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--method", "clot", "--data", blobs, *TINY, "--param", "sinkhorn_eps", "--values", "0.2,0.02", "--seeds", "2", "--param", "temperature=0.4", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "[4/4] sinkhorn_eps=0.02 seed 1" in printed and "| sinkhorn_eps |" in printed
    rows = read_csv(out / "sweep.csv")
    assert [r["value"] for r in rows] == ["0.2", "0.02"]
    assert all(r["ok"] == "2" and 0 <= float(r["acc_mean"]) <= 1 and float(r["acc_std"]) >= 0 for r in rows)
    assert len(read_csv(out / "runs.csv")) == 4
    with Image.open(out / "sweep.png") as image:
        image.verify()
    assert "![ACC against sinkhorn_eps](sweep.png)" in (out / "sweep.md").read_text()
    config = yaml.safe_load((out / "sinkhorn_eps=0.02" / "seed1" / "config.yaml").read_text())
    assert config["params"] == {"sinkhorn_eps": 0.02, "temperature": 0.4} and config["seed"] == 1
    # Rerunning needs --overwrite, or --resume, which keeps the finished runs.
    assert main(args) == 2
    assert main(args + ["--resume"]) == 0
    assert capsys.readouterr().out.count("(reused)") == 4


def test_sweep_resume_reuses_runs_that_chose_k_and_trained_again(blobs, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--method", "clot", "--data", blobs, "--clusters", "auto:2-5", "--epochs", "2", "--batch-size", "40", "--device", "cpu", "--param", "sinkhorn_eps", "--values", "0.05", "--seeds", "1", "--out", str(out)]
    assert main(args) == 0
    config = yaml.safe_load((out / "sinkhorn_eps=0.05" / "seed0" / "config.yaml").read_text())
    assert config["clusters"] == 3 and (out / "sinkhorn_eps=0.05" / "seed0" / "k-search" / "model.pt").is_file()  # the refit of K = 3
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert capsys.readouterr().out.count("(reused)") == 1


def test_sweep_mistakes_fail_before_any_run(blobs, tmp_path, capsys):
    base = ["sweep", "--method", "clot", "--data", blobs, *TINY, "--out", str(tmp_path / "s")]
    assert main(base + ["--values", "1,2"]) == 2
    assert "--param NAME" in capsys.readouterr().err
    assert main(base + ["--param", "nosuch", "--values", "1,2"]) == 2
    assert "cannot sweep 'nosuch'" in capsys.readouterr().err
    assert main(base + ["--param", "batch-size", "--values", "a,b"]) == 2
    assert not (tmp_path / "s").exists()


def test_options_every_run_would_fail_on_are_refused_before_any_run(blobs, tmp_path, capsys):
    """They used to fail each run in turn and end 'N of N runs failed', with exit status 0."""
    out = tmp_path / "out"
    compare = ["compare", "--data", blobs, "--methods", "clot", "--seeds", "1", "--epochs", "1", "--clusters", "3", "--device", "cpu", "--out", str(out)]
    sweep = ["sweep", "--method", "clot", "--data", blobs, *TINY, "--seeds", "1", "--out", str(out)]
    for args, fragment in [
        (compare + ["--cluster-proportions", "bogus"], "--cluster-proportions 'bogus' is neither"),
        (compare + ["--eval-every", "0"], "--eval-every must be at least 1, got 0"),
        (sweep + ["--eval-every", "0", "--param", "sinkhorn_eps", "--values", "0.05"], "--eval-every must be"),
        (sweep + ["--param", "sinkhorn_eps", "--values", "0.05,abc"], "'sinkhorn_eps' of method 'clot' must be float, got 'abc'"),
        (sweep + ["--param", "cluster-proportions", "--values", "uniform,bogus"], "--cluster-proportions 'bogus' is neither"),
    ]:
        assert main(args) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and fragment in errors[0], errors
        assert not out.exists()


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_runs_that_all_fail_end_with_status_1_and_a_table_that_says_no_run_finished(blobs, tmp_path, capsys, monkeypatch, command):
    """Exit status 0 and 'The data have no labels' (they have) used to hide that nothing finished."""
    from otclust.engine import Trainer

    def failing_fit(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "fit", failing_fit)
    out = tmp_path / "out"
    if command == "compare":
        args = ["compare", "--data", blobs, "--methods", "clot", "--seeds", "1", "--epochs", "1", "--clusters", "3", "--device", "cpu", "--out", str(out)]
    else:
        args = ["sweep", "--method", "clot", "--data", blobs, *TINY, "--seeds", "1", "--param", "sinkhorn_eps", "--values", "0.05", "--out", str(out)]
    assert main(args) == 1
    assert "1 of 1 runs failed: see the table" in capsys.readouterr().err
    table = (out / f"{'comparison' if command == 'compare' else 'sweep'}.md").read_text()
    assert "No run finished, so there are no scores" in table and "no labels" not in table
    assert "RuntimeError: boom" in table


def test_swept_values_that_are_paths_get_run_folders_inside_out(blobs, tmp_path, monkeypatch, capsys):
    """--values folder:../../x used to put a run (and its --overwrite) outside --out, and a '/' nested folders."""
    features = blobs.split(":", 1)[1]
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    for folder in (tmp_path, tmp_path / "a"):
        np.save(folder / "x.npy", np.load(features))
    monkeypatch.chdir(work)
    args = ["sweep", "--method", "clot", *TINY, "--param", "data", "--values", "features:../x.npy,features:../../x.npy", "--seeds", "1", "--out", "sw"]
    assert main(args) == 0
    assert sorted(p.name for p in work.iterdir()) == ["sw"]  # nothing beside --out
    folders = sorted(p.name for p in (work / "sw").iterdir() if p.is_dir())
    assert folders == ["data=features_______x.npy", "data=features____x.npy"]
    assert all((work / "sw" / name / "seed0" / "metrics.json").is_file() for name in folders)
    rows = read_csv(work / "sw" / "runs.csv")
    assert [r["data"] for r in rows] == ["features:../x.npy", "features:../../x.npy"]  # the values as given
    assert yaml.safe_load((work / "sw" / "data=features_______x.npy" / "seed0" / "config.yaml").read_text())["data"] == "features:../../x.npy"
    assert "runs.csv's run_dir names each run's folder" in (work / "sw" / "sweep.md").read_text()


def test_run_folder_names_are_plain_unique_names_that_keep_ordinary_values_as_they_are():
    from otclust.commands.sweep import run_folder_names

    names = run_folder_names("x", ["0.02", "1e-3", "a/b", "a:b", "A_B", "..", "/etc/passwd", "c\\d"])
    assert names == {"0.02": "x=0.02", "1e-3": "x=1e-3", "a/b": "x=a_b", "a:b": "x=a_b-2", "A_B": "x=A_B-3", "..": "x=__", "/etc/passwd": "x=_etc_passwd", "c\\d": "x=c_d"}
    assert all("/" not in n and "\\" not in n and ".." not in n and not n.startswith(".") for n in names.values())
    assert len(run_folder_names("x", ["y" * 500])["y" * 500]) <= 100


def test_swept_values_reach_fit_settings_and_method_parameters():
    config = FitConfig(method="clot")
    assert with_value(config, "batch-size", 64.0).batch_size == 64
    assert with_value(config, "lr", 1).lr == 1.0
    assert with_value(config, "sinkhorn_eps", 0.1).params == {"sinkhorn_eps": 0.1}
    assert config.params == {}
    check_swept_name(config, "sinkhorn_eps")
    # A former name may still be swept; its value replaces the parameter's under its other name.
    check_swept_name(config, "lam")
    assert with_value(FitConfig(method="clot", params={"sinkhorn_eps": 0.2, "temperature": 0.4}), "lam", 5).params == {"temperature": 0.4, "lam": 5}
    check_swept_name(config, "weight_decay")
    with pytest.raises(UserError):
        check_swept_name(config, "eps")
    assert parse_values("0.003,0.01,linear") == [0.003, 0.01, "linear"]
    assert parse_seeds("3") == [0, 1, 2] and parse_seeds("4,7") == [4, 7]
    with pytest.raises(UserError):
        parse_seeds("0,0")
    assert parse_seeds("0,") == [0]  # one seed, written as a list
    with pytest.raises(UserError, match="count .* asks for no run"):
        parse_seeds("0")


def test_compare_uses_recipes_skips_missing_methods_and_reports_failures(blobs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(otclust.methods, "available_methods", lambda: ["clot"])
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "clot-features.yaml").write_text("method: clot\nepochs: 4\nparams:\n  sinkhorn_eps: 0.125\n")
    from otclust.engine import Trainer

    original_fit = Trainer.fit

    def fit_failing_for_seed_1(self, *args, **kwargs):
        if self.config.seed == 1:
            raise RuntimeError("boom")
        return original_fit(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "fit", fit_failing_for_seed_1)
    out = tmp_path / "cmp"
    args = ["compare", "--data", blobs, "--methods", "clot,kmeans", "--seeds", "2", "--epochs-scale", "0.25", "--clusters", "3", "--batch-size", "40", "--device", "cpu", "--configs-dir", str(recipes), "--out", str(out)]
    assert main(args) == 1  # a run failed: the tables are written, and the status says so
    printed = capsys.readouterr().out
    assert "skipped kmeans: not implemented" in printed
    assert "[2/2] clot seed 1" in printed and "FAILED: RuntimeError: boom" in printed
    table = (out / "comparison.md").read_text()
    assert "| method | predictor | recipe | epochs | ACC |" in printed  # the table, printed at the end
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[2].startswith("| clot | head | clot-features.yaml | 1 |")  # 4 epochs x 0.25
    assert lines[3].startswith("| clot | smoothed (default) | clot-features.yaml | 1 |")
    assert "1/2 runs; failed: seed 1: RuntimeError: boom" in lines[2]
    assert lines[4].startswith("| kmeans |") and "not implemented" in lines[4]
    rows = read_csv(out / "comparison.csv")
    assert [(r["method"], r["predictor"]) for r in rows] == [("clot", "head"), ("clot", "smoothed"), ("kmeans", "")]
    assert rows[0]["ok"] == "1" and float(rows[0]["acc_std"]) == 0.0
    assert yaml.safe_load((out / "clot" / "seed0" / "config.yaml").read_text())["params"] == {"sinkhorn_eps": 0.125}
    assert main(args) == 2  # tables exist: --overwrite or --resume


def test_compare_scores_every_method_by_its_head_and_by_the_shared_readout(blobs, tmp_path, capsys):
    """One network per run, two predictors: the head's and the read-out's scores, each from the
    run's metrics.json, in rows of their own; the read-out is every trained method's default."""
    import json

    out = tmp_path / "cmp"
    args = ["compare", "--data", blobs, "--methods", "sela,clot", "--seeds", "1", "--epochs", "1", "--clusters", "3", "--batch-size", "40", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    rows = {(r["method"], r["predictor"]): r for r in read_csv(out / "comparison.csv")}
    assert set(rows) == {("sela", "head"), ("sela", "smoothed"), ("clot", "head"), ("clot", "smoothed")}
    assert rows[("sela", "smoothed")]["default"] == "True" and rows[("clot", "smoothed")]["default"] == "True"
    assert rows[("sela", "head")]["default"] == "False"
    for method in ("sela", "clot"):
        metrics = json.loads((out / method / "seed0" / "metrics.json").read_text())
        assert metrics["readout"]["name"] == "smoothed"
        for predictor, scores in (("head", metrics["head"]), ("smoothed", metrics["readout"])):
            assert float(rows[(method, predictor)]["acc_mean"]) == pytest.approx(scores["acc"], abs=1e-5)
        assert metrics["acc"] == metrics["readout"]["acc"]
    per_run = read_csv(out / "runs.csv")
    assert {r["readout"] for r in per_run} == {"smoothed"} and all(r["head_acc"] and r["readout_acc"] for r in per_run)
    with Image.open(out / "comparison.png") as image:
        image.verify()
    assert "](comparison.png)" in (out / "comparison.md").read_text()


def test_comparison_figure_draws_each_method_by_its_default_predictor_and_its_head(tmp_path):
    from otclust.commands import compare
    from otclust.experiments import RunOutcome

    def outcome(method, seed, head, readout):
        metrics = {"predictor": "smoothed", "acc": readout, "head": {"acc": head, "nmi": 0.1, "ari": 0.1}, "readout": {"name": "smoothed", "acc": readout, "nmi": 0.2, "ari": 0.2}}
        return RunOutcome(method, seed, tmp_path, metrics)

    kmeans = RunOutcome("kmeans", 0, tmp_path, {"predictor": "head", "acc": 0.5, "nmi": 0.4, "ari": 0.3, "head": {"acc": 0.5, "nmi": 0.4, "ari": 0.3}})
    failed = RunOutcome("clot", 2, tmp_path, error="boom")
    rows = compare.figure_rows(["kmeans", "clot"], [kmeans, outcome("clot", 0, 0.6, 0.9), outcome("clot", 1, 0.7, 0.8), failed])
    assert [name for name, _, _ in rows] == ["kmeans", "clot"]
    assert [r["acc"] for r in rows[1][1]] == [0.9, 0.8] and [r["acc"] for r in rows[1][2]] == [0.6, 0.7]  # read-out, then head
    assert rows[0][2] is None  # k-means on pixels has no head apart from its prediction
    from otclust.report import plot_comparison

    assert plot_comparison(tmp_path / "c.png", "t", rows, baseline="kmeans") and (tmp_path / "c.png").stat().st_size > 0
    assert not plot_comparison(tmp_path / "none.png", "t", [("clot", [{}], None)])  # no labels: no figure
    assert not (tmp_path / "none.png").exists()


def test_compare_orders_kmeans_first_and_rejects_unknown_names(monkeypatch, capsys):
    from otclust.commands.compare import ordered_methods

    monkeypatch.setattr(otclust.methods, "available_methods", lambda: ["clot", "kmeans"])
    assert ordered_methods("clot,kmeans,drc") == (["kmeans", "clot"], ["drc"])
    assert ordered_methods("all") == (["kmeans", "clot"], [])
    with pytest.raises(UserError, match="unknown method"):
        ordered_methods("clot,nosuch")
    assert main(["compare", "--methods", "drc", "--seeds", "1"]) == 2
    assert "not implemented" in capsys.readouterr().err
