"""Transferred tickets: a mask found on one dataset, trained (or, for a supermask, evaluated) on another.

Morcos et al. 2019 ("One ticket to win them all") asked whether a ticket found once can be reused on other
data. A transfer is an ordinary run directory (``root/transfer_<hash>/``) whose identity holds the mask's
content, the init it starts from and the target's hparams, with the source's metadata and result beside
it (``source.json``). ``init="source"`` starts from the state the source ticket trained from, bit for bit
(its init, or IMP's rewind point); ``init="fresh"`` from a new init of the same architecture: the two
answer different questions (does the mask carry the information, or the mask with its init).

Shapes are explicit: a layer that does not fit is named with both shapes and the option that would make it
fit (``--resize``); a different class count gives a new, dense output layer (recorded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError, DataError, MaskMismatchError
from ..core.hparams import PruningHparams, RunHparams
from ..core.mask import Mask
from ..experiments.runner import Run, RunOptions, RunSummary, train_mask
from ..sparse import output_parameter

__all__ = ["transfer", "source_record", "adapt_to_target", "resolve_source", "is_learned"]


def source_record(mask_path: Path, mask: Mask) -> dict[str, Any]:
    """What a transfer keeps of its source: the mask's metadata and the source level's own result."""
    meta = mask.metadata
    result_path = Path(mask_path).parent / "result.json"
    result = None
    if result_path.is_file():
        try:
            result = json.loads(result_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            result = None
    keep = (
        "model",
        "dataset",
        "method",
        "seed",
        "level",
        "hparams_hash",
        "input_shape",
        "num_classes",
        "init",
    )
    return {
        "mask": str(Path(mask_path).resolve()),
        **{k: meta.get(k) for k in keep},
        "density": mask.density,
        "layer_density": mask.layer_density(),
        "resize": (meta.get("hparams") or {}).get("dataset", {}).get("resize", 0),
        "result": result if isinstance(result, dict) else None,
    }


def is_learned(mask: Mask) -> bool:
    """A supermask's weights never trained: transferring it first evaluates the frozen weights."""
    from ..methods import get_method

    name = mask.metadata.get("method")
    try:
        return bool(name) and not get_method(str(name)).trains_weights
    except ConfigError:
        return False


def _resize_hint(source: dict[str, Any], target_shape: tuple[int, ...], target: str) -> str:
    src = tuple(source.get("input_shape") or ())
    if len(src) == 3 and len(target_shape) == 3 and src[1:] != target_shape[1:]:
        return (
            f"; the source saw {source.get('dataset')} inputs of shape {list(src)}, {target} gives "
            f"{list(target_shape)}: transfer with --resize {src[1]}, or find the source with --resize "
            f"{target_shape[1]}"
        )
    return ""


def adapt_to_target(
    mask: Mask, run: Run, state: dict[str, torch.Tensor] | None
) -> tuple[Mask, dict[str, torch.Tensor] | None, dict[str, Any]]:
    """Fit a source ticket to the target model: every layer must match, except the output layer when the
    class count differs, which becomes a fresh, dense layer (its mask dropped, its weights the target
    model's new init)."""
    shapes = {n: tuple(s) for n, s in run.shapes.items()}
    out = output_parameter(run.model)
    have = {n: tuple(t.shape) for n, t in mask.items()}
    notes: dict[str, Any] = {}
    wrong = [n for n in shapes if n in have and have[n] != shapes[n] and n != out]
    if wrong or set(have) != set(shapes):
        n = wrong[0] if wrong else sorted(set(have) ^ set(shapes))[0]
        detail = (
            f"layer '{n}' has shape {list(have[n])} in the mask, {list(shapes[n])} in the model"
            if n in have and n in shapes
            else f"layer '{n}' is in only one of mask and model"
        )
        raise MaskMismatchError(
            f"mask does not fit model '{run.hp.model.model}' on '{run.hp.dataset.dataset}': {detail}"
            + _resize_hint(mask.metadata, tuple(run.data.input_shape), run.hp.dataset.dataset)
        )
    if have[out] != shapes[out]:
        src_classes, dst_classes = have[out][0], shapes[out][0]
        if have[out][1:] != shapes[out][1:]:
            raise MaskMismatchError(
                f"mask does not fit: output layer '{out}' has shape {list(have[out])} in the mask, "
                f"{list(shapes[out])} in the model"
            )
        tensors = {n: (torch.ones(shapes[n], dtype=torch.bool) if n == out else t) for n, t in mask.items()}
        mask = Mask(tensors, mask.metadata)
        prefix = out.rsplit(".", 1)[0] + "."
        if state is not None:  # the output layer's init is the target model's own
            fresh = run.model.state_dict()
            state = {k: (fresh[k].clone() if k.startswith(prefix) else v) for k, v in state.items()}
        notes["output_layer"] = (
            f"new dense output layer: the source had {src_classes} classes, the target {dst_classes}"
        )
    return mask, state, notes


