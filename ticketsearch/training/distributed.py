"""One run over many processes (``torchrun``): who this process is, and the few collectives a run needs.

torchrun starts the same command N times with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set; a
:class:`World` is this process's view of that group. The rules a distributed run keeps:

- **Data.** Every rank builds the same :class:`~ticketsearch.data.Batcher` and takes its contiguous slice
  of the global batch, so N processes see exactly the examples one process sees at each step. The loss of a
  slice is scaled so that DistributedDataParallel's gradient average is the mean over the *global* batch
  (exact also for an epoch's short last batch, whose slices differ in size).
- **Storage.** Rank 0 alone touches the run directory, reads included; the others receive what it read
  or wrote by broadcast (:meth:`World.on_main`). No rank reads a file another is writing, and nodes need
  not share a file system. Each call also names what it did, so ranks whose code paths diverged fail in
  one line instead of pairing unrelated messages.
- **Failure.** Every collective runs under the process group's timeout (``--dist-timeout``); a rank that
  dies or hangs makes the others raise :class:`DistributedError` (one line, exit 2) instead of waiting
  forever. Errors every rank meets (a bad value) are printed by rank 0 only (``quiet`` elsewhere).

Imports only torch and ``core``: the runner and the commands above hand a World down to the loop.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pickle
import re
import signal
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn as nn

from ..core.errors import ConfigError, TicketsearchError

__all__ = [
    "World",
    "SINGLE",
    "DistributedError",
    "TorchrunEnv",
    "torchrun_env",
    "open_world",
    "quiet",
    "DEFAULT_TIMEOUT",
]

T = TypeVar("T")

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for a peer before the run gives up


class DistributedError(TicketsearchError):
    """A rank of a torchrun world died, hung past the timeout, or was stopped; the run can be resumed."""


def quiet(exc: BaseException) -> BaseException:
    """Mark ``exc`` as already reported by rank 0 (the CLI prints nothing for it on this rank)."""
    exc.quiet = True  # type: ignore[attr-defined]
    return exc


@dataclass(frozen=True)
class TorchrunEnv:
    world_size: int
    rank: int
    local_rank: int


def torchrun_env(environ: Mapping[str, str] | None = None) -> TorchrunEnv | None:
    """The torchrun variables of this process, or ``None`` when it was not started by torchrun (or srun
    with them exported). A malformed value is a one-line error naming the variable."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    vals = {}
    for name, default in (("WORLD_SIZE", None), ("RANK", None), ("LOCAL_RANK", "0")):
        raw = env.get(name, default)
        try:
            vals[name] = int(str(raw))
        except ValueError:
            raise ConfigError(
                f"environment variable {name}={raw!r} is not an integer (set by torchrun)"
            ) from None
    size, rank, local = vals["WORLD_SIZE"], vals["RANK"], vals["LOCAL_RANK"]
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ConfigError(
            f"torchrun environment is inconsistent: WORLD_SIZE={size}, RANK={rank}, LOCAL_RANK={local} "
            "(need WORLD_SIZE >= 1, 0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0)"
        )
    return TorchrunEnv(size, rank, local)


_COMM_HINTS = ("gloo", "nccl", "connection", "timed out", "timeout", "broken pipe", "socket", "peer")


def _is_comm_failure(exc: BaseException) -> bool:
    if isinstance(exc, DistributedError):
        return False
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(h in str(exc).lower() for h in _COMM_HINTS)


