"""Typed run configuration: dataclass defaults < YAML preset < `--set key=value` overrides.

Unknown keys and values of the wrong type or outside their range stop the run before any work,
with a message that names the key and says how to fix it (nanoGPT-style strictness).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, found before training starts."""


@dataclass
class DataConfig:
    """Which images, and how the long-tailed labeled/unlabeled split is drawn."""

    name: str = "cifar10"  # which data set (mnist10k: the embedded digits; folder: your own class folders)
    root: str = ""  # data directory or file; "" = default location (the embedded file for mnist10k)
    n1: int = 1500  # labeled images of the head class
    m1: int = 3000  # unlabeled images of the head class (of the unlabeled profile's largest class)
    imb_ratio_l: float = 100.0  # gamma_l = N_1 / N_C (>= 1)
    imb_ratio_u: float = 100.0  # gamma_u = M_max / M_min (>= 1; 1 = uniform)
    reverse_u: bool = False  # reverse the unlabeled class profile (tail classes get M1)
    pool: str = "paper"  # paper: reference split (unlabeled pool contains the labeled images) | disjoint
    shuffle: bool | None = None  # shuffle class indices before the split; None = reference rule per data set
    test_per_class: int = 150  # mnist10k only: digits per class held out as the test set
    eval_subset: int = 0  # images of the test set used at intermediate evaluations (0 = all)
    # data.name=folder only (n1, m1, imb_ratio_*, shuffle, test_per_class are then unused: the folders are the split)
    labeled_dir: str = ""  # one sub-folder of images per class; the sub-folder names are the class names
    unlabeled_dir: str = ""  # images of unknown class, any layout ("" = none: pool=paper then reuses the labeled ones)
    test_dir: str = ""  # same layout as labeled_dir; "" = a stratified hold-out of the labeled images
    holdout: float = 0.2  # without test_dir: fraction of each class's labeled images held out as the test set
    image_size: int = 32  # folder: resize (shorter side) + centre-crop to this square; stl10: resize 96 -> this
    channels: int = 3  # 3 = RGB, 1 = grayscale
    cache_dir: str = ""  # decoded uint8 arrays are cached here; "" = $DYTRIM_CACHE, else ~/.cache/dytrim
    allow_empty_classes: bool = False  # accept a split that gives some class no labeled image (refused by default)


@dataclass
class ModelConfig:
    """Backbone choice (see `dytrim.models.list_models()`)."""

    name: str = "wrn_28_2"  # backbone: wrn_28_2, wrn_28_8, wrn, cnn_small, resnet_tiny, resnet50, vit_tiny, vit_small
    channels_last: bool = False  # memory format of activations (faster on some CPUs/GPUs)
    pretrained: str = ""  # local .pt/.pth/.safetensors weights for a fresh run ("" = none); report in run.json
    pretrained_key: str = ""  # entry of a wrapped checkpoint to read (e.g. "ema_model"); "" = guess


@dataclass
class AugConfig:
    """Weak (crop+flip) and strong (RandAugment + Cutout) views, batched on the device."""

    pad: int = 4  # random-crop padding in pixels (weak and strong views)
    flip: bool = True  # random horizontal flip (weak and strong views)
    n_ops: int = 3  # RandAugment ops per image (reference: 3)
    magnitude: float = 4.0  # RandAugment magnitude of 30 (reference: 4)
    cutout: int = 16  # Cutout square side in pixels after normalisation (0 = off)


