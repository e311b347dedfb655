"""What a ``topk`` selector accepts (``kernels.base.topk_layout``): checked against a hand-worked layout, and
every registered top-k kernel refuses the same bad arguments with the same message."""

from __future__ import annotations

import pytest
import torch

from ticketsearch.sparse.kernels import TOPK, kernels
from ticketsearch.sparse.kernels.base import topk_layout


def test_layout_worked_by_hand():
    lay = topk_layout([(2, 3), [4], (1, 5, 1)], [0, 0, 1], [3, 5])
    assert lay.shapes == [(2, 3), (4,), (1, 5, 1)]
    assert lay.sizes == [6, 4, 5]
    assert lay.groups == [0, 0, 1] and lay.ks == [3, 5]
    assert lay.members == [[0, 1], [2]] and lay.group_n == [10, 5]
    empty = topk_layout([], [], [])
    assert empty.members == [] and empty.group_n == []


BAD = [
    (([(2,), (3,)], [0], [1]), "one group id per tensor"),
    (([(2,), (3,), (4,)], [0, 1, 0], [1, 1]), "contiguous runs"),
    (([(2,), (3,)], [0, 2], [1, 1, 1]), "contiguous runs"),
    (([(2,), (3,)], [1, 1], [1, 1]), "contiguous runs"),
    (([(2,), (3,)], [0, 1], [1]), "one k per group"),
    (([(2,), (3,)], [0, 0], [6]), "group 0: cannot keep 6 of 5"),
    (([(2,), (3,)], [0, 1], [1, -1]), "group 1: cannot keep -1 of 3"),
]


def _selectors():
    out = []
    for k in kernels(TOPK):
        reason = k.unavailable_reason(build=False)
        marks = [pytest.mark.skip(reason=f"{k.key} unavailable here: {reason}")] if reason else []
        out.append(pytest.param(k, id=k.name, marks=marks))
    return out


@pytest.mark.parametrize("kernel", _selectors())
@pytest.mark.parametrize(("args", "message"), BAD, ids=[m for _, m in BAD])
def test_every_topk_kernel_refuses_the_same_arguments(kernel, args, message):
    with pytest.raises(ValueError, match=message):
        topk_layout(*args)
    with pytest.raises(ValueError, match=message):
        kernel.selector(*args, device=torch.device("cpu"), dtype=torch.float32)
