"""benchmarks/mutations.py stays runnable: every fault still finds the line it changes.

The faults are one-line text replacements in a copy of src/; when the code they target is
rewritten, the replacement no longer applies and the benchmark stops at that fault (which went
unnoticed for four faults after the code changes of 2026-12-05). This checks them all without
running the tests each fault names (that is the benchmark's job: minutes)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import mutations  # noqa: E402


@pytest.mark.parametrize("fault", mutations.FAULTS, ids=lambda fault: fault.name)
def test_every_fault_applies_to_todays_code_and_names_tests_that_exist(fault, tmp_path):
    source = ROOT / "src" / "otclust" / fault.file
    copy = tmp_path / "otclust" / fault.file
    copy.parent.mkdir(parents=True)
    copy.write_text(source.read_text())
    line = mutations.apply(fault, tmp_path)
    before, after = source.read_text().splitlines(), copy.read_text().splitlines()
    assert after != before and fault.new.splitlines()[0] in after[line - 1]
    for test in fault.tests:
        assert (ROOT / test.split("::")[0]).exists(), test


def test_fault_names_are_unique():
    names = [fault.name for fault in mutations.FAULTS]
    assert len(names) == len(set(names))
