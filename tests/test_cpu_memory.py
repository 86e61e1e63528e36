"""trainer.cpu_allocator: freed large blocks stay on the heap, and results do not change."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from alphaadam.cpu_memory import configure_cpu_allocator
from trainer_helpers import REPO, subprocess_env, train_records

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
    reason="the heap setting is glibc's mallopt; other C libraries are left alone",
)


def test_unknown_choice_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"cpu_allocator='jemalloc'.*heap, system"):
        configure_cpu_allocator("jemalloc")


@glibc
def test_heap_setting_serves_a_large_tensor_from_the_heap_not_from_mmap():
    # mallinfo2 (glibc >= 2.33) reports bytes in mmapped chunks (hblkhd) and in the main
    # arena (arena): an independent view of where a 64 MiB tensor's memory came from.
    script = textwrap.dedent(
        """
        import ctypes, sys, torch
        from alphaadam.cpu_memory import configure_cpu_allocator

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        print(configure_cpu_allocator(sys.argv[1]))
        x = torch.empty(16 * 2**20)  # 64 MiB
        info = libc.mallinfo2()
        print(info.hblkhd >= 64 * 2**20)
        del x
        # The freed 64 MiB are reused: a 48 MiB tensor (room to spare for the small objects
        # Python allocates in between) does not grow the arena.
        y = torch.empty(12 * 2**20)
        print(libc.mallinfo2().arena == info.arena)
        """
    )
    results = {}
    for choice in ("system", "heap"):
        out = subprocess.run(
            [sys.executable, "-c", script, choice],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        results[choice] = out
    assert results["system"][:2] == ["False", "True"]  # glibc default: a fresh mmap
    assert results["heap"] == ["True", "False", "True"]  # on the heap, and reused


@glibc
def test_heap_setting_leaves_training_bit_identical(tmp_path):
    # Two fresh processes (mallopt is process-wide and sticky): every logged loss and grad
    # norm must be equal to the bit.
    records = {}
    for choice in ("system", "heap"):
        subprocess.run(
            [
                sys.executable,
                str(REPO / "train.py"),
                f"trainer.cpu_allocator={choice}",
                f"trainer.output_root={tmp_path / choice}",
                "trainer.max_steps=30",
                "trainer.log_every=1",
                "trainer.progress_bar=false",
                "optimizer=alphaadam",
            ],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        (run_dir,) = (tmp_path / choice).glob("smoke/alphaadam/*")
        records[choice] = [(r["loss"], r["grad_norm"]) for r in train_records(run_dir)]
    assert len(records["heap"]) == 30
    assert records["heap"] == records["system"]
