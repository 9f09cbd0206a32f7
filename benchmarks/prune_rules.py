"""DyTrim's labeled pruning rule, the reference against the options beside it, on one protocol.

    python benchmarks/prune_rules.py --protocol mnist --seeds 0,1,2,3,4 [--train] [--threads 1]

Rows are in benchmarks/prune_rules_rows.py (label, preset, overrides; the rule keys always explicit). Runs go
to <runs-dir>/<protocol>/<label>/seed<k>; a directory holding summary.json is reused. With --train the missing
runs are trained one after another (as `dytrim train`), without it only finished runs are tabulated and the
missing ones listed. Writes benchmarks/results/prune-rules-<protocol>.md, a JSON twin and the plots
prune-rules-<protocol>-pi.png (pi_theta(I)_c, r_c, labeled prior and pseudo-label shares over training) and
prune-rules-<protocol>-kept.png (labeled images kept per class).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from results_file import RESULTS, write_results

from dytrim.engine.accel import cpu_facts
from dytrim.engine.metrics_log import read_rows

sys.path.insert(0, str(Path(__file__).parent))
from prune_rules_rows import ROWS  # noqa: E402


def train(preset: str, overrides: list[str], seed: int, out: Path, data_root: str, threads: int) -> None:
    cmd = [sys.executable, "-m", "dytrim", "train", "--preset", preset, "--set", f"seed={seed}",
           "--set", f"data.root={data_root}", "--set", "train.progress=false", "--set", f"train.threads={threads}",
           *[x for o in overrides for x in ("--set", o)], "--out", str(out)]
    if out.exists():
        cmd = [sys.executable, "-m", "dytrim", "train", "--resume", str(out)]
    subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(threads)})


def load_run(out: Path) -> dict[str, Any]:
    rows = read_rows(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    data = json.loads((out / "data.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    return {"rows": rows, "final": summary.get("full_test", rows[-1]), "summary": summary, "data": data, "cfg": cfg}


def ms(values: list[float], scale: float = 100.0, nd: int = 1) -> str:
    if not values:
        return "–"
    m = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{m:.{nd}f} (1 seed)"
    return f"{m:.{nd}f} ± {scale * statistics.stdev(values):.{nd}f}"


def fmt(v: list[float], nd: int = 3) -> str:
    return " / ".join(f"{x:.{nd}f}" for x in v)


def mean_vec(vs: list[list[float]]) -> list[float]:
    return [statistics.fmean(col) for col in zip(*vs, strict=True)] if vs else []


def last_pruned(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last evaluation row before annealing (kept counts of the final pruned pass)."""
    rs = [r for r in rows if "pruning" in r and not r["pruning"]["annealed"]]
    return rs[-1] if rs else None


