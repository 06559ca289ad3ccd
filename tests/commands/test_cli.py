"""The command line as a user meets it: exit codes, one-line errors, files written."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from otclust.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "otclust", *args], capture_output=True, text=True)


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("fit", "evaluate", "predict"):
        assert command in result.stdout
    fit_help = run_cli("fit", "--help").stdout
    for flag in ("--method", "--data", "--clusters", "--epochs", "--batch-size", "--seed", "--out", "--resume", "--config", "--param"):
        assert flag in fit_help


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["fit", "--data", "nosuchdata", "--epochs", "1"], "unknown"),
        (["fit", "--clusters", "1", "--epochs", "1"], "at least 2"),
        (["fit", "--clusters", "0", "--epochs", "1"], "at least 2"),
        (["fit", "--config", "/nonexistent.yaml"], "not found"),
        (["fit", "--param", "oops", "--epochs", "1"], "KEY=VALUE"),
        (["evaluate", "--checkpoint", "/nonexistent/model.pt"], "checkpoint not found"),
        (["fit", "--augment", "noise_std=abc", "--epochs", "1"], "noise_std' is a number"),
        (["fit", "--augment", "crop_scale=[0.5]", "--epochs", "1"], "pair of numbers"),
        (["fit", "--augment", "per_image=maybe", "--epochs", "1"], "true or false"),
        (["fit", "--augment", "hflip_prob=5", "--epochs", "1"], "'hflip_prob' is a probability, from 0 to 1"),
        (["fit", "--data", "digits", "--backbone", "mlp", "--augment", "nope=1", "--epochs", "1"], "unknown augmentation setting(s) nope"),
        # Numbers checked before the run folder is made (they used to fail in Adam, torch or the loop).
        (["fit", "--lr", "inf", "--epochs", "1"], "--lr must be a positive finite number"),
        (["fit", "--lr", "nan", "--epochs", "1"], "--lr must be a positive finite number"),
        (["fit", "--weight-decay", "-1", "--epochs", "1"], "--weight-decay must be a finite number of 0 or more"),
        (["fit", "--weight-decay", "nan", "--epochs", "1"], "--weight-decay must be a finite number of 0 or more"),
        (["fit", "--eval-every", "0", "--epochs", "1"], "--eval-every must be at least 1"),
        (["fit", "--eval-every", "-1", "--epochs", "1"], "--eval-every must be at least 1"),
        (["fit", "--warmup-epochs", "-1", "--epochs", "1"], "--warmup-epochs must be 0 or more"),
        (["fit", "--seed", "99999999999999999999", "--epochs", "1"], "--seed must be a whole number from 0 to"),
        (["fit", "--seed", "-1", "--epochs", "1"], "--seed must be a whole number from 0 to"),
        (["fit", "-k", "-2", "--epochs", "1"], "--clusters must be at least 2, got -2"),
        (["fit", "--param", "n_heads=0", "--epochs", "1"], "'n_heads' of method 'clot' must be positive"),
        (["fit", "--param", "sinkhorn_eps=nan", "--epochs", "1"], "'sinkhorn_eps' of method 'clot' must be a finite number"),
        (["predict", "--checkpoint", "/nonexistent/model.pt", "--out", "/nonexistent/p.csv", "--sinkhorn-eps", "nan"], "--sinkhorn-eps must be a positive finite number"),
        (["predict", "--checkpoint", "/nonexistent/model.pt", "--out", "/nonexistent/p.csv", "--assign", "balanced", "--sinkhorn-eps", "inf"], "--sinkhorn-eps must be a positive finite number"),
        (["compare", "--epochs-scale", "nan"], "--epochs-scale must be a positive finite number"),
        # Refused like a missing GPU (it was PyTorch's RuntimeError at the first tensor moved there).
        pytest.param(["fit", "--device", "mps", "--epochs", "1"], "--device mps was asked for but", marks=pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_no_traceback(tmp_path, args, fragment):
    result = run_cli(*args, *(["--out", str(tmp_path / "run")] if args[0] == "fit" else []))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind


@pytest.mark.parametrize(
    "content,fragment",
    [
        (b"\xff\xfeepochs: 1\n", "is not UTF-8 text"),
        (b"params: 5\n", "params in "),
        (b"readout_params: [1, 2]\n", "readout_params in "),
        (b"augment: flip\n", "augment in "),
    ],
)
def test_a_bad_config_file_is_one_line(tmp_path, content, fragment):
    (tmp_path / "c.yaml").write_bytes(content)
    result = run_cli("fit", "--config", str(tmp_path / "c.yaml"), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_more_clusters_than_samples_is_refused_before_the_budget_is_announced(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32))
    result = run_cli("fit", "--data", f"features:{tmp_path / 'x.npy'}", "--clusters", "4", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["otclust: error: --clusters 4 is more than the 3 samples: choose fewer clusters"]
    assert "note: training" not in result.stderr + result.stdout  # it used to announce the run's 3,200 epochs first (notes go to stderr)
    assert not (tmp_path / "run").exists()


def test_an_unknown_method_parameter_is_refused_before_the_budget_is_announced(tmp_path):
    result = run_cli("fit", "--method", "soft-kmeans", "--data", "digits", "--clusters", "10", "--param", "nosuch=1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown parameter(s) nosuch for method 'soft-kmeans'" in lines[0]  # the budget's note used to come first
    assert not (tmp_path / "run").exists()


def test_fit_evaluate_predict_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    features = np.concatenate([np.random.default_rng(0).normal(c * 4, 1, size=(50, 5)) for c in range(3)]).astype(np.float32)
    np.save(tmp_path / "x.npy", features)
    np.save(tmp_path / "x.labels.npy", np.repeat(np.arange(3), 50))
    data = f"features:{tmp_path / 'x.npy'}"
    code = main(["fit", "--data", data, "--clusters", "3", "--epochs", "2", "--batch-size", "50", "--out", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| clot |" in printed
    # What to do next, with this run's folder filled in.
    assert f"next: otclust report {out}" in printed and f"otclust predict --checkpoint {out} --data" in printed
    for name in ("config.yaml", "model.pt", "metrics.jsonl", "metrics.json", "assignments.csv"):
        assert (out / name).is_file()
    # An existing run folder is not overwritten by accident.
    assert main(["fit", "--data", data, "--clusters", "3", "--epochs", "1", "--out", str(out)]) == 2
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data", data]) == 0
    assert json.loads((out / "evaluation.json").read_text())["acc"] > 0.5
    # The run folder works as --checkpoint too, and its evaluation.json still lands inside it.
    (out / "evaluation.json").unlink()
    assert main(["evaluate", "--checkpoint", str(out), "--data", data]) == 0
    assert json.loads((out / "evaluation.json").read_text())["acc"] > 0.5
    # A file the user names is not replaced unasked.
    mine = tmp_path / "mine.json"
    mine.write_text("keep me")
    assert main(["evaluate", "--checkpoint", str(out), "--data", data, "--out", str(mine)]) == 2
    assert mine.read_text() == "keep me"
    assert main(["evaluate", "--checkpoint", str(out), "--data", data, "--out", str(mine), "--overwrite"]) == 0
    assert json.loads(mine.read_text())["acc"] > 0.5
    preds = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", str(out / "model.pt"), "--data", data, "--out", str(preds)]) == 0
    lines = preds.read_text().splitlines()
    assert lines[0] == "index,cluster,confidence" and len(lines) == 151
    assert main(["predict", "--checkpoint", str(out / "model.pt"), "--data", data, "--out", str(preds)]) == 2


def test_config_file_sets_defaults_and_flags_win(tmp_path):
    from otclust.commands.common import config_from_args
    from otclust.cli import build_parser

    config_file = tmp_path / "c.yaml"
    config_file.write_text("epochs: 7\nclusters: 4\nparams:\n  sinkhorn_eps: 0.2\n")
    args = build_parser().parse_args(["fit", "--config", str(config_file), "--clusters", "6", "--param", "temperature=0.2"])
    config = config_from_args(args)
    assert (config.epochs, config.clusters) == (7, 6)
    assert config.params == {"sinkhorn_eps": 0.2, "temperature": 0.2}
    # A --param under a former name replaces the file's value of the same parameter (as --steps replaces epochs).
    args = build_parser().parse_args(["fit", "--config", str(config_file), "--param", "lam=10"])
    assert config_from_args(args).params == {"lam": 10}
    config_file.write_text("epoch: 7\n")
    with pytest.raises(Exception, match="unknown setting"):
        config_from_args(build_parser().parse_args(["fit", "--config", str(config_file)]))


def test_help_shows_each_methods_effective_default(monkeypatch, capsys):
    from otclust.cli import build_parser
    from otclust.commands.common import config_from_args, method_defaults
    from otclust.methods import available_methods, get_method_class

    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a help text
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for field in ("batch_size", "lr", "weight_decay", "lr_schedule"):
        text = method_defaults(field)
        assert text in help_text
        base, *others = text.split("; ")
        shown = {name: value for part in others for value, names in [part.split(" for ", 1)] for name in names.split(", ")}
        for method in available_methods():
            if not get_method_class(method).trainable:
                continue
            value = getattr(config_from_args(build_parser().parse_args(["fit", "--method", method])), field)
            assert shown.get(method, base.removeprefix("default: ")) == (f"{value:g}" if isinstance(value, float) else str(value)), (field, method)


def test_fit_on_identical_images_finishes_with_one_cluster(tmp_path, capsys):
    """Duplicates only (a folder of one picture copied): no distinct points to split, so every image
    lands in one cluster and the run finishes with a warning instead of a traceback."""
    np.save(tmp_path / "same.npy", np.ones((40, 4), dtype=np.float32))
    with pytest.warns(RuntimeWarning, match="only 1 distinct cluster"):
        code = main(["fit", "--data", f"features:{tmp_path / 'same.npy'}", "--clusters", "3", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    clusters = np.loadtxt(tmp_path / "run" / "assignments.csv", delimiter=",", skiprows=1, usecols=1)
    assert len(np.unique(clusters)) == 1


@pytest.mark.parametrize("clusters, noted", [(None, "10 clusters, the default; the data's labels name 3 classes: --clusters K sets K"), ("3", None)])
def test_fit_says_when_k_is_the_default(tmp_path, capsys, clusters, noted):
    """A user who forgets --clusters gets 10 groups: said, beside the number of classes the labels hold."""
    features = np.concatenate([np.random.default_rng(0).normal(c * 4, 1, size=(20, 5)) for c in range(3)]).astype(np.float32)
    np.save(tmp_path / "x.npy", features)
    np.save(tmp_path / "x.labels.npy", np.repeat(np.arange(3), 20))
    k = ["--clusters", clusters] if clusters else []
    code = main(["fit", "--data", f"features:{tmp_path / 'x.npy'}", *k, "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "clusters, the default" in line]
    assert notes == ([f"note: {noted}, --clusters auto chooses it"] if noted else [])


@pytest.mark.parametrize("mode, noted", [("RGB", True), ("L", False)])
def test_fit_on_colour_photos_from_scratch_points_to_pretrained_backbones(tmp_path, capsys, mode, noted):
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        shape = (16, 16, 3) if mode == "RGB" else (16, 16)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(photos / f"{i}.png")
    code = main(["fit", "--data", f"folder:{photos}", "--clusters", "2", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert ("pretrained --backbone" in captured.out + captured.err) == noted


def test_a_log_file_gets_one_line_per_epoch_and_no_progress_bars(tmp_path):
    """stderr redirected (a log, nohup, CI): the bars would write carriage returns and partial
    lines into it; they show only on a terminal (or a notebook), the epoch lines always."""
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "run"
    result = run_cli("fit", "--data", f"features:{tmp_path / 'x.npy'}", "--clusters", "3", "--epochs", "2", "--batch-size", "50", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "it/s" not in result.stderr, result.stderr[:500]
    assert [line.split("  ")[0] for line in result.stderr.splitlines() if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]
    predicted = run_cli("predict", "--checkpoint", str(out), "--data", f"features:{tmp_path / 'x.npy'}", "--out", str(tmp_path / "p.csv"))
    assert predicted.returncode == 0 and "\r" not in predicted.stderr, predicted.stderr[:500]


def test_file_and_folder_names_that_are_not_utf8_go_through_fit_predict_and_report(tmp_path):
    """Names from another system's encoding (Latin-1 e.g.) reach Python as lone surrogates; the
    CSVs write the names' own bytes back (the paths open the files), figures show U+FFFD."""
    from PIL import Image

    root = os.fsencode(tmp_path / "photos")
    rng = np.random.default_rng(0)
    try:
        for folder in (b"plain", b"caf\xe9"):
            os.makedirs(os.path.join(root, folder))
            for i, name in enumerate((b"a.png", b"b.png", b"\xff\xfe.png")):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(os.path.join(root, folder, name))
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only valid UTF-8 names")
    data, run = f"folder:{tmp_path / 'photos'}", tmp_path / "run"
    result = run_cli("fit", "--data", data, "-k", "2", "--epochs", "1", "--no-cache", "--out", str(run), "--report")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(run / "assignments.csv", encoding="utf-8", errors="surrogateescape", newline="") as f:
        paths = [row["path"] for row in csv.DictReader(f)]
    assert len(paths) == 6 and all(os.path.isfile(p) for p in paths)
    assert (run / "report.html").is_file() and (run / "figures" / "confusion.png").is_file()  # class names drawn
    predicted = run_cli("predict", "--checkpoint", str(run), "--data", data, "--out", str(tmp_path / "p.csv"), "--export", str(tmp_path / "sorted"))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert sum(len([f for f in files if not f.startswith(".")]) for _, _, files in os.walk(tmp_path / "sorted")) == 6  # and the export's record


