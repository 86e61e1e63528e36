"""FSDP2 checkpoints: save at step k, resume in fresh processes, continue exactly.

accelerate selects its FSDP plugin only on GPUs (on a CPU it runs MULTI_CPU, i.e. DDP), so
the first test drives the checkpoint module the trainer uses directly: two gloo processes, a
tiny GPT ``fully_shard``-ed per block and at the root (a vocabulary of 37 rows splits
19 + 18), AlphaAdam from the registry (two parameter groups), the trainer's warm-up + cosine
``LambdaLR``, and a resumable batch position. The reference is the same run without
interruption, read from the live shards (``full_tensor``), not from a checkpoint.

The second runs the real trainer with accelerate's own FSDP2 ``prepare`` by switching the
accelerator's distributed type to FSDP after it started its gloo process group on the CPU.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.optim.lr_scheduler import LambdaLR

pytestmark = pytest.mark.slow

WORLD = 2
STEPS = 6
SAVE_AT = 3
VOCAB, BLOCK = 37, 8
STATE_KEYS = ("step", "exp_avg", "exp_avg_sq", "alpha", "mask_density", "grad_density")


class _Stream:
    """Batches depend only on (rank, position): a resumed stream continues the sequence."""

    def __init__(self, rank: int) -> None:
        self.rank, self.position = rank, 0

    def __next__(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1000 * self.rank + self.position)
        self.position += 1
        return torch.randint(0, VOCAB, (3, BLOCK + 1), generator=gen)

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _snapshot(model, optimizer) -> dict:
    """Full parameters and optimizer state, gathered from the live shards."""
    return {
        name: {
            "param": _full(p),
            **{k: _full(optimizer.state[p][k]) for k in STATE_KEYS},
        }
        for name, p in model.named_parameters()
    }


def _worker(rank: int, init_file: str, workdir: str, phase: str) -> None:
    # accelerate reads the launcher's variables; the process group below already exists,
    # so MASTER_PORT is never connected to.
    os.environ.update(
        OMP_NUM_THREADS="1",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="1",
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        from accelerate import Accelerator
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from alphaadam import checkpoint as ck
        from alphaadam.models.gpt import build_gpt
        from alphaadam.optim.registry import build_optimizer
        from alphaadam.trainer import lr_schedule

        accelerator = Accelerator(cpu=True)
        assert accelerator.num_processes == WORLD and accelerator.process_index == rank
        work = Path(workdir)
        ckpt_root = work / "checkpoints"
        resume = phase == "resume"

        # A different seed on resume: the weights must come from the checkpoint.
        torch.manual_seed(1 if resume else 0)
        model = build_gpt(block_size=BLOCK, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=16)
        if resume:
            ckpt = ck.load_checkpoint(ck.latest_checkpoint(ckpt_root), rank, optimizer=rank == 0)
            assert (ckpt["optimizer"] is None) == (rank != 0)
            model.load_state_dict(ckpt["model"])  # before sharding, as the trainer does
        mesh = init_device_mesh("cpu", (WORLD,))
        for block in model.transformer.h:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert ck.is_sharded(model)
        optimizer = build_optimizer("alphaadam", model, lr=3e-2, weight_decay=0.1)
        scheduler = LambdaLR(optimizer, lr_schedule(2, STEPS, 0.1))
        stream = _Stream(rank)
        step, losses = 0, []
        if resume:
            ck.restore_optimizer(model, optimizer, ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            stream.load_state_dict(ckpt["data"])
            ck.set_rng_state(ckpt["rng"])
            step = ckpt["trainer_state"]["step"]
            losses = ckpt["trainer_state"]["losses"]
            restored = _snapshot(model, optimizer)
            at_save = torch.load(work / "at_save.pt", weights_only=False)
            for name, expected in at_save.items():
                for key, value in expected.items():
                    got = restored[name][key]
                    assert got.shape == value.shape, (name, key, got.shape)
                    assert torch.equal(got, value), f"{name}.{key} not restored"

        while step < STEPS:
            tokens = next(stream)
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(mean.item() / WORLD)
            if not resume and step == SAVE_AT:
                if rank == 0:
                    torch.save(_snapshot(model, optimizer), work / "at_save.pt")
                else:
                    _snapshot(model, optimizer)  # full_tensor is a collective
                ck.save_checkpoint(
                    ckpt_root,
                    step,
                    accelerator,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    stream=stream,
                    trainer_state={"step": step, "losses": losses},
                )
        final = _snapshot(model, optimizer)
        if rank == 0:
            torch.save({"losses": losses, "final": final}, work / f"{phase}.pt")
    finally:
        dist.destroy_process_group()


def _spawn(workdir: Path, phase: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _worker, args=(os.path.join(tmp, "init"), str(workdir), phase), nprocs=WORLD, join=True
        )


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")
def test_fsdp2_resume_in_fresh_processes_equals_the_uninterrupted_run(tmp_path):
    _spawn(tmp_path, "uninterrupted")
    ckpts = tmp_path / "checkpoints"
    assert os.readlink(ckpts / "latest") == f"step-{SAVE_AT:08d}"
    assert not list(ckpts.glob(".*tmp*"))  # no debris of the atomic write
    saved = ckpts / f"step-{SAVE_AT:08d}"
    assert sorted(p.name for p in saved.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]

    # The files hold full tensors (37 x 16 embedding), not one rank's 19- or 18-row shard.
    model_file = torch.load(saved / "model.pt", weights_only=False)
    assert model_file["transformer.wte.weight"].shape == (VOCAB, 16)
    optimizer_file = torch.load(saved / "optimizer.pt", weights_only=False)
    wte = optimizer_file["state"]["transformer.wte.weight"]
    assert wte["exp_avg"].shape == wte["exp_avg_sq"].shape == (VOCAB, 16)
    for key in ("step", "alpha", "mask_density"):
        assert wte[key].dim() == 0, key
    assert wte["step"].item() == SAVE_AT
    assert len(optimizer_file["param_groups"]) == 2  # decay / no-decay groups survive

    _spawn(tmp_path, "resume")
    full = torch.load(tmp_path / "uninterrupted.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resume.pt", weights_only=False)
    assert len(full["losses"]) == len(resumed["losses"]) == STEPS
    # Same arithmetic in the same order on the CPU: the continuation is bit-identical.
    assert resumed["losses"] == full["losses"]
    for name, expected in full["final"].items():
        for key, value in expected.items():
            assert torch.equal(resumed["final"][name][key], value), f"{name}.{key}"
    # The steps after the save moved every weight and the masks did something (so the
    # equalities above are not between untouched tensors).
    at_save = torch.load(tmp_path / "at_save.pt", weights_only=False)
    for name, expected in full["final"].items():
        assert not torch.equal(expected["param"], at_save[name]["param"]), name
    densities = [v["mask_density"].item() for v in full["final"].values()]
    assert min(densities) < 1.0


# ------------------------------------------------- the trainer, accelerate's FSDP2 prepare
class _Preempted(Exception):
    pass


TRAINER_RUN = [
    "optimizer=alphaadam",
    "trainer.max_steps=6",
    "trainer.checkpoint_every=3",
    "trainer.eval_every=0",
    "trainer.log_every=1",
    "trainer.device=cpu",
    "trainer.micro_batch_size=2",
    "trainer.gradient_accumulation_steps=2",
]


def _trainer_worker(rank: int, port: int, output_root: str, phase: str) -> None:
    os.environ.update(
        OMP_NUM_THREADS="1",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    import accelerate
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    import alphaadam.trainer as trainer
    from trainer_helpers import run_training

    def fsdp_accelerator(**kwargs):
        accelerator = accelerate.Accelerator(**kwargs)
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["Block"],
            reshard_after_forward=True,
        )
        return accelerator

    trainer.Accelerator = fsdp_accelerator
    if phase == "preempted":
        save = trainer.save_checkpoint

        def save_then_die(root, step, *args, **kwargs):
            out = save(root, step, *args, **kwargs)
            if step == 3:
                raise _Preempted
            return out

        trainer.save_checkpoint = save_then_die
    overrides = [*TRAINER_RUN, *(["trainer.resume=auto"] if phase == "resume" else [])]
    try:
        run_training(overrides, Path(output_root))
    except _Preempted:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_trainer(output_root: Path, phase: str) -> None:
    mp.spawn(_trainer_worker, args=(_free_port(), str(output_root), phase), nprocs=WORLD, join=True)


def _train_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    keys = ("step", "loss", "grad_norm", "alpha_mean", "mask_density_mean", "tokens")
    return [{k: r[k] for k in keys} for r in records if r["kind"] == "train"]


@pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")
def test_trainer_under_accelerate_fsdp2_resumes_a_preempted_run_exactly(tmp_path):
    _spawn_trainer(tmp_path / "a", "uninterrupted")
    _spawn_trainer(tmp_path / "b", "preempted")
    (reference,) = (tmp_path / "a" / "smoke" / "alphaadam").iterdir()
    (run,) = (tmp_path / "b" / "smoke" / "alphaadam").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert os.readlink(run / "checkpoints" / "latest") == "step-00000003"
    optimizer_file = torch.load(run / "checkpoints" / "latest" / "optimizer.pt", weights_only=False)
    assert "transformer.wte.weight" in optimizer_file["state"]  # the sharded (full-state) path

    _spawn_trainer(tmp_path / "b", "resume")
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    expected = _train_records(reference)
    assert [r["step"] for r in expected] == list(range(1, 7))
    assert _train_records(run) == expected  # exact floats
    a = torch.load(reference / "checkpoints" / "latest" / "model.pt")
    b = torch.load(run / "checkpoints" / "latest" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
