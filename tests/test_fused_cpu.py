"""The fused C++ CPU step (``fused="cpu"``) against the reference single-tensor path.

``tests/test_alphaadam_reference.py`` also runs it against the float64 transcription of
Algorithm 1 over the whole option grid and the hand-worked examples; here: other dtypes,
tensors larger than one parallel block, thread-count independence, checkpoints, tensor lr
and its errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from alphaadam import PRESETS, AlphaAdam
from alphaadam.optim.fused_cpu import load_extension
from fused_cases import (
    ONE_PASS_SETS,
    ONE_PASS_STEPS,
    OPTION_SETS,
    assert_same,
    checkpoint_moves,
    clone,
    grad_sequence,
    lockstep,
    make_params,
    set_grads,
)


@pytest.fixture(scope="module", autouse=True)
def built_extension():
    # Built (or loaded from the torch extensions cache) once, before any timing-free test.
    load_extension()


@pytest.mark.parametrize("preset", list(PRESETS))
def test_presets_fp32(preset):
    lockstep("cpu", torch.float32, PRESETS[preset])


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float64], ids=["bf16", "fp16", "fp64"]
)
@pytest.mark.parametrize("preset", ["alphaadam", "adamw"])
def test_other_param_dtypes(dtype, preset):
    lockstep("cpu", dtype, PRESETS[preset])


@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_option_combinations(options):
    lockstep("cpu", torch.float32, OPTION_SETS[options])


def test_beta1_at_least_half_uses_the_other_lerp_formula():
    lockstep("cpu", torch.float32, dict(betas=(0.3, 0.9)))


def test_checkpoint_moves_between_paths():
    checkpoint_moves("cpu")


@pytest.mark.parametrize("options", list(ONE_PASS_SETS))
def test_one_pass_option_sets(options):
    lockstep("cpu", torch.float32, ONE_PASS_SETS[options], steps=ONE_PASS_STEPS)


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float64], ids=["bf16", "fp16", "fp64"]
)
def test_one_pass_other_param_dtypes(dtype):
    lockstep("cpu", dtype, ONE_PASS_SETS["one_pass"], steps=ONE_PASS_STEPS)


def test_one_pass_checkpoint_moves_between_paths():
    checkpoint_moves("cpu", one_pass=True)


def _run(params, grads, threads: int, **kwargs):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        opt = AlphaAdam(params, lr=1e-2, weight_decay=0.1, **kwargs)
        for g in grads:
            set_grads(params, g)
            opt.step()
    finally:
        torch.set_num_threads(previous)
    return opt


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one_pass"])
def test_multi_block_tensors_match_reference_and_ignore_thread_count(one_pass):
    # 300 x 700 = 210,000 elements: four parallel blocks of 65,536, the last one partial.
    shapes = [(300, 700), (65536,), (65537,), (5,)]
    params = make_params(torch.float32, shapes=shapes)
    grads = grad_sequence(params, 4)
    ref, one, two = clone(params), clone(params), clone(params)
    opt_ref = _run(ref, grads, 1, foreach=False, one_pass=one_pass)
    opt_one = _run(one, grads, 1, fused="cpu", one_pass=one_pass)
    opt_two = _run(two, grads, 2, fused="cpu", one_pass=one_pass)
    assert_same(ref, opt_ref, one, opt_one, torch.float32)
    # Sums are added per fixed block in a fixed order: bit-identical under any thread count.
    for a, b in zip(one, two):
        assert torch.equal(a, b)
        for key, value in opt_one.state[a].items():
            assert torch.equal(value, opt_two.state[b][key]), key


def _bytes_allocated_during_step(opt) -> int:
    """Bytes that torch's CPU allocator handed out during one ``opt.step()``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        opt.step()
    events = prof.profiler.kineto_results.events()
    return sum(e.nbytes() for e in events if e.name() == "[memory]" and e.nbytes() > 0)


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one_pass"])
def test_a_steady_step_allocates_nothing_large(one_pass):
    # Pass 1's output (phi * u of one tensor at a time) lives in a buffer the optimizer keeps
    # (sized once): a steady step allocates only small per-tensor scalars, not a buffer of
    # the largest tensor (4 MB here).
    params = make_params(torch.float32, shapes=[(1024, 1024), (300,), (7, 5)])
    opt = AlphaAdam(params, lr=1e-2, weight_decay=0.1, fused="cpu", one_pass=one_pass)
    for grads in grad_sequence(params, 3):
        set_grads(params, grads)
        opt.step()
    assert _bytes_allocated_during_step(opt) < 16 * 1024
    assert "cpu_mask" not in opt.state_dict()["state"][0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("preset", ["alphaadam", "adamw_sm", "adamw_am"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one_pass"])
def test_bucket_branch_is_bit_identical_to_whole_tensors_and_allocates_nothing_large(
    one_pass, preset, dtype, monkeypatch
):
    # The sharded path (pass 1 for all tensors, reduce the sums, pass 2 for all) with an
    # identity reduction is the whole-tensor step; its masks are slices of the optimizer's
    # buffer. (tests/test_sharded.py runs it with real shards and all_reduce.) The two routes
    # differ in what pass 2 reads: whole tensors the phi * u that pass 1 stored, shards a
    # 1-byte mask with u recomputed from the moments. They must agree bit for bit.
    from alphaadam.optim import fused_cpu

    params = make_params(dtype, shapes=[(1024, 1024), (65_537,), (300,), (7, 5), (0,)])
    whole, bucketed = clone(params), clone(params)
    kwargs = dict(lr=3e-2, weight_decay=0.1, fused="cpu", one_pass=one_pass)
    opt_whole = AlphaAdam.preset(preset, whole, **kwargs)
    opt_bucketed = AlphaAdam.preset(preset, bucketed, **kwargs)
    real_step = fused_cpu.cpu_alphaadam

    def bucket_step(bucket, hp, cfg, **kwargs):
        return real_step(replace(bucket, reduce_sums=lambda sums: sums), hp, cfg, **kwargs)

    for g in grad_sequence(params, 4):
        set_grads(whole, g)
        set_grads(bucketed, g)
        opt_whole.step()
        with monkeypatch.context() as patch:
            patch.setattr(fused_cpu, "cpu_alphaadam", bucket_step)
            opt_bucketed.step()
    for a, b in zip(whole, bucketed):
        assert torch.equal(a, b)
        for key, value in opt_whole.state[a].items():
            assert torch.equal(value, opt_bucketed.state[b][key]), key
    monkeypatch.setattr(fused_cpu, "cpu_alphaadam", bucket_step)
    assert _bytes_allocated_during_step(opt_bucketed) < 16 * 1024


def test_scheduled_tensor_lr_is_read_every_step():
    params = make_params(torch.float32)
    ref, fus = clone(params), clone(params)
    opts = [
        AlphaAdam(ps, lr=torch.tensor(1e-2), **kw)
        for ps, kw in ((ref, {}), (fus, dict(fused="cpu")))
    ]
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in opts]
    for grads in grad_sequence(params, 4):
        set_grads(ref, grads)
        set_grads(fus, grads)
        for o, s in zip(opts, scheds):
            o.step()
            s.step()
    assert_same(ref, opts[0], fus, opts[1], torch.float32)


def test_non_contiguous_parameter_is_refused_with_the_alternative():
    base = torch.randn(4, 6)
    p = base.t().detach().requires_grad_()  # a transposed view: not contiguous
    p.grad = torch.randn(6, 4).t().contiguous().t()
    with pytest.raises(RuntimeError, match=r"contiguous.*fused=False"):
        AlphaAdam([p], fused="cpu").step()


def test_gradient_dtype_mismatch_is_refused():
    p = torch.randn(5, requires_grad=True)
    p.grad_dtype = None  # torch >= 2.10 refuses a float64 grad on a float32 param otherwise
    p.grad = torch.randn(5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"gradients in the parameter dtype.*Double.*Float"):
        AlphaAdam([p], fused="cpu").step()


def test_the_kernel_is_loaded_when_the_optimizer_is_built(monkeypatch):
    # A training run's clock starts after the optimizer is built: the build (or the load
    # of the cached build) must not fall into the first step.
    from alphaadam.optim import fused_cpu

    calls = []
    monkeypatch.setattr(fused_cpu, "load_extension", lambda: calls.append(1))
    AlphaAdam(make_params(torch.float32)[:2], fused="cpu")
    AlphaAdam(make_params(torch.float32)[:2], fused=True)
    assert len(calls) == 2
    AlphaAdam(make_params(torch.float32)[:2])
    AlphaAdam(make_params(torch.float32)[:2], fused="compile")
    assert len(calls) == 2


def test_missing_compiler_says_what_is_needed(tmp_path):
    # A fresh extensions cache and a compiler that does not exist: the build must fail with
    # a message naming what is missing and the alternatives, not a bare ninja traceback.
    code = (
        "import torch; from alphaadam import AlphaAdam\n"
        "p = torch.zeros(3, requires_grad=True); p.grad = torch.ones(3)\n"
        "AlphaAdam([p], fused='cpu').step()\n"
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path), CXX="/nonexistent/c++")
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0
    assert "could not build its C++ kernel" in proc.stderr, proc.stderr[-3000:]
    assert "fused='compile' or fused=False" in proc.stderr


def test_a_lock_file_left_by_a_killed_build_does_not_hang_the_next_load():
    # torch's `lock` file in the build directory, as a process SIGKILLed inside load()
    # leaves it: without our OS lock, every later load() waits on it forever.
    from alphaadam.optim import fused_cpu

    flags = fused_cpu._compiler_flags(fused_cpu._isa())
    directory = fused_cpu.build_directory(fused_cpu.extension_name(fused_cpu._isa(), flags))
    (directory / "lock").touch()
    code = "from alphaadam.optim.fused_cpu import load_extension; load_extension(); print('ok')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
    assert not (directory / "lock").exists()


def test_a_failed_build_is_not_retried_in_the_same_process(tmp_path):
    # Each retry costs a whole build attempt: a suite whose every fused='cpu' test retried a
    # failing build ran for hours. torch's load() is replaced by one that fails and counts.
    code = (
        "import torch.utils.cpp_extension as cpp\n"
        "calls = []\n"
        "def failing_load(**kwargs):\n"
        "    calls.append(kwargs['name'])\n"
        "    raise OSError('no compiler here')\n"
        "cpp.load = failing_load\n"
        "from alphaadam.optim.fused_cpu import load_extension\n"
        "messages = []\n"
        "for _ in range(3):\n"
        "    try:\n"
        "        load_extension()\n"
        "    except RuntimeError as exc:\n"
        "        messages.append(str(exc))\n"
        "print(len(calls), len(messages), len(set(messages)))\n"
        "print(messages[0])\n"
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts, message = proc.stdout.splitlines()[:2]
    assert counts == "1 3 1"  # one build attempt, three calls refused, one message
    assert "no compiler here" in message and "fused='compile' or fused=False" in message


@pytest.mark.parametrize(
    "name", ["alphaadam", "adamw_sm", "adamw_am", "cadamw", "alphaadam_onepass"]
)
def test_optimizer_fused_override_reaches_the_c_plus_plus_step(name):
    # `python train.py optimizer=<name> optimizer.fused=true`: Hydra refuses an override of a
    # key the config lacks, and the trainer passes the optimizer config to the registry.
    from omegaconf import OmegaConf

    from alphaadam.optim.fused_cpu import cpu_alphaadam
    from alphaadam.optim.registry import build_optimizer
    from alphaadam.optim.step_paths import select_fused_impl
    from trainer_helpers import compose_config

    cfg = compose_config([f"optimizer={name}", "optimizer.fused=true"])
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(opt_cfg.pop("name"), model, **opt_cfg)
    for group in opt.param_groups:
        impl = select_fused_impl(group["fused"], group["foreach"], group["params"])
        assert impl is cpu_alphaadam, (name, group["fused"])


def test_extension_name_changes_with_the_source(tmp_path, monkeypatch):
    # Two versions of the kernel never share a build directory in the extensions cache.
    from alphaadam.optim import fused_cpu

    source = tmp_path / "k.cpp"
    source.write_text("int a;")
    monkeypatch.setattr(fused_cpu, "SOURCE", source)
    first = fused_cpu.extension_name("AVX2", ["-O3"])
    assert first == fused_cpu.extension_name("AVX2", ["-O3"])
    assert first.startswith("alphaadam_cpu_avx2_")
    source.write_text("int b;")
    assert fused_cpu.extension_name("AVX2", ["-O3"]) != first
    assert fused_cpu.extension_name("AVX2", ["-O2"]) != fused_cpu.extension_name("AVX2", ["-O3"])


# Sums of one tensor: (||u||^2, ||phi u||^2, nnz, d). Ratios above and below both clips, an
# empty mask (kept = nnz = 0), a zero-size tensor, and counts beyond float32's exact range.
# ||u||^2, ||phi u||^2, ||phi||_0, ||g||_0 and d
COMPENSATION_SUMS = [
    (10.0, 4.0, 3.0, 5.0, 7),
    (5.0, 4.0, 6.0, 7.0, 7),
    (3.0, 0.0, 0.0, 2.0, 7),
    (0.0, 0.0, 0.0, 0.0, 0),
    (7.5e5, 2.9e5, 12_345_679.0, 31_000_003.0, 50_000_001),
]


@pytest.mark.parametrize("rescale", [True, False, "active"])
@pytest.mark.parametrize("alpha_max", [2.0, 1.25])
@pytest.mark.parametrize("alpha", ["ratio", "sqrt_ratio", "none"])
def test_kernel_coefficients_equal_masking_compensation(alpha, alpha_max, rescale):
    # The C++ kernel keeps its own copy of the compensation formula (`coefficients` in
    # csrc/alphaadam_cpu.cpp). Its pass 2 from given sums, on one-element float64 tensors
    # with u = 1 (m = 1, v = 0, eps = 1, no bias correction), lr = 1 and no weight decay,
    # writes p = 0 - lr * scale * alpha and stores alpha and both densities: all four must be
    # masking.compensation's values. Both are IEEE float64 divisions, square roots, minima
    # and products in the same order, so they agree exactly.
    from alphaadam.optim.fused_cpu import ALPHA_KINDS, RESCALE_KINDS
    from alphaadam.optim.masking import MaskConfig, compensation

    cfg = MaskConfig(mask="async", alpha=alpha, alpha_max=alpha_max, rescale=rescale)
    n = len(COMPENSATION_SUMS)
    f64 = dict(dtype=torch.float64)
    params = [torch.zeros(1, **f64) for _ in range(n)]
    alphas = [torch.zeros((), **f64) for _ in range(n)]
    densities = [torch.zeros((), **f64) for _ in range(n)]
    grad_densities = [torch.zeros((), **f64) for _ in range(n)]
    sums = torch.tensor([row[:4] for row in COMPENSATION_SUMS], **f64)
    numels = [row[4] for row in COMPENSATION_SUMS]
    load_extension().apply_from_sums(
        params, [torch.ones(1, **f64) for _ in range(n)], [torch.zeros(1, **f64) for _ in range(n)],
        [torch.ones(()) for _ in range(n)], [torch.ones(1, dtype=torch.uint8) for _ in range(n)],
        sums, numels, alphas, densities, grad_densities, torch.empty(0, **f64), 1.0, 0.9, 0.999,
        1.0, 0.0, False, ALPHA_KINDS[alpha], alpha_max, RESCALE_KINDS[rescale],
    )  # fmt: skip
    scale_alpha, alpha_py, density_py, grad_density_py = compensation(
        sums[:, 0], sums[:, 1], sums[:, 2], torch.tensor(numels, **f64), cfg, sums[:, 3]
    )
    assert torch.equal(torch.cat(params), -scale_alpha)
    assert torch.equal(torch.stack(alphas), alpha_py)
    assert torch.equal(torch.stack(densities), density_py)
    assert torch.equal(torch.stack(grad_densities), grad_density_py)


def test_compensation_by_hand():
    # The numbers worked by hand from Algorithm 1: scale = d / (nnz + 1), alpha = ratio of
    # the sums clipped at alpha_max, alpha_max for an empty mask, density = nnz / d.
    from alphaadam.optim.masking import MaskConfig, compensation

    # rescale="active": d is the nonzero-gradient count instead, d_active / (nnz + 1).
    total, kept, nnz, active = (
        torch.tensor(v, dtype=torch.float64)
        for v in ([10.0, 3.0], [4.0, 0.0], [3.0, 0.0], [5.0, 2.0])
    )
    numels = torch.tensor([7.0, 7.0], dtype=torch.float64)
    cases = {
        # (mask options): ([scale * alpha], [alpha])
        ("ratio", 2.0, True): ([7 / 4 * 2.0, 7 / 1 * 2.0], [2.0, 2.0]),
        ("ratio", 3.0, True): ([7 / 4 * 2.5, 7 / 1 * 3.0], [2.5, 3.0]),
        ("sqrt_ratio", 2.0, True): ([7 / 4 * 2.5**0.5, 7 * 2.0], [2.5**0.5, 2.0]),
        ("none", 2.0, True): ([7 / 4, 7.0], [1.0, 1.0]),
        ("ratio", 2.0, False): ([2.0, 2.0], [2.0, 2.0]),
        ("ratio", 2.0, "active"): ([5 / 4 * 2.0, 2 / 1 * 2.0], [2.0, 2.0]),
        ("none", 2.0, "active"): ([5 / 4, 2.0], [1.0, 1.0]),
    }
    for (alpha, alpha_max, rescale), (expected_scale_alpha, expected_alpha) in cases.items():
        cfg = MaskConfig(alpha=alpha, alpha_max=alpha_max, rescale=rescale)
        scale_alpha, alpha_t, density, grad_density = compensation(
            total, kept, nnz, numels, cfg, active
        )
        assert scale_alpha.tolist() == pytest.approx(expected_scale_alpha, rel=1e-15), cfg
        assert alpha_t.tolist() == pytest.approx(expected_alpha, rel=1e-15), cfg
        assert density.tolist() == [3 / 7, 0.0]
        assert grad_density.tolist() == [5 / 7, 2 / 7]
    # One tensor with a Python element count (the single-tensor path's form).
    scale_alpha, alpha_t, density, grad_density = compensation(
        total[0], kept[0], nnz[0], 7, MaskConfig()
    )
    assert (scale_alpha.item(), alpha_t.item(), density.item()) == pytest.approx((3.5, 2.0, 3 / 7))
    assert grad_density is None  # no count given (only rescale="active" needs one)
    with pytest.raises(ValueError, match="rescale='active' needs the count"):
        compensation(total[0], kept[0], nnz[0], 7, MaskConfig(rescale="active"))