def _reason(exc: BaseException) -> str:
    """The backend's message on one short line (gloo prefixes a source location and appends advice)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    text = text.split(". This is typically")[0]
    return text[:200] or type(exc).__name__


class World:
    """This process's place in a torchrun world; ``World()`` (:data:`SINGLE`) is one process, no group.

    ``active`` is true when a process group is open (torchrun, even with one process: the same code path
    runs on one GPU). Every method is a no-op or the identity in a single process.
    """

    def __init__(
        self,
        size: int = 1,
        rank: int = 0,
        local_rank: int = 0,
        *,
        backend: str = "",
        timeout: float = DEFAULT_TIMEOUT,
        active: bool = False,
    ) -> None:
        self.size, self.rank, self.local_rank = int(size), int(rank), int(local_rank)
        self.backend, self.timeout, self.active = backend, float(timeout), bool(active)

    def __repr__(self) -> str:
        return f"World(size={self.size}, rank={self.rank}, backend={self.backend or 'none'})"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- failures --------------------------------------------------------------------------------------
    def lost(self, why: str) -> DistributedError:
        return DistributedError(
            f"rank {self.rank} of {self.size}: lost the other ranks ({why}); a rank died, was stopped or hung "
            f"longer than --dist-timeout {self.timeout:g}s; rerun the same command to resume from the last "
            "checkpoint"
        )

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Turn a backend's failure (a peer gone, a timeout) inside the block into one DistributedError."""
        try:
            yield
        except Exception as exc:
            if self.active and _is_comm_failure(exc):
                raise self.lost(_reason(exc)) from None
            raise

    # -- data ------------------------------------------------------------------------------------------
    def check_batch_size(self, batch_size: int) -> None:
        """The global batch splits evenly: each rank's gradient weighs the same number of examples."""
        if self.size > 1 and int(batch_size) % self.size:
            raise ConfigError(
                f"--batch-size {batch_size} does not divide by the {self.size} processes of this torchrun "
                f"world; use a multiple of {self.size} (it is the global batch, split across processes)"
            )

    def shard(self, n: int) -> slice:
        """This rank's contiguous rows of ``n`` (``torch.tensor_split``'s split: sizes differ by ≤ 1)."""
        q, r = divmod(int(n), self.size)
        start = self.rank * q + min(self.rank, r)
        return slice(start, start + q + (1 if self.rank < r else 0))

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` under DistributedDataParallel (gradients averaged across ranks), or itself.

        DDP's constructor broadcasts rank 0's parameters and buffers, so every rank starts from the same
        state. Buffers are re-broadcast each step only when BatchNorm keeps running statistics (masks
        never change during training; re-sending them every step would cost a model's worth of traffic).
        """
        if not self.active or not any(p.requires_grad for p in model.parameters()):
            return model
        from torch.nn.parallel import DistributedDataParallel

        dev = next(model.parameters()).device
        has_bn = any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules()
        )
        with self.guard():
            # newer torch renames broadcast_buffers (a FutureWarning); older ones lack the new name
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return DistributedDataParallel(
                    model, device_ids=[dev] if dev.type == "cuda" else None, broadcast_buffers=has_bn
                )

    # -- collectives -----------------------------------------------------------------------------------
    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks, in place (identical result on every rank)."""
        if self.active:
            import torch.distributed as dist

            with self.guard():
                dist.all_reduce(t)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any (a stop decision every rank must take together)."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        return bool(self.all_reduce_(t).item() > 0)

    def _comm_device(self) -> torch.device:
        return (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a picklable CPU object; ``obj`` itself in one process): a
        decision every rank must apply the same way, e.g. a mask schedule's new masks."""
        return self._broadcast(obj) if self.active else obj

    def _broadcast(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        with self.guard():
            dist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def _gather(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        with self.guard():
            dist.all_gather_object(out, obj)
        return out

    def on_main(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` run by rank 0 only; every rank returns its result or raises its error.

        ``what`` names the operation: a rank whose own call names another one has left the common path
        (a bug), which is reported instead of silently pairing unrelated messages. Results cross as CPU
        objects: load tensors onto the CPU inside ``fn`` and move them after.
        """
        if not self.active:
            return fn()
        payload: tuple[str, str, Any] | None = None
        own: BaseException | None = None
        if self.is_main:
            try:
                payload = ("ok", what, fn())
            except BaseException as exc:  # noqa: BLE001  (re-raised below, after the others are told)
                own = exc
                try:
                    sent = exc if isinstance(exc, TicketsearchError | OSError) else None
                    pickle.dumps(sent)
                except Exception:
                    sent = None
                payload = ("error", what, sent if sent is not None else f"{type(exc).__name__}: {exc}")
        got = self._broadcast(payload)
        if own is not None:
            raise own
        kind, theirs, value = got
        if theirs != what:
            raise DistributedError(
                f"rank {self.rank} of {self.size}: ranks diverged (rank 0 did '{theirs}' while this rank did "
                f"'{what}')"
            )
        if kind == "ok":
            return value
        if isinstance(value, BaseException):
            raise quiet(value)
        raise quiet(DistributedError(f"rank 0 failed during '{what}': {value}"))

    def agree(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every rank; if it raised a user error on any rank, every rank raises, and rank 0's
        error names the first rank that failed (the others are ``quiet``: one line for the whole world).

        Used around work whose failure can be rank-local (data missing on one node): without it the
        healthy ranks would go on to a collective the failed rank never joins.
        """
        if not self.active:
            return fn()
        err: BaseException | None = None
        out: Any = None
        try:
            out = fn()
        except DistributedError:  # the world is already broken: nothing left to agree with
            raise
        except (TicketsearchError, OSError) as exc:
            err = exc
        mine = None if err is None else (type(err).__name__, str(err))
        if err is not None and getattr(err, "quiet", False):
            mine = ("quiet", str(err))
        seen = self._gather(mine)
        failed = [(r, e) for r, e in enumerate(seen) if e is not None]
        if not failed:
            return out
        if not self.is_main:
            raise quiet(err if err is not None else DistributedError("another rank failed"))
        if err is not None:
            raise err
        loud = [(r, e) for r, e in failed if e[0] != "quiet"] or failed
        r, (_, msg) = loud[0]
        raise DistributedError(f"rank {r} of {self.size}: {msg}")

    def close(self) -> None:
        if self.active:
            import gc

            import torch.distributed as dist

            # DDP wrappers of finished levels sit in reference cycles; one collected after the group is
            # gone aborted the process at exit now and then ("terminate called without an active
            # exception")
            gc.collect()
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self.active = False


