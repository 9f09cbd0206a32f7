"""DyTrim (ICLR 2026): dynamic pruning guided by the baseline image, on top of any SSL base.

Per step it stores each seen sample's score (labeled: supervised loss; unlabeled: the masked soft
cross-entropy summed over the strong views, or the weak-view entropy) and debiased confidence. Each
time a sampler's kept list runs out (the reference cadence; or every `prune.epoch_steps` steps; the
first pass is always the full set), a new list is chosen by `dytrim.pruning.select`: labeled data
class-aware with prune ratio r_c = π_θ(I)_c (the labeled class frequency before `debias.start`),
unlabeled data softly with keep rate r and weight 1/r. After `prune.anneal` of training: full data,
unit weights. Options beside the reference rule (defaults = reference): a per-class floor
`prune.min_keep`, `prune.rounding=round`, caps `prune.max_ratio` / `prune.max_prior_ratio`, and r_c from an
EMA of pi_theta(I) (`prune.ratio_ema`). A warning at start-up names `prune.min_keep` when the configured rule
would delete a class's last labeled image for a plausible r_c (up to the largest labeled class share).
Logged at each evaluation under `pruning`: r_c of the latest selection, pi_theta(I) of the training-mode
student now (`pi_I`), and the class shares of the masked pseudo-labels since the previous evaluation
(`pseudo_dist`). z(I) is the loop's per-step probe (ctx.z_I), shared with CDMAD when both are listed (the
reference recipe).

Differences from the reference code, on purpose (here the next pass is chosen once the last batch of the current
one has been trained and scored):
- its loaders are re-created at every 500-iteration epoch, which reshuffles the current kept list mid-pass
  without re-pruning, so a kept list of more than about 500 batches is never re-pruned there (STL-10's ~1,600
  unlabeled batches of 64); here a pass runs to its end;
- its DataLoader (4 workers x prefetch factor 2) draws indices 8 batches ahead, so its sampler runs out and
  re-prunes while the pass's last 8 batches are still to be trained: that choice reads their samples' previous
  scores (up to 256 labeled / 512 unlabeled);
- annealing: it tests epoch > delta * 500 (epoch = the 0-based 500-iteration epoch) at each re-prune, so full
  data starts at the first re-prune from step 438 * 500 = 219,000 (0.876 of 250k); here at the first re-prune
  from step delta * train.steps of the step clock (218,750), which runs ahead of the updates with prune.budget=shrink.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dytrim.config import RunConfig, config_section, require
from dytrim.config.schedule import step_of, to_step
from dytrim.debias.registry import COMPONENTS
from dytrim.engine.context import RunContext
from dytrim.engine.hooks import Batch, Component, StepOutput
from dytrim.engine.indexing import put_last
from dytrim.engine.rng import set_generator_state
from dytrim.pruning.sampler import PrunedSampler
from dytrim.pruning.select import capped_ratio, keep_count, keep_labeled, soft_prune


@config_section("prune")
@dataclass
class PruneConfig:
    """DyTrim's dynamic pruning (used when `dytrim` is in debias.methods; see dytrim.pruning)."""

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "score": ("loss", "entropy"), "cadence": ("pass", "epoch"), "budget": ("fixed", "shrink"),
        "rounding": ("floor", "round"),
    }

    labeled: bool = True  # class-aware hard pruning of labeled data (prune ratio r_c = pi_theta(I)_c)
    unlabeled: bool = True  # confidence-gated soft pruning of unlabeled data (InfoBatch-style)
    rescale: bool = True  # weight 1/keep_rate on randomly kept low-score unlabeled samples
    min_keep: int = 0  # labeled images kept per class at least (reference 0: a 1-image class can vanish;
    #   our cpu-*/mnist-* presets use 1, see README "DyTrim")
    rounding: str = "floor"  # kept count of class c: floor = int((1 - r_c)·N_c) (reference) | round = nearest
    max_ratio: float = 1.0  # cap on the prune ratio: r_c <= max_ratio (reference 1 = no cap)
    max_prior_ratio: float = 0.0  # cap on r_c relative to the labeled prior: r_c <= max_prior_ratio·prior_c
    #   (reference 0 = no cap; 1 = never prune a class harder than its labeled frequency)
    ratio_ema: float = 0.0  # r_c from an EMA of pi_theta(I) with this per-step decay, started from the labeled
    #   prior at debias.start (reference 0 = the latest pi_theta(I))
    keep_rate: float = 0.3  # r: keep probability of low-score, confident unlabeled samples (reference 0.3)
    anneal: float = 0.875  # delta: after this fraction of train.steps use the full data with unit weights
    tau: float = 0.0  # debiased-confidence gate: only samples with max softmax(z(u) - z(I)) >= tau are soft-pruned
    score: str = "loss"  # unlabeled score: loss (masked soft CE summed over strong views) | entropy (of the weak view)
    init_score: float = 1.0  # score of a sample never seen yet (reference 1)
    cadence: str = "pass"  # re-prune when the kept list is exhausted (reference) | epoch: every epoch_steps steps
    epoch_steps: int = 500  # steps per epoch for cadence=epoch (reference epoch = 500 iterations)
    budget: str = "fixed"  # fixed: train.steps updates (reference) | shrink: the step clock advances by
    #   |U| / |kept U| per update, so pruning saves updates (InfoBatch's shrinking epochs)

    def check(self, cfg: Any) -> None:
        require(0 < self.keep_rate <= 1, "prune.keep_rate", f"must be in (0, 1]; got {self.keep_rate}")
        require(0 <= self.anneal <= 1, "prune.anneal",
                f"must be in [0, 1] (fraction of train.steps); got {self.anneal}")
        require(0 <= self.tau <= 1, "prune.tau", f"must be in [0, 1]; got {self.tau}")
        require(self.min_keep >= 0, "prune.min_keep", f"must be >= 0; got {self.min_keep}")
        require(0 <= self.max_ratio <= 1, "prune.max_ratio", f"must be in [0, 1] (1 = no cap); got {self.max_ratio}")
        require(self.max_prior_ratio >= 0, "prune.max_prior_ratio",
                f"must be >= 0 (0 = no cap); got {self.max_prior_ratio}")
        require(0 <= self.ratio_ema < 1, "prune.ratio_ema",
                f"must be in [0, 1) (0 = latest pi(I)); got {self.ratio_ema}")
        require(self.epoch_steps >= 1, "prune.epoch_steps", f"must be >= 1; got {self.epoch_steps}")


