"""Run directories keyed by the hparam hash: ``root/<method>_<hash>/replicate_<seed>/level_<k>/``.

Every file is written atomically. A level is finished when its ``result.json`` exists (written last), and a
finished level is never recomputed. ``checkpoint.pt`` holds the state of a level in progress and is removed
once the level is finished (its final weights stay in ``model_final.safetensors``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, DataError
from ..core.hparams import RunHparams
from ..core.io import append_jsonl, atomic_write, atomic_write_json, read_jsonl
from ..core.mask import Mask

__all__ = ["RunDir", "LevelDir", "save_state", "load_state", "check_writable"]


def check_writable(root: Path) -> None:
    """Fail early, in one line, if results cannot be written under ``root``."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"results root '{root}' is not writable ({exc.strerror or exc}); choose another --root"
        ) from None


def save_state(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A model state as safetensors (no pickle): init, rewind point and final weights."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_state(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # corrupt file → one line
        raise DataError(f"cannot read model state '{path}': {exc}") from None


class LevelDir:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    @property
    def mask_path(self) -> Path:
        return self.path / "mask.safetensors"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def final_path(self) -> Path:
        return self.path / "model_final.safetensors"

    def done(self) -> bool:
        return self.result_path.is_file()

    def result(self) -> dict[str, Any]:
        return json.loads(self.result_path.read_text(encoding="utf-8"))

    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.result_path, result)
        if self.checkpoint_path.exists():
            self.checkpoint_path.unlink()

    def save_mask(self, mask: Mask, **metadata: Any) -> Path:
        return mask.save(self.mask_path, **metadata)

    def load_mask(self) -> Mask:
        return Mask.load(self.mask_path)

    def log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, record)

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path)

    def reset_metrics(self, history: list[dict[str, Any]]) -> None:
        """On resume: metrics.jsonl becomes exactly the checkpoint's history (drops records past it)."""
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in history)
        atomic_write(self.metrics_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.checkpoint_path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            return None
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint we cannot read is restarted, not trusted
            return None

    def sub(self, name: str) -> LevelDir:
        return LevelDir(self.path / name)


class RunDir:
    """``root/<method>_<hash>/`` with ``hparams.json``; replicates and levels below it."""

    def __init__(self, root: str | os.PathLike[str], hparams: RunHparams) -> None:
        self.root = Path(root)
        self.hparams = hparams
        self.name = f"{hparams.pruning.method}_{hparams.hash()}"
        self.path = self.root / self.name

    def create(self) -> RunDir:
        check_writable(self.root)
        hp_path = self.path / "hparams.json"
        if not hp_path.is_file():
            atomic_write_json(hp_path, self.hparams.to_dict())
        return self

    def replicate(self, seed: int) -> Path:
        p = self.path / f"replicate_{seed}"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def level(self, seed: int, k: int) -> LevelDir:
        p = self.replicate(seed) / f"level_{k}"
        p.mkdir(parents=True, exist_ok=True)
        return LevelDir(p)
