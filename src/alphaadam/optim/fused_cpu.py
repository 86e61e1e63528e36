"""The fused AlphaAdam step for CPU tensors: a C++ kernel pair built on first use.

``csrc/alphaadam_cpu.cpp`` holds the two passes of docs/fused.md as plain loops that the
compiler vectorises (``#pragma omp simd``), threaded with ``at::parallel_for`` (so
``torch.set_num_threads`` governs them). It is built with ``torch.utils.cpp_extension.load``
the first time a process uses it (about 45 s on a 2-core machine; needs a C++ compiler and
ninja) and cached in ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), so
later processes load it in well under a second.

The build targets the instruction set torch itself reports for this CPU
(``torch.backends.cpu.get_cpu_capability()``), never ``-march=native``, and that name is part
of the extension's name: a cache shared by machines of different generations (a cluster home
directory) holds one build per instruction set instead of one that crashes elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from .adam_math import AdamHParams
from .masking import MaskConfig
from .sharding import LocalBucket

SOURCE = Path(__file__).with_name("csrc") / "alphaadam_cpu.cpp"
MASK_KINDS = {"none": 0, "async": 1, "sync": 2}
ALPHA_KINDS = {"none": 0, "ratio": 1, "sqrt_ratio": 2}
RESCALE_KINDS = {False: 0, True: 1, "active": 2}
CPU_PARAM_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# Flags per instruction set torch reports. FMA contraction is allowed (as in torch's own
# vectorised kernels): results differ from the reference paths by rounding only.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


def _isa() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in _ISA_FLAGS else "default"


def _compiler_flags(isa: str) -> list[str]:
    if sys.platform == "win32":  # MSVC: no OpenMP simd reductions; plain optimised loops
        return ["/O2"]
    # -fopenmp makes at::parallel_for (inline OpenMP code) actually run threads; the OpenMP
    # symbols resolve to the runtime torch already loaded. Apple's clang has no OpenMP
    # runtime, so on macOS the loops stay vectorised but single-threaded.
    threads = ["-fopenmp-simd"] if sys.platform == "darwin" else ["-fopenmp"]
    return ["-O3", *threads, "-fno-math-errno", *_ISA_FLAGS.get(isa, [])]


def extension_name(isa: str, flags: list[str]) -> str:
    """``alphaadam_cpu_<isa>_<hash of the source and flags>``.

    The hash keeps builds of different sources apart in a shared cache: two checkouts or
    versions of this package on one machine would otherwise rebuild one directory in turn,
    and a process could import the other version's library between the build and its own
    import (seen as ``TypeError: step(): incompatible function arguments``).
    """
    digest = hashlib.sha256(SOURCE.read_bytes() + "\0".join(flags).encode()).hexdigest()[:10]
    return f"alphaadam_cpu_{isa.lower()}_{digest}"


def build_directory(name: str) -> Path:
    """Where ``torch.utils.cpp_extension.load`` keeps ``name`` by default (so existing caches
    are reused): ``$TORCH_EXTENSIONS_DIR/<name>``, else ``<default root>/py311_cpu/<name>``."""
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(get_default_build_root(), f"{python}_cpu")
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """An OS lock on ``directory`` held while torch builds or loads the extension there.

    torch guards a build with a plain ``lock`` file that every ``load()`` creates, even when
    nothing needs building, and that only the process that created it removes. A process
    killed inside ``load()`` (a SIGKILLed training run, a timed-out test) leaves it behind,
    and every later ``load()`` then waits on it forever. This lock dies with its process, so
    whoever holds it knows that any ``lock`` file present is such a leftover and removes it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no fcntl; torch's own lock file alone, as before
        yield
        return
    with open(directory / "alphaadam.flock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_build_failure: str | None = None


@functools.cache
def load_extension() -> ModuleType:
    """Build (once per machine, instruction set and source) and import the C++ step.

    A failed build is not retried in the same process: every later call raises the same
    error at once instead of spending another build's minute on it.
    """
    global _build_failure
    if _build_failure is not None:
        raise RuntimeError(_build_failure)
    from torch.utils.cpp_extension import load

    isa = _isa()
    flags = _compiler_flags(isa)
    name = extension_name(isa, flags)
    directory = build_directory(name)
    try:
        with _build_lock(directory):
            return load(
                name=name,
                sources=[str(SOURCE)],
                extra_cflags=flags,
                build_directory=str(directory),
                verbose=os.environ.get("ALPHAADAM_VERBOSE_BUILD") == "1",
            )
    except Exception as exc:  # compiler missing, ninja missing, a build error
        _build_failure = (
            f"fused='cpu' could not build its C++ kernel in {directory} "
            f"({type(exc).__name__}: {exc}). It needs a C++ compiler (g++/clang++) and ninja "
            "(pip install ninja); set ALPHAADAM_VERBOSE_BUILD=1 to see the build log, or use "
            "fused='compile' or fused=False instead"
        )
        raise RuntimeError(_build_failure) from exc


_NO_PREVIOUS = torch.empty(0, dtype=torch.float64)  # every tensor takes the exact step


def _byte_buffer(workspace: dict[str, Tensor], key: str, nbytes: int) -> Tensor:
    """At least ``nbytes`` bytes of ``workspace[key]``, grown (never shrunk) on demand."""
    buffer = workspace.get(key)
    if buffer is None or buffer.numel() < nbytes:
        buffer = workspace[key] = torch.empty(nbytes, dtype=torch.uint8)
    return buffer


def _lr_value(lr: float | Tensor) -> float:
    # A CPU tensor lr (a scheduler's) is read without any device synchronisation.
    return float(lr.item()) if isinstance(lr, Tensor) else float(lr)


def cpu_alphaadam(
    bucket: LocalBucket,
    hp: AdamHParams,
    cfg: MaskConfig,
    *,
    workspace: dict[str, Tensor] | None = None,
) -> None:
    """Same arguments and results as ``reference_paths.single_tensor_alphaadam``.

    ``workspace``: the optimizer's scratch buffers, kept across steps and sized once to the
    largest need, so a steady-state step allocates nothing large (a fresh 37 MB mask for
    GPT-2's embedding every step cost page faults and made the step time bimodal). Whole
    tensors: pass 1 leaves ``phi * u`` of one tensor at a time in ``workspace["cpu_kept"]``
    (the largest masked tensor's size in its state dtype: 154 MB for GPT-2 small's
    embedding), which pass 2 reads instead of recomputing ``u`` from the moments. Local
    shards: every tensor's pass-1 output must outlive the all-reduce, so pass 1 writes
    1-byte masks, consecutive in ``workspace["cpu_mask"]``, and pass 2 recomputes ``u``.
    """
    ext = load_extension()
    params, grads, stats = bucket.params, bucket.grads, bucket.stats
    alphas, densities, grad_densities = (
        (list(t) for t in zip(*stats)) if cfg.active else ([], [], [])
    )
    # Unpacked for the C++ signature, which takes plain values.
    lr, beta1, beta2, eps = _lr_value(hp.lr), hp.beta1, hp.beta2, hp.eps
    weight_decay, bias_correction, maximize = hp.weight_decay, hp.bias_correction, hp.maximize
    mask_kind = MASK_KINDS[cfg.mask]
    alpha_kind = ALPHA_KINDS[cfg.alpha]
    rescale_kind = RESCALE_KINDS[cfg.rescale]
    # One-pass: each tensor's previous multiplier (0: take the exact step), read in C++.
    previous = _NO_PREVIOUS
    if bucket.previous_scales is not None and cfg.active:
        previous = torch.stack(bucket.previous_scales).to(torch.float64)
    if workspace is None:
        workspace = {}
    if bucket.reduce_sums is None or not cfg.active:
        # Whole tensors (or mask="none", which needs no sums): one call for everything; the
        # tensors' phi * u (and masks) take turns in one buffer.
        largest = (
            max((m.numel() * (m.element_size() + 1) for m in bucket.exp_avgs), default=0)
            if cfg.active
            else 0
        )
        ext.step(
            params, grads, bucket.exp_avgs, bucket.exp_avg_sqs, bucket.steps, alphas,
            densities, grad_densities, previous, _byte_buffer(workspace, "cpu_kept", largest),
            lr, beta1, beta2, eps,
            weight_decay, bias_correction, maximize, mask_kind, alpha_kind,
            float(cfg.alpha_max), rescale_kind,
        )  # fmt: skip
        return
    # Local shards: pass 1 for all, one all_reduce of the [n, 4] sums, pass 2 for all (for the
    # tensors that took a one-pass update in pass 1, only their alpha and density). Every
    # mask is alive between the passes: consecutive slices of one buffer.
    reuses = previous.gt(0).tolist() if previous.numel() else [False] * len(grads)
    sizes = [0 if reuse else g.numel() for g, reuse in zip(grads, reuses)]
    masks = list(
        _byte_buffer(workspace, "cpu_mask", sum(sizes)).narrow(0, 0, sum(sizes)).split(sizes)
    )
    sums = ext.moments_and_sums(
        params, grads, bucket.exp_avgs, bucket.exp_avg_sqs, bucket.steps, masks, previous,
        lr, beta1, beta2, eps, weight_decay, bias_correction, maximize, mask_kind,
    )  # fmt: skip
    sums = bucket.reduce_sums(sums).to(torch.float64).contiguous()
    ext.apply_from_sums(
        params, bucket.exp_avgs, bucket.exp_avg_sqs, bucket.steps, masks, sums,
        list(bucket.numels), alphas, densities, grad_densities, previous, lr, beta1, beta2, eps,
        weight_decay, bias_correction, alpha_kind, float(cfg.alpha_max), rescale_kind,
    )  # fmt: skip
