"""Help that teaches: every command and option has a line, the paper is named, and `presets --keys` gives each
key's type, default, allowed values and meaning from the same source as validation."""

from __future__ import annotations

import argparse

import pytest

from dytrim.cli import build_parser, main
from dytrim.config import CHOICES, RunConfig, all_keys, get_key, key_help


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    act = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(act.choices)


def test_top_level_help_names_every_command_and_the_paper(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "presets", "data", "eval", "predict", "export", "report", "dynamics"):
        assert command in out
    assert "Learning Dynamics of Logits Debiasing" in out and "ICLR 2026" in out


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    todo = list(_subparsers(build_parser()).items())
    while todo:
        name, p = todo.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(f"{name} {k}", v) for k, v in a.choices.items()]
            elif not a.help:
                missing.append(f"{name} {a.option_strings or a.dest}")
    assert not missing, missing


def test_presets_keys_lists_type_default_allowed_and_meaning(capsys) -> None:
    assert main(["presets", "--keys"]) == 0
    out = capsys.readouterr().out
    entries = key_help()
    assert sorted(e["key"] for e in entries) == sorted(all_keys())
    default = RunConfig()
    for e in entries:
        assert e["meaning"], f"{e['key']} has no meaning"
        assert e["default"] == repr(get_key(default, e["key"]))
        assert e["allowed"] == " | ".join(CHOICES.get(e["key"], ()))
    assert "train.precision (str, default 'auto'; one of fp32 | bf16 | auto)" in out
