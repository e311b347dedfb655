"""Deterministic, stateless batching of device-resident tensors.

The batch at global iteration ``i`` is a pure function of ``(seed, i)``: epoch ``i // steps_per_epoch``
is shuffled by a generator seeded from ``(seed, epoch)``. There is no iterator state, so a run resumed
from a checkpoint at iteration ``k`` sees exactly the batches an uninterrupted run would have seen, and
nothing about the data pipeline needs saving. Indexing happens on the data's device (no DataLoader, no
worker processes, no host-to-device copies per step).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..core.errors import ConfigError

__all__ = ["Batcher", "eval_batches", "epoch_seed"]

_MASK64 = (1 << 64) - 1


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of one epoch's shuffle: a hash of (seed, epoch), so nearby seeds/epochs are uncorrelated.

    Kept below 2**63 so every ``torch.Generator.manual_seed`` accepts it.
    """
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(epoch) & _MASK64)) >> 1


class Batcher:
    """Shuffled minibatches of ``(x, y)`` for any global iteration, without iterator state.

    ``drop_last`` drops the short final batch of each epoch (every step then has ``batch_size`` rows);
    otherwise the last batch of an epoch holds the remainder. The permutation of the current epoch is
    generated on CPU (identical on every device) and cached on the data's device.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0, drop_last: bool = False
    ) -> None:
        n = int(x.shape[0])
        if int(y.shape[0]) != n:
            raise ConfigError(f"x has {n} rows but y has {int(y.shape[0])}")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        if n == 0:
            raise ConfigError("cannot batch an empty training set")
        batch_size = int(batch_size)
        if drop_last and batch_size > n:
            raise ConfigError(f"batch_size {batch_size} exceeds the {n} training samples with drop_last=True")
        self.x, self.y = x, y
        self.n = n
        self.batch_size = batch_size
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.steps_per_epoch = n // batch_size if drop_last else -(-n // batch_size)
        self._epoch: int | None = None
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of the samples in ``epoch`` (on the data's device)."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        if self._epoch != epoch or self._perm is None:
            g = torch.Generator(device="cpu").manual_seed(epoch_seed(self.seed, epoch))
            self._perm = torch.randperm(self.n, generator=g).to(self.x.device)
            self._epoch = epoch
        return self._perm

    def indices(self, iteration: int) -> torch.Tensor:
        """Row indices of the batch at global ``iteration``."""
        if iteration < 0:
            raise ConfigError(f"iteration must be >= 0, got {iteration}")
        epoch, step = divmod(int(iteration), self.steps_per_epoch)
        start = step * self.batch_size
        return self.permutation(epoch)[start : start + self.batch_size]

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_b, y_b)`` for global ``iteration``: the same answer every time, in any call order."""
        idx = self.indices(iteration)
        return self.x[idx], self.y[idx]

    def epoch_of(self, iteration: int) -> int:
        return int(iteration) // self.steps_per_epoch

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __repr__(self) -> str:
        return (
            f"Batcher(n={self.n}, batch_size={self.batch_size}, seed={self.seed}, drop_last={self.drop_last}, "
            f"steps_per_epoch={self.steps_per_epoch})"
        )


def eval_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential, unshuffled chunks (views, no copies) for evaluation, where order must not matter."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if int(x.shape[0]) != int(y.shape[0]):
        raise ConfigError(f"x has {int(x.shape[0])} rows but y has {int(y.shape[0])}")
    for start in range(0, int(x.shape[0]), int(batch_size)):
        yield x[start : start + batch_size], y[start : start + batch_size]
