"""Cluster-size priors: the column marginal b of the OT problems.

--cluster-proportions takes 'uniform' (equal sizes, the default of SeLa/SwAV/CLOT), a known prior
(comma-separated numbers or a file of them), or 'auto' (sizes estimated as training goes: from
the model's own predictions by default, by k-means on its features in CLOT). 'auto:TAU' also
relaxes the size constraint itself: the columns of the OT problem are only pulled towards the
estimated sizes by a KL penalty of strength TAU (unbalanced OT, see otclust.ot.unbalanced), so
a cluster can grow past its current estimate when the scores insist. 'auto:p2ot' (or
'auto:p2ot:TAU') estimates the sizes as 'auto' does and solves P²OT's progressive partial problem
(otclust.ot.partial): the sizes KL-relaxed with strength TAU (default 1), and only a share rho of
each batch's mass labelled, the least confident rest going to a virtual cluster, rho ramping from
0.1 to 1 over training. 'p2ot' (or 'p2ot:TAU') is that problem as the paper poses it: the KL
pulls towards equal sizes, and no sizes are estimated. A known prior is a
multiset of sizes, not tied to cluster indices (Genevay et al. point out that a k-means start
can give the 80% size to the wrong cluster), so it is matched to the clusters by rank of their
predicted mass: the largest size goes to the cluster the model currently fills most.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from otclust.errors import UserError


def parse_cluster_proportions(spec: str, n_clusters: int) -> tuple[str, torch.Tensor | None]:
    """Returns (mode, sizes) with mode in {'uniform', 'known', 'auto'}; sizes sum to 1 when known.

    The KL strength of 'auto:TAU' is read by ``size_penalty``, that of 'auto:p2ot[:TAU]' by
    ``partial_transport``.
    """
    spec = str(spec).strip()
    if spec in ("", "uniform"):
        return "uniform", None
    if partial_transport(spec) is not None and not spec.startswith("auto"):
        return "uniform", None  # 'p2ot[:TAU]': the KL pulls towards equal sizes, as in the paper
    if spec == "auto" or spec.startswith("auto:"):
        size_penalty(spec)  # validates TAU
        partial_transport(spec)
        return "auto", None
    text = spec
    if not any(ch == "," for ch in spec) and Path(spec).is_file():
        try:
            text = Path(spec).read_text(encoding="utf-8").replace("\n", ",")
        except UnicodeDecodeError:  # e.g. a .npy of the sizes
            raise UserError(f"--cluster-proportions file {spec} is not text: write the sizes as numbers separated by commas (or one per line)") from None
    elif not any(ch == "," for ch in spec) and not _is_number(spec):
        raise UserError(f"--cluster-proportions '{spec}' is neither uniform, auto, a list like 0.5,0.3,0.2, nor an existing file")
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        # Quote what was read: for a file, its content is what needs fixing, not its name.
        shown = text.strip(", ") if text is not spec else spec
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise UserError(f"--cluster-proportions must hold numbers separated by commas, got '{shown}'" + (f" in {spec}" if text is not spec else "")) from None
    if len(values) != n_clusters:
        raise UserError(f"--cluster-proportions gives {len(values)} sizes but --clusters is {n_clusters}: give one size per cluster")
    # NaN passes a '<= 0' test, and an infinite size leaves NaN after the normalisation below:
    # either made the OT solver raise in the middle of training.
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise UserError(f"--cluster-proportions must all be positive finite numbers, got {', '.join(f'{v:g}' for v in values)}")
    sizes = torch.tensor(values, dtype=torch.float64)
    return "known", (sizes / sizes.sum()).float()


def size_penalty(spec: str) -> float | None:
    """TAU of 'auto:TAU' (KL-relaxed cluster sizes), or None: the sizes are a hard constraint."""
    spec = str(spec).strip()
    if not spec.startswith("auto:") or partial_transport(spec) is not None:
        return None
    text = spec[len("auto:") :]
    if not _is_number(text) or not float(text) > 0:
        raise UserError(f"--cluster-proportions '{spec}': the KL strength after 'auto:' must be a positive number, e.g. auto:0.1")
    return float(text)


PARTIAL_PREFIXES = ("auto:p2ot", "p2ot")  # KL towards the estimated sizes / towards equal sizes
DEFAULT_PARTIAL_TAU = 1.0


def partial_transport(spec: str) -> float | None:
    """KL strength TAU of 'auto:p2ot[:TAU]' or 'p2ot[:TAU]' (progressive partial OT), or None.

    TAU may be 'inf': the sizes are then exact, only the transported share grows.
    """
    spec = str(spec).strip()
    for prefix in PARTIAL_PREFIXES:
        if spec == prefix:
            return DEFAULT_PARTIAL_TAU
        if spec.startswith(prefix + ":"):
            text = spec[len(prefix) + 1 :]
            if not _is_number(text) or not float(text) > 0:
                raise UserError(f"--cluster-proportions '{spec}': the KL strength after '{prefix}:' must be a positive number or inf, e.g. {prefix}:1")
            return float(text)
    return None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def match_prior_to_mass(sizes: torch.Tensor, predicted_mass: torch.Tensor) -> torch.Tensor:
    """Give the k-th largest size to the cluster with the k-th largest predicted mass.

    Sorting both is the optimal matching for any cost convex in the difference of masses, and
    costs O(K log K), so it can run every step.
    """
    order = torch.argsort(predicted_mass, descending=True)
    matched = torch.empty_like(sizes)
    matched[order] = torch.sort(sizes.to(predicted_mass.device), descending=True).values
    return matched


def estimate_sizes(predicted_mass: torch.Tensor, floor: float = 0.2) -> torch.Tensor:
    """'auto' sizes: the model's own running cluster masses, kept above floor/K each.

    The floor keeps the OT constraint from letting a cluster die out, which is the collapse the
    constraint exists to prevent; above it, clusters may grow to the sizes the data suggest.
    """
    k = predicted_mass.numel()
    sizes = predicted_mass.float().clamp(min=floor / k)
    return sizes / sizes.sum()
