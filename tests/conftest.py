"""Shared test set-up."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    # accelerate's state is a process-wide singleton that refuses a second configuration
    # (e.g. mixed_precision="no" after a bf16 run), so a test that calls the trainer
    # in-process would depend on which tests ran before it in the same worker.
    if "accelerate.state" in sys.modules:
        sys.modules["accelerate.state"].AcceleratorState._reset_state(reset_partial_state=True)
