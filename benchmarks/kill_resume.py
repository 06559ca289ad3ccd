"""kill -9 at random moments of `otclust fit`, then `--resume` until the run is done.

Checks, for every trial, that (a) each `--resume` starts (it never refuses the checkpoint a killed
run left), and (b) the finished run's metrics.json has exactly the ACC, NMI and ARI of an
uninterrupted run of the same settings (CPU, one thread: deterministic).

Half of the trials kill at a uniformly random time of the run; the other half kill inside a
checkpoint write: the child process (this file with --child) slows the write of model.pt's
temporary file down (half the bytes, a pause, the rest) and says on stderr when a write starts,
so the kill lands while the file is half-written; it also writes a checkpoint after every epoch.
Nothing of these hooks is in otclust itself.

    PYTHONPATH=src python benchmarks/kill_resume.py --trials 20
    PYTHONPATH=src python benchmarks/kill_resume.py --trials 4 --data digits --epochs 2 --param predict_by=head

Exit status 0 when every trial passed, 1 otherwise. tests/test_faults.py runs two trials.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WRITE_STARTED = "KILL_RESUME: checkpoint write started"
SCORES = ("acc", "nmi", "ari")


# --- the child: otclust fit with a slow checkpoint write ------------------------------------
def install_slow_checkpoint_write(pause: float) -> None:
    """Every write of model.pt's temporary file: announce it, write half, pause, write the rest."""
    real_fdopen = os.fdopen

    class SlowFile:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            print(WRITE_STARTED, file=sys.stderr, flush=True)
            half = len(data) // 2
            self.file.write(data[:half])
            self.file.flush()
            time.sleep(pause)
            return self.file.write(data[half:])

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def fdopen(handle, *args, **kwargs):
        file = real_fdopen(handle, *args, **kwargs)
        try:
            name = os.path.basename(os.readlink(f"/proc/self/fd/{handle}"))
        except OSError:
            return file
        return SlowFile(file) if name.startswith(".model.pt.") and name.endswith(".tmp") else file

    os.fdopen = fdopen


def child_main(fit_args: list[str], pause: float) -> int:
    import torch

    torch.set_num_threads(1)
    install_slow_checkpoint_write(pause)
    import otclust.engine

    # A checkpoint after every epoch (otclust writes one at most every 30 s after the first), so
    # that the in-write trials can aim at the write of any epoch.
    otclust.engine.CHECKPOINT_EVERY_SECONDS = 0.0
    from otclust.cli import main

    return main(fit_args)


# --- the parent ----------------------------------------------------------------------------
@dataclass
class Setup:
    root: Path
    data: str = "digits"
    epochs: int = 3
    extra: list[str] = field(default_factory=list)
    seed: int = 0
    pause: float = 0.3
    fork: bool = True  # children forked from this process (fast) rather than fresh interpreters

    def fit_args(self, out: Path) -> list[str]:
        return ["fit", "--data", self.data, "--epochs", str(self.epochs), "--seed", str(self.seed), "--out", str(out), "--no-progress", *self.extra]


