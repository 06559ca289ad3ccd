"""--clusters auto: a search run trains with the range's largest K, K is chosen on the read-out's
features, and (unless --no-refit) the network trains again with that K; everything downstream
(predict, balanced assignment, report, the estimator) works with the chosen K."""

import json

import numpy as np
import pytest

from otclust.choose_k import TOLERANCE
from otclust.cli import main
from otclust.commands.fit import format_metrics_table
from otclust.estimator import OTClust
from otclust.report import plot_k_selection


def _blobs(tmp_path, k=4, n=60, dim=6):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, size=(k, dim))
    x = np.concatenate([rng.normal(c, 0.5, size=(n, dim)) for c in centres]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x.labels.npy", np.repeat(np.arange(k), n))
    return f"features:{tmp_path / 'x.npy'}", x


def test_fit_chooses_k_and_predict_report_follow(tmp_path, capsys):
    data, _ = _blobs(tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--data", data, "--clusters", "auto:2-7", "--no-refit", "--epochs", "3", "--batch-size", "60", "--out", str(out), "--no-progress", "--report"]) == 0
    table = capsys.readouterr().out
    assert "| 4 | smoothed (used) |" in table and "| 7 | head |" in table  # each predictor's own K
    metrics = json.loads((out / "metrics.json").read_text())
    selection = metrics["k_selection"]
    assert selection["chosen"] == metrics["clusters"] == 4  # the four blobs, not the training K
    assert selection["training_clusters"] == 7 and sorted(map(int, selection["curve"])) == list(range(2, 8))
    assert "refit" not in selection and not (out / "k-search").exists()
    best = max(selection["curve"].values())
    assert selection["close"] == sorted(int(k) for k, v in selection["curve"].items() if v >= best - TOLERANCE and int(k) != 4)
    assert metrics["readout"]["nonempty_clusters"] == 4 and metrics["acc"] == 1.0
    assert (out / "figures" / "k_selection.png").is_file() and "Choosing K" in (out / "report.html").read_text()
    for assign in ("argmax", "balanced"):
        preds = tmp_path / f"{assign}.csv"
        assert main(["predict", "--checkpoint", str(out / "model.pt"), "--data", data, "--out", str(preds), "--assign", assign]) == 0
        clusters = np.loadtxt(preds, delimiter=",", skiprows=1, usecols=1).astype(int)
        assert set(clusters) == {0, 1, 2, 3}


def test_a_k_at_the_floor_of_the_range_comes_with_a_caution(tmp_path, capsys):
    data, _ = _blobs(tmp_path, k=2)
    common = ["--epochs", "2", "--batch-size", "60", "--no-progress", "--no-refit"]
    # 2-3, not wider: a third cluster cuts one blob where k-means happens to, an unstable split
    # (a fourth can halve both blobs alike, and then score as stable as two).
    assert main(["fit", "--data", data, "--clusters", "auto:2-3", *common, "--out", str(tmp_path / "two")]) == 0
    out = capsys.readouterr()
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["k_selection"]["chosen"] == 2
    assert "K = 2 is the smallest K searched" in out.out + out.err
    data, _ = _blobs(tmp_path, k=4)  # chosen above the floor: no caution
    assert main(["fit", "--data", data, "--clusters", "auto:2-5", *common, "--out", str(tmp_path / "four")]) == 0
    out = capsys.readouterr()
    assert json.loads((tmp_path / "four" / "metrics.json").read_text())["k_selection"]["chosen"] == 4
    assert "smallest K searched" not in out.out + out.err


def test_the_refit_does_not_repeat_the_data_sets_notes(tmp_path, capsys):
    data, _ = _blobs(tmp_path)
    (tmp_path / "x.labels.npy").unlink()  # unlabelled: the data set carries a note
    assert main(["fit", "--data", data, "--clusters", "auto:2-7", "--epochs", "2", "--batch-size", "60", "--no-progress", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    log = out.out + out.err
    assert "training again from scratch" in log  # a refit ran
    assert log.count("note: no labels (looked for") == 1


def test_the_refit_is_the_run_told_the_chosen_k(tmp_path, capsys):
    data, _ = _blobs(tmp_path)
    common = ["--epochs", "3", "--batch-size", "60", "--no-progress"]
    auto, fixed = tmp_path / "auto", tmp_path / "fixed"
    assert main(["fit", "--data", data, "--clusters", "auto:2-7", *common, "--out", str(auto), "--report"]) == 0
    table = capsys.readouterr().out
    assert "| 4 | smoothed (used) |" in table and "| 4 | head |" in table  # the final network has 4 clusters
    assert "K = 4 was chosen by a search run (trained with 7 clusters in " in table
    metrics = json.loads((auto / "metrics.json").read_text())
    assert metrics["clusters"] == 4 and metrics["k_selection"]["refit"] is True and metrics["k_selection"]["training_clusters"] == 7
    assert metrics["k_selection"]["search_seconds"] > 0
    search = json.loads((auto / "k-search" / "metrics.json").read_text())  # the search run, kept whole
    assert search["k_selection"]["chosen"] == 4 and (auto / "k-search" / "model.pt").is_file() and "refit" not in search["k_selection"]
    assert "A second network then trained from scratch with the chosen K" in (auto / "report.html").read_text()
    # The refit is the run a user who knew K would have made: same seed, same settings.
    assert main(["fit", "--data", data, "--clusters", "4", *common, "--out", str(fixed)]) == 0
    assert (auto / "assignments.csv").read_text() == (fixed / "assignments.csv").read_text()
    predictions = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(auto / "model.pt"), "--data", data, "--out", str(predictions), "--readout", "head"]) == 0
    assert set(np.loadtxt(predictions, delimiter=",", skiprows=1, usecols=1).astype(int)) == {0, 1, 2, 3}


def test_resume_after_the_search_trains_only_the_refit(tmp_path, capsys):
    data, _ = _blobs(tmp_path)
    out = tmp_path / "run"
    args = ["fit", "--data", data, "--clusters", "auto:2-7", "--epochs", "2", "--batch-size", "60", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    finished = (out / "assignments.csv").read_text()
    for name in ("model.pt", "metrics.json", "metrics.jsonl", "assignments.csv", "config.yaml"):
        (out / name).unlink()  # as if stopped once the search had finished
    search_written = (out / "k-search" / "model.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert (out / "k-search" / "model.pt").stat().st_mtime_ns == search_written  # not trained again
    assert (out / "assignments.csv").read_text() == finished
    assert "training again from scratch with the chosen K = 4" in capsys.readouterr().err


def test_overwrite_removes_an_earlier_search(tmp_path):
    data, _ = _blobs(tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--data", data, "--clusters", "auto:2-7", "--epochs", "1", "--batch-size", "60", "--no-progress", "--out", str(out)]) == 0
    (out / "k-search" / "notes.txt").write_text("the user's")
    assert main(["fit", "--data", data, "--clusters", "3", "--epochs", "1", "--batch-size", "60", "--no-progress", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "k-search").iterdir()) == ["notes.txt"]  # ours gone, the user's kept


def test_the_k_criterion_is_a_readout_setting(tmp_path, capsys):
    data, _ = _blobs(tmp_path)
    out = tmp_path / "run"
    args = ["fit", "--data", data, "--clusters", "auto:2-7", "--epochs", "2", "--batch-size", "60", "--out", str(out), "--no-progress"]
    assert main([*args, "--readout-param", "k_criterion=eigengap", "--report"]) == 0
    selection = json.loads((out / "metrics.json").read_text())["k_selection"]
    assert selection["criterion"] == "eigengap" and selection["chosen"] == 4
    assert "eigengap criterion" in (out / "report.html").read_text() and (out / "figures" / "k_selection.png").is_file()
    said = capsys.readouterr()
    assert "K = 4 chosen by the eigengap criterion" in said.out + said.err  # not 'stability'
    assert main([*args, "--out", str(tmp_path / "bad"), "--readout-param", "k_criterion=elbow"]) == 2
    assert "k_criterion=elbow" in capsys.readouterr().err


def test_a_fixed_k_writes_no_selection(tmp_path):
    data, _ = _blobs(tmp_path)
    out = tmp_path / "run"
    assert main(["fit", "--data", data, "--clusters", "3", "--epochs", "1", "--batch-size", "60", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clusters"] == 3 and "k_selection" not in metrics


def test_estimator_auto(tmp_path):
    _, x = _blobs(tmp_path, k=3)
    model = OTClust(n_clusters="auto:2-6", epochs=2, batch_size=60).fit(x)
    assert model.n_clusters_ == 3 and model.k_selection_["chosen"] == 3 and model.k_selection_["refit"] and 3 not in model.k_selection_["close"]
    assert model.model_.n_clusters == 3  # trained again with the chosen K
    assert OTClust(n_clusters="auto:2-6", epochs=2, batch_size=60, refit=False).fit(x).model_.n_clusters == 6
    assert len(np.unique(model.labels_)) == 3 and model.predict_proba(x).shape == (len(x), 3)
    model.save(tmp_path / "m.pt")
    assert OTClust.load(tmp_path / "m.pt").n_clusters_ == 3


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--clusters", "auto", "--readout", "head"], "head cannot"),
        (["--clusters", "auto", "--cluster-proportions", "0.5,0.5"], "K is known"),
        (["--clusters", "auto:6-3"], "MIN <= MAX"),
        (["--clusters", "auto:2-5000"], "can be chosen up to 1437"),
        (["--clusters", "many"], "neither a number"),
        (["--method", "kmeans", "--clusters", "auto"], "--readout kmeans"),
    ],
)
def test_bad_auto_requests_exit_2_with_one_line(tmp_path, capsys, args, fragment):
    # In process (an unexpected exception would fail the test); tests/commands/test_cli.py runs the
    # command line in a subprocess to check that no traceback reaches the user.
    assert main(["fit", "--data", "digits", "--epochs", "1", "--out", str(tmp_path / "run"), *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "run" / "model.pt").exists()


def test_the_report_can_describe_every_k_criterion():
    from otclust.choose_k import CRITERIA, K_CRITERION_TEXT

    assert set(K_CRITERION_TEXT) == set(CRITERIA)


def test_fit_table_and_report_name_the_k_the_criterion_could_not_tell_apart(tmp_path):
    """A K as stable as the chosen one is said in fit's table and in the report's figure and text."""
    selection = {"criterion": "stability", "range": [2, 6], "chosen": 5, "close": [3, 4], "training_clusters": 6, "curve": {"2": 0.5, "3": 0.985, "4": 0.99, "5": 0.995, "6": 0.9}}
    metrics = {"method": "clot", "data": "digits", "clusters": 5, "predictor": "smoothed", "acc": 0.9, "nmi": 0.8, "ari": 0.7, "seconds": 1.0, "k_selection": selection}
    table = format_metrics_table(metrics)
    assert f"K = 3, 4 scored within {TOLERANCE} of the best stability too" in table and "--clusters K" in table
    assert "scored within" not in format_metrics_table({**metrics, "k_selection": {**selection, "close": []}})
    plot_k_selection(tmp_path / "k.png", selection)
    assert (tmp_path / "k.png").stat().st_size > 0


def test_plain_auto_on_a_small_set_searches_the_ks_it_can(tmp_path, capsys):
    """12 samples: plain 'auto' (2-15) narrows to the 2-9 that 12 samples allow, with a note; a
    range the user gave is refused instead; 3 samples are too few for any search."""
    data, x = _blobs(tmp_path, k=3, n=4)
    out = tmp_path / "run"
    assert main(["fit", "--data", data, "--clusters", "auto", "--no-refit", "--epochs", "1", "--batch-size", "12", "--out", str(out), "--no-progress"]) == 0
    assert "among 12 samples K can be chosen up to 9: searching 2-9" in capsys.readouterr().err
    selection = json.loads((out / "metrics.json").read_text())["k_selection"]
    assert selection["range"] == [2, 9] and selection["training_clusters"] == 9
    assert main(["fit", "--data", data, "--clusters", "auto:2-12", "--epochs", "1", "--out", str(tmp_path / "given"), "--no-progress"]) == 2
    assert "K can be chosen up to 9 among 12 samples" in capsys.readouterr().err
    np.save(tmp_path / "three.npy", x[:3])
    assert main(["fit", "--data", f"features:{tmp_path / 'three.npy'}", "--clusters", "auto", "--epochs", "1", "--out", str(tmp_path / "few"), "--no-progress"]) == 2
    assert "3 samples are too few to choose K among them" in capsys.readouterr().err
    model = OTClust(n_clusters="auto", epochs=1, batch_size=12, refit=False).fit(x)
    assert model.k_selection_["range"] == [2, 9]
    with pytest.raises(ValueError, match="K can be chosen up to 9"):
        OTClust(n_clusters="auto:2-12", epochs=1).fit(x)
