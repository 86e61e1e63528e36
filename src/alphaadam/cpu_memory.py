"""Keep large freed CPU blocks on the heap, so a CPU training step does not page-fault
its temporaries in again every step (docs/trainer.md, "CPU runs").

glibc serves every allocation above ``M_MMAP_THRESHOLD`` (128 KiB at start, adapting up to
32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when it is freed. A CPU training
step allocates and frees tensors of tens to hundreds of MB (GPT-2 BPE logits of 8 x 128 x
50304 floats are 206 MB), so every step the kernel maps, zeroes and faults those pages in
again: measured on 2 cores, more than a third of a ``shakespeare_cpu`` run's wall time was
system time. With a threshold above any block a step allocates and no trimming of the heap
top, freed blocks stay in the process and the next step reuses them.

This is the same setting as ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:
glibc.malloc.trim_threshold=...``, applied at run time through ``mallopt`` so that nobody has
to set the environment before Python starts. It changes where memory comes from, never what
is computed (the tests check bit-identical losses). The price is that the process keeps its
peak heap size until it exits instead of returning freed blocks to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger("alphaadam")

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# mallopt takes an int: the largest threshold it can set (2 GiB - 1). Larger blocks still
# come from mmap, which is also what they need (glibc cannot grow a heap arena that far).
_LARGEST = 2**31 - 1

CPU_ALLOCATOR_CHOICES = ("heap", "system")


@functools.cache
def keep_freed_blocks_on_heap() -> bool:
    """Apply the heap setting to this process (once). Returns whether it took effect:
    ``False`` off Linux/glibc (macOS, Windows, musl), where nothing is changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        # musl has no mallopt symbol; glibc's exists and reports success with 1.
        gnu_get_libc_version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_THRESHOLD, _LARGEST) == 1 and mallopt(_M_TRIM_THRESHOLD, _LARGEST) == 1
    if not ok:
        log.warning(
            "glibc %s refused the heap allocator setting; CPU steps will page-fault their "
            "large temporaries (trainer.cpu_allocator=system silences this)",
            gnu_get_libc_version().decode(),
        )
    return ok


def configure_cpu_allocator(choice: str) -> bool:
    """``trainer.cpu_allocator``: ``"heap"`` applies :func:`keep_freed_blocks_on_heap`,
    ``"system"`` leaves glibc's defaults. Returns whether the heap setting is active."""
    if choice not in CPU_ALLOCATOR_CHOICES:
        raise ValueError(
            f"Invalid trainer.cpu_allocator={choice!r}; valid choices are "
            f"{', '.join(CPU_ALLOCATOR_CHOICES)}"
        )
    return keep_freed_blocks_on_heap() if choice == "heap" else False
