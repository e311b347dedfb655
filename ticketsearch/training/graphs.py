"""The whole training step (forward, loss, backward, gradient masking/clipping, optimizer update) replayed
as one captured CUDA graph.

Why: a LeNet-300-100 step is a few dozen tiny kernels, so on a GPU it is bound by the host launching them
(issue 12 measured 1.04 ms eager against 0.15 ms for a hand-made graph of the same step on an H200). A graph
replays every kernel of the step with one launch.

What a graph needs, and how the step provides it:

- Static addresses. Batches are gathered inside the graph from the resident training set through a static
  index buffer (one device-to-device copy per step). Parameters, gradients (allocated by the captured
  backward), optimizer buffers and the running training-loss sum keep their addresses for the whole run.
- No Python number that changes between steps. :class:`ticketsearch.training.optim.Optimizer` passes the
  learning rate and Adam's bias corrections as Python floats, which a capture would freeze. The captured
  update here is the same rule with those values in device scalars: the learning rate is written into a
  float64 scalar before each replay (one small fill), the step count is incremented inside the graph and
  the bias corrections are computed from it on the device. The optimizer's own buffers are updated in
  place, so its ``state_dict`` (checkpoints) is unchanged in form; only its host-side ``steps`` and ``lr``
  are bookkeeping kept in step by :meth:`GraphStep.__call__`. Results equal the eager step within float32
  rounding (same formulas, different fusion), not bit for bit.
- Warm-up on a side stream before capture, as PyTorch's documentation requires (cuBLAS handles, Triton
  autotuning and lazily built caches must not be first touched while capturing). Warm-up steps are real
  steps, so every tensor they change is snapshotted before and restored after: the run continues from
  exactly the state it had.
- ``torch.autocast(..., cache_enabled=False)`` in the captured forward (bf16): autocast's weight-cast cache
  would otherwise hold tensors from the capture.

When the step runs eagerly instead (:func:`eager_reason` says why, and the result records it): not CUDA (the
CPU path is untouched, so resume stays bit-exact there), without ``--graph`` (the default until the GPU tests have run), torchrun (DDP's bucketed
all-reduce is host-driven), and any per-step hook (``on_step``/``after_step``): a hook runs host code
between steps and may change what the forward computes from Python values (the Bernoulli supermask's
temperature), which a capture would silently freeze. Learned supermasks, early-bird's search and IMP's
dense level with a rewind point therefore train eagerly. A batch whose size differs from the captured one
(the short last batch of an epoch) runs the same device-scalar step uncaptured. A capture that fails
(an op that synchronises with the host) falls back to eager with the error recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.hparams import TrainingHparams
from .distributed import World
from .optim import Optimizer

__all__ = ["eager_reason", "GraphStep", "precision_context", "WARMUP_STEPS"]

WARMUP_STEPS = 3  # PyTorch's whole-network capture example warms up for 3 iterations


def precision_context(precision: str, device: torch.device, *, graph_safe: bool = False) -> Any:
    """A context for forward + loss: nothing for fp32, bf16 autocast for bf16 (its weight-cast cache off
    inside a graph capture, where cached casts would outlive the capture)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if graph_safe:
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16)


# opt-in (``--graph``) until tests/gpu/test_graphs.py has run on a GPU: a capture that ran but computed
# something else than the eager step would be silent, and no GPU has checked it yet
GRAPHS_OFF = "CUDA graphs off (--graph turns them on)"


def eager_reason(
    model: nn.Module,
    device: torch.device,
    *,
    enabled: bool,
    world: World,
    hooks: bool,
    schedule: bool = False,
) -> str | None:
    """Why this ``train()`` call steps eagerly, or ``None`` when it may capture its step in a CUDA graph."""
    if not enabled:
        return GRAPHS_OFF
    if device.type != "cuda":
        return f"device {device.type}: CUDA graphs are CUDA-only"
    if world.active:
        return "torchrun: DistributedDataParallel steps are host-driven"
    if schedule:
        return "a mask schedule changes masks between steps (eager steps follow every change)"
    if hooks:
        return "a per-step hook (on_step/after_step) runs host code between steps"
    if any(p.device.type != "cuda" for p in model.parameters()):
        return "the model has parameters off the GPU"
    return None


