"""The one training loop. Read it top to bottom: `train_step` is one update, `fit` the run around it.

Order of a step (STYLE.md habit 1; component hooks in brackets): [the probe z(I), if a component asks] ->
[before_step] (schedules: every K steps, per epoch; whole-set passes) -> sample -> weak/strong views -> the step
function (engine/step.py: [weight] -> forward passes (logits; penultimate features when a component asks) ->
[pseudo_logits] (e.g. CDMAD, DebiasPL) -> targets and mask (SSL algorithm) -> [pseudo_targets] (e.g. Adsh) ->
[weight_unlabeled] (e.g. SAW) -> [train_logits] (e.g. logit adjustment) -> per-sample losses x weights ->
[loss_terms] (named extra terms); a mixing base (ReMixMatch) forms its losses from mixed forwards at the same
place) -> backward -> optimiser -> EMA -> [observe] (scores, per-sample memory).
Evaluation uses the EMA model (through a component's head, `eval_head`, or a module of its own, `eval_module`:
CoSSL's teacher); [eval_logits] give the debiased predictions, and every evaluation probes the baseline image.
Components' and the base's heads are part of the model (engine/components.py), so the optimiser, EMA, DDP averaging
and checkpoints hold them. Stages (engine/stages.py): a run is its main stage (train.steps) and the stages components
declare (cRT, CReST's generations, CoSSL's stage 2); at a stage's first step, before its probe and before_step, the
loop switches weights, head, frozen parameters, optimiser (fresh or kept), labeled pool and the hooks that run.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dytrim.config import ConfigError, dump_yaml
from dytrim.engine import metrics_log, runlog
from dytrim.engine import rng as rng_state
from dytrim.engine.accel import cpu_facts
from dytrim.engine.build import RunParts
from dytrim.engine.checkpoint import load_latest, remove_stale_temps, save_checkpoint
from dytrim.engine.components import eval_model
from dytrim.engine.context import RunContext
from dytrim.engine.distributed import fingerprint, global_view
from dytrim.engine.evaluate import evaluation_row, metrics_row, predict_shared
from dytrim.engine.finite import LossWatch, TrainingDiverged  # noqa: F401  (TrainingDiverged: the CLI's import)
from dytrim.engine.forward import TrainForward
from dytrim.engine.hooks import Batch, Component
from dytrim.engine.optim import build_optimizer, lr_at, set_lr
from dytrim.engine.probe import step_probe
from dytrim.engine.sampler import EpochSampler
from dytrim.engine.stages import LabeledOnly, StagePlan, grown_pool
from dytrim.engine.step import PseudoLabeler, StepFunction, make_views
from dytrim.engine.stop import Stopped, StopRequest
from dytrim.engine.tensorboard import TensorBoardLog
from dytrim.resume import check_checkpoint, check_run_data, read_run_json
from dytrim.units import percent


class Trainer:
    """Trains one run: its parts (engine/build.py), an SSL base and the components (engine/hooks.py), given by
    `dytrim.factory.build_trainer`; `ctx` is what the components see of the run."""

    def __init__(self, parts: RunParts, ssl: PseudoLabeler, components: list[Component], ctx: RunContext) -> None:
        self.ssl, self.components, self.ctx = ssl, list(components), ctx
        self.cfg, self.out, self.device, self.dist = parts.cfg, parts.out, parts.device, parts.dist
        self.data, self.model, self.ema, self.optimizer = parts.data, parts.model, parts.ema, parts.optimizer
        self.forward_fn = parts.forward_fn
        self._forward = TrainForward(self.model, self.forward_fn, parts.precision, self.device,
                                     self.cfg.model.channels_last, self.cfg.train.forward == "joint")
        self.pretrained, self.precision, self.compiled = parts.pretrained, parts.precision, parts.compiled
        self.progress = ctx.progress
        cfg, d = self.cfg, self.data
        self.plan = StagePlan(self.components, cfg.train.steps)  # stages after the main one (engine/stages.py)
        self.active = self.plan.main  # the components whose hooks run in the current stage
        self.lb_pool: tuple[torch.Tensor, torch.Tensor] | None = None  # a stage's grown labeled pool (CReST)
        self._init_state = ({k: v.detach().clone() for k, v in self.model.state_dict().items()}  # new generations
                            if any(st.start_from == "init" for st in self.plan.stages) else None)
        self.step_fn = StepFunction(ssl, self.active, d.num_classes, cfg.ssl.lambda_u, self.dist, cfg.ssl.ce_eps)
        self.uses_probe = any(c.uses_probe for c in self.active)  # no component asks: no probe forward
        lb_seed = cfg.seed * 1000 + 1
        custom = [s for c in self.active
                  if (s := c.labeled_sampler(d.y_train[d.lb_idx], cfg.train.batch_size, lb_seed))]
        self.lb_sampler = custom[0] if custom else EpochSampler(len(d.lb_idx), cfg.train.batch_size, lb_seed)
        ulb_seed, ulb_bs = cfg.seed * 1000 + 2, max(1, cfg.train.batch_size * cfg.train.uratio)
        custom = [s for c in self.active if (s := c.unlabeled_sampler(len(d.ulb_idx), ulb_bs, ulb_seed))]
        self.ulb_sampler = custom[0] if custom else EpochSampler(len(d.ulb_idx), ulb_bs, ulb_seed)
        aug_seed = cfg.seed * 1000 + 3 + 7919 * self.dist.rank  # per-rank augmentation, reproducible
        self.aug_gen = torch.Generator(device=self.device).manual_seed(aug_seed)
        self.train_s = 0.0  # wall time spent in training steps (evaluation excluded)
        self.wall_s = 0.0  # total wall time of the run, carried across resumes
        self.restored_from: Path | None = None  # the checkpoint `restore` loaded
        self._restored_eval: metrics_log.CheckpointEval | None = None  # what it says of its step's evaluation
        self._eval_row: dict[str, Any] | None = None  # the last evaluation's row; a checkpoint at its step keeps it
        self.loss_watch = LossWatch(self.device)  # a non-finite loss stops the run at the next check (engine/finite.py)

    @property
    def step(self) -> int:
        """The schedule clock (LR, evaluation, debias start and annealing read it)."""
        return self.progress.step

    @step.setter
    def step(self, value: int) -> None:
        self.progress.step = value

    @property
    def clock(self) -> float:
        return self.progress.clock

    @property
    def updates(self) -> int:
        return self.progress.updates

    def _enter_stage(self, k: int) -> None:
        """Switch to stage k (engine/stages.py): its weights, head, trained parameters and optimiser, its hooks (the
        owner's) and its SSL side. Deterministic, so every process and a resume do the same."""
        cfg, d = self.cfg, self.data
        extra = self.plan.owners[k - 1].stage_labeled(k)  # before the weights move: picks read the last EMA model
        self.optimizer = self.plan.enter(k, self.model, self.ema, cfg.seed, self._init_state,
                                         lambda model: build_optimizer(model, cfg.optim), self.optimizer)
        st, self.active = self.plan.stages[k - 1], self.plan.active_at(k)
        if extra is not None:  # the stage's labeled pool: the original one and the owner's picks, a sampler of its own
            self.lb_pool = grown_pool(d.lb_idx, d.y_train, d.ulb_idx, extra)
            self.lb_sampler = EpochSampler(len(self.lb_pool[0]), cfg.train.batch_size, cfg.seed * 1000 + 1 + 7 * k)
        ssl = self.ssl if st.unlabeled else LabeledOnly()
        self.step_fn = StepFunction(ssl, self.active, d.num_classes, cfg.ssl.lambda_u, self.dist,
                                    st.ce_eps if st.lr is not None else cfg.ssl.ce_eps)
        self.uses_probe = any(c.uses_probe for c in self.active)

    # ------------------------------------------------------------------ one step
    def _views(self) -> Batch:
        """Positions from the samplers (each draws the global batch; this rank keeps its slice), then the views."""
        lb_pos = self.dist.shard(self.lb_sampler.next()).to(self.device)
        ulb_pos = (self.dist.shard(self.ulb_sampler.next()).to(self.device) if self.step_fn.ssl.uses_unlabeled
                   else None)
        return make_views(self.data, lb_pos, ulb_pos, self.aug_gen, self.cfg.aug, self.cfg.ssl.n_strong, self.lb_pool,
                          getattr(self.step_fn.ssl, "lb_strong", False))

    def train_step(self) -> dict[str, float]:
        """One update: [stage switch] -> [probe z(I)] -> [before_step] -> views -> the step function -> backward,
        optimiser, EMA -> [observe] -> the clock advances."""
        cfg, step, p = self.cfg, self.step, self.progress
        while self.plan.next_due(step):
            self._enter_stage(self.plan.index + 1)
        if self.uses_probe:  # train-mode z(I), no gradient; like the reference it moves the BN running buffers
            self.ctx.z_I = step_probe(self.model, self.ctx.baseline)
        for c in self.active:
            c.before_step(step)
        batch = self._views()
        res = self.step_fn.run(batch, self._forward, step)
        loss = res.loss
        stats = res.stats(self.data.y_train, self.data.ulb_idx)  # device scalars: read at evaluation, not per step
        out = res.output()
        obs_batch = batch
        if self.dist.world > 1:  # observers (DyTrim's score store) see the global batch
            obs_batch, out = global_view(self.dist, batch, out, res.ulb_pos)
        self.loss_watch.record(loss, step)  # on the device, no sync; acted on before an evaluation or checkpoint
        stage = self.plan.current
        lr = self.plan.lr(step, lambda s, total: lr_at(s, total, cfg.optim))  # a stage's own steps, or its LR
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.model)
        self.optimizer.step()
        self.dist.average_buffers(self.model)
        if stage is not None and stage.ema == "student":
            self.ema.copy_from(self.model)
        else:
            self.ema.update(self.model, self.plan.ema_wd(cfg.optim.ema_wd) * lr)
        for c in self.active:
            c.observe(obs_batch, out, step)
        p.clock += max((c.clock_rate() for c in self.active), default=1.0)
        p.step = min(int(p.clock + 1e-9), self.plan.end)  # a stage ends at its last step
        p.count(len(obs_batch.lb_pos), len(obs_batch.ulb_pos) if obs_batch.ulb_pos is not None else 0,
                len(batch.x_ulb_s), getattr(self.step_fn.ssl, "views_per_sample", None))
        stats["loss"] = loss.detach()
        return self.dist.mean_losses(stats) | {"lr": lr}  # losses: mean over ranks (the global-batch loss)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, full: bool = False) -> dict[str, Any]:
        """EMA-model metrics on the test set (or the fixed subset), raw and per debiasing component."""
        d, cfg = self.data, self.cfg
        idx = torch.arange(len(d.y_test), device=self.device) if full else d.eval_idx
        model = eval_model(self.ema.model, self.active)  # the EMA model, or it through a component's head
        logits = predict_shared(model, d.x_test, idx, d.mean, d.std, self.dist, cfg.train.eval_batch_size,
                                cfg.model.channels_last)
        row = evaluation_row(logits, d.y_test[idx], d.split.lb_counts, self.active, self.ema.model,
                             self.ctx.baseline, self.ctx.lb_prior)
        if self.dist.world > 1:  # every rank must hold the same weights, algorithm state and kept sets
            row["ranks_in_sync"] = len(set(self.dist.gather_object(self._fingerprint()))) == 1
        return row

    def _fingerprint(self) -> str:
        """Hash of the weights, SSL state, component state (DyTrim's scores and weights) and sampler lists."""
        return fingerprint([dict(self.model.state_dict()), self.ssl.state_dict(),
                            {c.name: c.state_dict() for c in self.components},
                            [self.lb_sampler.state_dict(), self.ulb_sampler.state_dict()]])

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly; with several processes, every rank's RNG states (a collective)."""
        rng = rng_state.capture(self.aug_gen)
        p = self.progress
        return {
            **{k: getattr(p, k) for k in ("step", "clock", "updates", "samples_fwd", "samples_bwd", "samples_seen")},
            "train_s": self.train_s,
            "wall_s": self.wall_s,
            "eval_row": self._eval_row if self._eval_row is not None and self._eval_row["step"] == p.step else None,
            "probe_z_I": self.ctx.z_I,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ssl": self.ssl.state_dict(),
            "components": {c.name: c.state_dict() for c in self.components},
            "lb_sampler": self.lb_sampler.state_dict(),
            "ulb_sampler": self.ulb_sampler.state_dict(),
            "rng": rng,
            "rng_ranks": self.dist.gather_object(rng) if self.dist.world > 1 else None,
            "config": self.cfg.to_dict(),
            "data_files": self.data.files,  # the data check of --resume holds without run.json
        } | ({"stage": self.plan.index} if self.plan else {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        p = self.progress
        p.step, self.train_s, self.wall_s = state["step"], state["train_s"], state["wall_s"]
        p.samples_seen = state["samples_seen"]
        p.clock = float(state.get("clock", p.step))
        p.updates = int(state.get("updates", p.step))
        p.samples_fwd, p.samples_bwd = int(state.get("samples_fwd", 0)), int(state.get("samples_bwd", 0))
        self.ctx.z_I = state.get("probe_z_I")
        for c in self.components:  # first: a stage's owner may hold what its stage starts from (CReST's picks)
            c.load_state_dict(state["components"].get(c.name, {}))
        if stage := int(state.get("stage", 0)):  # the stage's head, frozen parameters and optimiser, then its state
            self.plan.check_resume(stage, state["config"]["train"]["steps"], self.cfg.train.steps)
            self._enter_stage(stage)
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ssl.load_state_dict(state["ssl"])
        self.lb_sampler.load_state_dict(state["lb_sampler"])
        self.ulb_sampler.load_state_dict(state["ulb_sampler"])
        rng = state["rng"]
        ranks = state.get("rng_ranks")
        if self.dist.world > 1 or ranks:
            if not ranks or len(ranks) != self.dist.world:
                raise ConfigError(f"--resume: the checkpoint was written by {len(ranks) if ranks else 1} process(es); "
                                  f"resume with the same number (now {self.dist.world})")
            rng = ranks[self.dist.rank]
        rng_state.restore(rng, self.aug_gen)

    # ------------------------------------------------------------------ the loop
    def restore(self) -> Path | None:
        """Load the newest usable checkpoint of the run directory, after checking that it belongs to this
        experiment (config and data files); writes nothing. None when the run has no checkpoint yet."""
        if self.restored_from is not None:
            return self.restored_from
        found = load_latest(self.out, self.device)
        if found is None:
            return None
        state, path = found
        check_checkpoint(self.cfg, state, path.name)  # holds every part, of this experiment
        check_run_data(self.out, state, path.name, self.data.files)  # run.json's record and the checkpoint's
        metrics_log.read_log(self.out / "metrics.jsonl")  # a damaged row stops the resume here, before any write
        self.load_state_dict(state)
        self.restored_from, self._restored_eval = path, metrics_log.checkpoint_eval(state)
        return path

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to cfg.train.steps, evaluating every eval_every steps; returns the summary.

        With several processes every rank trains and evaluates (collectives), only the main rank writes.
        SIGTERM / SIGINT stop the run at the next step boundary with a checkpoint (raises `Stopped`)."""
        cfg, out, main = self.cfg, self.out, self.dist.main
        metrics_path = out / "metrics.jsonl"
        resumed = resume and self.restore() is not None  # checks and loads before anything is written
        out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()  # no rank reads the run directory while the main rank rewrites it
        redo = False  # resumed: metrics.jsonl is cut to the checkpoint's step and gets that step's row back
        if main:
            remove_stale_temps(out)  # of checkpoint writes that were killed; only while this process holds the lock
            redo = resumed and metrics_log.align_to_checkpoint(metrics_path, self._restored_eval)
            meta = None
            if not resumed or read_run_json(out) is None:  # a resume rebuilds a missing run.json
                meta = runlog.run_metadata(cfg.seed) | {
                    "counts": self.data.counts(), "processes": self.dist.world, "device": str(self.device),
                    "precision": self.precision, "compiled": self.compiled, **cpu_facts(),
                    "data_files": self.data.files,
                } | ({"pretrained": dataclasses.asdict(self.pretrained)} if self.pretrained is not None else {})
            runlog.prepare_run_dir(out, dump_yaml(cfg), meta, self.step if resumed else None, self.data)
        if resumed and self.dist.any(redo):
            row = {"step": self.step} | self.evaluate() | {"reevaluated_on_resume": True}  # an older checkpoint
            if main:  # lacks its step's row: the restored EMA model is evaluated again (no RNG, no training state)
                metrics_log.append_row(metrics_path, row)
        t_total = self.plan.total  # train.steps, plus the declared stages' steps
        every = cfg.train.eval_every
        bar = tqdm(total=t_total, initial=self.step, disable=not (cfg.train.progress and main),
                   desc=cfg.preset or "train",
                   dynamic_ncols=True, mininterval=1.0)
        start_wall = time.perf_counter() - self.wall_s
        ckpt_every = cfg.train.ckpt_every or every  # 0 = checkpoint at every evaluation
        tb = TensorBoardLog(out / "tensorboard", self.data.classes) if cfg.train.tensorboard and main else None
        with StopRequest(announce=main) as stop, bar:  # the bar closes however the loop ends
            while self.step < t_total:
                t0, prev = time.perf_counter(), self.step
                stats = self.train_step()
                self.train_s += time.perf_counter() - t0
                bar.update(self.step - prev)
                done = self.step >= t_total
                evaluating = self.step // every != prev // every or done
                stopping = self.dist.any(stop.requested)  # every rank stops at the same step
                checkpointing = self.step // ckpt_every != prev // ckpt_every or done or stopping
                if evaluating or checkpointing:
                    self.loss_watch.check(self.dist)
                if evaluating:
                    wall = time.perf_counter() - start_wall
                    row = self._eval_row = metrics_row(self.step, self.evaluate(), stats, wall, self.progress,
                                                       self.train_s, self.plan.name if self.plan else None)
                    if main:  # fsynced before any checkpoint of this step is written
                        metrics_log.append_row(metrics_path, row)
                    if tb is not None:
                        tb.write(row)
                    debiased = {"bacc_deb": percent(row["bacc_debiased"])} if "bacc_debiased" in row else {}
                    bar.set_postfix(bacc=percent(row["bacc"]), **debiased, gm=percent(row["gm"]),
                                    loss=f"{row['loss']:.3f}", **self.plan.postfix())
                if checkpointing:
                    self.wall_s = time.perf_counter() - start_wall
                    state = self.state_dict()  # collective: every rank's RNG states
                    if main:
                        save_checkpoint(out, self.step, state, cfg.train.keep_ckpts)
                if stopping and not done:
                    raise Stopped(self.step, stop.signum or signal.SIGTERM)
        if tb is not None:
            tb.close()
        self.wall_s = time.perf_counter() - start_wall
        full_test = self.evaluate(full=True) if len(self.data.eval_idx) < len(self.data.y_test) else None
        if not main:
            self.dist.barrier()
            return {"steps": self.step, "wall_s": round(self.wall_s, 2), "rank": self.dist.rank}
        rows = metrics_log.read_rows(metrics_path)
        p = self.progress
        counters = {"images_per_s": round(p.samples_seen / max(self.train_s, 1e-9), 2), "updates": p.updates,
                    "samples_fwd": p.samples_fwd, "samples_bwd": p.samples_bwd} | self.plan.counters()
        # the result of a run with stages is its last stage's: last, best and means over that stage's evaluations
        summary = runlog.write_summary(out, metrics_log.last_stage_rows(rows), self.wall_s, self.train_s, self.step,
                                       full_test, counters)
        runlog.plot_curves(rows, out / "curves.png", cfg.preset or "run", self.data.classes, self.data.split.lb_counts,
                           subset=full_test is not None, stages=counters.get("stages"))
        for c in self.components:
            c.on_finish(out, rows)
        self.dist.barrier()
        return summary