class Child:
    """One `otclust fit` process, with its stderr readable line by line."""

    def __init__(self, setup: Setup, args: list[str]):
        self.started = time.perf_counter()
        if setup.fork:
            read_end, write_end = os.pipe()
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: never returns
                code = 1
                try:
                    os.dup2(write_end, 2)
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
                    sys.stdout = open(os.devnull, "w")
                    code = child_main(args, setup.pause)
                finally:
                    os._exit(code)
            os.close(write_end)
            self.pid, self.process = pid, None
            self.stderr = os.fdopen(read_end, "r")
        else:
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--child", "--pause", str(setup.pause), "--", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
            )
            self.pid, self.stderr = self.process.pid, self.process.stderr
        self.lines: list[str] = []
        self.killed = False

    def read_until_write(self, count: int) -> bool:
        """Reads stderr until the `count`-th checkpoint write starts (True) or the process ends."""
        seen = 0
        for line in self.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.startswith(WRITE_STARTED):
                seen += 1
                if seen == count:
                    return True
        return False

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            self.killed = True
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        """Exit status; -9 when killed by SIGKILL."""
        self.lines += [line.rstrip("\n") for line in self.stderr]
        self.stderr.close()
        if self.process is not None:
            code = self.process.wait()
        else:
            _, status = os.waitpid(self.pid, 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.seconds = time.perf_counter() - self.started
        self.killed = self.killed and code == -signal.SIGKILL
        return code

    def errors(self) -> list[str]:
        return [line for line in self.lines if line.startswith("otclust: error") or line.startswith("Traceback")]


@dataclass
class Reference:
    metrics: dict
    seconds: float


@dataclass
class TrialResult:
    index: int
    mode: str
    kill_after: float | None = None  # seconds after the start, when the kill was sent
    killed: bool = False
    killed_in_write: bool = False
    checkpoint_epoch_after_kill: int | None = None  # None: no model.pt yet (a fresh start follows)
    resumes: int = 0
    fresh_restarts: int = 0
    resume_always_started: bool = True
    failure: str = ""
    metrics: dict = field(default_factory=dict)
    stale_temp_files: int = 0


def read_scores(out: Path) -> dict:
    final = json.loads((out / "metrics.json").read_text())
    return {key: final[key] for key in SCORES if key in final}


def checkpoint_epoch(out: Path) -> int | None:
    from otclust.checkpoint import read_checkpoint
    from otclust.errors import UserError

    try:
        return int(read_checkpoint(out / "model.pt")["epoch"]) if (out / "model.pt").is_file() else None
    except UserError as error:
        return f"unreadable: {error}"


def uninterrupted(setup: Setup) -> Reference:
    out = setup.root / "uninterrupted"
    shutil.rmtree(out, ignore_errors=True)
    child = Child(setup, setup.fit_args(out))
    code = child.wait()
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed ({code}): {child.lines[-3:]}")
    return Reference(read_scores(out), child.seconds)


def trial(setup: Setup, reference: Reference, mode: str, rng: np.random.Generator, index: int) -> TrialResult:
    """One run killed once (mode 'anytime' or 'in-write'), then resumed (or restarted when no
    checkpoint existed yet) until it finishes."""
    out = setup.root / f"trial{index}"
    shutil.rmtree(out, ignore_errors=True)
    result = TrialResult(index, mode)
    child = Child(setup, setup.fit_args(out))
    if mode == "in-write":
        # Each epoch writes model.pt once, and the end of training once more.
        target = int(rng.integers(1, setup.epochs + 2))
        if child.read_until_write(target):
            time.sleep(float(rng.uniform(0, setup.pause)))
            result.kill_after = time.perf_counter() - child.started
            child.kill()
    else:
        delay = float(rng.uniform(0, reference.seconds))
        time.sleep(delay)
        result.kill_after = time.perf_counter() - child.started
        child.kill()
    code = child.wait()
    result.killed = child.killed
    result.killed_in_write = child.killed and mode == "in-write"
    if not child.killed and code != 0:
        result.failure = f"the first run failed ({code}): {child.errors()[-1:]}"
        return result
    if child.killed:
        result.checkpoint_epoch_after_kill = checkpoint_epoch(out)
    for _ in range(5):
        if not child.killed and (out / "metrics.json").is_file():
            break
        resuming = (out / "model.pt").is_file()
        if resuming:
            result.resumes += 1
            child = Child(setup, setup.fit_args(out) + ["--resume"])
        else:  # killed before the first checkpoint: nothing to resume, start again
            result.fresh_restarts += 1
            child = Child(setup, setup.fit_args(out) + ["--overwrite"])
        code = child.wait()
        if code != 0 or (resuming and not any(line.startswith("resuming from epoch") for line in child.lines)):
            result.resume_always_started = not resuming
            result.failure = f"exit {code}: {(child.errors() or child.lines)[-1:]}"
            return result
    else:
        result.failure = "did not finish in 5 attempts"
        return result
    result.metrics = read_scores(out)
    result.stale_temp_files = len(list(out.glob(".*.tmp")))
    return result


def format_table(results: list[TrialResult], reference: Reference) -> str:
    rows = ["| trial | kill | killed after (s) | model.pt after the kill | resumes | fresh restarts | resume started | ACC | NMI | ARI | equal to uninterrupted |", "|" + " --- |" * 11]
    for r in results:
        where = "inside a checkpoint write" if r.killed_in_write else ("at a random time" if r.killed else "none (the run had finished)")
        epoch = "none yet" if r.checkpoint_epoch_after_kill is None else f"epoch {r.checkpoint_epoch_after_kill}"
        scores = [f"{r.metrics[key]:.4f}" if key in r.metrics else "-" for key in SCORES]
        rows.append(
            f"| {r.index} | {where} | {'-' if r.kill_after is None else f'{r.kill_after:.2f}'} | {epoch if r.killed else '-'} | {r.resumes} | {r.fresh_restarts} | "
            f"{'yes' if r.resume_always_started else 'NO: ' + r.failure} | {' | '.join(scores)} | {'yes' if r.metrics == reference.metrics else 'NO'} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        parser = argparse.ArgumentParser()
        parser.add_argument("--child", action="store_true")
        parser.add_argument("--pause", type=float, default=0.3)
        known, rest = parser.parse_known_args(argv)
        return child_main([a for a in rest if a != "--"], known.pause)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the runs' seed")
    parser.add_argument("--trial-seed", type=int, default=0, help="seed of the kill times")
    parser.add_argument("--param", action="append", default=[], help="passed to otclust fit")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds each checkpoint write pauses half-way")
    parser.add_argument("--fresh-processes", action="store_true", help="start each run as a new interpreter (default: fork this one, faster)")
    parser.add_argument("--keep", default=None, help="folder to keep the run folders in (default: a temporary one)")
    args = parser.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kill-resume-"))
    root.mkdir(parents=True, exist_ok=True)
    extra = [item for pair in args.param for item in ("--param", pair)]
    setup = Setup(root=root, data=args.data, epochs=args.epochs, extra=extra, seed=args.seed, pause=args.pause, fork=not args.fresh_processes)
    if setup.fork:
        import torch

        torch.set_num_threads(1)
    started = time.perf_counter()
    reference = uninterrupted(setup)
    print(f"uninterrupted: {reference.metrics} in {reference.seconds:.1f}s", flush=True)
    rng = np.random.default_rng(args.trial_seed)
    results = []
    for index in range(args.trials):
        mode = "anytime" if index % 2 == 0 else "in-write"
        results.append(trial(setup, reference, mode, rng, index))
        r = results[-1]
        print(f"trial {index} ({mode}): killed={r.killed} in_write={r.killed_in_write} resumes={r.resumes} equal={r.metrics == reference.metrics} {r.failure}", flush=True)
    print()
    print(format_table(results, reference))
    passed = all(r.resume_always_started and r.metrics == reference.metrics and not r.stale_temp_files for r in results)
    killed = sum(r.killed for r in results)
    in_write = sum(r.killed_in_write for r in results)
    print(f"\n{len(results)} trials, {killed} killed ({in_write} inside a checkpoint write); resume always started: "
          f"{all(r.resume_always_started for r in results)}; final metrics equal to the uninterrupted run's: "
          f"{sum(r.metrics == reference.metrics for r in results)}/{len(results)}; stale temporary files left: {sum(r.stale_temp_files for r in results)}; "
          f"{time.perf_counter() - started:.0f}s")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
