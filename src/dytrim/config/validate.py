"""Range and choice checks of a whole config, before any work; each error names its key and the fix."""

from __future__ import annotations

from dytrim.config.keys import CHOICES, all_keys, get_key
from dytrim.config.schedule import check_schedule
from dytrim.config.schema import ConfigError, RunConfig, require
from dytrim.config.yamlfile import capped, shown
from dytrim.suggest import did_you_mean

SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes [0, 2^32 - 1]; torch and Python take more


def validate(cfg: RunConfig) -> None:
    """Range and choice checks that need no data; data-dependent checks happen in the split builder."""
    flat = {k: get_key(cfg, k) for k in all_keys(cfg)}
    allowed = dict(CHOICES)  # built once: each lookup in CHOICES re-reads the registries and sections
    for key, choices in allowed.items():
        if key not in flat or isinstance(flat[key], list):
            continue  # a section this config was built without; debias.methods: checked name by name below
        require(flat[key] in choices, key, f"must be one of {', '.join(choices)}; got '{capped(str(flat[key]))}'."
                f"{did_you_mean(str(flat[key]), choices)}")
    require(0 <= cfg.seed <= SEED_MAX, "seed", f"must be in [0, {SEED_MAX}] (0 to 2^32 - 1, the seeds numpy takes); "
            f"got {shown(cfg.seed, 60)}: pick a seed in that range, e.g. --set seed=1")
    d, s, o, t, a = cfg.data, cfg.ssl, cfg.optim, cfg.train, cfg.aug
    require(d.imb_ratio_l >= 1, "data.imb_ratio_l", f"gamma_l must be >= 1 (1 = balanced); got {shown(d.imb_ratio_l)}")
    require(
        d.imb_ratio_u >= 1,
        "data.imb_ratio_u",
        f"gamma_u must be >= 1 (1 = uniform; use data.reverse_u=true to reverse); got {shown(d.imb_ratio_u)}",
    )
    require(d.n1 >= 1, "data.n1", f"must be >= 1; got {shown(d.n1)}")
    require(d.m1 >= 0, "data.m1", f"must be >= 0; got {shown(d.m1)}")
    require(d.test_per_class >= 1, "data.test_per_class", f"must be >= 1; got {shown(d.test_per_class)}")
    require(d.eval_subset >= 0, "data.eval_subset", f"must be >= 0 (0 = whole test set); got {shown(d.eval_subset)}")
    require(d.image_size >= 16, "data.image_size", f"must be >= 16 (smallest model input); got {shown(d.image_size)}")
    folder_keys = [k for k in ("labeled_dir", "unlabeled_dir", "test_dir") if getattr(d, k)]
    if d.name != "folder" and folder_keys:
        raise ConfigError(
            f"data.{folder_keys[0]}: only read with data.name=folder (data.name is '{d.name}'); "
            "set data.name=folder to train on your own image folders, or drop the key"
        )
    if d.name == "folder":
        require(bool(d.labeled_dir), "data.labeled_dir",
                "data.name=folder needs a folder with one sub-folder per class")
        require(0 <= d.holdout < 1, "data.holdout", f"must be in [0, 1); got {shown(d.holdout)}")
        require(
            bool(d.test_dir) or d.holdout > 0,
            "data.holdout",
            "no test set: set data.test_dir to a folder laid out like data.labeled_dir, or data.holdout > 0",
        )
        require(d.channels in (1, 3), "data.channels", f"must be 3 (RGB) or 1 (grayscale); got {shown(d.channels)}")
        require(
            bool(d.unlabeled_dir) or d.pool == "paper" or s.name == "supervised",
            "data.unlabeled_dir",
            f"{s.name} with data.pool=disjoint needs unlabeled images: set data.unlabeled_dir (or data.pool=paper)",
        )
    require(0 <= s.p_cutoff <= 1, "ssl.p_cutoff", f"must be in [0, 1]; got {shown(s.p_cutoff)}")
    require(s.temperature > 0, "ssl.temperature", f"must be > 0; got {shown(s.temperature)}")
    require(s.lambda_u >= 0, "ssl.lambda_u", f"must be >= 0; got {shown(s.lambda_u)}")
    require(s.n_strong >= 1, "ssl.n_strong", f"must be >= 1; got {shown(s.n_strong)}")
    require(0 <= s.ema_p < 1, "ssl.ema_p", f"must be in [0, 1); got {shown(s.ema_p)}")
    require(s.lambda_e >= 0, "ssl.lambda_e", f"must be >= 0; got {shown(s.lambda_e)}")
    require(
        0 <= s.ce_eps < float("inf"),
        "ssl.ce_eps",
        f"must be a finite number >= 0 (0 = exact log_softmax, 1.0e-8 = the reference code); got {shown(s.ce_eps)}",
    )
    require(o.lr > 0, "optim.lr", f"must be > 0; got {shown(o.lr)}")
    require(0 <= o.ema_decay < 1, "optim.ema_decay", f"must be in [0, 1); got {shown(o.ema_decay)}")
    require(o.ema_wd >= 0 and o.ema_wd * o.lr < 1, "optim.ema_wd", "must be >= 0 with ema_wd * lr < 1")
    require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0; got {shown(o.weight_decay)}")
    require(t.steps >= 1, "train.steps", f"must be >= 1; got {shown(t.steps)}")
    require(t.eval_every >= 1, "train.eval_every", f"must be >= 1; got {shown(t.eval_every)}")
    require(t.batch_size >= 1, "train.batch_size", f"must be >= 1; got {shown(t.batch_size)}")
    require(t.uratio >= 0, "train.uratio", f"must be >= 0; got {shown(t.uratio)}")
    require(t.eval_batch_size >= 1, "train.eval_batch_size", f"must be >= 1; got {shown(t.eval_batch_size)}")
    require(t.ckpt_every >= 0, "train.ckpt_every", f"must be >= 0; got {shown(t.ckpt_every)}")
    require(t.keep_ckpts >= 1, "train.keep_ckpts", f"must be >= 1; got {shown(t.keep_ckpts)}")
    require(t.threads >= 0, "train.threads", f"must be >= 0; got {shown(t.threads)}")
    require(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        "train.device",
        f"must be auto, cpu, cuda or cuda:N; got '{capped(str(t.device))}'",
    )
    methods = allowed["debias.methods"]
    for m in cfg.debias.methods:
        if m not in methods:
            raise ConfigError(f"debias.methods: unknown method '{m}'.{did_you_mean(m, methods)} Known: "
                              f"{', '.join(methods)}")
    require(len(set(cfg.debias.methods)) == len(cfg.debias.methods), "debias.methods", "a method is listed twice")
    require(
        not {"resample", "dytrim"} <= set(cfg.debias.methods),
        "debias.methods",
        "resample and dytrim both replace the labeled sampler; list only one of them",
    )
    check_schedule(cfg)  # the STEP_KEYS (debias.start, darp.warm, ...): a step or a fraction of train.steps
    for name in cfg.sections:  # each component's own section: its CHOICES (above) and its checks
        check = getattr(cfg.sections[name], "check", None)
        if check is not None:
            check(cfg)
    for k in ("pad", "cutout", "n_ops"):
        require(getattr(a, k) >= 0, f"aug.{k}", f"must be >= 0; got {shown(getattr(a, k))}")
    require(0 <= a.magnitude <= 30, "aug.magnitude", f"must be in [0, 30]; got {shown(a.magnitude)}")
    if s.name != "supervised":
        require(t.uratio >= 1, "train.uratio", f"{s.name} needs unlabeled images: set uratio >= 1")
        require(d.m1 >= 1, "data.m1", f"{s.name} needs unlabeled images: set data.m1 >= 1")
