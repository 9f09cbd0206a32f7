"""Coverage by construction: every registered SSL base x every registered debiaser (and every stack a preset uses)
trains, checkpoints, and resumes exactly. A newly registered base or debiaser joins the sweep without an edit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dytrim.config import ConfigError, list_presets, load_config
from dytrim.debias import COMPONENTS
from dytrim.engine.checkpoint import load_latest, save_checkpoint
from dytrim.factory import build_trainer
from dytrim.ssl import ALGORITHMS

# tiny and fast: the embedded digits, small batches, debiasing active from step 0, DyTrim re-pruning every 2 steps
TINY = ["train.batch_size=8", "train.uratio=2", "train.steps=4", "train.eval_every=2", "train.progress=false",
        "train.device=cpu", "train.threads=1", "debias.start=0", "prune.cadence=epoch", "prune.epoch_steps=2",
        "prune.min_keep=1", "data.eval_subset=50", "saw.epoch_steps=2", "adsh.epoch_steps=2", "adsh.first_epoch=1",
        "darp.warm=0", "darp.every=2", "daso.warm=2", "daso.pl_period=2", "acr.epoch_steps=1", "acr.est_epoch=0",
        "crt.steps=3", "cossl.steps=3", "cossl.warm_steps=2", "crest.generations=2"]
#   (DARP refines at steps 0 and 2, DASO blends from step 2, ACR estimates and adapts tau1 every step: the resume at
#   step 2 crosses each method's periodic state; a stack with stages (cRT, CReST, CoSSL) resumes inside its first
#   stage after the main one, one step past the switch)


def _preset_stacks() -> set[tuple[str, ...]]:
    """The debias.methods stacks of every preset (e.g. cdmad + dytrim, the reference recipe)."""
    return {tuple(load_config(p).debias.methods) for p in list_presets()} - {()}


STACKS = sorted({(m,) for m in COMPONENTS.names()} | _preset_stacks() | {()})
CASES = [(ssl, stack) for ssl in ALGORITHMS.names() for stack in STACKS]
FAST = ("fixmatch", ("cdmad", "dytrim"))  # the reference recipe stays in the fast selection; the rest are `slow`
PARAMS = [pytest.param(s, m, id=f"{s}-{'+'.join(m) or 'none'}", marks=() if (s, m) == FAST else pytest.mark.slow)
          for s, m in CASES]


#: what a base needs of the config beyond the mnist-lt-fixmatch preset (ReMixMatch: two strong views, one forward per
#: mixed chunk); a base missing here is refused by its own check, which names the key
BASE_SETS = {"remixmatch": ["ssl.n_strong=2", "train.forward=separate"]}


def _config(ssl: str, stack: tuple[str, ...]):
    return load_config("mnist-lt-fixmatch", [f"ssl.name={ssl}", f"debias.methods={','.join(stack)}", *TINY,
                                             *BASE_SETS.get(ssl, [])])


def _refusal(ssl: str, stack: tuple[str, ...]) -> str | None:
    """The one-line refusal of a stack a method cannot join (e.g. adsh on flexmatch), or None."""
    try:
        _config(ssl, stack)
    except ConfigError as exc:
        return str(exc)
    return None


def _trainer(out: Path, ssl: str, stack: tuple[str, ...], resume: bool = False):
    return build_trainer(_config(ssl, stack), out, resume=resume)


def _steps(trainer, n: int) -> None:
    for _ in range(n):
        trainer.train_step()


def test_the_sweep_covers_every_registered_name() -> None:
    assert {s for s, _ in CASES} == set(ALGORITHMS.names()) and len(ALGORITHMS.names()) >= 4
    assert {m for _, stack in CASES for m in stack} == set(COMPONENTS.names())
    assert ("cdmad", "dytrim") in STACKS  # the reference recipe, from the presets
    assert len(CASES) == len(ALGORITHMS.names()) * len(STACKS)
    assert all(_refusal("fixmatch", (m,)) is None for m in COMPONENTS.names())  # every method runs on fixmatch


@pytest.mark.parametrize(("ssl", "stack"), PARAMS)
def test_two_steps_checkpoint_and_exact_resume(tmp_path, ssl: str, stack: tuple[str, ...]) -> None:
    if (refused := _refusal(ssl, stack)) is not None:  # a stack the method cannot join: one line naming the key
        assert "\n" not in refused and refused.startswith("debias.methods: "), refused
        return
    straight = _trainer(tmp_path / "a", ssl, stack)
    total = straight.plan.total  # train.steps, plus the steps of the stages the stack declares
    stop = straight.plan.bounds[1] + 1 if straight.plan else 2  # with stages: inside the first one after the main
    _steps(straight, total)
    first = _trainer(tmp_path / "b", ssl, stack)
    _steps(first, stop)
    twin = _trainer(tmp_path / "twin", ssl, stack)
    _steps(twin, stop)
    # what DDP ranks compare (weights, SSL state, component state, sampler lists) depends on the batch only
    assert first._fingerprint() == twin._fingerprint()
    (tmp_path / "b").mkdir()
    save_checkpoint(tmp_path / "b", first.step, first.state_dict(), 2)
    state, _ = load_latest(tmp_path / "b", torch.device("cpu"))  # weights_only: the state is plain data
    assert state["step"] == stop and set(state["components"]) == set(stack)
    assert state.get("stage", 0) == (1 if straight.plan else 0)
    resumed = _trainer(tmp_path / "b", ssl, stack, resume=True)
    assert resumed.restore() is not None and resumed.step == stop and resumed.plan.index == first.plan.index
    assert resumed._fingerprint() == first._fingerprint()  # the round trip restores everything compared
    _steps(resumed, total - stop)
    assert resumed._fingerprint() == straight._fingerprint()  # stop + the rest = the whole run, bit for bit
    for a, b in zip(resumed.ema.model.state_dict().values(), straight.ema.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    row = resumed.evaluate()
    assert 0.0 <= row["bacc"] <= 1.0 and len(row["prior_baseline"]) == 10
