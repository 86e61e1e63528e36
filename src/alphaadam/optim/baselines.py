"""The factories of every optimizer beyond the AlphaAdam family: the paper's baselines and the
AlphaAdam mask on other momentum optimizers.

``registry.OPTIMIZERS`` maps each name in the table to its ``build_*`` factory here. Optional
packages are imported only inside the factory that needs them: a missing one never breaks
``import alphaadam``; requesting its optimizer raises an ``ImportError`` with the install
command.

==============  ============================================================================
name            source
==============  ============================================================================
cadamw          Cautious AdamW = AlphaAdam's ``adamw_sm`` preset, built by
                ``alphaadam_factories.py`` (tested against the rule of Liang et al. 2024 and
                pytorch-optimizer's ``apply_cautious``)
adam_mini       ``adam_mini.Adam_mini`` (PyPI ``adam-mini``)
galore          ``galore_torch.GaLoreAdamW`` (PyPI ``galore-torch``), state made serialisable
adam8bit        ``bitsandbytes.optim.AdamW8bit`` (CPU and CUDA with bitsandbytes >= 0.48)
microadam       ``ista_daslab_optimizers.MicroAdam`` (CUDA only; extra ``microadam``)
ldadam          the authors' ``LDAdamW`` (not on PyPI; installed from their git repository)
lion/alphalion  :class:`~alphaadam.optim.alphalion.AlphaLion`
sgd             ``torch.optim.SGD``
alphasgd        :class:`~alphaadam.optim.alphasgd.AlphaSGD`
==============  ============================================================================
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from .alphalion import LION_PRESETS, AlphaLion
from .alphasgd import SGD_PRESETS, AlphaSGD
from .factory_base import param_groups, split_decay
from .sharding import is_dtensor

BASELINES_HINT = 'pip install "alphaadam[baselines]"'
MICROADAM_HINT = (
    'pip install "alphaadam[microadam]" on a machine with a CUDA GPU, nvcc and a CUDA build '
    "of torch (ista-daslab-optimizers compiles CUDA kernels at install time)"
)
LDADAM_HINT = "pip install git+https://github.com/ThomasROBERTparis/LowDimensionalAdam.git"

# GaLore's own scripts project the linear layers of modules named "attn"/"mlp" (Llama,
# nanoGPT); "attention", "intermediate" and "output.dense" are the same layers in BERT and
# RoBERTa. Heads and embeddings keep full-rank Adam.
LOW_RANK_TARGETS = ("attn", "attention", "mlp", "intermediate", "output.dense")
LOW_RANK_EXCLUDE = ("lm_head", "classifier", "score", "pooler", "embed", "wte", "wpe")


class CudaOnlyError(RuntimeError):
    """The optimizer runs only on CUDA parameters (the preflight cannot build it on a CPU)."""


def require(module: str, package: str, optimizer: str, hint: str = BASELINES_HINT) -> ModuleType:
    """Import ``module`` or fail with the install command for ``optimizer``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"optimizer {optimizer!r} needs the package {package!r}, which could not be "
            f"imported ({err}). Install it with: {hint}"
        ) from err


def _trainable_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# ----------------------------------------------------------------------- AlphaLion/SGD
def _make_momentum_factory(name: str, cls: type[Optimizer], fixed: dict[str, Any], alt: str):
    def factory(model: nn.Module, **cfg: Any) -> Optimizer:
        clash = set(cfg) & set(fixed)
        if clash:
            raise ValueError(
                f"optimizer {name!r} fixes {sorted(clash)} ({fixed}); use {alt!r} to set them"
            )
        return cls(split_decay(model, cfg), **fixed, **cfg)

    return factory


build_lion = _make_momentum_factory("lion", AlphaLion, LION_PRESETS["lion"], "alphalion")


def build_alphalion(model: nn.Module, **cfg: Any) -> Optimizer:
    """AlphaLion; mask/alpha/alpha_max/rescale default to AlphaAdam's and may be overridden."""
    return AlphaLion(split_decay(model, cfg), **{**LION_PRESETS["alphalion"], **cfg})


