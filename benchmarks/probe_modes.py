"""Compare test-time debiasing z(x) − z(I) with z(I) taken in eval-mode vs train-mode BN, on a finished run.

    python benchmarks/probe_modes.py RUN_DIR [RUN_DIR ...] --name cdmad-cpu

Loads each run's newest checkpoint (EMA model) and config, evaluates the whole test set raw, debiased with
the eval-mode z(I) (running statistics; the reference), and debiased with the train-mode z(I) (the
image's own statistics, as the training-time CDMAD sees it), and writes benchmarks/results/probe-modes-<name>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import sys
from pathlib import Path

import torch
import yaml

from dytrim.config import config_from_dict
from dytrim.data.sources import load_data
from dytrim.engine.checkpoint import load_latest
from dytrim.engine.evaluate import predict_logits
from dytrim.engine.probe import baseline_image, baseline_logits
from dytrim.metrics import classification_metrics
from dytrim.models import create_model


def evaluate_run(run: Path) -> list[str]:
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    data = load_data(cfg.data, cfg.seed, "cpu")
    state, path = load_latest(run)
    label = f"{run.parent.name}/{run.name}" if run.name.startswith("seed") else run.name  # accuracy.py layout
    model = create_model(cfg.model.name, data.num_classes, in_channels=data.in_channels)
    model.load_state_dict(state["ema"])
    logits = predict_logits(model, data.x_test, data.mean, data.std)
    y, c, counts = data.y_test, data.num_classes, data.split.lb_counts
    rows = []
    for kind in ("zeros", "ones"):
        image = baseline_image(kind, data.in_channels, *data.x_test.shape[2:], "cpu")
        for mode in ("eval", "train"):
            z_i = baseline_logits(model, image, mode)
            m = classification_metrics((logits - z_i).argmax(-1), y, c, counts)
            prior = torch.softmax(z_i, -1)
            rows.append(
                f"| {label} | {path.name} | {kind} | {mode} | {100 * m['bacc']:.2f} | {100 * m['gm']:.2f} | "
                f"{[round(float(p), 2) for p in prior]} |"
            )
    raw = classification_metrics(logits.argmax(-1), y, c, counts)
    rows.insert(0, f"| {label} | {path.name} | (raw) | – | {100 * raw['bacc']:.2f} | {100 * raw['gm']:.2f} | – |")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--name", required=True)
    args = ap.parse_args()
    lines = [
        f"# Test-time baseline logits: eval-mode vs train-mode BN ({args.name})",
        "",
        f"- command: `python {shlex.join(sys.argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "- EMA model of the newest checkpoint, whole test set; prediction argmax z(x) − z(I); π(I) = softmax z(I)",
        "",
        "| run | checkpoint | baseline I | BN mode of z(I) | bACC | GM | π(I) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in args.runs:
        lines += evaluate_run(Path(run))
    out = Path(__file__).parent / "results" / f"probe-modes-{args.name}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
