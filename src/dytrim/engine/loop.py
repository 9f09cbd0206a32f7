"""The one training loop. Read it top to bottom: `train_step` is the whole method.

Order of a step (STYLE.md habit 1; component hooks in brackets): [before_step] -> sample -> weak/strong
views -> [weight] -> forward passes -> [pseudo_logits] (e.g. CDMAD) -> targets and mask (SSL algorithm)
-> [weight_unlabeled] -> [train_logits] (e.g. logit adjustment) -> per-sample losses x weights ->
backward -> optimiser -> EMA -> [observe]. Evaluation uses the EMA model; [eval_logits] give the
debiased predictions, and every evaluation probes the baseline image.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from dytrim.config import ConfigError, RunConfig, dump_yaml
from dytrim.data.augment import normalize, strong_augment, weak_augment
from dytrim.data.sources import LTData, load_data
from dytrim.debias import create_components
from dytrim.debias.baseline import baseline_image, prior_probe
from dytrim.engine import rng as rng_state
from dytrim.engine import runlog
from dytrim.engine.accel import (
    CompiledForward,
    autocast,
    cpu_facts,
    make_deterministic,
    resolve_compile,
    resolve_precision,
)
from dytrim.engine.checkpoint import atomic_write_text, checkpoint_paths, load_latest, save_checkpoint
from dytrim.engine.distributed import Dist
from dytrim.engine.ema import EMATeacher
from dytrim.engine.evaluate import predict_logits
from dytrim.engine.hooks import Batch, Component, StepOutput
from dytrim.engine.optim import build_optimizer, lr_at, set_lr
from dytrim.engine.sampler import EpochSampler
from dytrim.engine.stop import Stopped, StopRequest
from dytrim.engine.tensorboard import TensorBoardLog, require_tensorboard
from dytrim.metrics import classification_metrics
from dytrim.models import create_model
from dytrim.models.pretrained import LoadReport, load_pretrained
from dytrim.resume import check_checkpoint_config, check_data_files
from dytrim.ssl import create_ssl, soft_cross_entropy


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops and keeps its last good checkpoint."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Trainer:
    """Builds everything from a RunConfig and trains; `components` are the debiasers (hooks.py).

    `resume=True` with a checkpoint in `out_dir`: the weights will come from it, so model.pretrained is not read."""

    def __init__(
        self, cfg: RunConfig, out_dir: Path, components: list[Component] | None = None, resume: bool = False
    ) -> None:
        self.cfg, self.out = cfg, Path(out_dir)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.tensorboard:
            require_tensorboard()  # before any work: the fix in one line
        self.device = resolve_device(cfg.train.device)
        self.dist = Dist.from_env(self.device)  # torchrun: this rank's slice of every global batch
        self.device = self.dist.device  # under torchrun on CUDA: cuda:LOCAL_RANK
        if cfg.train.deterministic:
            make_deterministic(self.device)
        for key, size in (("train.batch_size", cfg.train.batch_size),
                          ("train.uratio", cfg.train.batch_size * cfg.train.uratio)):
            if size % self.dist.world:
                raise ConfigError(f"{key}: a global batch of {size} does not split over {self.dist.world} processes; "
                                  "make the batch sizes divisible by --nproc_per_node")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.data: LTData = load_data(cfg.data, cfg.seed, self.device)
        d = self.data
        self.model = create_model(cfg.model.name, d.num_classes, in_channels=d.in_channels)
        fresh = not (resume and checkpoint_paths(self.out))  # on resume the checkpoint has the weights
        self.pretrained = _load_pretrained(self.model, cfg.model) if cfg.model.pretrained and fresh else None
        self.model = self.model.to(self.device)
        if cfg.model.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.dist.broadcast_module(self.model)
        self.precision = resolve_precision(cfg.train.precision, self.device)  # "bf16" | "fp32"
        self.compiled = resolve_compile(cfg.train.compile, cfg.train.steps)
        self.forward_fn = CompiledForward(self.model) if self.compiled else self.model  # training forward only
        self.ema = EMATeacher(self.model, cfg.optim.ema_decay, cfg.optim.ema_buffers)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.ssl = create_ssl(cfg.ssl, d.num_classes, len(d.ulb_idx))
        self.components = create_components(cfg, d.split.lb_counts) + list(components or [])
        lb_seed, lb_labels = cfg.seed * 1000 + 1, d.y_train[d.lb_idx]
        custom = [s for c in self.components if (s := c.labeled_sampler(lb_labels, cfg.train.batch_size, lb_seed))]
        self.lb_sampler = custom[0] if custom else EpochSampler(len(d.lb_idx), cfg.train.batch_size, lb_seed)
        ulb_seed, ulb_bs = cfg.seed * 1000 + 2, max(1, cfg.train.batch_size * cfg.train.uratio)
        custom = [s for c in self.components if (s := c.unlabeled_sampler(len(d.ulb_idx), ulb_bs, ulb_seed))]
        self.ulb_sampler = custom[0] if custom else EpochSampler(len(d.ulb_idx), ulb_bs, ulb_seed)
        aug_seed = cfg.seed * 1000 + 3 + 7919 * self.dist.rank  # per-rank augmentation, reproducible
        self.aug_gen = torch.Generator(device=self.device).manual_seed(aug_seed)
        counts = torch.tensor(d.split.lb_counts, dtype=torch.float64)
        self.lb_prior = counts / counts.sum()
        self.probe_image = baseline_image(cfg.debias.baseline, d.in_channels, *d.x_train.shape[2:], self.device)
        for c in self.components:
            c.bind(self)
        self.step = 0  # the schedule clock: LR, evaluation, debias start and annealing read it
        self.clock = 0.0  # its exact value; advances by 1 per update, or more when pruning shrinks epochs
        self.updates = 0  # optimiser updates done
        self.samples_fwd = 0  # training images through a forward pass (weak + labeled + strong views)
        self.samples_bwd = 0  # training images whose loss was back-propagated (labeled + strong views)
        self.train_s = 0.0  # wall time spent in training steps (evaluation excluded)
        self.wall_s = 0.0  # total wall time of the run, carried across resumes
        self.samples_seen = 0
        self.restored_from: Path | None = None  # the checkpoint `restore` loaded
        self._first_bad = torch.tensor(-1, device=self.device)  # first step with a non-finite loss (-1: none)
        self._bad_loss = torch.tensor(0.0, dtype=torch.float64, device=self.device)  # its value

    # ------------------------------------------------------------------ one step
    def _views(self) -> Batch:
        """Sample positions, gather uint8 images on the device, make the weak/strong views."""
        cfg, d, a = self.cfg, self.data, self.cfg.aug
        lb_pos = self.dist.shard(self.lb_sampler.next()).to(self.device)  # samplers draw the global batch
        lb = d.lb_idx[lb_pos]
        x_lb = normalize(weak_augment(d.x_train[lb], self.aug_gen, a.pad, a.flip), d.mean, d.std)
        batch = Batch(lb_pos=lb_pos, x_lb=x_lb, y_lb=d.y_train[lb], w_lb=torch.ones(len(lb), device=self.device))
        if self.ssl.uses_unlabeled:
            ulb_pos = self.dist.shard(self.ulb_sampler.next()).to(self.device)
            x_u = d.x_train[d.ulb_idx[ulb_pos]]
            batch.ulb_pos = ulb_pos
            batch.x_ulb_w = normalize(weak_augment(x_u, self.aug_gen, a.pad, a.flip), d.mean, d.std)
            batch.x_ulb_s = [
                strong_augment(
                    x_u, self.aug_gen, d.mean, d.std, n_ops=a.n_ops, magnitude=a.magnitude,
                    cutout_size=a.cutout, pad=a.pad, flip=a.flip,
                )
                for _ in range(cfg.ssl.n_strong)
            ]
            batch.w_ulb = torch.ones(len(ulb_pos), device=self.device)
        return batch

    def _forward(self, xs: list[torch.Tensor], grad: list[bool]) -> list[torch.Tensor]:
        """Logits for each input, one forward per input (reference: separate BN batches) or one
        concatenated pass (train.forward=joint, as USB); `grad[i]` False = no graph for input i."""
        cl = self.cfg.model.channels_last
        prep = [x.contiguous(memory_format=torch.channels_last) if cl else x for x in xs]
        with autocast(self.precision, self.device):  # bf16 forward; logits leave in fp32 for losses and hooks
            if self.cfg.train.forward == "joint":
                logits = self.forward_fn(torch.cat(prep)).float()
                outs = list(logits.split([len(x) for x in xs]))
                return [o if g else o.detach() for o, g in zip(outs, grad, strict=True)]
            outs = []
            for x, g in zip(prep, grad, strict=True):
                with torch.set_grad_enabled(g):
                    outs.append(self.forward_fn(x).float())
            return outs

    def train_step(self) -> dict[str, float]:
        cfg, step = self.cfg, self.step
        for c in self.components:
            c.before_step(step)
        batch = self._views()
        for c in self.components:
            c.weight(batch, step)
        ulb = self.ssl.uses_unlabeled
        # reference order: weak unlabeled (no grad), then labeled, then each strong view
        if ulb:
            n_s = len(batch.x_ulb_s)
            outs = self._forward([batch.x_ulb_w, batch.x_lb, *batch.x_ulb_s], [False] + [True] * (n_s + 1))
            logits_w, logits_lb, logits_s = outs[0].detach(), outs[1], outs[2:]
        else:
            logits_lb = self._forward([batch.x_lb], [True])[0]
        for c in self.components:
            logits_lb = c.train_logits(logits_lb, True, step)
        y_onehot = torch.nn.functional.one_hot(batch.y_lb, self.data.num_classes).float()
        loss_lb = soft_cross_entropy(logits_lb.float(), y_onehot, cfg.ssl.ce_eps)
        loss = (loss_lb * batch.w_lb).mean()
        stats = {"loss_x": loss_lb.detach().mean()}  # device scalars: read at evaluation, not per step
        out = StepOutput(loss_lb=loss_lb.detach(), loss_ulb=None, targets=None, mask=None, logits_ulb_w=None)
        obs_batch, ulb_pos_g = batch, None
        if ulb:
            # pseudo-labels of the global batch on every rank, so thresholds and class status stay in sync
            logits_w, ulb_pos_g = self.dist.gather(logits_w), self.dist.gather(batch.ulb_pos)
            for c in self.components:
                logits_w = c.pseudo_logits(logits_w, step)
            targets_g, mask_g = self.ssl.pseudo_targets(logits_w, ulb_pos_g)
            targets, mask = self.dist.shard(targets_g), self.dist.shard(mask_g)
            for c in self.components:
                c.weight_unlabeled(batch, targets, mask, step)
            per_view = []
            for z in logits_s:
                for c in self.components:
                    z = c.train_logits(z, False, step)
                per_view.append(soft_cross_entropy(z.float(), targets, cfg.ssl.ce_eps) * mask)
            loss_ulb = torch.stack(per_view)  # [n_strong, Bu]
            loss_u = (loss_ulb * batch.w_ulb).mean()  # mean over n_strong * Bu terms, as the reference
            extra = self.ssl.extra_loss(torch.cat(logits_s), targets, mask)
            loss = loss + cfg.ssl.lambda_u * loss_u + (extra if extra is not None else 0.0)
            true_u = self.data.y_train[self.data.ulb_idx[ulb_pos_g]]  # -1 = unknown (your own unlabeled folder)
            hit = (targets_g.argmax(-1) == true_u).float()
            known = mask_g * (true_u >= 0).float()
            stats |= {"loss_u": loss_u.detach(), "mask_rate": mask_g.mean(),
                      "pseudo_acc": (hit * known).sum() / known.sum().clamp_min(1e-12),
                      "_has_truth": (true_u >= 0).any()}  # pseudo_acc is logged only where labels are known
            out = StepOutput(out.loss_lb, loss_ulb.detach(), targets_g, mask_g, logits_w)
        if self.dist.world > 1:  # observers (DyTrim's score store) see the global batch
            obs_batch, out = self._global_view(batch, out, ulb_pos_g)
        # a non-finite loss is recorded on the device (no sync) and acted on before the next evaluation or checkpoint
        bad = ~torch.isfinite(loss.detach())
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)
        self._bad_loss = torch.where(bad & torch.isfinite(self._bad_loss), loss.detach().double(), self._bad_loss)
        lr = lr_at(step, cfg.train.steps, cfg.optim)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.dist.average_gradients(self.model)
        self.optimizer.step()
        self.dist.average_buffers(self.model)
        self.ema.update(self.model, cfg.optim.ema_wd * lr)
        for c in self.components:
            c.observe(obs_batch, out, step)
        self.clock += max((c.clock_rate() for c in self.components), default=1.0)
        self.step = min(int(self.clock + 1e-9), cfg.train.steps)
        self.updates += 1
        n_lb, n_ulb = len(obs_batch.lb_pos), (len(obs_batch.ulb_pos) if ulb else 0)
        self.samples_seen += n_lb + n_ulb
        self.samples_fwd += n_lb + n_ulb * (1 + len(batch.x_ulb_s))
        self.samples_bwd += n_lb + n_ulb * len(batch.x_ulb_s)
        stats["loss"] = loss.detach()
        if self.dist.world > 1:  # losses: mean over ranks (the global-batch loss)
            keys = [k for k in ("loss", "loss_x", "loss_u") if k in stats]
            vals = self.dist.gather(torch.stack([stats[k].double() for k in keys])[None]).mean(0)
            stats |= dict(zip(keys, vals, strict=True))
        return stats | {"lr": lr}

    def _check_finite(self) -> None:
        """Stop (every rank) if any step since the last check had a non-finite loss; one host read per check."""
        first = int(self._first_bad)
        if self.dist.any(first >= 0):
            raise TrainingDiverged(
                f"non-finite loss ({float(self._bad_loss)}) at step {first}; the run stopped and keeps its last good "
                "checkpoint. Lower optim.lr or check the data."
            )

    def _global_view(
        self, batch: Batch, out: StepOutput, ulb_pos_g: torch.Tensor | None
    ) -> tuple[Batch, StepOutput]:
        """This rank's per-sample batch fields and losses gathered into the global batch (unlabeled positions,
        targets, mask and weak logits are global already)."""
        g = self.dist.gather
        glob = Batch(lb_pos=g(batch.lb_pos), x_lb=batch.x_lb, y_lb=g(batch.y_lb), w_lb=g(batch.w_lb))
        loss_ulb = None
        if ulb_pos_g is not None and out.loss_ulb is not None:
            glob.ulb_pos, glob.w_ulb = ulb_pos_g, g(batch.w_ulb)
            loss_ulb = g(out.loss_ulb.T.contiguous()).T  # [n_strong, global Bu]
        return glob, StepOutput(g(out.loss_lb), loss_ulb, out.targets, out.mask, out.logits_ulb_w)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, full: bool = False) -> dict[str, Any]:
        """EMA-model metrics on the test set (or the fixed subset), raw and per debiasing component."""
        d = self.data
        idx = torch.arange(len(d.y_test), device=self.device) if full else d.eval_idx
        y, n, world = d.y_test[idx], len(idx), self.dist.world
        per = -(-n // world)  # each rank predicts an equal share (the last index repeated as padding)
        padded = torch.cat([idx, idx[-1:].repeat(per * world - n)])
        mine = padded[self.dist.rank * per : (self.dist.rank + 1) * per]
        logits = self.dist.gather(predict_logits(
            self.ema.model, d.x_test[mine], d.mean, d.std, self.cfg.train.eval_batch_size, self.cfg.model.channels_last
        ))[:n]
        row = classification_metrics(logits.argmax(-1), y, d.num_classes, d.split.lb_counts)
        adjusted, changed = logits, False
        for c in self.components:  # debiased predictions: the eval-logit hooks chained in config order
            out = c.eval_logits(adjusted)
            if out is not None:
                adjusted, changed = out, True
        if changed:
            row |= classification_metrics(adjusted.argmax(-1), y, d.num_classes, d.split.lb_counts, "_debiased")
        row["eval_n"] = len(y)
        row |= prior_probe(self.ema.model, self.probe_image, self.lb_prior)
        for c in self.components:
            row |= c.eval_fields()
        if self.dist.world > 1:  # every rank must hold the same weights, algorithm state and kept sets
            row["ranks_in_sync"] = len(set(self.dist.gather_object(self._fingerprint()))) == 1
        return row

    def _fingerprint(self) -> str:
        """Hash of the weights, SSL state, component state (DyTrim's scores and weights) and sampler lists."""
        import hashlib

        h = hashlib.sha1()

        def feed(obj: Any) -> None:
            if isinstance(obj, torch.Tensor):
                h.update(obj.detach().cpu().contiguous().numpy().tobytes())
            elif isinstance(obj, dict):
                for k in sorted(obj):
                    h.update(str(k).encode())
                    feed(obj[k])
            elif isinstance(obj, list | tuple):
                for v in obj:
                    feed(v)
            else:
                h.update(repr(obj).encode())

        feed(dict(self.model.state_dict()))
        feed(self.ssl.state_dict())
        feed({c.name: c.state_dict() for c in self.components})
        feed([self.lb_sampler.state_dict(), self.ulb_sampler.state_dict()])
        return h.hexdigest()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything to continue exactly; with several processes, every rank's RNG states (a collective)."""
        rng = rng_state.capture(self.aug_gen)
        return {
            "step": self.step,
            "clock": self.clock,
            "updates": self.updates,
            "samples_fwd": self.samples_fwd,
            "samples_bwd": self.samples_bwd,
            "train_s": self.train_s,
            "wall_s": self.wall_s,
            "samples_seen": self.samples_seen,
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
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.train_s, self.wall_s = state["step"], state["train_s"], state["wall_s"]
        self.samples_seen = state["samples_seen"]
        self.clock = float(state.get("clock", self.step))
        self.updates = int(state.get("updates", self.step))
        self.samples_fwd, self.samples_bwd = int(state.get("samples_fwd", 0)), int(state.get("samples_bwd", 0))
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ssl.load_state_dict(state["ssl"])
        for c in self.components:
            c.load_state_dict(state["components"].get(c.name, {}))
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
        check_checkpoint_config(self.cfg, state.get("config", {}), path.name)
        run_json = self.out / "run.json"
        recorded = json.loads(run_json.read_text()).get("data_files") if run_json.is_file() else None
        check_data_files(recorded, self.data.files)
        self.load_state_dict(state)
        self.restored_from = path
        return path

    def _metrics_row(self, stats: dict[str, Any], wall_s: float) -> dict[str, Any]:
        """One metrics.jsonl row: an evaluation of the EMA model plus the last step's losses and counters."""
        stats = {k: float(v) for k, v in stats.items()}  # the step's device scalars, read once here
        if not stats.pop("_has_truth", 1.0):
            stats.pop("pseudo_acc", None)
        return {"step": self.step} | self.evaluate() | {
            "lr": stats["lr"],
            "loss": round(stats["loss"], 5),
            **{k: round(v, 5) for k, v in stats.items() if k not in ("lr", "loss")},
            "wall_s": round(wall_s, 2),
            "images_per_s": round(self.samples_seen / max(self.train_s, 1e-9), 2),
            "updates": self.updates,
            "samples_fwd": self.samples_fwd,
            "samples_bwd": self.samples_bwd,
        }

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to cfg.train.steps, evaluating every eval_every steps; returns the summary.

        With several processes every rank trains and evaluates (collectives), only the main rank writes.
        SIGTERM / SIGINT stop the run at the next step boundary with a checkpoint (raises `Stopped`)."""
        cfg, out, main = self.cfg, self.out, self.dist.main
        metrics_path = out / "metrics.jsonl"
        resumed = resume and self.restore() is not None  # checks and loads before anything is written
        out.mkdir(parents=True, exist_ok=True)
        self.dist.barrier()  # no rank reads the run directory while the main rank rewrites it
        if resumed:
            # rows written after the checkpoint (a crash between evaluation and checkpoint) are redone
            if main:
                rows = [r for r in runlog.read_rows(metrics_path) if r["step"] <= self.step]
                runlog.write_rows(metrics_path, rows)
        elif main:
            runlog.write_rows(metrics_path, [])
            meta = runlog.run_metadata(cfg.seed) | {"counts": self.data.counts(), "processes": self.dist.world,
                                                    "device": str(self.device), "precision": self.precision,
                                                    "compiled": self.compiled, **cpu_facts(),
                                                    "data_files": self.data.files}
            if self.pretrained is not None:
                meta["pretrained"] = dataclasses.asdict(self.pretrained)
            atomic_write_text(out / "run.json", _json(meta))
        if main:
            atomic_write_text(out / "config.yaml", dump_yaml(cfg))  # on resume: with its overrides (e.g. steps)
        t_total = cfg.train.steps
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
                    self._check_finite()
                if evaluating:
                    row = self._metrics_row(stats, time.perf_counter() - start_wall)
                    if main:
                        runlog.append_row(metrics_path, row)
                    if tb is not None:
                        tb.write(row)
                    debiased = {"bacc_deb": f"{100 * row['bacc_debiased']:.1f}"} if "bacc_debiased" in row else {}
                    bar.set_postfix(bacc=f"{100 * row['bacc']:.1f}", **debiased, gm=f"{100 * row['gm']:.1f}",
                                    loss=f"{row['loss']:.3f}")
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
        rows = runlog.read_rows(metrics_path)
        summary = runlog.summarize(rows, self.wall_s, self.step)
        summary["train_s"] = round(self.train_s, 2)
        summary["images_per_s"] = round(self.samples_seen / max(self.train_s, 1e-9), 2)
        summary |= {"updates": self.updates, "samples_fwd": self.samples_fwd, "samples_bwd": self.samples_bwd}
        if full_test is not None:
            summary["full_test"] = full_test
        summary["notes"] = (
            "metrics of the EMA model on the test set; last = final evaluation, best = max over evaluations, "
            "mean/median_last20 = over the last min(20, n) evaluations, n_last of them"
        )
        atomic_write_text(out / "summary.json", _json(summary))
        runlog.plot_curves(rows, out / "curves.png", cfg.preset or "run", self.data.classes, self.data.split.lb_counts)
        for c in self.components:
            c.on_finish(out, rows)
        self.dist.barrier()
        return summary


def _load_pretrained(model: torch.nn.Module, mcfg: Any) -> LoadReport:
    """model.pretrained: copy the file's matching tensors into the fresh model; anything not clean is warned."""
    try:
        report = load_pretrained(model, Path(mcfg.pretrained).expanduser(), key=mcfg.pretrained_key or None)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"model.pretrained: cannot load '{mcfg.pretrained}' ({exc}); give a local "
                          ".pt/.pth/.safetensors state_dict (model.pretrained_key picks a wrapped entry)") from exc
    if not report.clean:
        warnings.warn(f"model.pretrained: {report}", stacklevel=2)
    return report


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)) + "\n"

