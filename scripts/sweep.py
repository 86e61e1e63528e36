#!/usr/bin/env python
"""Submit one paper sweep to SLURM, or print its jobs without submitting (--dry-run).

    python scripts/sweep.py table1 --dry-run [override ...]
    python scripts/sweep.py table1 hydra.launcher.partition=gpu [override ...]

Submitting runs ``train.py +sweep=<name> hydra/launcher=slurm <overrides>``. The dry run
composes the same config, expands the sweep exactly as Hydra's basic sweeper does, and prints
every job's overrides and run directory, plus the sbatch header submitit would submit.

Both first run the preflight (``alphaadam.preflight``, as ``trainer.preflight=true``) once per
distinct job config, and submit nothing when a check fails; ``--no-preflight`` skips it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p.stem for p in (REPO / "configs" / "sweep").glob("*.yaml") if p.stem[0] != "_")


def expand_jobs(overrides: list[str]) -> tuple[list[list[str]], object]:
    """The per-job override lists of the sweep, and the composed (job 0) config."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    cli = parser.parse_overrides(overrides)
    # compose() builds one job's config, so it gets the non-sweep overrides only.
    plain = [o.input_line for o in cli if not o.is_sweep_override()]
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=plain, return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    # As Hydra's BasicSweeper: the config's sweep params, then the command line's task
    # overrides (a key given on both wins from the command line).
    task_overrides = [o for o in overrides if not o.startswith(("hydra.", "hydra/"))]
    swept = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + task_overrides)
    batches = BasicSweeper.split_arguments(swept, max_batch_size=None)
    return [list(job) for batch in batches for job in batch], cfg


def sbatch_header(cfg, n_jobs: int, folder: str) -> str:
    """The sbatch script submitit would write for this sweep's job array."""
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import _make_sbatch_string

    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    params = {
        "partition": launcher["partition"],
        "account": launcher["account"],
        "qos": launcher["qos"],
        "nodes": launcher["nodes"],
        "gpus_per_node": launcher["gpus_per_node"],
        "ntasks_per_node": launcher["tasks_per_node"],
        "cpus_per_task": launcher["cpus_per_task"],
        "mem": f"{launcher['mem_gb']}GB" if launcher["mem_gb"] else None,
        "time": launcher["timeout_min"],
        "constraint": launcher["constraint"],
        "exclude": launcher["exclude"],
        "gres": launcher["gres"],
        "signal_delay_s": launcher["signal_delay_s"],
        "array_parallelism": launcher["array_parallelism"],
        "additional_parameters": launcher["additional_parameters"],
        "setup": launcher["setup"],
    }
    params = {k: v for k, v in params.items() if v is not None}
    return _make_sbatch_string(
        command="python -u -m submitit.core._submit " + folder,
        folder=folder,
        job_name=str(cfg.experiment_name),
        map_count=n_jobs,
        **params,
    )