@dataclass
class SSLConfig:
    """The base semi-supervised algorithm and its pseudo-label rule."""

    name: str = "fixmatch"  # fixmatch | flexmatch | freematch | supervised
    hard_label: bool = True  # one-hot argmax targets (FixMatch) or soft softmax targets (reference code)
    p_cutoff: float = 0.95  # confidence threshold tau (reference code: 0)
    temperature: float = 1.0  # softmax temperature of soft targets
    lambda_u: float = 1.0  # weight of the unlabeled (consistency) loss
    n_strong: int = 1  # strong views per unlabeled image (reference code: 2)
    thresh_warmup: bool = True  # FlexMatch: count never-predicted samples in the normaliser (warm-up)
    ema_p: float = 0.999  # FreeMatch: EMA momentum of the global/local thresholds and histograms
    lambda_e: float = 0.001  # FreeMatch: weight of the self-adaptive fairness loss (USB CIFAR-10 config)
    ce_eps: float = 0.0  # labeled and unlabeled losses are -sum_c t_c log(softmax(z)_c + ce_eps): 0 = exact
    #   log_softmax (USB), 1.0e-8 = the reference code (paper-* presets: the gradient shrinks by p / (p + 1e-8) where a
    #   target's probability p is near 1e-8, and the loss caps at 18.4); YAML and --set need the dot: 1.0e-8


@dataclass
class DebiasConfig:
    """Debiasing components stacked on the SSL base, applied in the listed order (see dytrim.debias)."""

    methods: list[str] = field(default_factory=list)  # debiasers in order (comma list): logit_adjust,
    #   logit_adjust_posthoc, reweight, resample, cdmad, dytrim
    la_tau: float = 1.0  # logit adjustment strength tau (offsets tau * log pi, pi = labeled class prior)
    la_unlabeled: bool = False  # loss-form LA also on the strong-view (consistency) logits
    reweight_kind: str = "inverse"  # inverse: 1/n_c | effective: (1 - beta) / (1 - beta^n_c)
    reweight_beta: float = 0.999  # beta of the effective-number weights (reweight_kind=effective)
    reweight_unlabeled: bool = False  # also weight pseudo-labeled samples by their predicted class
    resample_kind: str = "inverse"  # class-aware labeled sampling weights, same kinds as reweight_kind
    baseline: str = "zeros"  # baseline image I in the normalised input space: zeros (DyTrim) | ones (CDMAD)
    start: int = 0  # step after which CDMAD subtracts z(I) from the weak-view logits (reference: 100 epochs)
    test_bn: str = "eval"  # BN mode of the EMA model's z(I) at test: eval (reference) | train (the image's own stats)


@dataclass
class PruneConfig:
    """DyTrim's dynamic pruning (used when `dytrim` is in debias.methods; see dytrim.pruning)."""

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


@dataclass
class OptimConfig:
    """Optimiser, schedule and EMA teacher."""

    name: str = "adam"  # adam | sgd
    lr: float = 0.0015  # learning rate (peak of the schedule)
    momentum: float = 0.9  # SGD momentum (optim.name=sgd)
    nesterov: bool = True  # Nesterov momentum (optim.name=sgd)
    weight_decay: float = 0.0  # optimiser (coupled) weight decay
    schedule: str = "constant"  # constant | cosine (USB: lr * cos(7*pi*k / (16*K)))
    warmup_steps: int = 0  # linear LR warm-up steps
    ema_decay: float = 0.999  # decay of the EMA teacher (the evaluated model)
    ema_wd: float = 0.0  # reference quirk: every tensor of the model *= (1 - ema_wd * lr) after each EMA step
    ema_buffers: str = "ema"  # ema: average BN buffers too (reference) | copy: copy them (USB)


@dataclass
class TrainConfig:
    """Schedule length, batches, evaluation and checkpoint cadence, machine settings."""

    steps: int = 250_000  # optimiser updates (schedule clock steps) of the run
    eval_every: int = 500  # steps between evaluations of the EMA model (one metrics.jsonl row each)
    batch_size: int = 32  # labeled images per step
    uratio: int = 2  # unlabeled images per labeled image
    eval_batch_size: int = 512  # images per evaluation forward
    forward: str = "separate"  # separate: one forward per view, as the reference | joint: one concatenated pass
    ckpt_every: int = 0  # 0 = at every evaluation
    keep_ckpts: int = 2  # newest checkpoints kept on disk
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast forward + loss; fp32 weights, optimiser, EMA) | auto: bf16 where
    #   the device does it natively (CUDA with bf16, a CPU with AMX or AVX512-BF16), else fp32
    compile: str = "off"  # off | on | auto (torch.compile of the training forward for runs of >= 5000 steps); a
    #   compile failure falls back to eager with one warning
    deterministic: bool = True  # CUDA: deterministic algorithms + CUBLAS_WORKSPACE_CONFIG, so a resumed run equals an
    #   uninterrupted one there too (the CPU is deterministic anyway); false trades that for speed
    threads: int = 0  # torch intra-op threads on CPU (0 = torch default)
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = False  # also write every metrics row as TensorBoard scalars to <out>/tensorboard (needs the
    #   tensorboard package)


