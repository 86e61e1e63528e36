"""The Hydra SLURM launcher behind ``hydra/launcher=slurm`` (configs/hydra/launcher/slurm.yaml).

Hydra only instantiates launchers from the ``hydra_plugins`` namespace, hence this package.

It is hydra-submitit-launcher's ``SlurmLauncher`` (job arrays, ``checkpoint()`` that
resubmits the same job on preemption/time-out) with three additions that run inside each job:

* a fixed run directory per job. A ``-m`` sweep without ``+sweep=...`` leaves
  ``trainer.run_dir`` unset, and the trainer would give a requeued job a new, time-stamped
  directory. When the config does not set it, each job gets
  ``trainer.run_dir=<sweep dir>/<job number>_<optimizer>`` and ``trainer.resume=auto``
  (what ``configs/sweep/_base.yaml`` sets), so a requeue continues its own run.

* a requeue that survives its own success. ``scontrol requeue`` makes SLURM cancel the job
  step, which sends SIGTERM to every process in it, the ``scontrol`` child included; when
  that child dies before it returns, submitit's ``check_call`` raises and the job reports a
  failure although it was requeued (seen on the local test cluster). A ``scontrol`` killed by
  SIGTERM here means the requeue went through.
* torch.distributed variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) from SLURM when a job has
  several tasks (``hydra.launcher.tasks_per_node>1``), so accelerate sees one process group.
"""

from __future__ import annotations

import signal
import subprocess
from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
        SlurmLauncher as _SubmititSlurmLauncher,
    )
except ImportError as _missing:  # Hydra imports every hydra_plugins module at start-up
    _IMPORT_ERROR: ImportError | None = _missing
    from hydra.plugins.launcher import Launcher as _SubmititSlurmLauncher
else:
    _IMPORT_ERROR = None


def _requeue_tolerating_step_cancel(self, countdown: int) -> None:
    from submitit.core import logger

    try:
        subprocess.check_call(["scontrol", "requeue", self.job_id], timeout=60)
    except subprocess.CalledProcessError as exc:
        if exc.returncode != -signal.SIGTERM:
            raise
    logger.get_logger().info(f"Requeued job {self.job_id} ({countdown} remaining timeouts)")


RUN_DIR_OVERRIDES = [
    "trainer.run_dir=${hydra:sweep.dir}/${hydra:job.num}_${optimizer.name}",
    "trainer.resume=auto",
]


def _with_fixed_run_dir(config, sweep_overrides: list[str]) -> list[str]:
    from omegaconf import OmegaConf

    if OmegaConf.select(config, "trainer") is None:
        return sweep_overrides  # not this project's trainer config
    keys = {o.split("=", 1)[0].lstrip("+~") for o in sweep_overrides}
    # Unresolved: the sweep configs' value interpolates ${hydra:...}, not set up yet here.
    configured = OmegaConf.to_container(config.trainer, resolve=False).get("run_dir")
    if "trainer.run_dir" in keys or configured is not None:
        return sweep_overrides
    return list(sweep_overrides) + RUN_DIR_OVERRIDES


class SlurmLauncher(_SubmititSlurmLauncher):
    def __init__(self, **params: Any) -> None:
        if _IMPORT_ERROR is not None:
            raise ImportError(
                "hydra/launcher=slurm needs hydra-submitit-launcher: pip install 'alphaadam[slurm]'"
            ) from _IMPORT_ERROR
        super().__init__(**params)

    def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any):
        import submitit
        from submitit.slurm.slurm import SlurmJobEnvironment

        SlurmJobEnvironment._requeue = _requeue_tolerating_step_cancel
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export()
        overrides = _with_fixed_run_dir(self.config, sweep_overrides)
        return super().__call__(overrides, *args, **kwargs)
