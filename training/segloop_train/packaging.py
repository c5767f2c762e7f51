"""What a fine-tuning run writes besides the weights: the ONNX export, the model card, the command.

The package itself is written by :func:`segloop.core.formats.package.save_package`.
"""

from __future__ import annotations

import datetime as _dt
import os

import numpy as np
import torch

from segloop.core.formats.package import ModelPackage, ModelSpec
from segloop.core.formats.pixel_size import format_pixel_size
from segloop.core.inference.model import build_network
from segloop_train.config import FinetuneConfig
from segloop_train.distributed import DistContext
from segloop_train.folders import LoadedFolders
from segloop_train.precision import PrecisionChoice

__all__ = ["api_command", "export_onnx_checked", "model_card", "training_record"]


def training_record(*, loaded: LoadedFolders, config: FinetuneConfig, history: list[dict], best: dict | None,
                    parent_metrics: dict, metrics: dict, improved: bool | None, stopped: str, steps_done: int,
                    resumed_from: int | None, device: str, precision: PrecisionChoice, ctx: DistContext, batch: int,
                    command: str, seconds: float, spec: ModelSpec) -> dict:
    """The package's ``training`` record: data, config, history, metrics, how and where it ran (no ONNX yet)."""
    return {
        "folders": [f.to_dict() for f in loaded.folders],
        "sample_counts": {"train": len(loaded.train), "val": len(loaded.val)},
        "class_mapping": loaded.class_mapping,
        "config": config.to_dict(),
        "history": history,
        "best": ({"step": best["step"], "epoch": best["epoch"], **best["metrics"]} if best else {}),
        "parent_metrics": parent_metrics,
        "metrics": metrics,
        "improved": improved,
        "stopped": stopped,
        "steps_done": steps_done,
        "resumed_from": resumed_from,
        "device": device,
        "precision": precision.to_dict(),
        "world_size": ctx.world_size,
        "batch_per_process": batch,
        "effective_batch": ctx.world_size * batch,
        "distributed": ({"backend": ctx.backend, "world_size": ctx.world_size,
                         "sampling": "rank r draws the patches of step i from default_rng([seed, i, r]); "
                                     "DDP averages the gradients"} if ctx.enabled else None),
        "command": command,
        "seconds": round(seconds, 1),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "segloop_train": "finetune v1",
        "dims": spec.dims,
        "context_slices": spec.context_slices,
        "evaluated_with": "Model.predict",
    }


def api_command(folders, parent, out, config: FinetuneConfig) -> str:
    """The :func:`segloop_train.finetune` call that reproduces a run (recorded when no command is given)."""
    fs = [str(folders)] if isinstance(folders, str | os.PathLike) else [str(f) for f in folders]
    extra = (f", dims={config.dims}" if config.dims != 2 else "") + (
        f", context_slices={config.context_slices}" if config.context_slices != 1 else "")
    return (f"segloop_train.finetune({fs!r}, parent={None if parent is None else str(parent)!r}, "
            f"out={str(out)!r}, steps={config.steps}, lr={config.lr}, batch={config.batch}, "
            f"patch={config.patch}, seed={config.seed}{extra})")


