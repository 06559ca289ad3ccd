"""Mixed precision: when a run computes in a 16-bit float, and which one.

On CUDA (`amp`, on by default) autocast runs the network in float16 and a GradScaler keeps small
gradients from vanishing. On the CPU (`cpu_amp`, off by default) autocast runs it in bfloat16,
which has float32's range and needs no scaler, but only pays where the CPU computes bfloat16
natively (AVX512-BF16 or AMX): elsewhere oneDNN emulates it and the run gets slower, so the
setting falls back to float32 with a note. CPU autocast leaves the OT solvers in float32 (their
products are not among the ops it casts; tests/test_precision.py checks the plans).

Autocast runs only the backbone in 16 bits. The heads and every loss compute in float32
(`in_float32`): a 16-bit float keeps 8 (bfloat16) or 11 (float16) significant bits, and what
comes after the backbone amplifies that rounding, P^lambda (lambda 5) in the OT pseudo-labels, the
softmax over hundreds of contrastive negatives at temperature 0.5. CPU autocast also casts the
matmuls inside a loss (z @ z.T) to bfloat16 even when their inputs were made float32, so a
`.float()` at the top of a loss does not keep it in float32; disabling autocast does. The heads
(linear layers, SimCLR's two-layer MLP) cost little next to the convolutions of 28-pixel images
and larger; on 8x8 digits they take away what bfloat16 gained (docs/performance.md).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

# x86 flags of native bfloat16 arithmetic in /proc/cpuinfo.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_computes_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU has bfloat16 instructions and PyTorch's oneDNN can use them (Linux x86;
    elsewhere False: no cheap, reliable test)."""
    if not sys.platform.startswith("linux") or not cpuinfo.is_file():
        return False
    try:
        flags = next((line.split(":", 1)[1].split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), [])
    except OSError:
        return False
    if not any(flag in flags for flag in NATIVE_BF16_FLAGS):
        return False
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@dataclass(frozen=True)
class Precision:
    autocast: bool  # run the network under torch.autocast (float16 on CUDA, bfloat16 on the CPU)
    grad_scaler: bool  # float16 gradients need loss scaling; bfloat16 ones do not
    # dtype of the coarse pass of brute-force nearest-neighbour searches (otclust.readout.nearest_neighbors,
    # below its CELLS_FROM rows); None: one exact float32 pass.
    search_dtype: torch.dtype | None
    # The read-out stage (its features, fit and predictions) under autocast too. Not in bfloat16:
    # its features decide the clusters, and `otclust predict` computes them in float32.
    readout_autocast: bool = False


FLOAT32 = Precision(False, False, None)


def resolve_precision(amp: bool, cpu_amp: bool, device: torch.device, warn=lambda message: None) -> Precision:
    if device.type == "cuda":
        return Precision(True, True, None, readout_autocast=True) if amp else FLOAT32
    if not cpu_amp:
        return FLOAT32
    if not cpu_computes_bfloat16():
        warn("--cpu-amp needs a CPU with native bfloat16 (AVX512-BF16 or AMX), which this one lacks: training in float32")
        return FLOAT32
    return Precision(True, False, torch.bfloat16)


def _as_float32(value):
    if torch.is_tensor(value):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_as_float32(item) for item in value)
    return value


def in_float32(function):
    """Decorator for heads' forwards and losses: the function runs with autocast off and its
    floating-point tensor arguments (also inside lists and tuples) in float32. Outside autocast
    it changes nothing for float32 inputs."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return function(*_as_float32(args), **{key: _as_float32(value) for key, value in kwargs.items()})

    return wrapper