@dataclass
class RunConfig:
    """Everything a run needs; stored resolved as config.yaml next to its outputs."""

    seed: int = 0  # fixes the data split, initialisation, sampling and augmentation
    preset: str = ""  # the preset this config was built from (set by --preset)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    debias: DebiasConfig = field(default_factory=DebiasConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES: dict[str, tuple[str, ...]] = {
    "data.name": ("cifar10", "cifar100", "mnist", "fashion_mnist", "mnist10k", "folder", "stl10", "smallimagenet127"),
    "data.pool": ("paper", "disjoint"),
    "ssl.name": ("fixmatch", "flexmatch", "freematch", "supervised"),
    "optim.name": ("adam", "sgd"),
    "optim.schedule": ("constant", "cosine"),
    "optim.ema_buffers": ("ema", "copy"),
    "train.forward": ("separate", "joint"),
    "train.precision": ("fp32", "bf16", "auto"),
    "train.compile": ("off", "on", "auto"),
    "debias.reweight_kind": ("inverse", "effective"),
    "debias.resample_kind": ("inverse", "effective"),
    "debias.baseline": ("zeros", "ones"),
    "debias.test_bn": ("eval", "train"),
    "prune.score": ("loss", "entropy"),
    "prune.cadence": ("pass", "epoch"),
    "prune.budget": ("fixed", "shrink"),
    "prune.rounding": ("floor", "round"),
}


#: str keys whose values include on / off, which YAML 1.1 reads as booleans
ON_OFF_KEYS = ("train.compile",)


def all_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key the configuration accepts."""
    cfg = cfg if cfg is not None else RunConfig()
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def key_help() -> list[dict[str, str]]:
    """Every key with its type, default, allowed values (CHOICES, as validation uses them) and meaning (the
    comment beside its field in this file, continuation lines included): what `dytrim presets --keys` prints."""
    import inspect
    import re

    default = RunConfig()
    out = []
    for section in [None, *dataclasses.fields(RunConfig)]:
        node = default if section is None else getattr(default, section.name)
        if not dataclasses.is_dataclass(node):
            continue
        comments: dict[str, str] = {}
        last = None
        for line in inspect.getsource(type(node)).splitlines():
            if m := re.match(r"\s+(\w+): [^=]+=[^#]*(?:#\s?(.*))?$", line):
                last = m.group(1)
                comments[last] = (m.group(2) or "").strip()
            elif last and (m := re.match(r"\s+#\s+(.*)$", line)):
                comments[last] += " " + m.group(1).strip()
        hints = typing.get_type_hints(type(node))
        for f in dataclasses.fields(node):
            if dataclasses.is_dataclass(getattr(node, f.name)):
                continue  # a section: its keys come with it
            key = f.name if section is None else f"{section.name}.{f.name}"
            kind = getattr(hints[f.name], "__name__", str(hints[f.name]).replace("typing.", ""))
            out.append({"key": key, "type": kind, "default": repr(getattr(node, f.name)),
                        "allowed": " | ".join(CHOICES.get(key, ())), "meaning": comments.get(f.name, "")})
    return out


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key '{key}'.{hint} (`dytrim presets --keys` lists all keys)")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against the field's annotation; ints widen to floats, nothing else converts."""
    ann = annotation
    args = typing.get_args(ann)
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        ann = next(a for a in args if a is not type(None))
    if typing.get_origin(ann) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"config key '{key}' expects a list of names (YAML list or a,b,c), got {value!r}")
    if ann is bool:
        if isinstance(value, bool):
            return value
    elif ann is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif ann is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML's .nan / .inf
                raise ConfigError(f"config key '{key}' expects a finite number, got {value!r}")
            return float(value)
    elif ann is str:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) and key in ON_OFF_KEYS:  # YAML reads a bare on / off as a boolean
            return "on" if value else "off"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - only the types above are used
        return value
    raise ConfigError(f"config key '{key}' expects {ann.__name__}, got {value!r} ({type(value).__name__})")