def export_onnx_checked(spec: ModelSpec, state: dict[str, torch.Tensor]) -> tuple[bytes | None, str | None]:
    """ONNX bytes checked against torch, or None and a note saying why not."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None, "onnx / onnxruntime are not installed: no model.onnx written (pip install 'napari-segloop[onnx]')"
    from segloop.core.inference.engines import OnnxPredictor, TorchPredictor, export_onnx

    net = build_network(ModelPackage(spec, state))
    size = spec.tile.get("size", 256)
    tile = tuple(int(v) for v in size) if isinstance(size, list | tuple) else (int(size),) * spec.dims
    try:
        data = export_onnx(net, in_channels=spec.in_channels, tile=tile, dims=spec.dims)
        ref = np.random.default_rng(0).standard_normal((1, spec.in_channels, *tile)).astype(np.float32)
        diff = float(np.abs(OnnxPredictor(data, device="cpu")(ref)
                            - TorchPredictor(net, device="cpu", precision="fp32")(ref)).max())
    except Exception as e:  # the exporter raises many types; the package is still useful without ONNX
        return None, (f"ONNX export of this {spec.dims}D network failed ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}); no model.onnx written, the torch engine runs it")
    if diff > 1e-3:
        return None, f"ONNX export disagrees with torch (max |dp| = {diff:.1e}); no model.onnx written"
    return data, None


def model_card(spec: ModelSpec, parent_metrics: dict, metrics: dict, improved: bool | None) -> str:
    """The MODEL_CARD.md of a package written by a run: data, network, held-out metrics, how to reproduce."""
    t = spec.training or {}
    lines = [f"# {spec.name} v{spec.version}", ""]
    if spec.parent:
        lines.append(f"Fine-tuned from **{spec.parent['name']} v{spec.parent['version']}** "
                     f"(weights sha256 {spec.parent['sha256'][:12]}...) with segloop-train.")
    else:
        lines.append(f"Trained from scratch ({spec.architecture}) with segloop-train.")
    lines += ["", "## Data", ""]
    for f in t.get("folders", []):
        lines.append(f"- `{f['path']}` (fingerprint {f['fingerprint'][:12]}...): samples {f['samples']}"
                     + (f", {len(f['skipped'])} skipped" if f["skipped"] else ""))
    kind = ("3D" if spec.dims == 3 else f"2.5D ({spec.context_slices} neighbouring slices as channels)"
            if spec.context_slices > 1 else "2D")
    size = spec.tile.get("size")
    lines += ["", "## Network", "", f"- {kind} `{spec.architecture}` {spec.architecture_kwargs}, "
              f"{spec.in_channels} input channel(s), classes {list(spec.classes)}",
              f"- tile {size}, spacing {list(spec.spacing) if spec.spacing else 'not recorded (unknown)'}",
              f"- pixel size {format_pixel_size(spec.pixel_size) + ' µm/px' if spec.pixel_size else 'not recorded'}"
              + (" (images and training samples of another known pixel size are resampled to it)"
                 if spec.pixel_size else "")]
    onnx_rec = t.get("onnx") or {}
    if onnx_rec and not onnx_rec.get("exported"):
        lines.append(f"- no model.onnx: {onnx_rec.get('reason')}")
    lines += ["", "## Held-out (val) metrics", ""]
    keys = [k for k in metrics if ":" not in k] or [k for k in parent_metrics if ":" not in k]
    if keys:
        lines.append("| model | " + " | ".join(keys) + " |")
        lines.append("|---|" + "---|" * len(keys))
        if parent_metrics:
            lines.append("| parent | " + " | ".join(f"{parent_metrics.get(k, float('nan')):.3f}" for k in keys) + " |")
        lines.append("| this | " + " | ".join(f"{metrics.get(k, float('nan')):.3f}" for k in keys) + " |")
        per_class = [c for c in spec.classes[1:] if f"dice:{c}" in metrics or f"dice:{c}" in parent_metrics]
        if per_class:
            lines += ["", "Per class (Dice / Jaccard):", "", "| model | " + " | ".join(per_class) + " |",
                      "|---|" + "---|" * len(per_class)]
            rows = ([("parent", parent_metrics)] if parent_metrics else []) + [("this", metrics)]
            for who, m in rows:
                lines.append(f"| {who} | " + " | ".join(
                    f"{m.get(f'dice:{c}', float('nan')):.3f} / {m.get(f'jaccard:{c}', float('nan')):.3f}"
                    for c in per_class) + " |")
        lines.append("")
        lines.append(f"Improved over the parent: {improved}.")
        if t.get("evaluated_with") and t["evaluated_with"] != "Model.predict":
            lines.append(f"Evaluated with {t['evaluated_with']} (this segloop's Model.predict does not run "
                         f"{kind} packages yet).")
    else:
        lines.append("No val samples: not evaluated.")
    lines += ["", "## Reproduce", "", f"`{t.get('command', '')}`", ""]
    return "\n".join(lines)
