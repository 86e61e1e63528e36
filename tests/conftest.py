"""Shared test set-up."""

from __future__ import annotations

import pytest

from trainer_helpers import reset_accelerate


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    # A test that calls the trainer in-process must not depend on which tests ran before it.
    reset_accelerate()
