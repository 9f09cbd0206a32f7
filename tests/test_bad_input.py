"""Bad input never corrupts anything: each mistake stops before training with a message naming the key
or file and the fix, exit code 2, and no output left behind; plus property tests over config overrides."""

from __future__ import annotations

import copy
import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dytrim.cli import main
from dytrim.config import ConfigError, RunConfig, all_keys, get_key, load_config, parse_override, set_key, validate

BASE = ["train", "--preset", "mnist-lt-fixmatch", "--set", "train.progress=false"]


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["train.stpes=3"], ["train.stpes", "did you mean 'train.steps'"]),
        (["train.steps=many"], ["train.steps", "expects int"]),
        (["ssl.p_cutoff=high"], ["ssl.p_cutoff", "expects float"]),
        (["data.imb_ratio_l=0.5"], ["data.imb_ratio_l", ">= 1"]),
        (["data.imb_ratio_u=0"], ["data.imb_ratio_u", "reverse_u"]),
        (["data.n1=99999"], ["data.n1", "class 0"]),
        (["data.m1=99999"], ["data.m1", "class 0"]),
        (["data.root=/nonexistent/place"], ["data.root", "not found", "fix:"]),
        (["debias.methods=cdmda"], ["debias.methods", "did you mean 'cdmad'"]),
        (["model.name=wrn28"], ["model.name", "did you mean"]),
        (["prune.keep_rate=1.5"], ["prune.keep_rate", "(0, 1]"]),
        (["optim.lr=-1"], ["optim.lr", "> 0"]),
    ],
)
def test_bad_config_or_data_stops_cleanly(tmp_path, capsys, overrides, needles) -> None:
    out = tmp_path / "run"
    args = [x for o in overrides for x in ("--set", o)]
    assert main([*BASE, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "dytrim: error: " in err, err
    key = overrides[0].split("=", 1)[0]
    assert names_key(err.split("dytrim: error: ", 1)[1], key), err  # the message is about this key
    for needle in needles:
        assert needle.lower() in err.lower(), err
    assert not out.exists()  # nothing written, not even an empty run directory


def test_unwritable_output_dir(tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main([*BASE, "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "writable" in err


def test_truncated_data_file_names_file_and_fix(tmp_path, capsys) -> None:
    bad = tmp_path / "mnist10k.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    out = tmp_path / "run"
    assert main([*BASE, "--set", f"data.root={bad}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "mnist10k.npz" in err and not out.exists()


KEYS = [k for k in all_keys(RunConfig()) if k not in ("preset",)]
#: (key, value) overrides refused under another key: data.name=folder needs data.labeled_dir
REFUSED_UNDER = {("data.name", "folder"): "data.labeled_dir"}


def names_key(msg: str, key: str) -> bool:
    """The message is about `key` itself: it opens with "key:" or "key=" (validation, data checks), or names it
    as config key 'key' (a wrong type, an unknown key) or --set key: (a value YAML cannot parse). A message about
    another key that merely mentions this one does not count."""
    k = re.escape(key)
    return re.search(rf"^{k}[:=]|config key '{k}'|--set {k}: ", msg) is not None


def test_names_key_is_exact() -> None:
    assert names_key("ssl.p_cutoff: must be in [0, 1]; got 2.0", "ssl.p_cutoff")
    assert names_key("config key 'train.steps' expects int, got 'x' (str)", "train.steps")
    assert names_key("--set data.root: cannot parse value ':'", "data.root")
    assert not names_key("prune.anneal: must be in [0, 1] (fraction of train.steps); got 2.0", "train.steps")
    assert not names_key("data.labeled_dir: data.name=folder needs a folder", "data.name")
    assert names_key("data.root='/x': not found", "data.root")
    assert names_key("unknown config key 'train.stpes'. Did you mean 'train.steps'?", "train.stpes")
    assert not names_key("unknown config key 'train.stpes'. Did you mean 'train.steps'?", "train.steps")
    assert not names_key("aug: pad, cutout and n_ops must be >= 0", "aug.pad")
    assert not names_key("data.n1s: x", "data.n1")


BASE_CFG = load_config("mnist-lt-fixmatch")


def check_override(key: str, value) -> None:
    """The preset with key=value validates, or raises a ConfigError about that key (or, for the overrides in
    REFUSED_UNDER, the key it lacks); never another exception, never a NaN or infinite number accepted. (What
    load_config does for one override, minus re-reading the preset: 20x faster.)"""
    try:
        cfg = copy.deepcopy(BASE_CFG)
        set_key(cfg, *parse_override(f"{key}={value}"))
        validate(cfg)
    except ConfigError as exc:
        try:
            parsed = parse_override(f"{key}={value}")[1]
        except ConfigError:
            parsed = None
        about = REFUSED_UNDER.get((key, parsed if isinstance(parsed, str) else None), key)
        assert names_key(str(exc), about), f"{key}={value!r}: {exc}"
        return
    got = get_key(cfg, key)
    if isinstance(got, float):
        assert math.isfinite(got), f"{key}={got} accepted"


@pytest.mark.parametrize("key", KEYS)
def test_every_key_refuses_bad_values_by_its_own_name(key) -> None:
    for value in (-1, 0, 1.5, 10**6, "x", "", None, True, ".nan", ".inf", "[1, 2]", "{a: 1}", "folder", "]"):
        check_override(key, value)


VALUES = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(max_size=12), st.none())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_override_is_accepted_valid_or_refused_by_key(key, value) -> None:
    """Whatever value a key gets: check_override's promise."""
    check_override(key, value)


@settings(max_examples=200, deadline=None)
@given(text=st.text(min_size=1, max_size=30))
def test_any_override_text_parses_or_refuses(text) -> None:
    try:
        key, _ = parse_override(text)
        load_config("mnist-lt-fixmatch", [text])
    except ConfigError:
        return
    assert key in KEYS or key == "preset"
