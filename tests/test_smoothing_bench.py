"""benchmarks/smoothing.py: refitting a saved run's read-out reproduces the run's own, and
--head-start adds the head's partition as a candidate."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import smoothing  # noqa: E402

from otclust.config import FitConfig  # noqa: E402
from otclust.data import load_dataset  # noqa: E402
from otclust.engine import Trainer  # noqa: E402
from otclust.runs import prepare_output_folder  # noqa: E402


def test_refitting_a_runs_readout_gives_the_runs_scores(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    config = FitConfig(method="clot", data="digits", clusters=10, epochs=1, batch_size=128, seed=0, readout_params={"restarts": 5})
    Trainer(config, out_dir=prepare_output_folder(run), progress=False, log=lambda message: None).fit(load_dataset("digits"))
    own = json.loads((run / "metrics.json").read_text())["readout"]
    monkeypatch.setattr(sys, "argv", ["smoothing.py", str(run), "--neighbors", "10", "--rounds", "5", "--restarts", "5", "--head-start", "false,true"])
    smoothing.main()
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[5].strip() for row in rows] == ["no", "yes"]
    assert float(rows[0][6]) == round(own["acc"], 4)
    assert float(rows[0][7]) == round(own["nmi"], 4)