def test_a_run_names_its_data_by_absolute_path_so_report_and_resume_work_from_anywhere(tmp_path, monkeypatch):
    """fit run with a relative features: path; report from another directory finds the data, and
    --resume of a run whose config still holds the relative spec (runs of before) is accepted."""
    import yaml

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    rng = np.random.default_rng(0)
    np.save(work / "x.npy", rng.normal(size=(60, 4)).astype(np.float32))
    np.save(work / "x.labels.npy", np.repeat([0, 1], 30))
    monkeypatch.chdir(work)
    assert main(["fit", "--data", "features:x.npy", "-k", "2", "--epochs", "1", "--out", "run", "--no-progress"]) == 0
    config = yaml.safe_load((work / "run" / "config.yaml").read_text())
    assert config["data"] == f"features:{work / 'x.npy'}"
    monkeypatch.chdir(elsewhere)
    assert main(["report", str(work / "run")]) == 0
    assert "path not found" not in (work / "run" / "report.html").read_text()
    monkeypatch.chdir(work)
    from otclust.engine import same_data

    assert same_data("features:x.npy", f"features:{work / 'x.npy'}") and not same_data("features:y.npy", f"features:{work / 'x.npy'}")
    assert same_data("digits", "digits") and not same_data("features:x.npy", "digits")


