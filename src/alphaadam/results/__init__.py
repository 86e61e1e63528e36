"""Run directories -> the paper's tables and figures (``make tables``, ``make figures``)."""

from .runs import Problem, Run, RunDirError, RunSet, find_run_dirs, load_run, load_runs

__all__ = ["Problem", "Run", "RunDirError", "RunSet", "find_run_dirs", "load_run", "load_runs"]
