"""benchmarks/time_to_accuracy.py: every variant runs on the data set --data names, and a variant
that would change the data is refused before any run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import time_to_accuracy  # noqa: E402
from fake_datasets import write_idx_dir  # noqa: E402

RECIPE = str(Path(__file__).resolve().parents[1] / "configs" / "clot-digits.yaml")


def test_data_option_replaces_the_recipes_data_for_every_variant(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "fashion"
    write_idx_dir(folder, n_train=60, n_test=20, h=12, w=12)
    loaded = []
    load = time_to_accuracy.load_dataset
    monkeypatch.setattr(time_to_accuracy, "load_dataset", lambda spec, **kwargs: loaded.append(spec) or load(spec, **kwargs))
    monkeypatch.setattr(sys, "argv", ["time_to_accuracy.py", "--config", RECIPE, "--data", f"fashion-mnist:{folder}", "--seeds", "0",
                                      "--variant", "short: epochs=1 readout.restarts=1", "--variant", "shorter: epochs=1 batch_size=32 readout.restarts=1"])
    time_to_accuracy.main()
    out = capsys.readouterr().out
    assert loaded == [f"fashion-mnist:{folder}"]
    assert f"clot on fashion-mnist:{folder}" in out
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| short")] == ["short", "shorter"]


@pytest.mark.parametrize("setting", ["data=digits", "split=test", "image_size=16"])
def test_a_variant_that_changes_the_data_is_refused(setting, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["time_to_accuracy.py", "--config", RECIPE, "--variant", f"other: {setting}"])
    with pytest.raises(SystemExit, match="every variant runs on the same data"):
        time_to_accuracy.main()
