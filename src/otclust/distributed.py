"""Several processes training one model (data parallel), launched by PyTorch's `torchrun`.

torchrun starts one process per GPU and tells each who it is through environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `init_from_env` joins the process
group they describe (NCCL on CUDA, Gloo on CPU); everything else here is a small helper that is a
no-op, or the identity, in a single process, so code calling it needs no `if distributed:`.

What is shared between processes during training (see README, "Several GPUs and several
machines"): gradients (DistributedDataParallel), the Sinkhorn column sums (`sinkhorn(...,
distributed=True)`), the batch's predicted cluster mass (`ClusteringMethod.target_marginal`),
and the negatives of NT-Xent (`nt_xent_loss(..., gather=True)`, via `all_gather_with_grad`).
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from otclust.errors import UserError

__all__ = [
    "all_gather_rows",
    "all_gather_with_grad",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "env_rank",
    "env_world_size",
    "init_from_env",
    "is_distributed",
    "is_initialized",
    "is_main_process",
    "launched_by_torchrun",
    "rank",
    "world_size",
]


# --- who am I -------------------------------------------------------------------------------
def is_distributed() -> bool:
    """True when a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_initialized() -> bool:
    """True when a process group is running, even of a single process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0, the only process that writes files, logs and shows progress bars."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_rank() -> int:
    """This process's rank as torchrun set it, readable before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# --- joining the group ----------------------------------------------------------------------
def init_from_env(device: str | torch.device = "auto") -> torch.device:
    """Join the process group described by torchrun's environment; return this process's device.

    `device` is the run's --device: auto, cuda or cuda:N give each process the GPU
    cuda:LOCAL_RANK (N is ignored: torchrun assigns the GPUs; auto falls back to the CPU without
    CUDA), cpu keeps every process on the CPU. The backend is NCCL for CUDA and Gloo for the
    CPU. Without torchrun's variables (a plain `otclust fit`), nothing is initialised and the
    device is resolved as usual. A process group that already exists (started by the caller) is
    used as it is.
    """

    name = str(device)
    if not launched_by_torchrun() and not is_initialized():
        return _resolve_device(name)
    if "LOCAL_RANK" in os.environ:
        local_rank = int(os.environ["LOCAL_RANK"])
    elif is_initialized() and torch.cuda.is_available():
        local_rank = dist.get_rank() % torch.cuda.device_count()  # a group started by the caller
    else:
        local_rank = 0
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no CUDA GPU is visible: use --device cpu")
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process with LOCAL_RANK {local_rank} has no GPU: this machine shows {torch.cuda.device_count()}; "
                "start at most that many processes per machine (torchrun --nproc-per-node)"
            )
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
    else:
        resolved = _resolve_device(name)
    if not is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        # The env:// rendezvous waits until all WORLD_SIZE processes have joined.
        dist.init_process_group(backend=backend, init_method="env://")
        atexit.register(_destroy)
    return resolved


def _resolve_device(name: str) -> torch.device:
    return select_device(name)


def select_device(name: str = "auto") -> torch.device:
    """The torch device for --device: auto (CUDA when visible), cpu, cuda, cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no CUDA GPU is visible: use --device cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    # torch.device names any device type it knows, built in or not: without this the first
    # tensor sent there fails with a RuntimeError (e.g. "not linked with support for mps devices").
    if device.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        available = getattr(getattr(torch, device.type, None), "is_available", lambda: True)()
    if not available:
        raise UserError(f"--device {name} was asked for but this machine (or this PyTorch build) has no {device.type.upper()} device: use --device cpu")
    return device




def _destroy() -> None:
    if is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: the current GPU for NCCL, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --- collectives ----------------------------------------------------------------------------
class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each process the gradient of the sum of all processes'
    losses with respect to its own rows (an all_reduce of the incoming gradient, then its slice).

    The same as torch.distributed.nn.functional.all_gather, which torch 2.13 deprecates, with
    a backward that every backend supports (Gloo has no reduce_scatter).
    """

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.contiguous()
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """The rows of every process, concatenated in rank order, with gradients flowing back to each.

    All processes must pass tensors of the same shape. In a single process: the tensor itself.
    """
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a new tensor; the input is left alone). Identity in a single process."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out


@torch.no_grad()
def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over processes (a new tensor). Identity in a single process."""
    if not is_distributed():
        return tensor
    return all_reduce_sum(tensor) / world_size()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj=None, src: int = 0):
    """`obj` of process `src` (any picklable value), returned on every process.

    Tensors inside should be on the CPU: they are unpickled on the device they were saved from.
    """
    if not is_distributed():
        return obj
    holder = [obj if rank() == src else None]
    dist.broadcast_object_list(holder, src=src, device=_comm_device())
    return holder[0]


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate in rank order the rows each process holds (counts may differ); no gradient."""
    if not is_distributed():
        return tensor
    device = _comm_device()
    local = tensor.detach().to(device).contiguous()
    counts = torch.tensor([local.shape[0]], device=device)
    all_counts = [torch.zeros_like(counts) for _ in range(world_size())]
    dist.all_gather(all_counts, counts)
    all_counts = [int(c) for c in all_counts]
    longest = max(all_counts)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, all_counts)]).to(tensor.device)


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy `src`'s buffers (batch-norm statistics, running masses...) into every process's module."""
    if not is_distributed():
        return
    device = _comm_device()
    for buffer in module.buffers():
        if device == buffer.device:
            dist.broadcast(buffer, src=src)
        else:
            staged = buffer.to(device)
            dist.broadcast(staged, src=src)
            buffer.copy_(staged)

