"""Shared fixtures. Environments are real dm_control / MuJoCo with headless rendering."""

from __future__ import annotations

import pytest

from diswm.config import Config, load_config


@pytest.fixture(scope="session")
def tiny_cfg() -> Config:
    return load_config(["tiny"])
