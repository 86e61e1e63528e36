"""Sharded parameters (FSDP2 / DTensor): alpha and the mask count over the whole tensor.

Under ``torch.distributed.fsdp.fully_shard`` every parameter, gradient and optimizer state
tensor is a ``DTensor`` whose rank-local shard holds only some rows. AlphaAdam's per-tensor
quantities (``||u||^2``, ``||phi * u||^2``, ``||phi||_0`` and the element count ``d``) are
defined over the *whole* tensor, so computing them on the local shard would give each rank a
different alpha and rescale.

We do not run the update on DTensors: every DTensor reduction is its own collective
(three per tensor per step) and the fused kernels only take plain tensors. Instead the step
runs on the local shards (``to_local()`` shares storage, so in-place writes land in the
DTensor) and the per-tensor partial sums of all tensors that share a mesh and placements are
summed over the sharded mesh dimensions with one ``all_reduce`` per bucket per step.
Replicated mesh dimensions (DDP, the replicate dimension of HSDP) already hold whole-tensor
sums and are not reduced.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

ReduceSums = Callable[[Tensor], Tensor]


@functools.cache
def _dtensor_cls():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return None
    return DTensor


def is_dtensor(t: Tensor | None) -> bool:
    cls = _dtensor_cls()
    return cls is not None and isinstance(t, cls)


def _local(t: Tensor | None) -> Tensor | None:
    return t.to_local() if is_dtensor(t) else t


@dataclass
class LocalBucket:
    """Local shards of tensors sharing one mesh and placements: what a step path updates.

    ``stats`` are each tensor's ``(alpha, mask_density, grad_density)`` state (``None``s without a
    mask); ``numels`` are the global element counts; ``reduce_sums`` sums a tensor of
    rank-local per-tensor partial sums over the shards (``None`` when nothing is sharded);
    ``indices`` are the tensors' positions in the lists :func:`local_buckets` was given.
    ``previous_scales`` (one-pass AlphaAdam only): per tensor, the previous step's multiplier
    of the lr as a 0-d tensor, 0 where the tensor takes the exact step.
    """

    params: list[Tensor] = field(default_factory=list)
    grads: list[Tensor] = field(default_factory=list)
    exp_avgs: list[Tensor] = field(default_factory=list)
    exp_avg_sqs: list[Tensor] = field(default_factory=list)
    steps: list[Tensor] = field(default_factory=list)
    stats: list[tuple[Tensor | None, ...]] = field(default_factory=list)
    numels: list[int] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    reduce_sums: ReduceSums | None = None
    previous_scales: list[Tensor] | None = None

    def subset(self, positions: list[int]) -> LocalBucket:
        """The tensors at ``positions`` of this bucket, as a bucket of their own."""

        def pick(values):
            return None if values is None else [values[i] for i in positions]

        return LocalBucket(
            pick(self.params), pick(self.grads), pick(self.exp_avgs), pick(self.exp_avg_sqs),
            pick(self.steps), pick(self.stats), pick(self.numels), pick(self.indices),
            self.reduce_sums, pick(self.previous_scales),
        )  # fmt: skip


def _shard_reducer(mesh, placements) -> ReduceSums | None:
    from torch.distributed.tensor import Partial, Shard

    for placement in placements:
        if isinstance(placement, Partial):
            raise RuntimeError(
                "AlphaAdam got a parameter with a Partial placement; parameters must be "
                "Shard or Replicate on every mesh dimension"
            )
    shard_dims = [i for i, pl in enumerate(placements) if isinstance(pl, Shard)]
    if not shard_dims:
        return None
    groups = [mesh.get_group(i) for i in shard_dims]

    def reduce_sums(sums: Tensor) -> Tensor:
        import torch.distributed as dist

        sums = sums.contiguous()
        for group in groups:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
        return sums

    return reduce_sums


def local_buckets(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[Tensor],
    stats: list[tuple[Tensor | None, ...]],
    previous_scales: list[Tensor] | None = None,
) -> list[LocalBucket]:
    """Split one param group into buckets of local shards, one per (mesh, placements).

    Bucket order follows first appearance in ``params``, which is the same on every rank
    (FSDP2 gives every rank every parameter), so the collectives line up.
    """
    if not any(is_dtensor(p) for p in params):
        # Nothing sharded (the common case): one bucket of the lists as they are, without
        # the per-tensor checks below, which cost more than a small model's whole step.
        return [
            LocalBucket(
                params, grads, exp_avgs, exp_avg_sqs, steps, stats,
                numels=[p.numel() for p in params], indices=list(range(len(params))),
                previous_scales=previous_scales,
            )
        ]  # fmt: skip
    buckets: dict[object, LocalBucket] = {}
    for i, (p, g, m, v, s, st) in enumerate(
        zip(params, grads, exp_avgs, exp_avg_sqs, steps, stats)
    ):
        if is_dtensor(p):
            key = (id(p.device_mesh), tuple(p.placements))
            if key not in buckets:
                buckets[key] = LocalBucket(
                    reduce_sums=_shard_reducer(p.device_mesh, p.placements),
                    previous_scales=None if previous_scales is None else [],
                )
            bucket = buckets[key]
            if not (is_dtensor(g) and g.placements == p.placements):
                raise RuntimeError(
                    f"AlphaAdam: a DTensor parameter with placements {p.placements} has a "
                    f"gradient with placements {getattr(g, 'placements', 'none (plain tensor)')}; "
                    "they must match (is the model wrapped consistently?)"
                )
        else:
            bucket = buckets.setdefault(
                None, LocalBucket(previous_scales=None if previous_scales is None else [])
            )
        bucket.params.append(_local(p))
        bucket.grads.append(_local(g))
        bucket.exp_avgs.append(_local(m))
        bucket.exp_avg_sqs.append(_local(v))
        bucket.steps.append(s)
        bucket.stats.append(st)
        bucket.numels.append(p.numel())  # DTensor.numel() is the global count
        bucket.indices.append(i)
        if previous_scales is not None:
            bucket.previous_scales.append(previous_scales[i])
    return list(buckets.values())


def reduce_stacked(reduce_sums: ReduceSums | None, *sums: Tensor | None) -> list[Tensor | None]:
    """Reduce several same-shaped partial sums with one collective; ``None`` entries pass."""
    present = [s for s in sums if s is not None]
    if reduce_sums is None or not present:
        return list(sums)
    dtype = torch.promote_types(torch.float32, present[0].dtype)
    reduced = iter(reduce_sums(torch.stack([s.to(dtype) for s in present])).unbind(0))
    return [None if s is None else next(reduced).to(s.dtype) for s in sums]