SINGLE = World()


def _on_sigterm(world: World) -> Callable[[int, Any], None]:
    def handler(signum: int, frame: Any) -> None:
        raise world.lost(
            "stopped by SIGTERM: the launcher ended this rank because another failed, or the job "
            "was cancelled"
        )

    return handler


@contextlib.contextmanager
def open_world(*, cuda: bool, timeout: float = DEFAULT_TIMEOUT) -> Iterator[World]:
    """The process group of this torchrun process for the ``with`` block (:data:`SINGLE` outside torchrun).

    Backend: NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on CPU. ``timeout`` bounds every collective,
    rendezvous included. A SIGTERM (torchrun stopping the survivors of a failed rank, or a cancelled SLURM
    job) becomes a DistributedError, so each rank says why it stopped in one line.
    """
    env = torchrun_env()
    try:  # every rank finds the same problem here: rank 0 alone reports it
        if not timeout > 0:
            raise ConfigError(f"--dist-timeout must be a positive number of seconds, got {timeout:g}")
        if env is not None and cuda and env.local_rank >= torch.cuda.device_count():
            n = torch.cuda.device_count()
            raise ConfigError(
                f"LOCAL_RANK {env.local_rank} has no GPU: this node has {n}; use --nproc-per-node {n} or fewer"
            )
    except ConfigError as exc:
        raise (quiet(exc) if env is not None and env.rank > 0 else exc) from None
    if env is None:
        yield SINGLE
        return
    import torch.distributed as dist

    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(env.local_rank)
        # 2 (CleanUpOnly): a failed or timed-out NCCL collective raises in Python, where it becomes one
        # line, instead of tearing the process down (torchrun's default, 1); another choice is kept
        if os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1") == "1":
            os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "2"
    world = World(env.world_size, env.rank, env.local_rank, backend=backend, timeout=timeout, active=True)
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    except Exception as exc:
        raise world.lost(f"rendezvous failed: {_reason(exc)}") from None
    old = signal.signal(signal.SIGTERM, _on_sigterm(world))
    try:
        yield world
    except BaseException:
        # already failing: torchrun's SIGTERM to the survivors (it follows the first failure within a
        # second) must not kill this process before the CLI has printed why
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    else:
        signal.signal(signal.SIGTERM, old)
    finally:
        world.close()
