"""The fused AlphaAdam step: torch.compile path, Triton kernels (interpreted), dispatch.

Both fused paths must step exactly like the reference single-tensor path (fp32 tolerance)
and keep the same state, so checkpoints move between paths.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alphaadam import PRESETS, AlphaAdam
from alphaadam.optim.step_paths import select_fused_impl
from fused_cases import (
    ONE_PASS_SETS,
    ONE_PASS_STEPS,
    OPTION_SETS,
    checkpoint_moves,
    grad_sequence,
    lockstep,
    make_params,
    set_grads,
)

TESTS = Path(__file__).resolve().parent
HAS_TRITON = importlib.util.find_spec("triton") is not None


# ------------------------------------------------------------------- torch.compile path
@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Each test is its own "training run": without a reset, the option sets and dtypes of
    # all tests would pile up compiled variants in one process.
    torch._dynamo.reset()
    yield


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_compile_presets_fp32(preset):
    lockstep("compile", torch.float32, PRESETS[preset])


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float64], ids=["bf16", "fp16", "fp64"]
)
def test_compile_other_param_dtypes(dtype):
    lockstep("compile", dtype, PRESETS["alphaadam"])


@pytest.mark.slow
@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_compile_option_combinations(options):
    lockstep("compile", torch.float32, OPTION_SETS[options])


@pytest.mark.slow
def test_compile_checkpoint_moves_between_paths():
    checkpoint_moves("compile")


@pytest.mark.slow
@pytest.mark.parametrize("options", list(ONE_PASS_SETS))
def test_compile_one_pass_option_sets(options):
    lockstep("compile", torch.float32, ONE_PASS_SETS[options], steps=ONE_PASS_STEPS)


@pytest.mark.slow
def test_compile_one_pass_bf16_params():
    lockstep("compile", torch.bfloat16, ONE_PASS_SETS["one_pass"], steps=ONE_PASS_STEPS)


@pytest.mark.slow
def test_compile_one_pass_checkpoint_moves_between_paths():
    checkpoint_moves("compile", one_pass=True)


@pytest.mark.slow
def test_compile_one_pass_without_host_reads_takes_the_same_steps(monkeypatch):
    # On an accelerator the compiled one-pass step does not read which tensors take the
    # exact step: pass 2 runs for every tensor, a no-op (chosen on the device) for those
    # already updated. Forced on CPU tensors, that branch must give the same steps.
    import alphaadam.optim.fused_compile as module

    monkeypatch.setattr(module, "_flags_readable_on_host", lambda params: False)
    lockstep("compile", torch.float32, ONE_PASS_SETS["one_pass"], steps=ONE_PASS_STEPS)


@pytest.mark.slow
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one_pass"])
def test_compile_scheduler_changing_lr_does_not_recompile(one_pass):
    params = make_params(torch.float32)
    lr = torch.tensor(1e-2)
    opt = AlphaAdam(params, lr=lr, fused="compile", one_pass=one_pass)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    grads = grad_sequence(params, 5)
    # Warm-up: compiles (one-pass: step 2 is its exact step, step 3 its first one-pass).
    for g in grads[: 3 if one_pass else 1]:
        set_grads(params, g)
        opt.step()
        sched.step()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for g in grads[3 if one_pass else 1 :]:
            set_grads(params, g)
            opt.step()
            sched.step()
    assert opt.param_groups[0]["lr"].item() == pytest.approx(1e-2 / 32)


# ------------------------------------------------------------------ Triton (interpreter)
@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install -e '.[dev]')")
def test_triton_kernels_match_reference_in_the_interpreter():
    # The interpreter must be switched on before triton is first imported, so it gets a
    # fresh process; the cases live in triton_interpreter_cases.py.
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(TESTS / "triton_interpreter_cases.py")],
        env=env, cwd=TESTS.parent, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]


# ---------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        (dict(fused="cuda"), r"fused='cuda'.*None, False, True, 'triton', 'cpu', 'compile'"),
        (dict(fused=1.5), r"fused=1.5"),
        (dict(fused=True, foreach=True), r"exclusive"),
        (dict(fused="compile", foreach=True), r"exclusive"),
    ],
)
def test_invalid_fused_choices_name_the_value(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        AlphaAdam(make_params(torch.float32)[:1], **kwargs)


def test_auto_choice_on_cpu_is_the_reference_path():
    params = make_params(torch.float32)
    assert select_fused_impl(None, None, params) is None
    assert select_fused_impl(False, None, params) is None
    from alphaadam.optim.fused_compile import compiled_alphaadam
    from alphaadam.optim.fused_cpu import cpu_alphaadam

    assert select_fused_impl(True, None, params) is cpu_alphaadam
    assert select_fused_impl("cpu", None, params) is cpu_alphaadam
    assert select_fused_impl("compile", None, params) is compiled_alphaadam


def test_auto_choice_on_cuda_is_foreach_until_triton_passed_on_hardware(monkeypatch):
    # Issue 12: the Triton kernels have only run in the interpreter, so fused=None must not
    # pick them on CUDA. A stand-in for CUDA parameters: the choice reads is_cuda and dtype.
    from types import SimpleNamespace

    import alphaadam.optim.step_paths as step_paths

    monkeypatch.setattr(step_paths, "triton_installed", lambda: True)
    cuda_params = [SimpleNamespace(is_cuda=True, dtype=torch.float32, device="cuda:0")]
    assert select_fused_impl(None, None, cuda_params) is None
    if HAS_TRITON:
        from alphaadam.optim.fused_triton import triton_alphaadam

        assert select_fused_impl(True, None, cuda_params) is triton_alphaadam


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_on_cpu_without_the_interpreter_says_how():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs the interpreter")
    params = make_params(torch.float32, shapes=[(5,)])
    params[0].grad = torch.ones(5)
    code = (
        "import torch; from alphaadam import AlphaAdam\n"
        "p = torch.zeros(5, requires_grad=True); p.grad = torch.ones(5)\n"
        "AlphaAdam([p], fused='triton').step()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "TRITON_INTERPRET=1" in proc.stderr and "fused='compile'" in proc.stderr
