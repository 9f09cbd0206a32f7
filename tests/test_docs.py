"""The README and docs/ cannot go stale silently: their commands parse with today's CLI, the setup and test commands
are the ones CI runs, every link and anchor resolves, every preset named exists, and each measured number quoted
on the front page equals the results file it came from."""

from __future__ import annotations

import itertools
import re
import shlex
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

from dytrim.cli import build_parser
from dytrim.config import list_presets

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code_lines(text: str) -> list[str]:
    """Lines inside ```bash blocks, comments cut, continuation lines joined."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            inside = raw.strip() == "```bash" and not inside
            continue
        if not inside:
            continue
        line = re.sub(r"\s+#\s.*$", "", raw).strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return lines


def _dytrim_commands(page: Path) -> list[list[str]]:
    out = []
    for line in _code_lines(page.read_text()):
        for part in re.split(r"&&|\|", line):
            part = re.sub(r"\[[^\]]*\](\.\.\.)?", "", part)  # optional parts: [--set key=value]...
            words = shlex.split(part.replace("{", "").replace("}", ""))
            if "dytrim" in words:
                args = words[words.index("dytrim") + 1:]
            elif words[:1] and words[0].endswith("/dytrim"):
                args = words[1:]
            else:
                continue
            if args and args[0] != "-m":
                out.append(args)
    return out


def _placeholders(args: list[str]) -> list[str]:
    """Words a reader replaces (NAME, DIR, ...) turned into something argparse accepts; option alternatives a,b,c
    (written {a,b,c} in the docs) reduced to the first."""
    fixed = []
    for a in args:
        a = a.split(",")[0] if re.fullmatch(r"[a-z_]+(,[a-z_]+)+", a) else a
        fixed.append("x" if re.fullmatch(r"[A-Z_.]+(\.\.\.)?", a) else a)
    return fixed


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dytrim_command_in_the_docs_parses(page: Path) -> None:
    parser = build_parser()
    for args in _dytrim_commands(page):
        try:
            parser.parse_args(_placeholders(args))
        except SystemExit as exc:
            pytest.fail(f"{page.name}: `dytrim {' '.join(args)}` does not parse ({exc})")


def test_the_readme_setup_and_test_commands_are_the_ones_ci_runs() -> None:
    block = (ROOT / "README.md").read_text().split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    setup, test = commands
    ci = (ROOT / ".ci" / "run").read_text()
    for part in setup.split(" && ")[:-1]:  # the environment, exactly as CI makes it (CI adds -q to pip)
        assert part.replace("pip install ", "pip install -q ") in ci, part
    assert "dytrim train --preset mnist-lt-fixmatch" in setup.split(" && ")[-1]
    assert ci.rstrip().splitlines()[-1] == test


def _anchors(page: Path) -> set[str]:
    heads = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to missing {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading for #{anchor} in {dest.name}"


def _expand(name: str) -> list[str]:
    """`paper-cifar10lt-g{50,100}-dytrim` -> both names; `[-shrink]` -> with and without."""
    name = re.sub(r"\[([^\]]+)\]", lambda m: "{," + m.group(1) + "}", name)
    pieces = re.split(r"\{([^}]*)\}", name)
    options = [p.split(",") if i % 2 else [p] for i, p in enumerate(pieces)]
    return ["".join(c) for c in itertools.product(*options)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_preset_named_exists(page: Path) -> None:
    presets = set(list_presets())
    named = re.findall(r"`((?:mnist-lt|cpu|paper|usb)-[\w{},\[\]\-]+)`", page.read_text())
    for name in named:
        if "*" in name:
            continue
        for one in _expand(name):
            assert one in presets, f"{page.name}: `{one}` is not a preset"


def _results_value(results: str, metric: str) -> str:
    """The full-test value of `metric` in a benchmarks/results file made by benchmarks/train_preset.py."""
    row = re.search(rf"^\| {metric} \|(.+)\|$", results, flags=re.M)
    assert row, metric
    return row.group(1).split("|")[-1].strip()


def test_front_page_numbers_equal_their_results_files() -> None:
    readme = (ROOT / "README.md").read_text()
    for preset in ("mnist-lt-fixmatch", "cpu-cifar10lt-fixmatch"):
        results = (ROOT / "benchmarks" / "results" / f"{preset}.md").read_text()
        row = re.search(rf"^\| `{preset}` \|.+$", readme, flags=re.M)
        assert row, preset
        for metric, label in (("bacc", "bACC"), ("gm", "GM")):
            value = str(Decimal(_results_value(results, metric)).quantize(Decimal("0.1"), ROUND_HALF_UP))
            assert f"{label} {value} %" in row.group(0), (preset, metric, value)
