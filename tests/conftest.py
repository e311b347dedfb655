"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The canonical MNIST / Fashion-MNIST IDX files beside the checkout (``../shared/datasets``)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not (path / "mnist").is_dir():
        pytest.skip(f"shared datasets not found at {path}")
    return path