def compose_jobs(jobs: list[list[str]], hydra_overrides: list[str]) -> list:
    """Every job's config, composed as its job will compose it (which also catches a bad
    combination before anything is submitted)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return [compose("config", overrides=hydra_overrides + job) for job in jobs]


def preflight_jobs(job_cfgs: list, cfg) -> bool:
    """The preflight (alphaadam.preflight) of every distinct job config; jobs that differ
    only in their run directory share one, and checks of equal task/data/model configs are
    made once. Prints the first report and each new kind of failure in full, one line per
    config otherwise. True when every config passes."""
    import json

    from omegaconf import OmegaConf

    from alphaadam.preflight import preflight

    launcher = cfg.hydra.launcher
    processes = int(launcher.nodes or 1) * int(launcher.tasks_per_node or 1)
    sweep_dir = Path(str(cfg.hydra.sweep.dir))
    configs: dict[str, tuple[object, list[int]]] = {}
    for num, job_cfg in enumerate(job_cfgs):
        job_cfg = job_cfg.copy()
        # The run dir interpolates the job number (${hydra:job.num}); the sweep dir it lies
        # in is checked instead.
        OmegaConf.update(job_cfg, "trainer.run_dir", None)
        key = json.dumps(OmegaConf.to_container(job_cfg, resolve=False), sort_keys=True)
        configs.setdefault(key, (job_cfg, []))[1].append(num)
    print(
        f"\npreflight: {len(configs)} distinct config(s) for {len(job_cfgs)} job(s), "
        f"{processes} process(es) per job"
    )
    shared: dict = {}
    shown: set[str] = set()
    failed = 0
    for job_cfg, nums in configs.values():
        report = preflight(job_cfg, processes=processes, output_folders=[sweep_dir], cache=shared)
        label = f"job{'s' if len(nums) > 1 else ''} {', '.join(map(str, nums))}"
        failures = "\n".join(f"{c.name}: {c.detail}" for c in report.failed)
        if not shown or failures not in shown:
            print(f"{label}:\n{report.render()}")
            shown.add(failures)
        warnings = sum(c.status == "warn" for c in report.checks)
        if report.ok:
            print(f"  {label}: ok" + (f" ({warnings} warning(s))" if warnings else ""))
        else:
            print(f"  {label}: FAILED ({', '.join(c.name for c in report.failed)})")
        failed += not report.ok
    if failed:
        print(
            f"preflight failed for {failed} of {len(configs)} config(s): nothing submitted "
            "(--no-preflight skips the checks)"
        )
    else:
        print(f"preflight passed for all {len(configs)} config(s)")
    return not failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", choices=SWEEPS)
    parser.add_argument("--dry-run", action="store_true", help="print the jobs, submit nothing")
    parser.add_argument(
        "--no-preflight", action="store_true", help="skip the per-config checks before submitting"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job")
    # Intermixed: `--dry-run` may come after the overrides (`table3 seed=1,2 --dry-run`).
    args = parser.parse_intermixed_args(argv)

    base = [f"+sweep={args.sweep}", "hydra/launcher=slurm"]
    if not args.dry_run:
        if not args.no_preflight:
            jobs, cfg = expand_jobs(base + list(args.overrides))
            hydra_overrides = [
                o for o in base + args.overrides if o.startswith(("hydra.", "hydra/"))
            ]
            if not preflight_jobs(compose_jobs(jobs, hydra_overrides), cfg):
                return 1
        cmd = [sys.executable, str(REPO / "train.py"), *base, *args.overrides]
        print("+", " ".join(cmd), flush=True)
        return subprocess.call(cmd)

    # A literal sweep dir makes the printed run dirs the ones a submission with the same
    # override would use (otherwise ${now:} gives the submission time).
    overrides = list(args.overrides)
    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        overrides.append(f"hydra.sweep.dir=results/runs/sweeps/{args.sweep}/{stamp}")
    jobs, cfg = expand_jobs(base + overrides)
    sweep_dir = cfg.hydra.sweep.dir
    print(f"sweep {args.sweep}: {len(jobs)} job(s), sweep dir {sweep_dir}")
    hydra_overrides = [o for o in base + overrides if o.startswith(("hydra.", "hydra/"))]
    job_cfgs = compose_jobs(jobs, hydra_overrides)
    for num, (job, job_cfg) in enumerate(zip(jobs, job_cfgs)):
        tc = job_cfg.trainer
        shown = [o for o in job if not o.startswith(("+sweep=", "hydra/launcher=", "hydra."))]
        length = f"{tc.max_epochs} epochs" if tc.max_epochs else f"{tc.max_steps} steps"
        print(f"  job {num:4d}: {' '.join(shown)}")
        print(
            f"             {job_cfg.experiment_name}, lr {job_cfg.optimizer.lr:g}, "
            f"betas {tuple(job_cfg.optimizer.get('betas') or ())}, batch "
            f"{tc.micro_batch_size * tc.gradient_accumulation_steps}, {length}, seed "
            f"{job_cfg.seed}; run dir {sweep_dir}/{num}_{job_cfg.optimizer.name}"
        )
    print("\nsbatch script submitit would submit (not submitted):")
    print(sbatch_header(cfg, len(jobs), f"{sweep_dir}/.submitit/%j"))
    if not args.no_preflight and not preflight_jobs(job_cfgs, cfg):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
