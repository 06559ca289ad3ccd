"""benchmarks/checkpoint_interval.py: the two fits differ only in how often they write the run
folder, and the table says so."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import checkpoint_interval  # noqa: E402


def test_fewer_writes_and_the_same_scores(capsys):
    checkpoint_interval.main(["--tiny", "12", "--epochs", "3", "--threads", "1"])
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [(row[1].strip(), row[2].strip()) for row in rows] == [("3", "4"), ("3", "3")]  # epochs 1-3 and the end; epochs 1, 3 and the end
    assert "same scores: yes" in out


def test_tiny_images_show_their_class():
    data = checkpoint_interval.tiny_dataset(8)
    bands = data.data[:, 0].float().mean(dim=2).argmax(dim=1)  # the brightest row of each image
    assert ((bands - 5) // 8).tolist() == data.labels.tolist()
