"""The data card of a run (`data.json`): class names and the preprocessing its model was trained with.

`dytrim train` writes it next to config.yaml, so that eval / predict / export prepare new images exactly as
the training images were (size, channels, Normalize constants) without the training data at hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dytrim.config import RunConfig
from dytrim.fileio import atomic_write_text

CARD_NAME = "data.json"
PREPROCESS = (
    "decode, EXIF-rotate, convert to {mode}, resize the shorter side to {size} (bilinear) and centre-crop "
    "{size}x{size}; then pixels / 255, minus mean, divided by std per channel"
)


@dataclass(frozen=True)
class DataCard:
    """What a trained model expects as input and what its outputs mean."""

    source: str  # data.name of the run
    classes: list[str]
    mean: list[float]
    std: list[float]
    channels: int
    height: int
    width: int
    lb_counts: list[int]  # labeled images per class (the prior of logit adjustment; many/medium/few groups)
    info: dict[str, Any] = field(default_factory=dict)  # source facts (folders: test set origin, skipped files)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def preprocess(self) -> str:
        mode = "RGB" if self.channels == 3 else "grayscale"
        size = self.height if self.height == self.width else f"{self.height}x{self.width}"
        return PREPROCESS.format(mode=mode, size=size)


def card_from_data(data: Any) -> DataCard:
    """The card of a loaded LTData."""
    _, c, h, w = data.x_train.shape
    return DataCard(
        source=data.name,
        classes=list(data.classes),
        mean=[float(v) for v in data.mean],
        std=[float(v) for v in data.std],
        channels=int(c),
        height=int(h),
        width=int(w),
        lb_counts=[int(v) for v in data.split.lb_counts],
        info=dict(data.info),
    )


def write_card(run_dir: Path, data: Any) -> DataCard:
    card = card_from_data(data)
    atomic_write_text(Path(run_dir) / CARD_NAME, json.dumps(asdict(card), indent=2) + "\n")
    return card


def read_card(run_dir: Path, cfg: RunConfig) -> DataCard:
    """The run's card; a run of an older dytrim may have none (its Python API did not write it): its data is
    loaded to rebuild it."""
    path = Path(run_dir) / CARD_NAME
    if path.is_file():
        return DataCard(**json.loads(path.read_text()))
    from dytrim.data.sources import load_data

    return card_from_data(load_data(cfg.data, cfg.seed, "cpu"))


def annotate_summary(run_dir: Path, card: DataCard) -> None:
    """Add the class names (the order of every per-class list) and the data facts to summary.json."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    summary["classes"] = card.classes
    summary["data"] = {"source": card.source, "labeled_per_class": card.lb_counts, **card.info}
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
