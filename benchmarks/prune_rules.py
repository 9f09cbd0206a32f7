"""DyTrim's labeled pruning rule, the reference against the options beside it: the analysis of a swept table.

    dytrim sweep benchmarks/tables/prune-rules-mnist.yaml --out SWEEP --procs 1 --threads 1 \
        --set data.root=../shared/data
    python benchmarks/prune_rules.py benchmarks/tables/prune-rules-mnist.yaml --out SWEEP [--reference ROW] \
        [--notes FILE] [--name NAME] [--results-dir DIR]

The rows (preset + overrides, the rule keys always explicit) are the table file's (benchmarks/tables/); `dytrim
sweep` trains them, this script only reads the finished cells (a cell not done is listed as missing, never
averaged). Writes <results-dir>/<name>.md (name: the table's), a JSON twin and the plots <name>-pi.png
(pi_theta(I)_c, r_c, labeled prior and pseudo-label shares over training) and <name>-kept.png (labeled images
kept per class).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml
from results_file import RESULTS

from dytrim.config import load_config
from dytrim.engine.accel import cpu_facts
from dytrim.engine.metrics_log import read_rows
from dytrim.sweep import state
from dytrim.sweep.table import Table, TableError, load_table

Runs = dict[str, dict[int, dict[str, Any]]]  # row -> seed -> load_run(...)


def load_run(out: Path) -> dict[str, Any]:
    """A finished run: its evaluations, final evaluation, summary, data counts and config."""
    rows = read_rows(out / "metrics.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    data = json.loads((out / "data.json").read_text())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    return {"rows": rows, "final": summary.get("full_test", rows[-1]), "summary": summary, "data": data, "cfg": cfg,
            "dir": out}


def load_cells(table: Table, out: Path) -> tuple[Runs, list[str]]:
    """The finished cells by row and seed, and the others named (row, seed, state)."""
    runs: Runs = {}
    missing = []
    for cell in table.cells:
        d = state.cell_dir(out, cell)
        st = state.classify(d)
        # a cell extended (or cut short) by `dytrim train --resume --set train.steps=...` is not the table's run
        want = load_config(cell.preset, [f"{k}={v}" for k, v in cell.overrides]).train.steps
        if st.state == "done" and st.steps == want:
            runs.setdefault(cell.row, {})[cell.seed] = load_run(d)
        else:
            why = f"done with {st.steps} steps, the table asks {want}" if st.state == "done" else st.state
            missing.append(f"{cell.row} seed {cell.seed} ({why})")
    return runs, missing


def max_parallel(dirs: list[Path]) -> int:
    """The most runs that trained at once (from the cells' attempts.jsonl)."""
    events = sorted((t, step) for d in dirs for a in state.attempts(d) for t, step in ((a["start"], 1), (a["end"], -1)))
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def sweep_command(table: Table, out: Path, runs: Runs) -> str:
    """The `dytrim sweep` command the cells were trained with (procs, threads and data root read back from them)."""
    done = [r for rs in runs.values() for r in rs.values()]
    threads = ",".join(sorted({str(r["cfg"]["train"]["threads"]) for r in done}))
    roots = ",".join(sorted({str(r["cfg"]["data"]["root"]) for r in done}))
    procs = max_parallel([r["dir"] for r in done])
    return f"dytrim sweep {table.path} --out {out} --procs {procs} --threads {threads} --set data.root={roots}"


def write_results(folder: Path, name: str, lines: list[str], record: Any, notes: Path | None) -> None:
    """<folder>/<name>.md (+ the notes) and <name>.json; prints the markdown."""
    if notes:
        lines = [*lines, "", notes.read_text().strip()]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    (folder / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print("\n".join(lines))


def ms(values: list[float], scale: float = 100.0, nd: int = 1) -> str:
    """Mean ± std of the values (scaled), or the one value with its seed count."""
    if not values:
        return "–"
    m = scale * statistics.fmean(values)
    if len(values) == 1:
        return f"{m:.{nd}f} (1 seed)"
    return f"{m:.{nd}f} ± {scale * statistics.stdev(values):.{nd}f}"


def fmt(v: list[float], nd: int = 3) -> str:
    """A vector as a / b / c."""
    return " / ".join(f"{x:.{nd}f}" for x in v)


def mean_vec(vs: list[list[float]]) -> list[float]:
    """The element-wise mean of equal-length vectors (empty for none)."""
    return [statistics.fmean(col) for col in zip(*vs, strict=True)] if vs else []


def last_pruned(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The last evaluation row before annealing (kept counts of the final pruned pass)."""
    rs = [r for r in rows if "pruning" in r and not r["pruning"]["annealed"]]
    return rs[-1] if rs else None


def tv(a: list[float], b: list[float]) -> float:
    """Total variation distance of two distributions."""
    return 0.5 * sum(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> int:
    """Read the table's finished cells and write the tables and plots."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", type=Path, help="the table file the sweep ran (benchmarks/tables/prune-rules-*.yaml)")
    ap.add_argument("--out", type=Path, required=True, help="the sweep directory (`dytrim sweep TABLE --out`)")
    ap.add_argument("--reference", default="dytrim-reference", help="row the paired differences are taken against")
    ap.add_argument("--notes", type=Path, help="a markdown file appended under the tables")
    ap.add_argument("--name", help="name of the results files (default: the table's name)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="where they go (default: benchmarks/results)")
    args = ap.parse_args()
    try:
        table = load_table(args.table)
    except TableError as exc:
        print(exc, file=sys.stderr)
        return 2
    if len(table.columns) != 1:
        print(f"{args.table}: one column expected, not {len(table.columns)}", file=sys.stderr)
        return 2
    name, seeds, row_names = args.name or table.name, table.seeds, table.rows
    runs, missing = load_cells(table, args.out)
    if not runs:
        print(f"no finished cells in {args.out} ({len(missing)} not done)")
        return 1
    args.results_dir.mkdir(parents=True, exist_ok=True)
    any_run = next(iter(next(iter(runs.values())).values()))
    lb_counts = any_run["data"]["lb_counts"]
    n_cls = len(lb_counts)
    prior = [n / sum(lb_counts) for n in lb_counts]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    facts = cpu_facts()  # the library's own reading of the CPU model and its bf16 / AVX flags
    cpu = f"{facts['cpu']} (flags {', '.join(facts['cpu_flags']) or 'none of interest'})"
    lines = [
        f"# {table.title}",
        "",
        f"- commands: `{sweep_command(table, args.out, runs)}` (`--procs`, `--threads` and `data.root` read back "
        f"from the cells), then `python {shlex.join(sys.argv)}`",
        f"- CPU: {cpu}; tabulated {date}",
        "- EMA model, final evaluation on the whole test set. Mean ± std over the seeds listed (same seeds in every "
        "row: seeds are paired). Debiased = CDMAD's z(x) − z(I) at test.",
        f"- labeled counts N_c: {lb_counts}; labeled prior: {fmt(prior)}",
        *([f"- {table.notes}"] if table.notes else []),
        "",
        f"Rows of {table.path} (overrides on top of the preset; the rule keys are always explicit):",
        "",
    ]
    for label in row_names:
        cell = next(c for c in table.cells if c.row == label)
        lines.append(f"- `{label}`: `--preset {cell.preset} " + " ".join(f"--set {k}={v}" for k, v in cell.overrides)
                     + "`")
    lines += ["", "## Accuracy", "",
              "| row | seeds | bACC | GM | bACC debiased | GM debiased | few (raw) | few (debiased) | "
              "recall of the rarest class (raw / debiased) |",
              "|---|---|---|---|---|---|---|---|---|"]
    record: dict[str, Any] = {"table": table.name, "file": str(table.path), "sweep": str(args.out), "date": date,
                              "cpu": cpu, "lb_counts": lb_counts, "missing": missing, "rows": {}}
    for label in row_names:
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
            | {"wall_s": r["summary"].get("wall_s"), "cell": r["dir"].name}
            for s, r in rs.items()
        }
    lines += ["", "## Every seed (bACC raw / debiased, %)", "",
              "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for label in row_names:
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
        for label in row_names:
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
    for label in row_names:
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
    dy_rows = [label for label in row_names
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
        for label in row_names:
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
        plot(runs, dy_rows, prior, lb_counts, args.results_dir, name)
        lines += ["", f"![π_θ(I) vs prior]({name}-pi.png)", "", f"![kept per class]({name}-kept.png)"]
    if missing:
        lines += ["", f"Missing (not done, not in the tables): {', '.join(missing)}."]
    lines += ["", "Per run: wall seconds", "", "| row | " + " | ".join(f"seed {s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for label in row_names:
        rs = runs.get(label, {})
        lines.append(f"| {label} | " + " | ".join(f"{rs[s]['summary'].get('wall_s', 0):.0f}" if s in rs else "–"
                                                 for s in seeds) + " |")
    write_results(args.results_dir, name, lines, record, args.notes)
    return 0


def plot(runs: Runs, labels: list[str], prior: list[float], lb_counts: list[int], folder: Path, name: str) -> None:
    """<name>-pi.png: pi_theta(I)_c, r_c, pseudo-label share and prior per class; <name>-kept.png: kept per class."""
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
    fig.suptitle(f"{name}: π_θ(I)_c (solid), r_c used by the rule (dashed), pseudo-label share (dotted), "
                 "labeled prior (grey); mean over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    fig.savefig(folder / f"{name}-pi.png", dpi=100)
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
    fig.savefig(folder / f"{name}-kept.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
