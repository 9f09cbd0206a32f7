"""train.tensorboard: every number of metrics.jsonl is in the event files (read back with TensorBoard's own
reader), per-class lists under the class names; a missing package is one line before training."""

from __future__ import annotations

import pytest

from dytrim.cli import main
from dytrim.engine.runlog import read_rows
from dytrim.engine.tensorboard import scalars

# these tiny runs use DyTrim's reference labeled rule (prune.min_keep=0) on a split with 1-image classes, so its
# start-up warning is expected (test_pruning.py checks the warning itself with pytest.warns)
pytestmark = [pytest.mark.filterwarnings("ignore:the labeled pruning rule:UserWarning")]

TINY = ["--preset", "mnist-lt-fixmatch", "--set", "debias.methods=cdmad,dytrim", "--set", "debias.start=2",
        "--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "train.progress=false",
        "--set", "train.threads=1"]


@pytest.mark.slow
def test_every_metric_is_a_scalar_read_back(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.tensorboard=true", "--out", str(run)]) == 0
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    rows = read_rows(run / "metrics.jsonl")
    classes = [str(c) for c in range(10)]
    for row in rows:
        expected = scalars({k: v for k, v in row.items() if k != "step"}, classes)
        assert set(expected) <= tags
        for tag, value in expected.items():
            got = {e.step: e.value for e in acc.Scalars(tag)}
            assert got[row["step"]] == pytest.approx(value, rel=1e-6, abs=1e-6), tag
    for tag in ("bacc", "bacc_debiased", "per_class_recall/9", "prior_baseline_trainmode/0", "pruning/r_c/0"):
        assert tag in tags


def test_missing_package_is_one_line_before_training(tmp_path, capsys, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.tensorboard=true", "--out", str(out)]) == 2
    assert "train.tensorboard: needs the tensorboard package" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_run_in_stages_has_a_curve_per_stage_and_a_marker_at_the_switch(tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = ["--preset", "mnist-lt-fixmatch", "--set", "debias.methods=crt", "--set", "crt.steps=4", "--set",
            "train.steps=4", "--set", "train.eval_every=2", "--set", "train.progress=false", "--set", "train.threads=1"]
    assert main(["train", *args, "--set", "train.tensorboard=true", "--out", str(run)]) == 0
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    rows = read_rows(run / "metrics.jsonl")
    for stage in ("main", "crt"):
        want = {r["step"]: r["bacc"] for r in rows if r.get("stage") == stage}
        got = {e.step: e.value for e in acc.Scalars(f"stages/{stage}/bacc")}
        assert want and got == pytest.approx(want, abs=1e-6), stage
    markers = [e.step for e in acc.Tensors("stage_switch/text_summary")]
    assert markers == [2, 6]  # the first row of each stage