def build_alphasgd(model: nn.Module, **cfg: Any) -> Optimizer:
    """AlphaSGD; mask/alpha/alpha_max/rescale default to AlphaAdam's and may be overridden."""
    return AlphaSGD(split_decay(model, cfg), **{**SGD_PRESETS["alphasgd"], **cfg})


def build_sgd(model: nn.Module, **cfg: Any) -> Optimizer:
    """torch.optim.SGD (weight decay only on tensors of >= 2 dims, as for every optimizer)."""
    return torch.optim.SGD(split_decay(model, cfg), **cfg)


# -------------------------------------------------------------------------- adam_mini
# Adam-mini matches parameter names against keyword sets. Its defaults cover Llama; the
# additions map the same roles in nanoGPT / HF GPT-2 (fused QKV "c_attn", treated per head as
# Adam-mini's authors do; "attn.c_proj"; position embedding "wpe") and BERT / RoBERTa
# (attention output, intermediate and output dense layers, classification head), which would
# otherwise fall into Adam-mini's one-learning-rate-per-tensor default branch. BERT's 1-D
# LayerNorm weights under "embeddings"/"output" match Adam-mini's embedding/output keywords,
# whose per-row branch crashes on 1-D tensors (adam-mini 1.1.1): they get plain Adam.
ADAM_MINI_EXTRA_NAMES = {
    "adam_block_names": ("embeddings.layernorm", "output.layernorm"),
    "wqk_names": ("c_attn",),
    "attn_proj_names": ("attn.c_proj", "attention.output.dense"),
    "embd_names": ("wpe",),
    "mlp_names": ("intermediate.dense", "output.dense"),
    "output_names": ("classifier",),
}

_DIM_ATTRS = (
    ("n_embd", "n_head", None),  # nanoGPT / HF GPT-2
    ("hidden_size", "num_attention_heads", "num_key_value_heads"),  # HF BERT/RoBERTa/Llama
    ("dim", "n_heads", "n_kv_heads"),  # Llama reference code
)


def model_attention_dims(model: nn.Module) -> dict[str, int] | None:
    """``{"dim", "n_heads", "n_kv_heads"}`` read from ``model.config``, or None if absent."""
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "module"):  # DDP / accelerate wrappers
        config = getattr(model.module, "config", None)
    if config is None:
        return None
    for dim_attr, heads_attr, kv_attr in _DIM_ATTRS:
        dim, heads = getattr(config, dim_attr, None), getattr(config, heads_attr, None)
        if isinstance(dim, int) and isinstance(heads, int):
            kv = getattr(config, kv_attr, None) if kv_attr else None
            return {
                "dim": dim,
                "n_heads": heads,
                "n_kv_heads": kv if isinstance(kv, int) else heads,
            }
    return None


