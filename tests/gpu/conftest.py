"""What every CUDA test here shares: comparisons in true float32."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_tf32():
    """Compare in true float32: TF32 convolutions differ from CPU by ~1e-3, which Adam then amplifies, and
    the eager/graph and Triton/reference comparisons would test TF32 rounding instead of the code."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
