"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The canonical MNIST / Fashion-MNIST IDX files: ``../shared/datasets`` beside the checkout, else
    ``$TICKETSEARCH_SHARED_DATA``. Tests never download."""
    import os

    candidates = [Path(__file__).resolve().parents[1].parent / "shared" / "datasets"]
    if os.environ.get("TICKETSEARCH_SHARED_DATA"):
        candidates.insert(0, Path(os.environ["TICKETSEARCH_SHARED_DATA"]))
    for path in candidates:
        if (path / "mnist").is_dir():
            return path
    pytest.skip(f"real MNIST files not found (looked in {', '.join(map(str, candidates))})")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped, not failed, on machines without it (CI)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