def build_adam_mini(
    model: nn.Module,
    *,
    lr: float,
    betas: Iterable[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    dim: int | None = None,
    n_heads: int | None = None,
    n_kv_heads: int | None = None,
    extra_block_names: dict[str, list[str]] | None = None,
    verbose: bool = False,
) -> Optimizer:
    """Adam-mini. ``dim``/``n_heads``/``n_kv_heads`` come from ``model.config`` when it has
    them (a different value in the optimizer config is an error), else from the optimizer
    config. Adam-mini itself decides weight decay by name (none for norms and biases)."""
    adam_mini = require("adam_mini", "adam-mini", "adam_mini")
    given = {"dim": dim, "n_heads": n_heads, "n_kv_heads": n_kv_heads}
    from_model = model_attention_dims(model)
    if from_model is not None:
        for key, value in given.items():
            if value is not None and value != from_model[key]:
                raise ValueError(
                    f"adam_mini: optimizer config sets {key}={value} but the model's config "
                    f"has {key}={from_model[key]}; drop it from the optimizer config"
                )
        dims = from_model
    elif dim is not None and n_heads is not None:
        dims = {"dim": dim, "n_heads": n_heads, "n_kv_heads": n_kv_heads or n_heads}
    else:
        raise ValueError(
            "adam_mini needs the model's hidden size and number of attention heads: the model "
            "has no config with n_embd/n_head, hidden_size/num_attention_heads or dim/n_heads, "
            "so set optimizer.dim and optimizer.n_heads (and n_kv_heads for GQA)"
        )
    opt = adam_mini.Adam_mini(
        named_parameters=_trainable_named(model),
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        weight_decay=weight_decay,
        verbose=verbose,
        **dims,
    )
    names = {k: list(v) for k, v in ADAM_MINI_EXTRA_NAMES.items()}
    for key, values in (extra_block_names or {}).items():
        if not isinstance(getattr(opt, key, None), set):
            raise ValueError(
                f"adam_mini: unknown block-name set {key!r}; valid choices are "
                "embd_names, output_names, wqk_names, wv_names, attn_proj_names, mlp_names, "
                "adam_block_names"
            )
        names.setdefault(key, []).extend(values)
    for key, values in names.items():
        getattr(opt, key).update(values)
    return opt


# --------------------------------------------------------------- low-rank (GaLore/LDAdam)
def low_rank_split(
    model: nn.Module,
    rank: int,
    targets: Iterable[str] = LOW_RANK_TARGETS,
    exclude: Iterable[str] = LOW_RANK_EXCLUDE,
) -> tuple[list[nn.Parameter], list[str]]:
    """The 2-D weights that get a low-rank optimizer state, and their module names.

    Selected: the ``weight`` of every ``nn.Linear`` (or HF ``Conv1D``) whose module name
    contains one of ``targets`` and none of ``exclude``, that is not shared with an
    embedding (tied LM heads), and whose smaller side is larger than ``rank`` (a rank-r
    projection of a matrix with min side <= r saves nothing; such matrices keep full Adam).
    """
    targets, exclude = tuple(targets), tuple(exclude)
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    chosen: dict[int, tuple[nn.Parameter, str]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if not (is_linear and isinstance(weight, nn.Parameter) and weight.requires_grad):
            continue
        if weight.dim() != 2 or id(weight) in embedding_ids or min(weight.shape) <= rank:
            continue
        if any(t in name for t in targets) and not any(e in name for e in exclude):
            chosen.setdefault(id(weight), (weight, name))
    return [p for p, _ in chosen.values()], [n for _, n in chosen.values()]


def _low_rank_groups(
    model: nn.Module,
    rank: int,
    weight_decay: float,
    targets: Iterable[str] | None,
    exclude: Iterable[str] | None,
    low_rank_options: dict[str, Any],
    full_rank_options: dict[str, Any],
) -> list[dict[str, Any]]:
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"Invalid rank={rank!r}; it must be a positive integer")
    low, _ = low_rank_split(
        model,
        rank,
        LOW_RANK_TARGETS if targets is None else targets,
        LOW_RANK_EXCLUDE if exclude is None else exclude,
    )
    low_ids = {id(p) for p in low}
    rest = [g for g in param_groups(model, weight_decay)]
    for g in rest:
        g["params"] = [p for p in g["params"] if id(p) not in low_ids]
        g.update(full_rank_options)
    groups = [g for g in rest if g["params"]]
    if low:
        groups.append({"params": low, "weight_decay": weight_decay, **low_rank_options})
    return groups


def _serialisable_galore(base: type[Optimizer], projector_cls: type) -> type[Optimizer]:
    """GaLoreAdamW whose state_dict holds tensors and numbers only.

    galore-torch keeps a ``GaLoreProjector`` object in each projected parameter's state,
    which ``torch.load(weights_only=True)`` (the default since torch 2.6) refuses. Only the
    projection matrix is saved; the projector is rebuilt on load from its param group's
    rank/update_proj_gap/scale/proj_type (which is where galore-torch took them from).
    Strings cannot go into the per-parameter state: ``Optimizer.load_state_dict`` would
    iterate them. The math is untouched.
    """

    class GaLoreAdamW(base):  # type: ignore[misc, valid-type]
        def state_dict(self) -> dict[str, Any]:
            sd = super().state_dict()
            state = {}
            for key, value in sd["state"].items():
                value = dict(value)  # the packed dicts are the live state: copy before editing
                proj = value.get("projector")
                if proj is not None and not isinstance(proj, dict):
                    value["projector"] = {"ortho_matrix": proj.ortho_matrix}
                state[key] = value
            sd["state"] = state
            return sd

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)
            for group in self.param_groups:
                for p in group["params"]:
                    proj = self.state.get(p, {}).get("projector")
                    if isinstance(proj, dict):
                        rebuilt = projector_cls(
                            group["rank"],
                            update_proj_gap=group["update_proj_gap"],
                            scale=group["scale"],
                            proj_type=group["proj_type"],
                        )
                        rebuilt.ortho_matrix = proj["ortho_matrix"]
                        self.state[p]["projector"] = rebuilt

    return GaLoreAdamW


