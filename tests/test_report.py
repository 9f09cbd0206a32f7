"""`dytrim report` on two tiny real runs (one with CDMAD + DyTrim, one plain FixMatch), on an older-style run
without the newer keys, and its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dytrim.cli import main

# these tiny runs use DyTrim's reference labeled rule (prune.min_keep=0) on a split with 1-image classes, so its
# start-up warning is expected (test_pruning.py checks the warning itself with pytest.warns)
pytestmark = [pytest.mark.slow,  # trains or runs the CLI end to end (see pyproject.toml)
              pytest.mark.filterwarnings("ignore:the labeled pruning rule:UserWarning")]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train(out: Path, *extra: str) -> None:
    rc = main(["train", "--preset", "mnist-lt-fixmatch", "--set", "train.steps=10", "--set", "train.eval_every=5",
               "--set", "train.threads=1", "--set", "train.progress=false", *extra, "--out", str(out)])
    assert rc == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    _train(root / "dytrim", "--set", "debias.methods=cdmad,dytrim")
    _train(root / "plain")
    return root / "dytrim", root / "plain"


def test_report_writes_every_file_and_names_both_runs(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    names = ["mnist-lt-fixmatch (dytrim)", "mnist-lt-fixmatch (plain)"]  # same preset: told apart by directory
    pngs = ["curves.png", "recall.png", "prior-mnist-lt-fixmatch-dytrim.png", "prior-mnist-lt-fixmatch-plain.png",
            "pruning-mnist-lt-fixmatch-dytrim.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.md", "report.html", *pngs])
    assert sorted(Path(p).name for p in printed) == sorted(["report.md", "report.html", *pngs])
    for png in pngs:
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC and 5_000 < len(data) < 200_000
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for png in pngs:
        assert f"]({png})" in md and f'src="{png}"' in page
    table = md.split("## Comparison")[1].split("## Runs")[0]
    rows = [line for line in table.splitlines() if line.startswith("| mnist")]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == names
    dytrim_row, plain_row = (row.split(" | ") for row in rows)
    assert dytrim_row[1] == plain_row[1] == "last eval, n=1500"  # no eval subset: the last evaluation is final
    assert dytrim_row[4] != "—" and plain_row[4] == "—"  # debiased bACC only where the run debiases
    assert dytrim_row[-1].rstrip(" |") == plain_row[-1].rstrip(" |") == "10"  # updates, from the counter
    assert all(f"<td>{n}</td>" in page for n in names) and page.count("<table>") == 2
    assert "no run logs DyTrim pruning" not in md


def test_report_handles_older_runs_and_labels(runs, tmp_path):
    """A run from before the prior probe, the update counter and summary.json still reports, with notes."""
    old = tmp_path / "old"
    shutil.copytree(runs[1], old, ignore=shutil.ignore_patterns("*.pt", "data.json"))
    newer = ("prior_baseline", "prior_baseline_trainmode", "updates", "samples_fwd", "samples_bwd")
    rows = [json.loads(line) for line in (old / "metrics.jsonl").read_text().splitlines()]
    (old / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k not in newer}) + "\n"
                                               for r in rows))
    (old / "summary.json").unlink()
    out = tmp_path / "report"
    assert main(["report", str(old), str(runs[0]), "--out", str(out), "--label", "old", "--label", "new",
                 "--title", "Old vs new"]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# Old vs new")
    assert "| old | last eval, n=1500 |" in md and "| new | last eval, n=1500 |" in md
    assert "| 10† |" in md and "predates the update counter" in md
    assert "old: no π_θ(I) in metrics.jsonl" in md and "old: no summary.json" in md
    assert not (out / "prior-old.png").exists() and (out / "prior-new.png").exists()


def test_report_errors_exit_2(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "no evaluations in metrics.jsonl" in capsys.readouterr().err
    assert main(["report", str(runs[0]), str(runs[0]), "--out", str(tmp_path / "r")]) == 2
    assert "not unique" in capsys.readouterr().err
    assert main(["report", str(runs[0]), "--label", "a", "--label", "b", "--out", str(tmp_path / "r")]) == 2
    assert "--label" in capsys.readouterr().err


def _synthetic_run(path: Path, n_cls: int, evals: int) -> None:
    """A run directory written by hand: many classes, pruning and priors, no config.yaml or run.json."""
    path.mkdir()
    counts = [max(1, int(500 * 0.01 ** (c / (n_cls - 1)))) for c in range(n_cls)]
    rows = []
    for e in range(1, evals + 1):
        recall = [max(0.0, 0.9 - c / n_cls) for c in range(n_cls)]
        prior = [n / sum(counts) for n in counts]
        rows.append({"step": 100 * e, "bacc": 0.3 + e / 100, "gm": 0.1 + e / 100, "per_class_recall": recall,
                     "prior_baseline": prior, "pruning": {"kept_lb_per_class": [max(0, n - e) for n in counts],
                                                          "kept_ulb": 900 - e, "ulb_total": 1000}})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "data.json").write_text(json.dumps({"classes": [f"c{c}" for c in range(n_cls)], "lb_counts": counts}))


def test_report_on_many_classes_without_config(tmp_path):
    """100 classes (recall as lines, every 4th class tick on the heat map) from a bare directory."""
    _synthetic_run(tmp_path / "big", 100, 25)
    out = tmp_path / "report"
    assert main(["report", str(tmp_path / "big"), "--out", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {"curves.png", "recall.png", "prior-big.png", "pruning-big.png"}
    md = (out / "report.md").read_text()
    assert "| big | last eval, n=? |" in md and "big: no summary.json" in md