@pytest.mark.parametrize(
    "command, out_name",
    [
        (["predict", "--checkpoint", "RUN"], "x.csv"),
        (["evaluate", "--checkpoint", "RUN"], "x.json"),
        (["sweep", "--method", "clot", "--clusters", "2", "--epochs", "1", "--param", "sinkhorn_eps", "--values", "0.05"], "x"),
        (["compare", "--methods", "clot", "--clusters", "2", "--epochs", "1", "--seeds", "1"], "x"),
    ],
)
def test_an_out_inside_an_ordinary_file_is_refused_in_one_line(tmp_path, capsys, command, out_name):
    """--out afile/x: mkdir or the write used to end in FileExistsError or NotADirectoryError."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    (tmp_path / "afile").write_text("the user's")
    out = tmp_path / "afile" / out_name
    assert main([*command, "--data", f"features:{tmp_path / 'x.npy'}", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"otclust: error: cannot create the {'output folder' if out_name == 'x' else out_name.split('.')[1].upper() + ' file'} {out}: {tmp_path / 'afile'} is a file; choose another --out"]
    assert (tmp_path / "afile").read_text() == "the user's"


def test_predict_into_a_folder_says_at_once_that_out_is_a_file(tmp_path, capsys):
    """It used to answer 'already exists: pass --overwrite', and with --overwrite 'is a folder'."""
    (tmp_path / "somedir").mkdir()
    assert main(["predict", "--checkpoint", str(tmp_path / "RUN"), "--data", "digits", "--out", str(tmp_path / "somedir")]) == 2
    assert capsys.readouterr().err.strip() == f"otclust: error: --out {tmp_path / 'somedir'} is a folder: give a CSV file name"


def test_numbers_written_like_1e_3_are_numbers_in_configs_and_params(tmp_path):
    """YAML 1.1 (PyYAML) reads 1e-3 as text; a user writing lr: 1e-3 means the number."""
    import yaml

    from otclust.config import coerce_param, read_settings

    assert read_settings("lr: 1e-3\nx: -2E+5\ny: 1.5e3\nz: e5") == {"lr": 0.001, "x": -200000.0, "y": 1500.0, "z": "e5"}
    assert coerce_param("2e-1") == 0.2 and coerce_param("[1e-3, 2]") == [0.001, 2]
    with pytest.raises(yaml.YAMLError):
        read_settings("!!python/object/apply:os.system ['true']")  # still the safe loader
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32))
    (tmp_path / "c.yaml").write_text("lr: 1e-3\nepochs: 1\nparams:\n  sinkhorn_eps: 2e-1\n")
    out = tmp_path / "run"
    assert main(["fit", "--config", str(tmp_path / "c.yaml"), "--data", f"features:{tmp_path / 'x.npy'}", "-k", "2", "--param", "temperature=5e-1", "--out", str(out), "--no-progress"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lr"] == 0.001 and saved["params"]["sinkhorn_eps"] == 0.2 and saved["params"]["temperature"] == 0.5


def test_warnings_are_one_line_and_a_foreign_pickle_is_only_the_error(tmp_path):
    """A deprecated parameter warns in one line, without Python's file, line and source; a plain
    pickle given as a checkpoint gets otclust's one-line error, without torch's notice before it."""
    import pickle

    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32))
    result = run_cli("fit", "--data", f"features:{tmp_path / 'x.npy'}", "-k", "2", "--epochs", "1", "--param", "predict_by=head", "--no-progress", "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "deprecated" in line]
    assert warned == ["otclust: warning: method parameter(s) predict_by are deprecated: use --readout head|kmeans|smoothed and --readout-param"]
    assert ".py:" not in result.stderr
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=4))
    result = run_cli("predict", "--checkpoint", str(tmp_path / "raw.pt"), "--data", f"features:{tmp_path / 'x.npy'}", "--out", str(tmp_path / "p.csv"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_run_folder_inside_the_image_folder_is_refused(tmp_path):
    """--out inside the data folder: the next fit would read the report's figures as images."""
    from PIL import Image

    data = tmp_path / "photos"
    data.mkdir()
    for i in range(4):
        Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(data / f"{i}.png")
    for out in (data, data / "runs" / "one"):
        assert main(["fit", "--data", f"folder:{data}", "-k", "2", "--epochs", "1", "--out", str(out), "--overwrite", "--no-progress"]) == 2
    assert sorted(p.name for p in data.iterdir()) == ["0.png", "1.png", "2.png", "3.png"]