def build_galore(
    model: nn.Module,
    *,
    lr: float,
    betas: Iterable[float] = (0.9, 0.99),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    rank: int = 8,
    update_proj_gap: int = 200,
    scale: float = 0.25,
    proj_type: str = "std",
    target_modules: list[str] | None = None,
    exclude_modules: list[str] | None = None,
) -> Optimizer:
    """GaLore-AdamW: low-rank projected Adam on the 2-D weights of :func:`low_rank_split`,
    plain AdamW (same class, no ``rank`` key) on everything else."""
    galore = require("galore_torch", "galore-torch", "galore")
    projector = require("galore_torch.galore_projector", "galore-torch", "galore")
    valid = ("std", "reverse_std", "left", "right", "full")
    if proj_type not in valid:
        raise ValueError(f"Invalid proj_type={proj_type!r}; valid choices are {', '.join(valid)}")
    groups = _low_rank_groups(
        model,
        rank,
        weight_decay,
        target_modules,
        exclude_modules,
        {"rank": rank, "update_proj_gap": update_proj_gap, "scale": scale, "proj_type": proj_type},
        {},
    )
    cls = _serialisable_galore(galore.GaLoreAdamW, projector.GaLoreProjector)
    return cls(groups, lr=lr, betas=tuple(betas), eps=eps, no_deprecation_warning=True)


def build_ldadam(
    model: nn.Module,
    *,
    lr: float,
    betas: Iterable[float] = (0.9, 0.99),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    rank: int = 8,
    rho: float = 0.908,
    proj_type: str = "std",
    proj_method: str = "power_iteration",
    error_feedback: bool = True,
    target_modules: list[str] | None = None,
    exclude_modules: list[str] | None = None,
) -> Optimizer:
    """The authors' LDAdamW on the 2-D weights of :func:`low_rank_split` (low-rank states,
    generalised error feedback), their full-rank AdamW path on everything else.

    The package is not on PyPI; its module is ``ldadamw_torch`` (older snapshots documented
    ``LowDimensionalAdam``; both are tried)."""
    module = None
    for name in ("ldadamw_torch", "LowDimensionalAdam"):
        try:
            module = importlib.import_module(name)
            break
        except ImportError:
            continue
    if module is None:
        raise ImportError(
            "optimizer 'ldadam' needs the authors' LDAdam package (module ldadamw_torch), "
            f"which is not on PyPI and is not installed. Install it with: {LDADAM_HINT}"
        )
    low_rank = {
        "enable_lowrank": True,
        "rank": rank,
        "rho": rho,
        "proj_type": proj_type,
        "proj_method": proj_method,
        "error_feedback": error_feedback,
    }
    groups = _low_rank_groups(
        model,
        rank,
        weight_decay,
        target_modules,
        exclude_modules,
        low_rank,
        {"enable_lowrank": False},
    )

    class LDAdamW(module.LDAdamW):
        def zero_grad(self, set_to_none: bool = True) -> None:
            # The authors' zero_grad() takes no argument (torch's trainers and accelerate pass
            # set_to_none) and deliberately keeps low-rank gradients, where its error feedback
            # stores the compression error; that behaviour is kept.
            super().zero_grad()

    return LDAdamW(groups, lr=lr, betas=tuple(betas), eps=eps, rank=rank, rho=rho)