def tv(a: list[float], b: list[float]) -> float:
    return 0.5 * sum(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", required=True, choices=sorted(ROWS))
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--rows", default="", help="comma-separated labels (default: all rows of the protocol)")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs-dir", default="runs/prune-rules")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train", action="store_true", help="train the missing runs (one at a time)")
    ap.add_argument("--reference", default="dytrim-reference", help="row the paired differences are taken against")
    ap.add_argument("--notes", type=Path, help="a markdown file appended under the tables")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows_def = [r for r in ROWS[args.protocol] if not args.rows or r[0] in args.rows.split(",")]
    base = Path(args.runs_dir) / args.protocol
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    missing = []
    for label, preset, overrides in rows_def:
        for s in seeds:
            out = base / label / f"seed{s}"
            if args.train and not (out / "summary.json").exists():
                train(preset, overrides, s, out, args.data_root, args.threads)
            if (out / "summary.json").exists():
                runs.setdefault(label, {})[s] = load_run(out)
            else:
                missing.append(f"{label} seed {s}")
    if not runs:
        print("no finished runs")
        return 1
    any_run = next(iter(next(iter(runs.values())).values()))
    lb_counts = any_run["data"]["lb_counts"]
    n_cls = len(lb_counts)
    prior = [n / sum(lb_counts) for n in lb_counts]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = cpu_facts()  # the library's own reading of the CPU model and its bf16 / AVX flags
    cpu = f"{facts['cpu']} (flags {', '.join(facts['cpu_flags']) or 'none of interest'})"
    lines = [
        f"# DyTrim's labeled pruning rule: reference vs options ({args.protocol})",
        "",
        f"- command: `python {shlex.join(sys.argv)}` (trains with `OMP_NUM_THREADS={args.threads}` and "
        f"`--set train.threads={args.threads}`, one run at a time)",
        f"- CPU: {cpu}; tabulated {date}",
        "- EMA model, final evaluation on the whole test set. Mean ± std over the seeds listed (same seeds in every "
        "row: seeds are paired). Debiased = CDMAD's z(x) − z(I) at test.",
        f"- labeled counts N_c: {lb_counts}; labeled prior: {fmt(prior)}",
        "",
        "Rows (overrides on top of the preset; the rule keys are always explicit):",
        "",
    ]
    for label, preset, overrides in rows_def:
        lines.append(f"- `{label}`: `--preset {preset} " + " ".join(f"--set {o}" for o in overrides) + "`")
    lines += ["", "## Accuracy", "",
              "| row | seeds | bACC | GM | bACC debiased | GM debiased | few (raw) | few (debiased) | "
              "recall of the rarest class (raw / debiased) |",
              "|---|---|---|---|---|---|---|---|---|"]
    record: dict[str, Any] = {"protocol": args.protocol, "date": date, "cpu": cpu, "lb_counts": lb_counts,
                              "rows": {}}
    for label, _, _ in rows_def:
        rs = runs.get(label, {})
        if not rs:
            continue
        fin = [r["final"] for r in rs.values()]

        def col(key: str, fin: list[dict[str, Any]] = fin) -> list[float]:
            return [f[key] for f in fin if key in f]

        tail_raw = [f["per_class_recall"][-1] for f in fin]
        tail_deb = [f["per_class_recall_debiased"][-1] for f in fin if "per_class_recall_debiased" in f]
        lines.append(
            f"| {label} | {','.join(map(str, rs))} | {ms(col('bacc'))} | {ms(col('gm'))} | "
            f"{ms(col('bacc_debiased'))} | {ms(col('gm_debiased'))} | {ms(col('few'))} | {ms(col('few_debiased'))} | "
            f"{ms(tail_raw)} / {ms(tail_deb)} |"
        )
        record["rows"][label] = {
            str(s): {k: r["final"].get(k) for k in ("bacc", "gm", "bacc_debiased", "gm_debiased", "few",
                                                      "few_debiased", "per_class_recall", "per_class_recall_debiased")}
            | {"wall_s": r["summary"].get("wall_s")}
            for s, r in rs.items()
        }
    lines += ["", "## Every seed (bACC raw / debiased, %)", "",
              "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for label, _, _ in rows_def:
        rs = runs.get(label, {})
        cells = [f"{100 * rs[s]['final']['bacc']:.1f}" + (f" / {100 * rs[s]['final']['bacc_debiased']:.1f}"
                                                          if "bacc_debiased" in rs[s]["final"] else "")
                 if s in rs else "–" for s in seeds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ref = runs.get(args.reference, {})
    if ref:
        lines += ["", f"## Paired differences against `{args.reference}` (row − reference, same seed)", "",
                  "| row | seeds | Δ bACC | Δ GM | Δ bACC debiased | Δ GM debiased | per seed Δ bACC debiased |",
                  "|---|---|---|---|---|---|---|"]
        for label, _, _ in rows_def:
            rs = runs.get(label, {})
            both = [s for s in rs if s in ref]
            if label == args.reference or not both:
                continue

            def d(key: str, both: list[int] = both, rs: dict[int, Any] = rs) -> list[float]:
                return [rs[s]["final"][key] - ref[s]["final"][key] for s in both
                        if key in rs[s]["final"] and key in ref[s]["final"]]

            per = ", ".join(f"{100 * x:+.1f}" for x in d("bacc_debiased"))
            lines.append(f"| {label} | {','.join(map(str, both))} | {ms(d('bacc'))} | {ms(d('gm'))} | "
                         f"{ms(d('bacc_debiased'))} | {ms(d('gm_debiased'))} | {per or '–'} |")
    lines += ["", "## Per-class recall (final, mean over seeds, %; raw / debiased)", "",
              "| row | " + " | ".join(f"c{c} (N={n})" for c, n in enumerate(lb_counts)) + " |",
              "|---|" + "---|" * n_cls]
    for label, _, _ in rows_def:
        rs = runs.get(label, {})
        if not rs:
            continue
        raw = mean_vec([r["final"]["per_class_recall"] for r in rs.values()])
        deb = mean_vec([r["final"]["per_class_recall_debiased"] for r in rs.values()
                        if "per_class_recall_debiased" in r["final"]])
        cells = [f"{100 * a:.0f}" + (f" / {100 * b:.0f}" if deb else "") for a, b in
                 zip(raw, deb or raw, strict=True)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    # kept counts and what pi_theta(I) tracks
    dy_rows = [label for label, _, _ in rows_def
               if any("pruning" in r["rows"][-1] for r in runs.get(label, {}).values())]
    if dy_rows:
        lines += ["", "## Labeled images kept per class in the last pruned pass (before annealing; mean over seeds)",
                  "", "| row | " + " | ".join(f"c{c} (N={n})" for c, n in enumerate(lb_counts)) + " | total |",
                  "|---|" + "---|" * (n_cls + 1)]
        for label in dy_rows:
            lps = [last_pruned(r["rows"]) for r in runs[label].values()]
            kept = mean_vec([lp["pruning"]["kept_lb_per_class"] for lp in lps if lp])
            mins = [min(lp["pruning"]["kept_lb_per_class"]) for lp in lps if lp]
            lines.append(f"| {label} | " + " | ".join(f"{k:.1f}" for k in kept) +
                         f" | {sum(kept):.0f} (fewest in a class, any seed: {min(mins) if mins else '–'}) |")
        lines += ["", "## What π_θ(I) tracks", "",
                  "π_θ(I) = softmax z(I) of the training-mode student (the value the rule reads, `pruning.pi_I`), the "
                  "class shares of the masked pseudo-labels trained on since the previous evaluation "
                  "(`pruning.pseudo_dist`), and the labeled prior; mean over seeds and over the evaluations after "
                  "the debias start and before annealing. TV = total variation distance.",
                  "", "| row | π_θ(I) (classes 0…C−1) | pseudo-label shares | TV(π, prior) | TV(π, pseudo) | "
                  "TV(pseudo, prior) | π_θ(I)_0 / prior_0 | r_c used, class 0 |",
                  "|---|---|---|---|---|---|---|---|"]
        for label in dy_rows:
            pis, pss, rcs = [], [], []
            for r in runs[label].values():
                start = r["rows"][0].get("step", 0)
                for row in r["rows"]:
                    p = row.get("pruning")
                    if not p or p["annealed"] or row["step"] <= start or "pseudo_dist" not in p:
                        continue
                    pis.append(p["pi_I"])
                    pss.append(p["pseudo_dist"])
                    rcs.append(p["r_c"])
            if not pis:
                continue
            pi, ps, rc = mean_vec(pis), mean_vec(pss), mean_vec(rcs)
            tv_pp = statistics.fmean(tv(a, prior) for a in pis)
            tv_ps = statistics.fmean(tv(a, b) for a, b in zip(pis, pss, strict=True))
            tv_sp = statistics.fmean(tv(b, prior) for b in pss)
            labeled = any(r["cfg"]["prune"]["labeled"] for r in runs[label].values())
            lines.append(f"| {label} | {fmt(pi, 3)} | {fmt(ps, 3)} | {tv_pp:.3f} | {tv_ps:.3f} | {tv_sp:.3f} | "
                         f"{pi[0] / prior[0]:.2f} | {f'{rc[0]:.3f}' if labeled else '– (no labeled pruning)'} |")
            record["rows"].setdefault(label, {})["pi_tracking"] = {
                "pi_I_mean": pi, "pseudo_mean": ps, "r_c_mean": rc, "tv_pi_prior": tv_pp, "tv_pi_pseudo": tv_ps,
                "tv_pseudo_prior": tv_sp}
        probe = []
        for label, _, _ in rows_def:
            rs = runs.get(label, {})
            key = "prior_baseline_trainmode"
            v = [r["final"][key] for r in rs.values() if r["final"].get(key)]
            if v:
                pv = mean_vec(v)
                probe.append(f"| {label} | {fmt(pv, 3)} | {tv(pv, prior):.3f} |")
        if probe:
            lines += ["", "End of training, every row: the EMA model's π_θ(I) in train-mode BN "
                      "(`prior_baseline_trainmode`)",
                      "", "| row | π_θ(I) of the EMA model | TV to the labeled prior |", "|---|---|---|", *probe]
        plot(runs, dy_rows, prior, lb_counts, args.protocol)
        lines += ["", f"![π_θ(I) vs prior](prune-rules-{args.protocol}-pi.png)", "",
                  f"![kept per class](prune-rules-{args.protocol}-kept.png)"]
    if missing:
        lines += ["", f"Not run (not in the tables): {', '.join(missing)}."]
    lines += ["", "Per run: wall seconds", "", "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for label, _, _ in rows_def:
        rs = runs.get(label, {})
        lines.append(f"| {label} | " + " | ".join(f"{rs[s]['summary'].get('wall_s', 0):.0f}" if s in rs else "–"
                                                 for s in seeds) + " |")
    write_results(f"prune-rules-{args.protocol}", lines, record, args.notes)
    return 0


def plot(runs: dict[str, dict[int, dict[str, Any]]], labels: list[str], prior: list[float], lb_counts: list[int],
         protocol: str) -> None:
    """Per class: pi_theta(I)_c (the rule's input) and r_c used for each DyTrim row, the pseudo-label share, the
    labeled prior; mean over seeds at each evaluation. And the kept fraction of each class over training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cls = len(prior)
    colours = plt.get_cmap("tab10")

    def series(label: str, key: str) -> tuple[list[int], list[list[float]]]:
        by_step: dict[int, list[list[float]]] = {}
        for r in runs[label].values():
            for row in r["rows"]:
                p = row.get("pruning")
                if p and key in p:
                    by_step.setdefault(row["step"], []).append(p[key])
        steps = sorted(by_step)
        return steps, [mean_vec(by_step[s]) for s in steps]

    fig, axes = plt.subplots(2, (n_cls + 1) // 2, figsize=(3.2 * ((n_cls + 1) // 2), 6.4), squeeze=False)
    for c in range(n_cls):
        ax = axes[c // ((n_cls + 1) // 2)][c % ((n_cls + 1) // 2)]
        for i, label in enumerate(labels):
            st, v = series(label, "pi_I")
            ax.plot(st, [x[c] for x in v], color=colours(i), label=f"π_θ(I): {label}" if c == 0 else None)
            st, v = series(label, "r_c")
            ax.plot(st, [x[c] for x in v], color=colours(i), ls="--", lw=1,
                    label=f"r_c used: {label}" if c == 0 else None)
        st, v = series(labels[0], "pseudo_dist")
        ax.plot(st, [x[c] for x in v], color="k", ls=":", label=f"pseudo-label share ({labels[0]})" if c == 0 else None)
        ax.axhline(prior[c], color="grey", lw=2, alpha=0.6, label="labeled prior" if c == 0 else None)
        ax.set_title(f"class {c} (N_c = {lb_counts[c]})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.legend(loc="lower center", ncol=3, fontsize=7)
    fig.suptitle(f"{protocol}: π_θ(I)_c (solid), r_c used by the rule (dashed), pseudo-label share (dotted), "
                 "labeled prior (grey); mean over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(RESULTS / f"prune-rules-{protocol}-pi.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.4), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=True):
        st, v = series(label, "kept_lb_per_class")
        for c in range(n_cls):
            colour = plt.get_cmap("viridis")(c / max(1, n_cls - 1))
            ax.plot(st, [100 * x[c] / max(1, lb_counts[c]) for x in v], color=colour, label=f"{c} ({lb_counts[c]})")
        ax.set_title(label, fontsize=9)
        ax.set_ylim(-3, 105)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("labeled kept, % of N_c")
    axes[0][0].legend(fontsize=6, ncol=2, title="class (N_c)", title_fontsize=6)
    fig.tight_layout()
    fig.savefig(RESULTS / f"prune-rules-{protocol}-kept.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
