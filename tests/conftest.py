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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped, not failed, on machines without it (CI)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
