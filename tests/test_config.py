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
