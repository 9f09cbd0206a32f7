"""Train on an image-folder tree through the CLI, then eval, predict and export; exports predict like `predict`."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_folder import write_tree

from dytrim.cli import main
from dytrim.data.images import list_images, load_image
from dytrim.export import load_exported

# torch 2.x deprecates torch.jit (TorchScript); the tests that export or load TorchScript on purpose expect it
JIT_DEPRECATED = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is (deprecated|not supported)")

pytestmark = pytest.mark.slow  # trains or runs the CLI end to end (see pyproject.toml)

CLASSES = ["ant", "moth", "zebra"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(image tree, run dir): 30 steps of FixMatch + CDMAD on 16x16 images, test set held out."""
    tmp = tmp_path_factory.mktemp("journey")
    root = write_tree(tmp / "tree", labeled={"zebra": 24, "ant": 12, "moth": 6}, unlabeled=48, test=5)
    run = tmp / "run"
    rc = main([
        "train", "--preset", "mnist-lt-fixmatch", "--out", str(run),
        "--set", "data.name=folder", "--set", f"data.labeled_dir={root / 'labeled'}",
        "--set", f"data.unlabeled_dir={root / 'unlabeled'}", "--set", f"data.cache_dir={tmp / 'cache'}",
        "--set", "data.image_size=16", "--set", "debias.methods=cdmad",
        "--set", "train.steps=30", "--set", "train.eval_every=15", "--set", "train.batch_size=8",
        "--set", "train.threads=1", "--set", "train.progress=false",
    ])
    assert rc == 0
    return root, run


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_class_names_and_the_holdout_into_its_outputs(trained) -> None:
    _, run = trained
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == CLASSES
    assert "hold-out" in summary["data"]["test"] and summary["data"]["skipped_files"]["count"] == 4
    card = json.loads((run / "data.json").read_text())
    assert card["classes"] == CLASSES and (card["channels"], card["height"]) == (3, 16)


def test_eval_reports_raw_and_debiased_per_class(trained, capsys) -> None:
    _, run = trained
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "debiased" in out and all(name in out for name in CLASSES)
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["classes"] == CLASSES and result["step"] == 30 and result["debias"] == ["cdmad"]
    assert {"bacc", "gm", "bacc_debiased", "gm_debiased", "confusion", "confusion_debiased"} <= set(result)
    assert [r["class"] for r in result["per_class"]] == CLASSES
    assert sum(r["test"] for r in result["per_class"]) == result["n"] == 2 + 1 + 5  # hold-out of 20%
    assert (run / "eval" / "confusion.png").stat().st_size > 0
    # the run's metrics on its own test set are what training reported at its last evaluation
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result["bacc"] == pytest.approx(last["bacc"]) and result["bacc_debiased"] == pytest.approx(
        last["bacc_debiased"])


def test_eval_on_a_folder_with_other_classes_stops(trained, tmp_path, capsys) -> None:
    root, run = trained
    other = tmp_path / "other"
    for name in ("ant", "wasp"):
        (other / name).mkdir(parents=True)
        for i, f in enumerate(list_images(root / "test" / "ant")[:2]):
            (other / name / f"{i}.png").write_bytes(f.read_bytes())
    assert main(["eval", str(run), "--data", str(other)]) == 2
    assert "missing: ['moth', 'zebra']; extra: ['wasp']" in capsys.readouterr().err
    assert main(["eval", str(run), "--data", str(root / "test"), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["n"] == 15


def test_predict_writes_names_probabilities_and_debiased_columns(trained, tmp_path, capsys) -> None:
    root, run = trained
    out = tmp_path / "preds.csv"
    rc = main(["predict", str(run), str(root / "test"), str(root / "unlabeled" / "empty.png"), "--out", str(out),
               "--no-progress"])
    assert rc == 0
    rows = _read_csv(out)
    assert list(rows[0]) == ["path", "pred", "prob", "pred_debiased", "prob_debiased"]
    assert len(rows) == 15 and {r["pred"] for r in rows} <= set(CLASSES)
    assert all(0 < float(r["prob"]) <= 1 and r["pred_debiased"] in CLASSES for r in rows)
    assert "1 unreadable files skipped" in capsys.readouterr().err
    assert main(["predict", str(run), str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


@JIT_DEPRECATED
@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_export_predicts_like_predict(trained, tmp_path, fmt, capsys) -> None:
    root, run = trained
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(root / "test"), "--out", str(preds), "--no-progress"]) == 0
    rows = _read_csv(preds)
    path = tmp_path / f"model-{fmt}.{'torchscript.pt' if fmt == 'torchscript' else 'pt'}"
    assert main(["export", str(run), "--format", fmt, "--out", str(path)]) == 0
    module, meta = load_exported(path, trust_torchscript=fmt == "torchscript")  # our own file
    assert meta["classes"] == CLASSES and meta["debias"] == ["cdmad"] and meta["file_format"] == fmt
    assert json.loads(path.with_name(path.name + ".json").read_text())["classes"] == CLASSES
    size = meta["input"]["shape"][2:]
    x = np.stack([load_image(Path(r["path"]), tuple(size), meta["input"]["shape"][1]) for r in rows])
    with torch.no_grad():
        logits, debiased = module(torch.from_numpy(x).permute(0, 3, 1, 2))  # uint8 pixels, as documented
    for probs, col in ((torch.softmax(logits, -1), "pred"), (torch.softmax(debiased, -1), "pred_debiased")):
        assert [CLASSES[int(k)] for k in probs.argmax(-1)] == [r[col] for r in rows]
        prob_col = col.replace("pred", "prob")
        assert probs.amax(-1).tolist() == pytest.approx([float(r[prob_col]) for r in rows], abs=2e-6)


@JIT_DEPRECATED
def test_onnx_export_needs_its_optional_packages_or_round_trips(trained, tmp_path, capsys) -> None:
    _, run = trained
    have = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
    rc = main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    if not have:
        assert rc == 2 and "pip install onnx onnxscript onnxruntime" in capsys.readouterr().err
        return
    import onnxruntime

    assert rc == 0
    ts = tmp_path / "m.torchscript.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(ts)]) == 0
    x = torch.randint(0, 256, (4, 3, 16, 16)).float()
    with torch.no_grad():
        ref = [t.numpy() for t in load_exported(ts, trust_torchscript=True)[0](x)]
    got = onnxruntime.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"pixels": x.numpy()})
    assert all(np.allclose(a, b, atol=1e-4) for a, b in zip(ref, got, strict=True))