def set_key(cfg: RunConfig, key: str, value: Any) -> None:
    """Set one dotted key, refusing unknown keys and wrong types."""
    parts = key.split(".")
    node: Any = cfg
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(node) or not hasattr(node, part):
            raise _unknown_key(key)
        node = getattr(node, part)
    fields = {f.name: f for f in dataclasses.fields(node)} if dataclasses.is_dataclass(node) else {}
    leaf = parts[-1]
    if leaf not in fields or dataclasses.is_dataclass(getattr(node, leaf)):
        raise _unknown_key(key)
    setattr(node, leaf, _coerce(key, value, typing.get_type_hints(type(node))[leaf]))


def apply_mapping(cfg: RunConfig, mapping: dict[str, Any], prefix: str = "") -> None:
    """Apply a nested mapping (as read from YAML) key by key."""
    for k, v in mapping.items():
        key = prefix + str(k)
        if isinstance(v, dict):
            apply_mapping(cfg, v, key + ".")
        else:
            set_key(cfg, key, v)


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> (key, YAML-parsed value)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value '{raw}': {exc}") from exc
    return key.strip(), value


# ----------------------------------------------------------------------------- presets


def _preset_files() -> dict[str, Any]:
    folder = resources.files("dytrim") / "configs"
    return {p.name[: -len(".yaml")]: p for p in folder.iterdir() if p.name.endswith(".yaml")}


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for name, path in sorted(_preset_files().items()):
        out[name] = str(yaml.safe_load(path.read_text()).get("description", ""))
    return out


