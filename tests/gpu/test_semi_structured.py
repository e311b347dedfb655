"""2:4 tickets on CUDA: ``load_ticket(device="cuda")`` converts their Linear layers with
``torch.sparse.to_sparse_semi_structured``; the oracle is the dense masked model in the same dtype on the
same GPU (fp16 sums in another order: tolerances of fp16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ticketsearch.core import select
from ticketsearch.core.pattern import parse_pattern
from ticketsearch.export import export_ticket, load_ticket, path_summary
from ticketsearch.models import create_model
from ticketsearch.sparse import apply_mask, prunable_parameters
from ticketsearch.sparse.kernels import semi_structured

pytestmark = pytest.mark.gpu


def _ticket(tmp_path, pattern: str):
    # mlp_digits on 16×16 inputs: Linears 256→128, 128→64, 64→16, shapes the 2:4 library tiles (fc may not)
    meta = {"model": "mlp_digits", "input_shape": [1, 16, 16], "num_classes": 16}
    torch.manual_seed(0)
    model = create_model("mlp_digits", (1, 16, 16), 16)
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in prunable_parameters(model).items()}
    mask = select(scores, parse_pattern(pattern).max_density, scope="layerwise", pattern=pattern)
    apply_mask(model, mask)
    path = export_ticket(
        model.state_dict(), mask, format="auto", out=tmp_path / "t.ticket", metadata=meta
    ).path
    return model.eval(), path


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_two_four_linears_run_semi_structured_and_equal_the_dense_model(tmp_path, dtype):
    reason = semi_structured.SEMI_STRUCTURED_KERNEL.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    ref, path = _ticket(tmp_path, "2:4")
    ref = ref.to("cuda", dtype)
    model = load_ticket(path, device="cuda", dtype=dtype)
    summary = path_summary(model)
    assert "layers.0" in summary and set(summary["layers.0"]["paths"].values()) == {"semi_structured"}
    assert isinstance(model.layers[0].weight, torch.sparse.SparseSemiStructuredTensor)
    for name in ("layers.1", "fc"):  # converted, or left dense with the reason
        assert name in summary or name in model.semi_structured_left
    with torch.no_grad():
        for rows in (1, 64, 1024):
            x = torch.randn(rows, 1, 16, 16, device="cuda", dtype=dtype)
            torch.testing.assert_close(model(x), ref(x), rtol=2e-2, atol=2e-2)
    dense = load_ticket(path, device="cuda", dtype=dtype, policy="dense")
    assert path_summary(dense) == {} and not dense.semi_structured_left


def test_other_patterns_and_fp32_stay_dense(tmp_path):
    reason = semi_structured.SEMI_STRUCTURED_KERNEL.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    _, path = _ticket(tmp_path, "1:4")
    assert path_summary(load_ticket(path, device="cuda", dtype=torch.float16)) == {}  # 1:4 is not 2:4
    _, path = _ticket(tmp_path, "2:4")
    model = load_ticket(path, device="cuda")  # fp32: the sparse tensor cores take fp16/bf16
    assert path_summary(model) == {}
    assert all("fp16 or bf16" in r for r in model.semi_structured_left.values())


def test_a_large_linear_equals_f_linear():
    reason = semi_structured.SEMI_STRUCTURED_KERNEL.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    g = torch.Generator(device="cuda").manual_seed(0)
    keep = (torch.rand(1024, 256, 4, device="cuda", generator=g).argsort(-1) < 2).reshape(1024, 1024)
    w = (torch.randn(1024, 1024, device="cuda", generator=g) * keep).half()
    sparse = semi_structured.to_semi_structured(w)
    x = torch.randn(64, 1024, device="cuda", generator=g).half()
    torch.testing.assert_close(F.linear(x, sparse), F.linear(x, w), rtol=2e-2, atol=2e-2)
