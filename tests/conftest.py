"""Shared test set-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_helpers import RUN, reset_accelerate, run_training


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    # A test that calls the trainer in-process must not depend on which tests ran before it.
    reset_accelerate()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """RUN without interruption."""
    return run_training(RUN, tmp_path_factory.mktemp("reference"))