def resolve_source(path: str | Path, *, level: int | None = None, seed: int | None = None) -> Path:
    """A mask file from ``--mask PATH`` or ``--from-run DIR [--level K]``.

    DIR is a replicate directory, or a run directory with one replicate (or ``seed`` naming it); the
    level defaults to the last finished one.
    """
    p = Path(path).expanduser()
    if p.is_file():
        if level is not None:
            raise ConfigError("--level goes with --from-run DIR, not with a mask file")
        return p
    if not p.is_dir():
        raise DataError(f"no mask file or run directory at '{p}'")
    if not p.name.startswith("replicate_"):
        reps = sorted(q for q in p.glob("replicate_*") if q.is_dir())
        if seed is not None:
            reps = [q for q in reps if q.name == f"replicate_{seed}"]
        if len(reps) != 1:
            names = ", ".join(q.name for q in reps) or "none"
            raise ConfigError(f"run directory '{p}' holds replicates {names}: give one replicate directory")
        p = reps[0]
    done = sorted(
        (int(q.name.split("_")[1]) for q in p.glob("level_*") if (q / "result.json").is_file()),
    )
    if not done:
        raise DataError(f"'{p}' has no finished level (no level_*/result.json)")
    k = done[-1] if level is None else level
    if k not in done:
        raise ConfigError(
            f"level {k} is not a finished level of '{p}' (finished: {', '.join(map(str, done))})"
        )
    return p / f"level_{k}" / "mask.safetensors"


def _check_rewind(mask: Mask, rewind: str, init: str) -> None:
    from ..core.hparams import parse_duration

    text = f"{rewind}it" if str(rewind).strip().isdigit() else str(rewind).strip()
    parse_duration(text, name="--rewind-iter")
    if init != "source":
        raise ConfigError("--rewind-iter starts from the source's rewind point: it needs --init-from source")
    stored = ((mask.metadata.get("hparams") or {}).get("pruning") or {}).get("rewind", "0it")
    if stored == "0it" or mask.metadata.get("init") != "../rewind.safetensors":
        raise ConfigError(
            "the source ticket trained from its init, not a rewind point: find it with --rewind-iter K first"
        )
    if stored != text:
        raise ConfigError(
            f"the source run stored its rewind point at {stored}, not {text}; use --rewind-iter {stored}"
        )


def transfer(
    mask_path: Path,
    hp: RunHparams,
    *,
    seed: int = 0,
    init: str = "source",
    opts: RunOptions | None = None,
    rewind: str | None = None,
) -> RunSummary:
    """Train (or evaluate, for a supermask) the ticket at ``mask_path`` on ``hp``'s dataset.

    ``hp`` describes the target (dataset, training); its model must be the mask's. Supermasks are first
    evaluated with their frozen weights (does the mask alone carry over?) and trained from their init with
    ``opts.then_train``. ``rewind`` (``--rewind-iter``): start from the source's rewind point at that
    iteration; a run stores one rewind point (its own ``--rewind-iter``), so another is refused.
    """
    mask = Mask.load(mask_path)
    if rewind is not None:
        _check_rewind(mask, rewind, init)
    model = mask.metadata.get("model")
    if model and hp.model.model != model:
        raise ConfigError(
            f"the mask was found on model '{model}', not '{hp.model.model}'; use --model {model}"
        )
    hp = hp.replace(pruning=PruningHparams(method="transfer"))
    return train_mask(
        Path(mask_path),
        hp,
        seed=seed,
        init=init,
        opts=opts,
        adapt=adapt_to_target,
        untrained=is_learned(mask),
        record=source_record(Path(mask_path), mask),
    )
