"""Adding a debiaser (or an SSL base) is one new file: its config section and its component, each with its
registration line.

Everything below the two classes is the proof: no library file is edited, yet the method is an allowed
`debias.methods` name, its keys are typed, validated, listed with help and settable with --set, it trains through
the one loop (and the sweep's checkpoint round trip), and `dytrim train` runs it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from dytrim.config import SECTIONS, ConfigError, RunConfig, config_section, key_help, load_config, require
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component
from dytrim.ssl.base import ALGORITHMS
from dytrim.ssl.fixmatch import FixMatch

# these tiny runs use DyTrim's reference labeled rule (prune.min_keep=0) on a split with 1-image classes, so its
# start-up warning is expected (test_pruning.py checks the warning itself with pytest.warns)
pytestmark = [pytest.mark.filterwarnings("ignore:the labeled pruning rule:UserWarning")]


# ----------------------------------------------------------------------------- the whole new debiaser
@dataclass
class HeadDownweightConfig:
    """Scale the labeled loss of the head class."""

    factor: float = 0.5  # loss weight of the head class's labeled images (the others keep 1)

    def check(self, cfg: Any) -> None:
        require(0 < self.factor <= 1, "head_downweight.factor", f"must be in (0, 1]; got {self.factor}")


class HeadDownweight(Component):
    """Multiplies the labeled loss weight of the most frequent labeled class by head_downweight.factor."""

    name = "head_downweight"

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.head = int(torch.tensor(ctx.lb_counts).argmax())
        self.factor = cfg.head_downweight.factor
        self.seen = 0  # state, to show that it is checkpointed like any component's

    def weight(self, batch: Batch, step: int) -> None:
        batch.w_lb = torch.where(batch.y_lb == self.head, batch.w_lb * self.factor, batch.w_lb)
        self.seen += len(batch.y_lb)

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = int(state.get("seen", 0))


# ----------------------------------------------------------------------------- the proof
@pytest.fixture
def registered() -> Iterator[None]:
    """The two registration lines (here undone afterwards, so other tests see the library as shipped)."""
    config_section("head_downweight")(HeadDownweightConfig)
    COMPONENTS.register("head_downweight")(HeadDownweight)
    yield
    SECTIONS.pop("head_downweight")
    COMPONENTS._items.pop("head_downweight")


@pytest.mark.slow
def test_a_new_debiaser_is_one_file(registered, tmp_path) -> None:
    from dytrim.cli import main

    cfg = load_config("mnist-lt-fixmatch", ["debias.methods=head_downweight", "head_downweight.factor=0.25"])
    assert cfg.head_downweight.factor == 0.25
    with pytest.raises(ConfigError, match=r"head_downweight\.factor: must be in \(0, 1\]"):
        load_config("mnist-lt-fixmatch", ["debias.methods=head_downweight", "head_downweight.factor=2"])
    with pytest.raises(ConfigError, match="head_downweight.factor"):  # the typo is answered with the real key
        load_config("mnist-lt-fixmatch", ["head_downweight.factr=0.3"])
    entry = next(e for e in key_help() if e["key"] == "head_downweight.factor")
    assert entry["default"] == "0.5" and "head class" in entry["meaning"]
    out = tmp_path / "run"
    assert main(["train", "--preset", "mnist-lt-fixmatch", "--set", "debias.methods=head_downweight", "--set",
                 "head_downweight.factor=0.25", "--set", "train.steps=6", "--set", "train.eval_every=3", "--set",
                 "train.progress=false", "--set", "train.device=cpu", "--out", str(out)]) == 0
    assert "factor: 0.25" in (out / "config.yaml").read_text()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    state = torch.load(sorted(out.glob("ckpt_*.pt"))[-1], weights_only=True)
    assert state["components"]["head_downweight"]["seen"] == 6 * 32  # six labeled batches of 32


# ----------------------------------------------------------------------------- a new SSL base, the same way
class TopTwoMatch(FixMatch):
    """FixMatch whose mask also needs a margin between the top two weak-view probabilities (an example rule)."""

    def mask(self, probs: torch.Tensor, ulb_pos: torch.Tensor) -> torch.Tensor:
        top = probs.topk(2, dim=-1).values
        return ((top[:, 0] >= self.cfg.p_cutoff) & (top[:, 0] - top[:, 1] >= 0.5)).float()


@pytest.fixture
def registered_base() -> Iterator[None]:
    ALGORITHMS.register("toptwomatch")(TopTwoMatch)
    yield
    ALGORITHMS._items.pop("toptwomatch")


def test_a_new_ssl_base_is_one_file(registered_base, tmp_path) -> None:
    from dytrim.config import CHOICES
    from dytrim.factory import build_trainer

    assert "toptwomatch" in CHOICES["ssl.name"]
    cfg = load_config("mnist-lt-fixmatch", ["ssl.name=toptwomatch", "ssl.p_cutoff=0.0", "debias.methods=cdmad,dytrim",
                                            "train.progress=false", "train.device=cpu"])
    trainer = build_trainer(cfg, tmp_path)
    for _ in range(2):
        stats = trainer.train_step()
    assert isinstance(trainer.ssl, TopTwoMatch) and 0.0 <= float(stats["mask_rate"]) <= 1.0
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1]])
    assert trainer.ssl.mask(probs, torch.arange(2)).tolist() == [1.0, 0.0]  # the new rule is the one that ran
    with pytest.raises(ConfigError, match="toptwomatch"):  # a typo of the new name is answered with it
        load_config("mnist-lt-fixmatch", ["ssl.name=toptwomatc"])
