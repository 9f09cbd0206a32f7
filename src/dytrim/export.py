"""`dytrim export`: a run's EMA model as one self-describing file (state_dict, TorchScript or ONNX).

The exported module takes pixels as `dytrim predict` prepares them ([N, C, H, W], uint8 or float 0..255,
after the resize/crop named in its metadata), normalises inside, and returns (logits, logits_debiased).
The debiased output subtracts a constant per-class offset (z(I) for CDMAD/DyTrim, tau*log(prior) for post-hoc
logit adjustment), computed once from the run; without a debiaser it equals the logits. Class names and the
preprocessing constants travel inside the file and in a JSON file beside it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dytrim.config import ConfigError
from dytrim.engine.components import AUX, HeadModel
from dytrim.engine.evaluate import debias_logits
from dytrim.inference import TrainedRun
from dytrim.jsonfmt import compact_json
from dytrim.models import create_model

FORMAT = "dytrim-export/1"
FORMATS = ("state_dict", "torchscript", "onnx")
SUFFIX = {"state_dict": ".pt", "torchscript": ".torchscript.pt", "onnx": ".onnx"}
ONNX_HINT = (
    "--format onnx needs the optional packages onnx and onnxscript (and onnxruntime to run the file): "
    "pip install onnx onnxscript onnxruntime. The torchscript and state_dict formats need nothing extra."
)


class ExportedClassifier(nn.Module):
    """Pixels 0..255 [N, C, H, W] -> (logits, logits - debias offset); normalisation inside."""

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float], offset: torch.Tensor) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("offset", offset.detach().float().view(1, -1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (pixels.to(torch.float32) / 255.0 - self.mean) / self.std
        z = self.backbone(x).float()
        return z, z - self.offset


def debias_offset(run: TrainedRun) -> torch.Tensor | None:
    """z - debiased(z) when the run's debiasers shift every logit vector by the same constant, else None."""
    if not run.debiasers:
        return None
    z = torch.randn(4, run.card.num_classes, device=run.device)
    adjusted, _ = debias_logits(run.debiasers, z)
    delta = (z - adjusted).float()
    if not torch.allclose(delta, delta[:1].expand_as(delta), atol=1e-5):
        return None
    return delta[0].cpu()


def metadata(run: TrainedRun, debiased: bool) -> dict[str, Any]:
    """What a consumer of the file needs: classes, input layout and preprocessing, outputs."""
    card = run.card
    return {
        "format": FORMAT,
        "classes": card.classes,
        "num_classes": card.num_classes,
        "model": run.cfg.model.name,
        "input": {"shape": ["N", card.channels, card.height, card.width], "range": "0..255",
                  "channels": "RGB" if card.channels == 3 else "grayscale", "preprocess": card.preprocess},
        "mean": card.mean,
        "std": card.std,
        "outputs": ["logits", "logits_debiased"],
        "debias": run.debias_methods if debiased else [],
        "debiased_output": "logits minus a constant per-class offset" if debiased else "same as logits (no debiaser)",
        "run_dir": str(run.run_dir.resolve()),
        "step": run.step,
    }


def build_exported(run: TrainedRun) -> tuple[ExportedClassifier, dict[str, Any]]:
    """The wrapper module on the CPU in eval mode, and its metadata."""
    offset = debias_offset(run)
    if run.debiasers and offset is None:
        print(f"dytrim: warning: debias methods {run.debias_methods} are not a constant logit offset; the export's "
              "logits_debiased output equals its logits", file=sys.stderr)
    if isinstance(run.model, HeadModel):
        raise ConfigError(f"export: this run predicts with the auxiliary head '{run.model.name}' "
                          f"({', '.join(run.cfg.debias.methods)}); exporting such runs is not supported yet")
    backbone = create_model(run.cfg.model.name, run.card.num_classes, in_channels=run.card.channels)
    plain = getattr(run.model, "plain_state_dict", None)  # a backbone with another linear head (CoSSL's teacher)
    weights = plain() if plain is not None else run.model.state_dict()
    # heads that do not predict (ReMixMatch's rotation head) stay out of the exported classifier
    backbone.load_state_dict({k: v.cpu() for k, v in weights.items() if not k.startswith(f"{AUX}.")})
    module = ExportedClassifier(backbone, run.card.mean, run.card.std,
                                offset if offset is not None else torch.zeros(run.card.num_classes)).eval()
    return module, metadata(run, offset is not None)


def export_run(run: TrainedRun, fmt: str, out: Path | None = None) -> Path:
    """Write the model in `fmt` (default RUN_DIR/export/model<suffix>) plus <name>.json; returns the path."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: must be one of {', '.join(FORMATS)}; got '{fmt}'")
    if fmt == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript")):
        raise ConfigError(ONNX_HINT)
    path = Path(out) if out else run.run_dir / "export" / f"model{SUFFIX[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    module, meta = build_exported(run)
    meta["file_format"] = fmt
    meta["input"]["dtype"] = "float32" if fmt == "onnx" else "uint8 or float32"
    example = torch.zeros(2, run.card.channels, run.card.height, run.card.width)
    with torch.no_grad():
        if fmt == "state_dict":
            torch.save({"format": FORMAT, "meta": meta, "state_dict": module.state_dict()}, path)
        elif fmt == "torchscript":
            traced = torch.jit.trace(module, example)
            torch.jit.save(traced, str(path), _extra_files={"dytrim.json": json.dumps(meta)})
        else:
            _export_onnx(module, example, path, meta)
    sidecar(path).write_text(compact_json(meta) + "\n", encoding="utf-8")
    return path


def sidecar(path: Path) -> Path:
    """The metadata JSON beside an exported file: model.onnx -> model.onnx.json."""
    return path.with_name(path.name + ".json")


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, meta: dict[str, Any]) -> None:
    import onnx

    batch = torch.export.Dim("batch")
    torch.onnx.export(module, (example,), str(path), input_names=["pixels"],
                      output_names=["logits", "logits_debiased"], dynamic_shapes={"pixels": {0: batch}},
                      external_data=False, verbose=False)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "dytrim", json.dumps(meta)
    onnx.save(model, str(path))


def load_exported(path: str | Path, trust_torchscript: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Load a state_dict or TorchScript export: (module returning (logits, logits_debiased), metadata).

    A state_dict export is read as data (weights only). A TorchScript file is a program, so it is loaded
    only with `trust_torchscript=True`: for files you made yourself (deployment runtimes read them anyway)."""
    path = Path(path)
    if path.name.endswith(SUFFIX["torchscript"]):
        if not trust_torchscript:
            raise ConfigError(f"'{path}' is TorchScript, which is code; load it with trust_torchscript=True only if "
                              "you made it yourself, or use the state_dict export (data only)")
        files = {"dytrim.json": ""}
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        return module.eval(), json.loads(files["dytrim.json"])
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ConfigError(f"'{path}' is not a dytrim state_dict export (no '{FORMAT}' marker)")
    meta = blob["meta"]
    backbone = create_model(meta["model"], meta["num_classes"], in_channels=meta["input"]["shape"][1])
    sd = blob["state_dict"]
    module = ExportedClassifier(backbone, meta["mean"], meta["std"], sd["offset"].view(-1))
    module.load_state_dict(sd)
    return module.eval(), meta