@COMPONENTS.register("dytrim")
class DyTrim(Component):
    """Owns the score store and both pruned samplers; weights unlabeled losses of the current pass."""

    name = "dytrim"
    uses_probe = True
    starts = ("the pi_theta(I)-guided labeled pruning (r_c = labeled prior before it)", "debias.start", "prune.anneal")

    def __init__(self, cfg: RunConfig, ctx: RunContext) -> None:
        self.ctx = ctx
        self.p = cfg.prune
        self.start = step_of(cfg, "debias.start")  # a step, or a fraction of train.steps resolved to one
        self.lb_prior = ctx.lb_prior
        self.lb_counts = list(ctx.lb_counts)
        self.pi_ema: torch.Tensor | None = None  # EMA of pi_theta(I) (prune.ratio_ema > 0), from debias.start
        self.pseudo_hist = torch.zeros(ctx.num_classes, dtype=torch.float64)  # masked pseudo-labels since last eval
        if self.p.labeled:
            self._warn_erasure()
        self.gen = torch.Generator().manual_seed(ctx.seed * 1000 + 5)  # soft pruning's random keeps
        self.step = 0
        self.prune_ratio = self.lb_prior.clone()  # r_c used by the latest labeled selection
        self.lb_sampler: PrunedSampler | None = None
        self.ulb_sampler: PrunedSampler | None = None
        self.epoch = 0
        self.n_lb, self.n_ulb, self.num_classes = ctx.n_lb, ctx.n_ulb, ctx.num_classes
        self.lb_labels = ctx.lb_labels  # [N_lb] on the CPU
        self.score_lb = torch.full((self.n_lb,), self.p.init_score, device=ctx.device)
        self.score_ulb = torch.full((self.n_ulb,), self.p.init_score, device=ctx.device)
        self.conf_ulb = torch.zeros(self.n_ulb, device=ctx.device)  # 0 until seen: tau > 0 prunes no unseen one
        self.w_ulb = torch.ones(self.n_ulb, device=ctx.device)

    def _warn_erasure(self) -> None:
        """Warn when the configured rule keeps no labeled image of some class for a plausible r_c, taken as
        any value up to the largest labeled class share (pi_theta(I) near the labeled prior or the pseudo-label
        distribution of a head-heavy split reaches it), after the configured caps."""
        r_hi = torch.full_like(self.lb_prior, float(self.lb_prior.max()))
        r_eff = capped_ratio(r_hi, self.lb_prior, self.p.max_ratio, self.p.max_prior_ratio)
        lost = [c for c, n in enumerate(self.lb_counts)
                if n > 0 and keep_count(n, float(r_eff[c]), self.p.min_keep, self.p.rounding) == 0]
        if lost:
            ns = ", ".join(f"class {c}: N_c = {self.lb_counts[c]}" for c in lost)
            warnings.warn(
                f"the labeled pruning rule (prune.min_keep={self.p.min_keep}, prune.rounding="
                f"{self.p.rounding}) deletes every labeled image of {len(lost)} class(es) for some r_c in "
                f"[0, {float(r_hi[0]):.3f}], the largest labeled class share ({ns}; N_c·(1 − r_c) < 1). Set "
                f"prune.min_keep=1 to keep at least one labeled image per class.",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ wiring
    def labeled_sampler(self, labels: torch.Tensor, batch_size: int, seed: int) -> PrunedSampler:
        self.lb_sampler = PrunedSampler(self._select_labeled, batch_size, seed)
        return self.lb_sampler

    def unlabeled_sampler(self, n: int, batch_size: int, seed: int) -> PrunedSampler:
        self.ulb_sampler = PrunedSampler(self._select_unlabeled, batch_size, seed)
        return self.ulb_sampler

    # ------------------------------------------------------------------ decisions
    def annealing(self) -> bool:
        """True in the last (1 - delta) of training: full data and unit weights (InfoBatch annealing)."""
        return self.step >= to_step(self.p.anneal, self.ctx.progress.total_steps)  # ceil(delta * T), exact

    def z_I(self) -> torch.Tensor | None:
        return self.ctx.z_I

    def current_pi(self) -> torch.Tensor:
        """pi_theta(I) as the rule reads it: softmax(z(I)) of the training-mode network after the debias start
        (its EMA with prune.ratio_ema > 0), the labeled frequency before."""
        z = self.z_I()
        if self.step >= self.start and z is not None:
            if self.p.ratio_ema > 0 and self.pi_ema is not None:
                return self.pi_ema.clone()
            return self._pi_now()
        return self.lb_prior.clone()

    def current_prune_ratio(self) -> torch.Tensor:
        """r_c: pi_theta(I)_c (reference), capped by prune.max_ratio / prune.max_prior_ratio when set."""
        return capped_ratio(self.current_pi(), self.lb_prior, self.p.max_ratio, self.p.max_prior_ratio)

    def _select_labeled(self) -> torch.Tensor:
        first = self.lb_sampler is None or self.lb_sampler.passes == 0  # reference: the first pass is unpruned
        if first or self.annealing() or not self.p.labeled:
            return torch.arange(self.n_lb)
        self.prune_ratio = self.current_prune_ratio()
        kept = keep_labeled(self.score_lb, self.lb_labels, self.prune_ratio, self.p.min_keep, self.p.rounding)
        return kept if len(kept) else torch.arange(self.n_lb)

    def _select_unlabeled(self) -> torch.Tensor:
        if self.annealing() or not self.p.unlabeled:
            self.w_ulb.fill_(1.0)
            return torch.arange(self.n_ulb)
        kept, w = soft_prune(self.score_ulb, self.conf_ulb, self.p.keep_rate, self.p.tau, self.gen, self.p.rescale)
        self.w_ulb = w.to(self.w_ulb.device)
        return kept

    # ------------------------------------------------------------------ hooks
    def before_step(self, step: int) -> None:
        self.step = step
        z = self.z_I()
        if self.p.ratio_ema > 0 and step >= self.start and z is not None:
            prev = self.lb_prior if self.pi_ema is None else self.pi_ema
            self.pi_ema = self.p.ratio_ema * prev + (1.0 - self.p.ratio_ema) * self._pi_now()
        if self.p.cadence == "epoch" and step // self.p.epoch_steps != self.epoch:
            self.epoch = step // self.p.epoch_steps
            for s in (self.lb_sampler, self.ulb_sampler):
                if s is not None:
                    s.renew()

    def weight(self, batch: Batch, step: int) -> None:
        if batch.w_ulb is not None and batch.ulb_pos is not None:
            batch.w_ulb *= self.w_ulb[batch.ulb_pos]

    def observe(self, batch: Batch, out: StepOutput, step: int) -> None:
        put_last(self.score_lb, batch.lb_pos, out.loss_lb.float())
        if out.targets is not None and out.mask is not None:  # class shares of the pseudo-labels that train
            hard = torch.nn.functional.one_hot(out.targets.detach().argmax(-1), self.num_classes).double()
            self.pseudo_hist = self.pseudo_hist.to(hard.device)  # on the device: no host read per step
            self.pseudo_hist += (hard * out.mask.detach().double()[:, None]).sum(0)
        if out.loss_ulb is None or out.logits_ulb_w is None or batch.ulb_pos is None:
            return
        z = self.z_I()
        if step >= self.start and z is not None and out.logits_ulb_w_raw is not None:
            logits = out.logits_ulb_w_raw.float() - z.float()  # debiased confidence: softmax(z(u) - z(I))
        else:
            logits = out.logits_ulb_w.float()
        probs = torch.softmax(logits, dim=-1)
        if self.p.score == "loss":
            score = out.loss_ulb.float().sum(0)
        else:
            score = -(probs * probs.clamp_min(1e-12).log()).sum(-1)
        put_last(self.score_ulb, batch.ulb_pos, score)
        put_last(self.conf_ulb, batch.ulb_pos, probs.amax(-1))

    def clock_rate(self) -> float:
        """With prune.budget=shrink, one update stands for |pool| / |kept| steps of the full-data clock."""
        if self.p.budget != "shrink":
            return 1.0
        s, n = (self.ulb_sampler, self.n_ulb) if self.ctx.uses_unlabeled else (self.lb_sampler, self.n_lb)
        return n / len(s.kept) if s is not None and len(s.kept) else 1.0

    def eval_fields(self) -> dict[str, Any]:
        t = self.ctx.progress
        lb_kept = self.lb_sampler.kept if self.lb_sampler is not None else torch.arange(self.n_lb)
        kept_lb = torch.bincount(self.lb_labels[lb_kept], minlength=self.num_classes)
        info: dict[str, Any] = {
            "r_c": [round(float(v), 6) for v in self.prune_ratio],
            "pi_I": [round(float(v), 6) for v in self._pi_now()],
            "kept_lb_per_class": [int(v) for v in kept_lb],
            "kept_lb": int(kept_lb.sum()),
            "annealed": self.annealing(),
            "passes_lb": self.lb_sampler.passes if self.lb_sampler is not None else 0,
            "samples_fwd": t.samples_fwd,
            "samples_bwd": t.samples_bwd,
            "updates": t.updates,
        }
        if self.ulb_sampler is not None and len(self.ulb_sampler.kept):
            kept = self.ulb_sampler.kept.to(self.w_ulb.device)
            info |= {
                "kept_ulb": len(kept),
                "ulb_total": self.n_ulb,
                "rescaled_frac": round(float((self.w_ulb[kept] > 1).float().mean()), 6),
                "passes_ulb": self.ulb_sampler.passes,
                "score_ulb_mean": round(float(self.score_ulb.mean()), 6),
            }
        if self.pi_ema is not None:
            info["pi_I_ema"] = [round(float(v), 6) for v in self.pi_ema]
        total = float(self.pseudo_hist.sum())
        if total > 0:
            info["pseudo_dist"] = [round(float(v) / total, 6) for v in self.pseudo_hist]
            info["pseudo_n"] = round(total, 3)
        self.pseudo_hist.zero_()
        return {"pruning": info}

    def _pi_now(self) -> torch.Tensor:
        """softmax(z(I)) of the training-mode student at its latest step (the labeled prior before any step)."""
        z = self.z_I()
        return torch.softmax(z.double(), dim=-1).cpu() if z is not None else self.lb_prior.clone()

    def on_finish(self, out_dir: Path, rows: list[dict[str, Any]]) -> None:
        from dytrim.pruning.plots import plot_pruning

        plot_pruning(rows, out_dir / "pruning.png", self.ctx.classes, self.ctx.lb_counts, self.start)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "score_lb": self.score_lb.clone(), "score_ulb": self.score_ulb.clone(),
            "conf_ulb": self.conf_ulb.clone(), "w_ulb": self.w_ulb.clone(),
            "gen": self.gen.get_state(), "prune_ratio": self.prune_ratio.clone(), "epoch": self.epoch,
            "pi_ema": self.pi_ema, "pseudo_hist": self.pseudo_hist.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        for key in ("score_lb", "score_ulb", "conf_ulb", "w_ulb"):
            getattr(self, key).copy_(state[key])
        set_generator_state(self.gen, state["gen"])
        self.prune_ratio = state["prune_ratio"].clone()
        self.epoch = int(state["epoch"])
        self.pi_ema = state.get("pi_ema")
        if "pseudo_hist" in state:
            self.pseudo_hist = state["pseudo_hist"].clone()