def _unsharded_only(cls: type[Optimizer], name: str) -> type[Optimizer]:
    """``cls`` refusing sharded (FSDP2 / DTensor) parameters with a clear error on its first step.

    The check runs at the first step, not at construction: the trainer builds the optimizer
    before accelerate's ``prepare`` swaps in the sharded parameters.
    """

    class UnshardedOnly(cls):
        def step(self, *args, **kwargs):
            if not getattr(self, "_checked_unsharded", False):
                if any(is_dtensor(p) for g in self.param_groups for p in g["params"]):
                    raise RuntimeError(
                        f"optimizer {name!r} ({cls.__module__}.{cls.__name__}) does not support "
                        "sharded (FSDP2 / DTensor) parameters: its update kernel has no DTensor "
                        "sharding rule. Use it with DDP or a single device, or pick another "
                        "optimizer (AlphaAdam, adamw, adam_mini, galore and lion run under FSDP2)"
                    )
                self._checked_unsharded = True
            return super().step(*args, **kwargs)

    UnshardedOnly.__name__ = UnshardedOnly.__qualname__ = cls.__name__
    return UnshardedOnly


# -------------------------------------------------------------------------- adam8bit
def build_adam8bit(
    model: nn.Module,
    *,
    lr: float,
    betas: Iterable[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    min_8bit_size: int = 4096,
    no_decay_ndim_lt2: bool = True,
) -> Optimizer:
    """bitsandbytes AdamW8bit (block-wise 8-bit moments). Tensors with fewer than
    ``min_8bit_size`` elements keep 32-bit moments (bitsandbytes' default)."""
    bnb = require("bitsandbytes", "bitsandbytes", "adam8bit")
    groups = param_groups(model, weight_decay, no_decay_ndim_lt2)
    return _unsharded_only(bnb.optim.AdamW8bit, "adam8bit")(
        groups,
        lr=lr,
        betas=tuple(betas),
        eps=eps,
        weight_decay=weight_decay,
        min_8bit_size=min_8bit_size,
    )


# ------------------------------------------------------------------------- microadam
def build_microadam(
    model: nn.Module,
    *,
    lr: float,
    betas: Iterable[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    m: int = 10,
    quant_block_size: int = 100_000,
    k_init: float = 0.01,
    no_decay_ndim_lt2: bool = True,
) -> Optimizer:
    """MicroAdam with a sliding window of ``m`` sparse gradients (the paper uses m=10)."""
    devices = {p.device.type for p in model.parameters() if p.requires_grad}
    if devices != {"cuda"}:
        raise CudaOnlyError(
            "optimizer 'microadam' runs only on CUDA GPUs (ista-daslab-optimizers' MicroAdam "
            f"is a set of CUDA kernels), but the model's parameters are on {sorted(devices)}; "
            "move the model to a GPU first or pick another optimizer"
        )
    ista = require("ista_daslab_optimizers", "ista-daslab-optimizers", "microadam", MICROADAM_HINT)
    groups = param_groups(model, weight_decay, no_decay_ndim_lt2)
    return ista.MicroAdam(
        groups,
        m=m,
        lr=lr,
        quant_block_size=quant_block_size,
        k_init=k_init,
        betas=tuple(betas),
        weight_decay=weight_decay,
        eps=eps,
    )
