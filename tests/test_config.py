"""Config: precedence, strict keys with did-you-mean, types, ranges, presets."""

from __future__ import annotations

import pytest

from dytrim.config import ConfigError, list_presets, load_config


def test_precedence_defaults_preset_overrides(tmp_path) -> None:
    cfg = load_config("paper-cifar10lt-fixmatch")
    assert cfg.ssl.n_strong == 2 and cfg.optim.lr == 0.0015 and cfg.train.steps == 250_000
    yaml_file = tmp_path / "x.yaml"
    yaml_file.write_text("train:\n  steps: 7\n  eval_every: 3\n")
    cfg = load_config("paper-cifar10lt-fixmatch", ["train.steps=9", "data.imb_ratio_l=50"], yaml_file)
    assert cfg.train.steps == 9 and cfg.train.eval_every == 3 and cfg.data.imb_ratio_l == 50.0


def test_unknown_key_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train.step'.*'train.steps'"):
        load_config("paper-cifar10lt-fixmatch", ["train.step=5"])
    with pytest.raises(ConfigError, match="data.imb_ratio_l"):
        load_config("paper-cifar10lt-fixmatch", ["data.imb_ratio=5"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.steps=abc", "train.steps"),
        ("train.steps=1.5", "train.steps"),
        ("ssl.hard_label=3", "ssl.hard_label"),
        ("data.imb_ratio_l=0.5", "data.imb_ratio_l"),
        ("data.imb_ratio_u=-100", "data.imb_ratio_u"),
        ("ssl.p_cutoff=1.5", "ssl.p_cutoff"),
        ("optim.ema_decay=1", "optim.ema_decay"),
        ("optim.name=lamb", "optim.name"),
        ("model.name=wrn_28_3", "model.name"),
        ("train.steps=0", "train.steps"),
        ("data.pool=mixed", "data.pool"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("paper-cifar10lt-fixmatch", [override])


def test_model_name_did_you_mean() -> None:
    with pytest.raises(ConfigError, match="wrn_28_2"):
        load_config("paper-cifar10lt-fixmatch", ["model.name=wrn_28_3"])


def test_unknown_preset_suggests() -> None:
    with pytest.raises(ConfigError, match="cpu-cifar10lt-fixmatch"):
        load_config("cpu-cifar10-fixmatch")


def test_every_preset_resolves() -> None:
    presets = list_presets()
    for name in ("paper-cifar10lt-fixmatch", "cpu-cifar10lt-fixmatch", "mnist-lt-fixmatch"):
        assert name in presets and presets[name]
    for name in presets:
        cfg = load_config(name)
        assert cfg.preset == name


def test_split_impossible_for_data_names_key(shared_data) -> None:
    from dytrim.data.sources import load_data

    cfg = load_config("paper-cifar10lt-fixmatch", [f"data.root={shared_data}", "data.n1=6000"])
    with pytest.raises(ConfigError, match="data.n1"):
        load_data(cfg.data, cfg.seed)
    cfg = load_config("paper-cifar10lt-fixmatch", [f"data.root={shared_data}", "data.m1=4000"])
    with pytest.raises(ConfigError, match="data.m1"):
        load_data(cfg.data, cfg.seed)


def test_missing_data_file_names_root(tmp_path) -> None:
    from dytrim.data.errors import DataError
    from dytrim.data.sources import load_data

    cfg = load_config("paper-cifar10lt-fixmatch", [f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="data.root"):
        load_data(cfg.data, cfg.seed)


def test_renamed_debias_keys_still_read() -> None:
    """Older runs' config.yaml (and older commands) used flat debias.* keys: they set the components' sections."""
    from dytrim.config import config_from_dict, dump_yaml

    cfg = load_config("mnist-lt-fixmatch", ["debias.la_tau=2.0", "debias.reweight_beta=0.9", "debias.test_bn=train",
                                            "debias.resample_kind=effective", "debias.reweight_unlabeled=true"])
    assert (cfg.logit_adjust.tau, cfg.reweight.beta, cfg.resample.beta) == (2.0, 0.9, 0.9)
    assert (cfg.cdmad.test_bn, cfg.resample.kind, cfg.reweight.unlabeled) == ("train", "effective", True)
    old = cfg.to_dict()
    old["debias"] |= {"la_tau": 2.0, "la_unlabeled": False, "reweight_kind": "inverse", "reweight_beta": 0.9,
                      "reweight_unlabeled": True, "resample_kind": "effective", "test_bn": "train"}
    for section in ("logit_adjust", "reweight", "resample", "cdmad"):
        del old[section]
    assert config_from_dict(old) == cfg  # an old run's stored config reads as the same experiment
    assert "la_tau" not in dump_yaml(cfg) and "tau: 2.0" in dump_yaml(cfg)
    with pytest.raises(ConfigError, match=r"^reweight\.beta: must be in \(0, 1\)"):  # the key that holds it now
        load_config("mnist-lt-fixmatch", ["debias.reweight_beta=1.5"])