def _preset_mapping(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    files = _preset_files()
    if name not in files:
        close = difflib.get_close_matches(name, list(files), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown preset '{name}'.{hint} `dytrim presets` lists them.")
    if name in seen:
        raise ConfigError(f"preset '{name}' extends itself: {' -> '.join(seen + (name,))}")
    raw = yaml.safe_load(files[name].read_text()) or {}
    raw.pop("description", None)
    parent = raw.pop("extends", None)
    base = _preset_mapping(parent, seen + (name,)) if parent else {}
    return _merge(base, raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    preset: str | None = None, overrides: list[str] | None = None, yaml_file: str | Path | None = None
) -> RunConfig:
    """Resolve defaults < preset < YAML file < overrides, then validate."""
    cfg = RunConfig()
    if preset:
        apply_mapping(cfg, _preset_mapping(preset))
        cfg.preset = preset
    if yaml_file:
        apply_mapping(cfg, read_yaml_mapping(yaml_file, "--config"))
    for text in overrides or []:
        set_key(cfg, *parse_override(text))
    validate(cfg)
    return cfg


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file of plain values as a dict; every way it can be wrong is a ConfigError naming `what` and
    the file (missing, a folder, unreadable, a syntax error with its line and column, a Python tag, not a
    mapping). Only plain YAML is read (safe_load): a tag like !!python/object never constructs anything."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{what}: no such file '{p}'")
    if p.is_dir():
        raise ConfigError(f"{what}: '{p}' is a folder; give a YAML file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read '{p}' ({getattr(exc, 'strerror', None) or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        if isinstance(exc, yaml.constructor.ConstructorError):
            problem += " (only plain YAML values are read; Python tags are refused)"
        raise ConfigError(f"{what}: '{p}'{where}: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: '{p}' is not valid YAML ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: '{p}' must hold a mapping of config keys (key: value lines); "
                          f"it holds a {type(data).__name__}")
    return data


def config_from_dict(mapping: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from its stored dict (config.yaml of a run)."""
    cfg = RunConfig()
    apply_mapping(cfg, mapping)
    validate(cfg)
    return cfg


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(cfg: RunConfig) -> None:
    """Range and choice checks that need no data; data-dependent checks happen in the split builder."""
    flat = {k: get_key(cfg, k) for k in all_keys(cfg)}
    for key, choices in CHOICES.items():
        _check(flat[key] in choices, key, f"must be one of {', '.join(choices)}; got '{flat[key]}'")
    d, s, o, t, a = cfg.data, cfg.ssl, cfg.optim, cfg.train, cfg.aug
    _check(d.imb_ratio_l >= 1, "data.imb_ratio_l", f"gamma_l must be >= 1 (1 = balanced); got {d.imb_ratio_l}")
    _check(
        d.imb_ratio_u >= 1,
        "data.imb_ratio_u",
        f"gamma_u must be >= 1 (1 = uniform; use data.reverse_u=true to reverse); got {d.imb_ratio_u}",
    )
    _check(d.n1 >= 1, "data.n1", f"must be >= 1; got {d.n1}")
    _check(d.m1 >= 0, "data.m1", f"must be >= 0; got {d.m1}")
    _check(d.test_per_class >= 1, "data.test_per_class", f"must be >= 1; got {d.test_per_class}")
    _check(d.eval_subset >= 0, "data.eval_subset", f"must be >= 0 (0 = whole test set); got {d.eval_subset}")
    _check(d.image_size >= 16, "data.image_size", f"must be >= 16 (smallest model input); got {d.image_size}")
    folder_keys = [k for k in ("labeled_dir", "unlabeled_dir", "test_dir") if getattr(d, k)]
    if d.name != "folder" and folder_keys:
        raise ConfigError(
            f"data.{folder_keys[0]}: only read with data.name=folder (data.name is '{d.name}'); "
            "set data.name=folder to train on your own image folders, or drop the key"
        )
    if d.name == "folder":
        _check(bool(d.labeled_dir), "data.labeled_dir", "data.name=folder needs a folder with one sub-folder per class")
        _check(0 <= d.holdout < 1, "data.holdout", f"must be in [0, 1); got {d.holdout}")
        _check(
            bool(d.test_dir) or d.holdout > 0,
            "data.holdout",
            "no test set: set data.test_dir to a folder laid out like data.labeled_dir, or data.holdout > 0",
        )
        _check(d.channels in (1, 3), "data.channels", f"must be 3 (RGB) or 1 (grayscale); got {d.channels}")
        _check(
            bool(d.unlabeled_dir) or d.pool == "paper" or s.name == "supervised",
            "data.unlabeled_dir",
            f"{s.name} with data.pool=disjoint needs unlabeled images: set data.unlabeled_dir (or data.pool=paper)",
        )
    _check(0 <= s.p_cutoff <= 1, "ssl.p_cutoff", f"must be in [0, 1]; got {s.p_cutoff}")
    _check(s.temperature > 0, "ssl.temperature", f"must be > 0; got {s.temperature}")
    _check(s.lambda_u >= 0, "ssl.lambda_u", f"must be >= 0; got {s.lambda_u}")
    _check(s.n_strong >= 1, "ssl.n_strong", f"must be >= 1; got {s.n_strong}")
    _check(0 <= s.ema_p < 1, "ssl.ema_p", f"must be in [0, 1); got {s.ema_p}")
    _check(s.lambda_e >= 0, "ssl.lambda_e", f"must be >= 0; got {s.lambda_e}")
    _check(
        0 <= s.ce_eps < float("inf"),
        "ssl.ce_eps",
        f"must be a finite number >= 0 (0 = exact log_softmax, 1.0e-8 = the reference code); got {s.ce_eps}",
    )
    _check(o.lr > 0, "optim.lr", f"must be > 0; got {o.lr}")
    _check(0 <= o.ema_decay < 1, "optim.ema_decay", f"must be in [0, 1); got {o.ema_decay}")
    _check(o.ema_wd >= 0 and o.ema_wd * o.lr < 1, "optim.ema_wd", "must be >= 0 with ema_wd * lr < 1")
    _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0; got {o.weight_decay}")
    _check(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0; got {o.warmup_steps}")
    _check(t.steps >= 1, "train.steps", f"must be >= 1; got {t.steps}")
    _check(t.eval_every >= 1, "train.eval_every", f"must be >= 1; got {t.eval_every}")
    _check(t.batch_size >= 1, "train.batch_size", f"must be >= 1; got {t.batch_size}")
    _check(t.uratio >= 0, "train.uratio", f"must be >= 0; got {t.uratio}")
    _check(t.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1; got {t.eval_batch_size}")
    _check(t.ckpt_every >= 0, "train.ckpt_every", f"must be >= 0; got {t.ckpt_every}")
    _check(t.keep_ckpts >= 1, "train.keep_ckpts", f"must be >= 1; got {t.keep_ckpts}")
    _check(t.threads >= 0, "train.threads", f"must be >= 0; got {t.threads}")
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        "train.device",
        f"must be auto, cpu, cuda or cuda:N; got '{t.device}'",
    )
    from dytrim.debias import COMPONENTS  # local import: components import torch

    for m in cfg.debias.methods:
        if m not in COMPONENTS:
            close = difflib.get_close_matches(m, COMPONENTS.names(), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(f"debias.methods: unknown method '{m}'.{hint} Known: {', '.join(COMPONENTS.names())}")
    _check(len(set(cfg.debias.methods)) == len(cfg.debias.methods), "debias.methods", "a method is listed twice")
    _check(
        not {"resample", "dytrim"} <= set(cfg.debias.methods),
        "debias.methods",
        "resample and dytrim both replace the labeled sampler; list only one of them",
    )
    _check(0 < cfg.debias.reweight_beta < 1, "debias.reweight_beta", "must be in (0, 1)")
    _check(cfg.debias.start >= 0, "debias.start", f"must be >= 0; got {cfg.debias.start}")
    pr = cfg.prune
    _check(0 < pr.keep_rate <= 1, "prune.keep_rate", f"must be in (0, 1]; got {pr.keep_rate}")
    _check(0 <= pr.anneal <= 1, "prune.anneal", f"must be in [0, 1] (fraction of train.steps); got {pr.anneal}")
    _check(0 <= pr.tau <= 1, "prune.tau", f"must be in [0, 1]; got {pr.tau}")
    _check(pr.min_keep >= 0, "prune.min_keep", f"must be >= 0; got {pr.min_keep}")
    _check(0 <= pr.max_ratio <= 1, "prune.max_ratio", f"must be in [0, 1] (1 = no cap); got {pr.max_ratio}")
    _check(pr.max_prior_ratio >= 0, "prune.max_prior_ratio", f"must be >= 0 (0 = no cap); got {pr.max_prior_ratio}")
    _check(0 <= pr.ratio_ema < 1, "prune.ratio_ema", f"must be in [0, 1) (0 = latest pi(I)); got {pr.ratio_ema}")
    _check(pr.epoch_steps >= 1, "prune.epoch_steps", f"must be >= 1; got {pr.epoch_steps}")
    for k in ("pad", "cutout", "n_ops"):
        _check(getattr(a, k) >= 0, f"aug.{k}", f"must be >= 0; got {getattr(a, k)}")
    _check(0 <= a.magnitude <= 30, "aug.magnitude", f"must be in [0, 30]; got {a.magnitude}")
    if s.name != "supervised":
        _check(t.uratio >= 1, "train.uratio", f"{s.name} needs unlabeled images: set uratio >= 1")
        _check(d.m1 >= 1, "data.m1", f"{s.name} needs unlabeled images: set data.m1 >= 1")
    from dytrim.models import list_models  # local import: models import torch

    if cfg.model.name not in list_models():
        close = difflib.get_close_matches(cfg.model.name, list_models(), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"model.name: unknown model '{cfg.model.name}'.{hint} Known: {', '.join(list_models())}")


def get_key(cfg: Any, key: str) -> Any:
    """The value of a dotted key."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
