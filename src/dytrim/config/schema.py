"""The typed run configuration: one dataclass per section, and the registry of sections owned by components.

Core sections (data, model, aug, ssl, debias, optim, train) are fields of RunConfig. A debiasing component owns
its own section: a dataclass it registers with `@config_section(name)` beside its code (e.g. `reweight`,
`prune`), stored in `RunConfig.sections` and read as `cfg.<name>` like a core one. A section may declare
`CHOICES` (allowed values per field) and a `check(cfg)` method for its range checks; validation runs both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, found before training starts."""


def require(ok: bool, key: str, msg: str) -> None:
    """Raise ConfigError("key: msg") unless `ok`: every check names the key it is about."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


#: section name -> dataclass, registered by the components that own them (in import order)
SECTIONS: dict[str, type] = {}

#: config key -> the registered names it accepts (data.name, model.name, ssl.name, debias.methods), filled by the
#: registries' own modules: the configuration imports none of them
NAMED_BY_REGISTRY: dict[str, Callable[[], Iterable[str]]] = {}


def register_choices(key: str, names: Callable[[], Iterable[str]]) -> None:
    """Declare that `key` accepts the names a registry lists (called once by the module owning the registry)."""
    NAMED_BY_REGISTRY[key] = names


def config_section(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a dataclass as the config section `name` (keys `name.field`)."""

    def deco(cls: type[T]) -> type[T]:
        if name in SECTIONS and SECTIONS[name] is not cls:
            raise KeyError(f"config section '{name}' is registered twice")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"config section '{name}' must be a dataclass")
        SECTIONS[name] = cls
        return cls

    return deco


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

    name: str = "wrn_28_2"  # the backbone (a registered model)
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

    name: str = "fixmatch"  # the base algorithm (a registered SSL base)
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
    #   target's probability p is near 1e-8, and the loss caps at 18.4)


@dataclass
class DebiasConfig:
    """Debiasing components stacked on the SSL base, applied in the listed order (see dytrim.debias), and the
    settings they share; each component's own keys are in its section (logit_adjust, reweight, resample, cdmad,
    prune)."""

    methods: list[str] = field(default_factory=list)  # registered debiasers, applied in this order (comma list)
    baseline: str = "zeros"  # baseline image I in the normalised input space: zeros (DyTrim) | ones (CDMAD)
    start: int | float = 0  # when CDMAD / DyTrim start using z(I) (pseudo-labels, prune ratios): an integer is the
    #   absolute step, a float in [0, 1] a fraction of train.steps (0.2 = from step ceil(0.2 * train.steps));
    #   reference: after 100 of 500 epochs, 0.202 = step 50,500 of 250k


@dataclass
class OptimConfig:
    """Optimiser, schedule and EMA teacher."""

    name: str = "adam"  # adam | sgd
    lr: float = 0.0015  # learning rate (peak of the schedule)
    momentum: float = 0.9  # SGD momentum (optim.name=sgd)
    nesterov: bool = True  # Nesterov momentum (optim.name=sgd)
    weight_decay: float = 0.0  # optimiser (coupled) weight decay
    schedule: str = "constant"  # constant | cosine (USB: lr * cos(7*pi*k / (16*K)))
    warmup_steps: int | float = 0  # linear LR warm-up: an integer is steps, a float in [0, 1] a fraction of
    #   train.steps (as debias.start)
    ema_decay: float = 0.999  # decay of the EMA teacher (the evaluated model)
    ema_wd: float = 0.0  # reference quirk: every tensor of the model *= (1 - ema_wd * lr) after each EMA step
    ema_buffers: str = "ema"  # ema: average BN buffers too (reference) | copy: copy them (USB)


@dataclass
class TrainConfig:
    """Schedule length, batches, evaluation and checkpoint cadence, machine settings."""

    steps: int = 250_000  # optimiser updates (schedule clock steps) of the run
    eval_every: int = 500  # steps between evaluations of the EMA model (one metrics.jsonl row each); a preset's
    #   (or this default) value adapts to a short run: fewer than 5 evaluations in train.steps -> train.steps // 5;
    #   a value given with --set or --config is kept as it is
    batch_size: int = 32  # labeled images per step
    uratio: int = 2  # unlabeled images per labeled image
    eval_batch_size: int = 512  # images per evaluation forward
    forward: str = "separate"  # separate: one forward per view, as the reference | joint: one concatenated pass
    ckpt_every: int = 0  # 0 = at every evaluation
    keep_ckpts: int = 2  # newest checkpoints kept on disk
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: bf16 where the device does it natively (CUDA with bf16, a CPU with AMX or
    #   AVX512-BF16), else fp32 | fp32 | bf16 (autocast forward + loss; fp32 weights, optimiser, EMA)
    compile: str = "auto"  # auto: torch.compile the training forward for runs of >= 5000 steps on CUDA or in bf16
    #   (where it pays) | on | off; a compile failure falls back to eager with one warning
    deterministic: bool = True  # CUDA: deterministic algorithms + CUBLAS_WORKSPACE_CONFIG, so a resumed run equals an
    #   uninterrupted one there too (the CPU is deterministic anyway); false trades that for speed
    threads: int = 0  # torch intra-op threads on CPU (0 = torch default)
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = False  # also write every metrics row as TensorBoard scalars to <out>/tensorboard (needs the
    #   tensorboard package)


def _default_sections() -> dict[str, Any]:
    return {name: cls() for name, cls in SECTIONS.items()}


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
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sections: dict[str, Any] = field(default_factory=_default_sections, repr=False)  # the components' sections

    def __getattr__(self, name: str) -> Any:
        """`cfg.prune`, `cfg.reweight`, ...: a component's registered section."""
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"RunConfig has no section '{name}'")

    def section_names(self) -> list[str]:
        """The sections in key order: core fields, then the components' sections."""
        core = [f.name for f in dataclasses.fields(self) if f.name != "sections"]
        return core + list(self.sections)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: dataclasses.asdict(getattr(self, f.name)) if dataclasses.is_dataclass(getattr(self, f.name))
               else getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "sections"}
        return out | {name: dataclasses.asdict(sec) for name, sec in self.sections.items()}
