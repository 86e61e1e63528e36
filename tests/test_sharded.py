"""AlphaAdam under FSDP2 (DTensor shards) and DDP equals the single-process optimizer.

Two gloo processes on CPU. Each rank feeds its own batch; FSDP2/DDP average the gradients,
so the single-process reference steps on the mean of both ranks' losses. Shapes are chosen
so that FSDP2 splits tensors unevenly (7 rows -> 4 + 3, 3 rows -> 2 + 1) and one rank holds
an empty shard (1 row -> 1 + 0): a shard-local alpha or mask count would differ from the
whole-tensor one on every such tensor.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from alphaadam.optim import AlphaAdam

pytestmark = pytest.mark.slow

WORLD = 2
STEPS = 4
PRESETS = (
    {"mask": "async", "alpha": "ratio"},
    {"mask": "sync", "alpha": "none"},
    # One-pass: steps 1-2 exact (the async start rule), 3-4 reuse the previous step's
    # whole-tensor alpha and count (all-reduced after the pass), so every rank agrees.
    {"mask": "async", "alpha": "ratio", "one_pass": True},
    # d = the nonzero gradient count, summed over shards like nnz (fc1's column 0 has none).
    {"mask": "sync", "alpha": "ratio", "rescale": "active"},
)
IMPLS = {
    "single": {"foreach": False},
    "foreach": {"foreach": True},
    "compile": {"fused": "compile"},
    "cpu": {"fused": "cpu"},
}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 7)  # weight 7x5 and bias 7: shards of 4 and 3 rows
        self.fc2 = nn.Linear(7, 3)  # 3 rows: 2 + 1
        self.row = nn.Parameter(torch.randn(1, 3))  # 1 row: rank 1 holds an empty shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x))) * self.row.sum()


def _batches(rank: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + rank)
    batches = [torch.randn(6, 5, generator=gen) for _ in range(STEPS)]
    for x in batches:
        # Input 0 is always 0: column 0 of fc1.weight gets no gradient on any rank, so every
        # shard of it holds zeros and the nonzero count must be summed over the shards.
        x[:, 0] = 0
    return batches


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (model(x) ** 2).mean()


def _make_model() -> Net:
    torch.manual_seed(0)
    return Net()


def _reference(preset_kwargs: dict, impl: dict):
    """Single process: the mean loss over both ranks' batches, same optimizer settings."""
    model = _make_model()
    opt = AlphaAdam(model.parameters(), lr=1e-2, weight_decay=0.1, **preset_kwargs, **impl)
    per_rank = [_batches(r) for r in range(WORLD)]
    for step in range(STEPS):
        opt.zero_grad()
        loss = sum(_loss(model, per_rank[r][step]) for r in range(WORLD)) / WORLD
        loss.backward()
        opt.step()
    return model, opt


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _compare(model, opt, ref_model, ref_opt, label: str) -> None:
    for (name, p), rp in zip(model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(_full(p.detach()), rp.detach(), msg=f"{label} param {name}")
        st, rst = opt.state[p], ref_opt.state[rp]
        for key in (
            "exp_avg", "exp_avg_sq", "step", "alpha", "mask_density", "grad_density",
            "reused_scale",
        ):  # fmt: skip
            if key not in rst:
                assert key not in st, key
                continue
            torch.testing.assert_close(
                _full(st[key]), rst[key], msg=lambda m, k=key, n=name: f"{label} {n}.{k}: {m}"
            )


def _worker(rank: int, init_file: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel

        mesh = init_device_mesh("cpu", (WORLD,))
        batches = _batches(rank)
        for preset in PRESETS:
            for impl_name, impl in IMPLS.items():
                ref_model, ref_opt = _reference(preset, impl)

                model = _make_model()
                fully_shard(model.fc1, mesh=mesh)
                fully_shard(model, mesh=mesh)
                local_rows = model.fc1.weight.to_local().shape[0]
                assert local_rows == (4 if rank == 0 else 3), local_rows
                opt = AlphaAdam(model.parameters(), lr=1e-2, weight_decay=0.1, **preset, **impl)
                for x in batches:
                    opt.zero_grad()
                    _loss(model, x).backward()
                    opt.step()
                _compare(model, opt, ref_model, ref_opt, f"fsdp2 {preset} {impl_name}")

                ddp = DistributedDataParallel(_make_model())
                dopt = AlphaAdam(ddp.parameters(), lr=1e-2, weight_decay=0.1, **preset, **impl)
                for x in batches:
                    dopt.zero_grad()
                    _loss(ddp, x).backward()
                    dopt.step()
                _compare(ddp.module, dopt, ref_model, ref_opt, f"ddp {preset} {impl_name}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")
def test_fsdp2_and_ddp_steps_equal_single_process():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        # A failed comparison in either process raises here (ProcessRaisedException).
        mp.spawn(_worker, args=(init_file,), nprocs=WORLD, join=True)


# ----------------------------------------------------------------- baselines under FSDP2
# Optimizer name -> (config kwargs, the package it needs or None).
BASELINES = {
    "adamw": ({}, None),
    "lion": ({}, None),
    "sgd": ({"momentum": 0.9}, None),
    "galore": ({"rank": 2, "update_proj_gap": 2, "target_modules": ["fc1", "fc2"]}, "galore_torch"),
    "adam_mini": ({"dim": 8, "n_heads": 2}, "adam_mini"),
}


class Wide(nn.Module):
    # GaLore projects only matrices whose smaller side exceeds its rank (2): 8x5, 8x8.
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _wide() -> Wide:
    torch.manual_seed(0)
    return Wide()


def _baseline_worker(rank: int, init_file: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from alphaadam.optim.registry import build_optimizer

        mesh = init_device_mesh("cpu", (WORLD,))
        per_rank = [_batches(r) for r in range(WORLD)]
        for name in names:
            kwargs = dict(lr=1e-2, **BASELINES[name][0])
            ref = _wide()
            ref_opt = build_optimizer(name, ref, **kwargs)
            for step in range(STEPS):
                ref_opt.zero_grad()
                (sum(_loss(ref, per_rank[r][step]) for r in range(WORLD)) / WORLD).backward()
                ref_opt.step()
            model = _wide()
            fully_shard(model, mesh=mesh)
            opt = build_optimizer(name, model, **kwargs)
            for step in range(STEPS):
                opt.zero_grad()
                _loss(model, per_rank[rank][step]).backward()
                opt.step()
            for (pname, p), rp in zip(model.named_parameters(), ref.parameters()):
                torch.testing.assert_close(
                    _full(p.detach()), rp.detach(), msg=lambda m, n=f"{name} {pname}": f"{n}: {m}"
                )
        if importlib.util.find_spec("bitsandbytes") is not None:
            model = _wide()
            fully_shard(model, mesh=mesh)
            opt = build_optimizer("adam8bit", model, lr=1e-2)
            _loss(model, per_rank[rank][0]).backward()
            try:
                opt.step()
            except RuntimeError as exc:
                assert "does not support sharded (FSDP2 / DTensor)" in str(exc), exc
            else:
                raise AssertionError("adam8bit stepped FSDP2-sharded parameters without an error")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")
def test_baselines_under_fsdp2_equal_single_process_or_refuse_clearly():
    names = [n for n, (_, pkg) in BASELINES.items() if pkg is None or importlib.util.find_spec(pkg)]
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        mp.spawn(_baseline_worker, args=(init_file, names), nprocs=WORLD, join=True)
