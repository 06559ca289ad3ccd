"""How long a run trains: the default budget, which grows with the data, and schedules within it.

A budget counted in epochs gives a small data set almost no training (50 epochs of 1,000 images
at batch 256 are 200 optimizer steps) and a large one days; a budget counted in steps does the
opposite (thousands of passes over a small set, a fraction of one over a large set). The default
sits between the two: the optimizer steps (at the reference batch of 256) grow as the square root
of the number of samples N, so the passes over the data shrink as 1/sqrt(N). A larger set needs
more steps, since it holds more to fit, but fewer passes, since each pass already shows the
network more distinct examples. The constant puts a set of the size of the common benchmarks
(tens of thousands of images) at a few tens of passes, the order the papers' CPU-sized recipes
use. A floor keeps tiny sets above the few hundred steps an optimizer needs from a random start;
a cap bounds the compute on huge sets, where `--epochs` or `--steps` say what one can afford.

The floor counts samples (500 steps of 256), so below one batch it means many passes over the
data, and tens of thousands for a handful of files (64,000 for 2 images). So the default never
exceeds the passes the floor gives 40 images (MAX_DEFAULT_EPOCHS): nothing changes where an epoch
sees 40 samples or more (every method's default batch is 64 or more), and no quality has been
measured below 100 images. Counting the floor in optimizer steps instead was measured on 100
images and not adopted (docs/ablations.md).

The budget is counted in samples seen, so a method with a smaller batch takes proportionally
more (cheaper) steps and every method gets the same compute; it is rounded up to whole epochs,
since methods act between epochs (re-clustering, re-labelling). Methods express their own
schedules (warm-ups, frozen phases, re-clusterings) as fractions of the run or counts spread over
it (`fraction_of_epochs`, `spread_epochs`), so they follow whatever budget the run gets.

A method may ask for the short budget, a tenth of those steps with the same floor: CLOT on a
frozen backbone's embeddings (`ClusteringMethod.short_budget`), whose second views come from a
fixed kNN graph of fixed vectors, so that there are no invariances to learn from augmentations.
On the frozen-feature sets measured (docs/pretrained.md) a tenth reached the read-out ACC of the
full budget on five of six and cost 2 points on the sixth (digits), in a fifth to a seventh of
the training time; DRC and SeLa on plain feature vectors lost 3 to 14 points with it, so it is
not a rule for all feature vectors.
"""

from __future__ import annotations

import math
import warnings

REFERENCE_BATCH = 256
STEPS_PER_ROOT_SAMPLE = 30  # reference-batch steps per sqrt(N)
SHORT_STEPS_PER_ROOT_SAMPLE = 3  # the same for the short budget
MIN_STEPS = 500
MAX_STEPS = 30_000
MAX_DEFAULT_EPOCHS = 3_200  # the floor's passes over 40 images


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    """Optimizer steps of one epoch, as the engine runs it (full batches only, at least one)."""
    return max(1, n_samples // max(1, min(batch_size, n_samples)))


def default_reference_steps(n_samples: int, short: bool = False) -> int:
    """The default budget in steps of REFERENCE_BATCH samples: 30 sqrt(N) (the short budget:
    3 sqrt(N)), within [500, 30000]."""
    per_root = SHORT_STEPS_PER_ROOT_SAMPLE if short else STEPS_PER_ROOT_SAMPLE
    return min(MAX_STEPS, max(MIN_STEPS, round(per_root * math.sqrt(max(n_samples, 1)))))


def default_epochs(n_samples: int, batch_size: int, scale: float = 1.0, short: bool = False) -> int:
    """Whole epochs that see at least the default budget's samples (times `scale`), at most
    MAX_DEFAULT_EPOCHS (times `scale`)."""
    samples = default_reference_steps(n_samples, short) * REFERENCE_BATCH * scale
    per_epoch = steps_per_epoch(n_samples, batch_size) * min(batch_size, n_samples)
    return max(1, min(math.ceil(samples / max(per_epoch, 1)), math.ceil(MAX_DEFAULT_EPOCHS * scale)))


def epochs_for_steps(steps: int, n_samples: int, batch_size: int) -> int:
    """Whole epochs holding at least `steps` optimizer steps."""
    return max(1, math.ceil(steps / steps_per_epoch(n_samples, batch_size)))


def resolve_epochs(config, n_samples: int, short: bool = False) -> int:
    """The epochs a run trains: --epochs as given, else --steps rounded up to whole epochs, else
    the default budget (or the short one) for N samples at the run's batch size."""
    if config.epochs is not None:
        return int(config.epochs)
    if config.steps is not None:
        return epochs_for_steps(int(config.steps), n_samples, config.batch_size)
    return default_epochs(n_samples, config.batch_size, getattr(config, "budget_scale", 1.0), short)


def describe_length(config) -> str:
    """A run's length as its config gives it, for tables and messages."""
    if config.epochs is not None:
        return f"{config.epochs} epochs"
    return f"{config.steps} steps" if config.steps is not None else "the default budget for the data's size"


def describe_default_budget(sizes=(1_000, 10_000, 70_000), batch_size: int = REFERENCE_BATCH, short: bool = False) -> str:
    """'N=1,000: 317 epochs (951 steps); ...' at a batch size, for --help."""
    parts = []
    for n in sizes:
        epochs = default_epochs(n, batch_size, short=short)
        parts.append(f"N={n:,}: {epochs} epochs ({epochs * steps_per_epoch(n, batch_size):,} steps)")
    return "; ".join(parts)


def spread_epochs(count: int, total_epochs: int) -> list[int]:
    """`count` epochs (0-based) spread evenly over a run, the first at epoch 0, at most one per
    epoch: when a whole-data step (re-labelling, re-clustering) happens `count` times a run."""
    count = max(0, min(count, total_epochs))
    if count == 0:
        return []
    return sorted({(j * total_epochs) // count for j in range(count)})


def fraction_of_epochs(fraction: float, total_epochs: int) -> int:
    """The first `fraction` of a run in whole epochs (rounded), e.g. a pre-training phase."""
    return int(round(fraction * total_epochs))


def epochs_of(fraction: float, total_epochs: int, fixed: int | None = None, least: int = 0) -> int:
    """A phase of a run in whole epochs: the `fraction` share (at least `least`), or `fixed`, a
    deprecated epoch count that wins when it is set."""
    return fixed if fixed is not None else max(least, fraction_of_epochs(fraction, total_epochs))


def fraction_of_steps(fraction: float, total_steps: int) -> int:
    """The first `fraction` of a run in optimizer steps (rounded), e.g. a frozen phase."""
    return int(round(fraction * total_steps))


def warn_deprecated(params, old: str, new: str, method_name: str, reason: str | None = None) -> None:
    """A FutureWarning (shown to users, unlike DeprecationWarning) when a deprecated parameter is set
    (`params`: a method's Params, or the dict of values given for it). `reason` says what to use
    instead; by default that the old parameter fixed an epoch or step count, which its replacement
    expresses as a share of the run. Renamed parameters (`otclust.methods.base.Renamed`) warn
    through here too."""
    value = params.get(old) if isinstance(params, dict) else getattr(params, old)
    if value is not None:
        reason = reason or f"it fixes a count whatever the run's length; use {new}, which follows the run's budget"
        warnings.warn(f"{method_name} parameter {old} is deprecated: {reason}", FutureWarning, stacklevel=3)
