"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest
from shared_models import build_tiny_models


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The shared tiny SFT policy (`base`) and reward model (`reward_model`), built once per session (a few
    seconds) instead of once per module; tests read them and write elsewhere."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))
