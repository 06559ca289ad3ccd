"""The one exception type for mistakes a user can fix, and the translation of running out of
memory into one.

The CLI prints a UserError as a single line and exits with status 2, without a traceback;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from contextlib import contextmanager

# RuntimeError texts of allocation failures: the CPU allocator's ("can't allocate memory",
# "DefaultCPUAllocator: not enough memory"), CUDA's and other devices' ("out of memory").
_OUT_OF_MEMORY_TEXTS = ("can't allocate memory", "not enough memory", "out of memory")


class UserError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""


class OTClustWarning(UserWarning):
    """Something a run says that its user must see even without progress lines (a setting it does
    not use, a weak choice of K, images converted to fit the model): how `OTClust(verbose=False)`
    reports what the command line prints as `note: ...` lines."""


def is_out_of_memory(error: BaseException) -> bool:
    """MemoryError, torch.OutOfMemoryError (CUDA and other devices) or an allocator's RuntimeError."""
    if isinstance(error, MemoryError):
        return True
    if type(error).__name__ == "OutOfMemoryError":  # torch's; named so torch is not imported here
        return True
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _OUT_OF_MEMORY_TEXTS)


def out_of_memory_message(stage: str, advice: str) -> str:
    return f"out of memory while {stage}: {advice}"


@contextmanager
def memory_guard(stage: str, advice: str):
    """Turns running out of memory inside the block into a UserError naming what to lower.

    `stage` says what was running ("training", "predicting"), `advice` which setting to lower.
    """
    try:
        yield
    except UserError:
        raise
    except (MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        raise UserError(out_of_memory_message(stage, advice)) from None
