"""Optional TensorBoard event files beside metrics.jsonl (`train.tensorboard=true`, needs the `tensorboard`
package): every number of every metrics row as a scalar, per-class lists (recall, the baseline-image probe
π_θ(I), DyTrim's r_c and kept counts) as one scalar per class named by the class. A run in stages (cRT, CReST's
generations, CoSSL) also gets a curve per stage of the headline metrics (`stages/<stage>/<metric>`) and a text
marker at each switch (`stage_switch`), so generations overlay and the switch is visible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dytrim.config import ConfigError

STAGE_METRICS = ("bacc", "bacc_debiased", "gm", "gm_debiased", "acc", "loss")  # the per-stage curves


def require_tensorboard() -> None:
    """Fail before training, with the fix, when train.tensorboard is on but the package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as exc:
        raise ConfigError("train.tensorboard: needs the tensorboard package: pip install tensorboard (or the "
                          "dytrim[tensorboard] extra), or set train.tensorboard=false") from exc


def scalars(row: dict[str, Any], classes: list[str], prefix: str = "") -> dict[str, float]:
    """A metrics row flattened to tag -> number: nested dicts join with '/', lists as long as the class list get
    the class names, other lists their index; strings and None are left out."""
    out: dict[str, float] = {}
    for key, value in row.items():
        tag = f"{prefix}{key}"
        if isinstance(value, bool):
            out[tag] = float(value)
        elif isinstance(value, int | float):
            out[tag] = float(value)
        elif isinstance(value, dict):
            out |= scalars(value, classes, tag + "/")
        elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            names = classes if len(value) == len(classes) else [str(i) for i in range(len(value))]
            out |= {f"{tag}/{n}": float(v) for n, v in zip(names, value, strict=True)}
    return out


class TensorBoardLog:
    """Writes each evaluation row to `<run>/tensorboard` as it is appended to metrics.jsonl."""

    def __init__(self, log_dir: Path, classes: list[str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.classes = classes
        self.stage: str | None = None  # the stage of the last row written

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["step"])
        for tag, value in scalars({k: v for k, v in row.items() if k != "step"}, self.classes).items():
            self.writer.add_scalar(tag, value, step)
        if (stage := row.get("stage")) is not None:
            if stage != self.stage:
                self.writer.add_text("stage_switch", f"stage '{stage}' from step {step}", step)
                self.stage = stage
            for key in STAGE_METRICS:
                if isinstance(row.get(key), int | float):
                    self.writer.add_scalar(f"stages/{stage}/{key}", float(row[key]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
