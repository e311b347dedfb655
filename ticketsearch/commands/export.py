"""``ticketsearch export``: write a ticket as a compact file for small devices (or ONNX)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .base import Command, register_command


@register_command("export")
class Export(Command):
    help = "write a ticket as a compact file (bitmask, csr, auto, dense) or ONNX"
    description = (
        "Export the weights a ticket keeps: --run DIR [--level K] (a run or replicate directory written by "
        "`find`; default the last finished level) or --mask FILE --weights FILE. Formats: bitmask, csr "
        "(narrowest index ints), auto (per layer the smaller of the two; for a mask made under --pattern, the "
        "packed nm or bsr layout), dense (for comparison) — "
        "safetensors with a checksummed JSON header, loaded by ticketsearch.load_ticket — or onnx. Values "
        "in fp32 or fp16; biases and BatchNorm are stored dense."
    )

    def add_args(self, parser: argparse.ArgumentParser) -> None:
        from ..export.ticket import FORMATS, VALUE_DTYPES

        src = parser.add_mutually_exclusive_group(required=True)
        src.add_argument("--run", help="a run or replicate directory written by `find`")
        src.add_argument("--mask", help="a mask.safetensors (with its mask.json sidecar)")
        parser.add_argument(
            "--level", type=int, default=None, help="with --run: the level (default: the last)"
        )
        parser.add_argument(
            "--weights", default=None, help="with --mask: the trained weights (e.g. model_final.safetensors)"
        )
        parser.add_argument(
            "--format",
            required=True,
            choices=FORMATS,
            help="auto: per layer the smaller of bitmask and csr, or nm / bsr (packed) for a mask made under "
            "--pattern N:M / block:RxC; dense: for comparison; onnx: needs onnx",
        )
        parser.add_argument(
            "--dtype", default="fp32", choices=tuple(VALUE_DTYPES), help="stored values (default: fp32)"
        )
        parser.add_argument("--out", required=True, help="the file to write (replaced atomically)")
        parser.add_argument("--json", action="store_true", help="print the summary as JSON")

    def run(self, ns: argparse.Namespace) -> int:
        from ..core.errors import ConfigError, DataError
        from ..core.mask import Mask
        from ..experiments.rundir import load_state
        from ..export import export_ticket
        from ..transfer import resolve_source

        run_dir: Path | None = None
        if ns.run is not None:
            if ns.weights is not None:
                raise ConfigError(
                    "--weights goes with --mask FILE; --run DIR uses the level's model_final.safetensors"
                )
            run_dir = Path(ns.run).expanduser()
            if run_dir.is_file():
                raise ConfigError(
                    f"--run takes a run directory, '{run_dir}' is a file (for a mask: --mask FILE --weights FILE)"
                )
            mask_path = resolve_source(run_dir, level=ns.level)
            weights = mask_path.parent / "model_final.safetensors"
        else:
            if ns.level is not None:
                raise ConfigError("--level goes with --run DIR, not with --mask")
            if ns.weights is None:
                raise ConfigError(
                    "--mask FILE needs --weights FILE (the trained weights, e.g. model_final.safetensors)"
                )
            mask_path, weights = Path(ns.mask).expanduser(), Path(ns.weights).expanduser()
        mask = Mask.load(mask_path)
        if not weights.is_file():
            raise DataError(f"weights file '{weights}' does not exist")
        state = load_state(weights)
        meta = mask.metadata
        source: dict[str, Any] = {
            "run": str(run_dir.resolve()) if run_dir is not None else None,
            "mask": str(mask_path.resolve()),
            "weights": str(weights.resolve()),
            **{k: meta.get(k) for k in ("dataset", "method", "seed", "level", "hparams_hash")},
        }
        result = export_ticket(
            state,
            mask,
            format=ns.format,
            dtype=ns.dtype,
            out=Path(ns.out).expanduser(),
            metadata={
                "model": meta.get("model"),
                "input_shape": meta.get("input_shape"),
                "num_classes": meta.get("num_classes"),
                "dataset": meta.get("dataset"),
                "source": source,
            },
        )
        summary = {
            "path": str(result.path),
            "format": result.format,
            "dtype": result.dtype,
            "bytes": result.bytes,
            "dense_fp32_bytes": result.dense_fp32_bytes,
            "fraction_of_dense_fp32": result.ratio,
            "density": result.density,
            "layers": result.layers,
        }
        if ns.json:
            print(json.dumps(summary, indent=2))
            return 0
        rows = [["layer", "kept", "density", "stored as"]]
        for name, rec in result.layers.items():
            rows.append([name, str(rec["num_kept"]), f"{rec['density']:.4f}", str(rec["encoding"])])
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for i, r in enumerate(rows):
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
            if i == 0:
                print("  ".join("-" * w for w in widths))
        print(
            f"wrote {result.path}: {result.bytes:,} bytes, {100 * result.ratio:.2f}% of the dense fp32 model "
            f"({result.dense_fp32_bytes:,} bytes); {result.format}, {result.dtype}, density {result.density:.4f}"
        )
        return 0