class GraphStep:
    """One training step on device scalars; captured as a CUDA graph by :meth:`capture` (CUDA only),
    otherwise (or for a batch of another size) run as it is.

    ``mask_grads`` and the clip are the loop's own (``grad_clip`` > 0 masks gradients before the clip;
    otherwise the optimizer's grad masks are folded into the update as in the eager step).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        hp: TrainingHparams,
        opt: Optimizer,
        params: list[nn.Parameter],
        loss_acc: torch.Tensor,
        mask_grads: Callable[[], None],
    ) -> None:
        self.model, self.data, self.hp, self.opt, self.params = model, data, hp, opt, params
        self.loss_acc = loss_acc
        self.mask_grads = mask_grads
        self.device = data.x_train.device
        self.lr = torch.zeros((), dtype=torch.float64, device=self.device)
        self.step_count = torch.full((), float(opt.steps), dtype=torch.float64, device=self.device)
        self.graph: Any = None  # torch.cuda.CUDAGraph once captured
        self.static_idx: torch.Tensor | None = None
        self.failure: str | None = None
        self._ensure_buffers()

    # -- the step ------------------------------------------------------------------------------------
    def _ensure_buffers(self) -> None:
        """Allocate the optimizer's buffers now (zeros): the captured update always takes the steady-state
        branch. Zeros give the eager first step exactly (μ·0 + g = g; Adam starts from zeros anyway)."""
        opt = self.opt
        names = {"sgd": ("momentum",) if opt.momentum else (), "adam": ("exp_avg", "exp_avg_sq")}
        for name in names["sgd" if opt.kind == "sgd" else "adam"]:
            if name not in opt.buffers:
                opt.buffers[name] = [torch.zeros_like(p) for p in opt.params]

    def body(self, idx: torch.Tensor) -> None:
        """Forward, loss, backward, masking, clipping and update for the batch at rows ``idx``."""
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        with precision_context(self.hp.precision, self.device, graph_safe=True):
            out = self.model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=self.hp.label_smoothing)
        self.loss_acc += loss.detach()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.mask_grads()
        if self.hp.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.hp.grad_clip)
        self.update()

    @torch.no_grad()
    def update(self) -> None:
        """:meth:`Optimizer.step` with the learning rate and step count read from device scalars."""
        opt = self.opt
        ps: Any = opt.params  # Any: torch's foreach stubs take neither list[Parameter] nor their own tuples
        for p in ps:
            if p.grad is None:  # an unused parameter: a zero gradient, as the eager optimizer gives it
                p.grad = torch.zeros_like(p)
        grads: Any = [p.grad for p in ps]
        masked = [(g, m) for g, m in zip(grads, opt.grad_masks) if m is not None]
        if masked:  # g ⊙ m with m in {0, 1} is exact: the same values the eager addcmul folds in
            torch._foreach_mul_([g for g, _ in masked], [m for _, m in masked])
        self.step_count.add_(1.0)
        lr = self.lr
        wd = opt.weight_decay
        if opt.kind == "sgd":
            if wd:
                grads = torch._foreach_add(grads, ps, alpha=wd)
            d: Any = grads
            if opt.momentum:
                buf = opt.buffers["momentum"]
                torch._foreach_mul_(buf, opt.momentum)
                torch._foreach_add_(buf, grads)
                d = torch._foreach_add(grads, buf, alpha=opt.momentum) if opt.nesterov else buf
            upd: Any = torch._foreach_mul(d, lr.float())
            torch._foreach_sub_(ps, upd)
            return
        b1, b2 = opt.betas
        if opt.kind == "adamw" and wd:
            torch._foreach_mul_(ps, (1.0 - lr * wd).float())
        elif wd:
            grads = torch._foreach_add(grads, ps, alpha=wd)
        m, v = opt.buffers["exp_avg"], opt.buffers["exp_avg_sq"]
        torch._foreach_lerp_(m, grads, 1.0 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1.0 - b2)
        bc1 = 1.0 - torch.pow(b1, self.step_count)
        bc2_sqrt = torch.sqrt(1.0 - torch.pow(b2, self.step_count))
        denom = torch._foreach_maximum(v, torch.finfo(v[0].dtype).tiny)  # see Optimizer._adam
        torch._foreach_sqrt_(denom)
        torch._foreach_div_(denom, bc2_sqrt.float())
        torch._foreach_add_(denom, opt.eps)
        upd = torch._foreach_div(m, denom)
        torch._foreach_mul_(upd, (lr / bc1).float())
        torch._foreach_sub_(ps, upd)

    # -- capture and replay --------------------------------------------------------------------------
    def _state(self) -> list[torch.Tensor]:
        """Every tensor a step changes: parameters and buffers (BatchNorm statistics), optimizer buffers,
        the step count and the running loss sum."""
        tensors = list(self.model.state_dict().values())
        for buf in self.opt.buffers.values():
            tensors.extend(buf)
        return [*tensors, self.step_count, self.loss_acc]

    def capture(self, idx: torch.Tensor) -> bool:
        """Warm up on a side stream, capture one step for batches of ``idx``'s size, and restore the state
        the warm-up changed. False (with :attr:`failure` set) when the step cannot be captured."""
        if self.device.type != "cuda":
            self.failure = f"device {self.device.type}: not captured"
            return False
        state = self._state()
        saved = [t.detach().clone() for t in state]
        static_idx = idx.detach().clone()
        graph: Any = torch.cuda.CUDAGraph()
        try:
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.body(static_idx)
            torch.cuda.current_stream(self.device).wait_stream(side)
            with torch.cuda.graph(graph):
                self.body(static_idx)
        except Exception as e:  # an op that syncs with the host, or an uncapturable kernel
            self.failure = f"capture failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            graph = None
        finally:
            with torch.no_grad():
                for t, s in zip(state, saved):
                    t.copy_(s)
        if graph is None:
            self.opt.zero_grad(set_to_none=True)
            return False
        self.graph, self.static_idx = graph, static_idx
        return True

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, idx: torch.Tensor, lr: float) -> None:
        """One step at learning rate ``lr`` on the rows ``idx``: a replay when ``idx`` has the captured size."""
        self.lr.fill_(lr)
        if self.graph is not None and self.static_idx is not None and idx.numel() == self.static_idx.numel():
            self.static_idx.copy_(idx)
            self.graph.replay()
        else:
            self.body(idx)
        self.opt.steps += 1  # host bookkeeping, so a checkpoint's optimizer state reads as the eager one's
        self.opt.param_groups[0]["lr"] = lr