def test_assignments_name_each_label_by_its_class_folder(tmp_path):
    """Folders 1, 2 and 10 are labels 0, 2 and 1 (sorted as text): the class column says which."""
    from PIL import Image

    data = tmp_path / "photos"
    for folder in ("1", "2", "10"):
        (data / folder).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((12, 12), 20 * i + int(folder), np.uint8)).save(data / folder / f"{i}.png")
    assert main(["fit", "--data", f"folder:{data}", "-k", "3", "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    with open(tmp_path / "run" / "assignments.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and all(row["class"] == os.path.basename(os.path.dirname(row["path"])) for row in rows)
    assert {row["class"]: row["label"] for row in rows} == {"1": "0", "10": "1", "2": "2"}


def test_warnings_of_a_fit_stay_note_lines_on_stderr(tmp_path, capsys):
    """The engine's warnings (its `warn`, which the Python API turns into OTClustWarnings) print
    on the command line as the `note: ` lines they always were."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    code = main(["fit", "--method", "drc", "--data", f"features:{tmp_path / 'x.npy'}", "--clusters", "auto", "--no-refit", "--cluster-proportions", "auto",
                 "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ") and ("searches K" in line or "cluster-size" in line)]
    assert notes == [
        "note: --clusters auto searches K in 2-15, but among 12 samples K can be chosen up to 9: searching 2-9",
        "note: drc has no cluster-size constraint; --cluster-proportions is not used",
    ]
