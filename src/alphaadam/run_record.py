"""The run's record: the run directory's files (config.yaml, summary.json, metrics.jsonl,
mask_stats.jsonl, events.jsonl; docs/run_dir.md), the progress output, and the final status
written on every way out of a run, signals included. The trainer (``alphaadam.trainer``)
owns one :class:`RunRecord` per run and tells it what happened."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import signal
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from accelerate.utils import broadcast_object_list
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import run_dir as rd
from .checkpoint import latest_checkpoint
from .tasks.base import task_name

if TYPE_CHECKING:
    from .trainer import Run, StepResult, TrainingSetup, TrainState

# Status lines; only the main process writes them (each call site checks).
log = logging.getLogger(__name__)

# The train record's aggregates over tensors of the optimizer's mask statistics.
MASK_SUMMARY_KEYS = (
    "alpha_mean",
    "alpha_min",
    "alpha_max",
    "mask_density_mean",
    "step_scale_mean",
    "step_scale_std",
    "step_scale_min",
    "step_scale_max",
)
#: What a segment of a run (its first start, each resume) records of the code and machine
#: that ran it; a resume warns when one of the first four differs from the last segment's.
PROVENANCE_KEYS = ("git_sha", "git_dirty", "torch_version", "cpu_capability", "host")


class NonFiniteLossError(RuntimeError):
    """More non-finite steps than ``trainer.nan_skip_budget`` allows."""


class RunInterrupted(BaseException):
    """SIGTERM (SLURM preemption, ``scancel``, ``kill``) reached the run. A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` on the way out swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def provenance() -> dict[str, Any]:
    """This process's :data:`PROVENANCE_KEYS`: the commit and whether tracked files differ
    from it, torch's version, the CPU instruction set torch dispatches to, the host."""
    return {
        "git_sha": rd.git_sha(),
        "git_dirty": rd.git_dirty(),
        "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "host": socket.gethostname(),
    }


def earlier_segments(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The segments an existing summary.json records; a summary from before segments gives
    one made of its top-level ``git_sha`` and ``torch_version``."""
    if not summary:
        return []
    if isinstance(summary.get("segments"), list):
        return list(summary["segments"])
    legacy = {k: summary[k] for k in ("git_sha", "torch_version") if k in summary}
    return [{"started": None, "from_step": None, **legacy}] if legacy else []


def provenance_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: before -> now`` for each code or library key (not the host: a requeue may land
    anywhere) recorded by both segments with another value."""
    return [
        f"{key}: {before[key]!r} -> {now[key]!r}"
        for key in PROVENANCE_KEYS[:-1]
        if before.get(key) is not None and now.get(key) is not None and before[key] != now[key]
    ]


def read_mask_statistics(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, dict]:
    """The optimizer's per-tensor alpha, mask density and step scale as floats (one host
    sync), by parameter name; empty for an optimizer without a mask."""
    read = getattr(optimizer, "read_mask_statistics", None)
    return read(model.named_parameters()) if callable(read) else {}


def summarize_mask_statistics(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """The train record's mean/min/max over tensors (population sd for the step scale)."""
    # float32, the dtype the optimizer keeps them in, so the aggregates are those of the
    # stored values.
    table = torch.tensor(
        [[s["alpha"], s["mask_density"], s["step_scale"]] for s in stats.values()],
        dtype=torch.float32,
    )
    alpha, density, scale = table.unbind(1)
    values = torch.stack(
        [
            alpha.mean(),
            alpha.min(),
            alpha.max(),
            density.mean(),
            scale.mean(),
            scale.std(correction=0),
            scale.min(),
            scale.max(),
        ]
    ).tolist()
    return dict(zip(MASK_SUMMARY_KEYS, values))


class _StopOnSigterm:
    """While entered (main thread only), SIGTERM stops the run with :class:`RunInterrupted`.

    With SIGTERM's default action in place it raises at once. When another handler was
    installed first, it is called and the run stops at the next step boundary
    (:meth:`check`) instead: submitit's ignores SIGTERM on purpose, because SLURM's
    requeue sends one while submitit's own preemption handler is still requeueing the job,
    which then exits with ``SystemExit``. Once the run is closing, further SIGTERMs are
    ignored so that the final status gets written. The previous handler comes back on exit.
    """

    def __init__(self) -> None:
        self.closing = False
        self._pending: int | None = None
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGTERM)
            if self._previous is not signal.SIG_IGN:  # someone chose to ignore it: leave it so
                signal.signal(signal.SIGTERM, self._handle)
                self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.closing:
            return
        if callable(self._previous):
            self._previous(signum, frame)
            self._pending = signum
            return
        self.closing = True
        raise RunInterrupted(signum)

    def check(self) -> None:
        if self._pending is not None and not self.closing:
            self.closing = True
            raise RunInterrupted(self._pending)

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


class RunRecord:
    """The run directory's records (config.yaml, summary.json, metrics.jsonl,
    mask_stats.jsonl, events.jsonl; main process only) and the progress output.

    As a context manager it writes the final status once, on every way out: ``completed``;
    ``failed`` with the error; ``interrupted`` for SIGTERM (SLURM preemption, ``scancel``),
    SIGINT and ``SystemExit`` (submitit's requeue). Only a hard kill (SIGKILL, power loss)
    leaves ``running``. Before :meth:`start` a new run has no directory yet, so a failure
    there writes nothing; a resumed run's existing summary.json gets the status.
    """

    def __init__(self, run: Run, cfg: DictConfig) -> None:
        self.run, self.cfg, self.tc = run, cfg, cfg.trainer
        self.main = run.is_main
        self.parts: TrainingSetup | None = None
        self.state: TrainState | None = None
        self.header: dict[str, Any] | None = None
        self.metrics: rd.MetricsLog | None = None
        self.bar: tqdm | None = None
        self._sigterm = _StopOnSigterm()
        self._exits = contextlib.ExitStack()

    def __enter__(self) -> RunRecord:
        self._exits.enter_context(self._sigterm)
        return self

    def start(self, parts: TrainingSetup, state: TrainState) -> None:
        """Create the run's files, write ``running``, start the clock and the progress."""
        run, cfg, tc = self.run, self.cfg, self.tc
        self.parts, self.state = parts, state
        self._lock_new_run()
        if self.main:
            (run.dir / rd.CHECKPOINTS).mkdir(exist_ok=True)
            for name in (rd.METRICS, rd.MASK_STATS, rd.EVENTS):
                if run.mode == "new":  # records of an earlier attempt that never checkpointed
                    (run.dir / name).unlink(missing_ok=True)
                else:  # a resumed run re-logs the steps after its checkpoint
                    rd.truncate_jsonl(run.dir / name, state.step)
            OmegaConf.save(OmegaConf.create(run.config), run.dir / rd.CONFIG)
        self.metrics = rd.MetricsLog(run.dir, cfg, enabled=self.main)
        accelerator = run.accelerator
        segments, segment = self._segments(state.step)
        self.header = {
            "status": "running",
            "experiment": cfg.experiment_name,
            "task": task_name(parts.task),
            "dataset": cfg.data.get("name"),
            "optimizer": cfg.optimizer.name,
            "lr": cfg.optimizer.lr,
            "seed": cfg.seed,
            "max_steps": parts.max_steps,
            "primary_metric": parts.task.primary_metric,
            "primary_mode": parts.task.primary_mode,
            # Those of the latest segment; "segments" has every segment's.
            "git_sha": segment["git_sha"],
            "torch_version": segment["torch_version"],
            "device": torch.cuda.get_device_name(accelerator.device)
            if accelerator.device.type == "cuda"
            else accelerator.device.type,
            "num_processes": accelerator.num_processes,
            "global_batch_size": parts.global_batch,
            "run_dir": str(run.dir),
            "segments": [*segments, segment],
        }
        self.write_summary("running")
        if self.main:
            log.info(f"{'Resuming' if run.mode == 'resume' else 'Starting'} run in {run.dir}")
        state.start_clock()
        self._segment = (time.perf_counter(), state.step)
        self._last_log = (time.perf_counter(), state.tokens)
        self.bar = tqdm(
            total=parts.max_steps,
            initial=state.step,
            disable=not (self.main and tc.progress_bar),
            dynamic_ncols=True,
            desc=str(cfg.experiment_name),
        )
        if not self.bar.disable:
            self._exits.enter_context(logging_redirect_tqdm())  # log lines above the bar

    def _lock_new_run(self) -> None:
        """Create a new run's directory and lock it (a resumed one was locked when it was
        chosen); the lock's error, if any, on every process, before anything is written."""
        run = self.run
        outcome: list[Any] = [None]
        if self.main:
            run.dir.mkdir(parents=True, exist_ok=True)
            if run.lock is None:
                try:
                    run.lock = rd.RunLock.acquire(run.dir)
                except rd.RunDirError as err:
                    outcome = [err]
        broadcast_object_list(outcome)
        if outcome[0] is not None:
            raise outcome[0]

    def _segments(self, step: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The earlier segments (from the summary a resume finds) and this one; a resume
        warns when the code or torch differ from the last segment's."""
        segment = {
            "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "from_step": step,
            **provenance(),
        }
        if self.run.mode != "resume" or not self.main:
            return [], segment
        try:
            segments = earlier_segments(rd.read_summary(self.run.dir))
        except rd.RunDirError:
            segments = []
        changes = provenance_changes(segments[-1], segment) if segments else []
        if changes:
            log.warning(
                f"Resuming {self.run.dir} at step {step} under other code than its last "
                f"segment ({'; '.join(changes)}); summary.json's segments record both."
            )
        return segments, segment

    def stop_if_signalled(self) -> None:
        """Raise :class:`RunInterrupted` for a SIGTERM that arrived while another handler
        owned it (see :class:`_StopOnSigterm`); called between steps."""
        self._sigterm.check()

    def write_summary(self, status: str, **extra: Any) -> None:
        if not self.main:
            return
        state = self.state
        rd.write_json_atomic(
            self.run.dir / rd.SUMMARY,
            {
                **self.header,
                "status": status,
                "steps": state.step,
                "tokens": state.tokens,
                "wall_time_s": state.wall_time_s,
                "skipped_steps": state.skipped_steps,
                "final": {"train_loss": state.train_loss, **state.final_eval},
                "best": state.best,
                # Mean over the logged steps of the mean over tensors of the lr multiplier
                # a masked update applied (alpha * d / (nnz + 1)); null without a mask.
                "step_scale_mean": state.step_scale_mean,
                **extra,
            },
        )

    def after_step(self, state: TrainState, result: StepResult) -> None:
        """The step's records on their schedules: the train record (every
        ``trainer.log_every`` steps, step 1 and the last), the per-tensor mask statistics
        (``trainer.mask_stats_every`` / ``mask_stats_steps``), the progress."""
        parts, tc, step = self.parts, self.tc, state.step
        self.bar.update(1)
        log_due = step % tc.log_every == 0 or step == 1 or step == parts.max_steps
        stats_due = bool(tc.mask_stats_every and step % tc.mask_stats_every == 0) or (
            step in parts.mask_stats_steps
        )
        if not (log_due or stats_due):
            return
        stats = read_mask_statistics(parts.raw_optimizer, parts.raw_model)
        if log_due:
            self._log_train(state, result, stats)
        if stats_due and stats:
            self.metrics.write_many(
                [{"step": step, "param": name, **values} for name, values in stats.items()],
                rd.MASK_STATS,
            )

    def _log_train(self, state: TrainState, result: StepResult, stats: dict) -> None:
        now = time.perf_counter()
        tokens_per_s = (state.tokens - self._last_log[1]) / max(now - self._last_log[0], 1e-9)
        self._last_log = (now, state.tokens)
        record = {
            "kind": "train",
            "step": state.step,
            "epoch": self.parts.epoch(state.step),
            "loss": result.loss,
            "lr": result.lr,
            "tokens": state.tokens,
            "time": state.wall_time_s,
            "grad_norm": result.grad_norm,
            "tokens_per_s": tokens_per_s,
        }
        if stats:
            record.update(summarize_mask_statistics(stats))
            state.add_step_scale(record["step_scale_mean"])
        self.metrics.write(record)
        if not self.bar.disable:
            self.bar.set_postfix(
                loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}", tok_s=f"{tokens_per_s:,.0f}"
            )
        elif self.main:  # batch jobs (trainer.progress_bar=false): a plain line instead
            log.info(self._progress_line(state, result, tokens_per_s, now))

    def _progress_line(
        self, state: TrainState, result: StepResult, tokens_per_s: float, now: float
    ) -> str:
        total = self.parts.max_steps
        started, first_step = self._segment
        elapsed = now - started
        done = state.step - first_step
        eta = elapsed / done * (total - state.step) if done else 0.0
        return (
            f"step {state.step}/{total} | loss {result.loss:.4f} | lr {result.lr:.2e} | "
            f"{tokens_per_s:,.0f} tok/s | elapsed {_duration(elapsed)} | eta {_duration(eta)}"
        )

    def log_eval(self, state: TrainState, results: dict[str, float]) -> None:
        step = state.step
        self.metrics.write(
            {
                "kind": "eval",
                "step": step,
                "epoch": self.parts.epoch(step),
                "fraction": step / self.parts.max_steps,
                **results,
            }
        )
        if self.main:
            log.info(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in results.items()))

    def skip(self, state: TrainState, result: StepResult) -> None:
        """Log a skipped non-finite step; raise once more than ``trainer.nan_skip_budget``
        steps were skipped."""
        self.metrics.write(
            {
                "kind": "skip",
                "step": state.step,
                "loss": result.loss,
                "grad_norm": result.grad_norm,
                "skipped_steps": state.skipped_steps,
            },
            rd.EVENTS,
        )
        if state.skipped_steps > self.tc.nan_skip_budget:
            raise NonFiniteLossError(
                f"non-finite loss {result.loss} / grad norm {result.grad_norm} at step "
                f"{state.step + 1}: {state.skipped_steps} bad steps exceed "
                f"trainer.nan_skip_budget={self.tc.nan_skip_budget}. {self._recovery_advice()}"
            )

    def _recovery_advice(self) -> str:
        newest = latest_checkpoint(self.run.dir / rd.CHECKPOINTS)
        if newest is None:
            return (
                f"No checkpoint was written before it (trainer.checkpoint_every="
                f"{self.tc.checkpoint_every}); start a new run with a lower optimizer.lr."
            )
        return (
            f"The newest checkpoint is {newest}. Lower the lr in a new run, or raise "
            f"trainer.nan_skip_budget and continue this one (trainer.resume=auto "
            f"trainer.run_dir={self.run.dir})."
        )

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._sigterm.closing = True  # a second SIGTERM must not cut the summary short
        try:
            if self.bar is not None:
                self.bar.close()
            status, error = _final_status(exc)
            if self.header is not None:
                self.write_summary(status, **({} if error is None else {"error": error}))
            elif self.main and self.run.mode == "resume":
                _mark_summary(self.run.dir, status, error)
            if self.metrics is not None:
                self.metrics.close()
        finally:
            self._exits.close()
        if status == "interrupted" and self.main:
            where = f" at step {self.state.step}" if self.state is not None else ""
            log.info(
                f"Run interrupted ({error}){where}; continue it with trainer.resume=auto "
                f"trainer.run_dir={self.run.dir}"
            )
        if exc is None:
            if self.main:
                log.info(f"Run directory: {self.run.dir}")
            self.run.accelerator.wait_for_everyone()


def _final_status(exc: BaseException | None) -> tuple[str, str | None]:
    if exc is None:
        return "completed", None
    if isinstance(exc, RunInterrupted):
        return "interrupted", str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", "SIGINT"
    if isinstance(exc, SystemExit):  # e.g. submitit's exit after requeueing the job
        return "interrupted", f"SystemExit({exc.code})"
    if isinstance(exc, NonFiniteLossError):
        return "failed", str(exc)
    return "failed", f"{type(exc).__name__}: {exc}"


def _mark_summary(run_dir: Path, status: str, error: str | None) -> None:
    """A resumed run that stopped before :meth:`RunRecord.start`: its previous summary
    (left ``running`` by a hard kill, say) gets this attempt's final status."""
    try:
        summary = rd.read_summary(run_dir)
    except rd.RunDirError:
        summary = None
    if summary is not None:
        rd.write_json_atomic(run_dir / rd.SUMMARY, {**summary, "status": status, "error": error})


def _duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))
