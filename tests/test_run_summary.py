"""The end-of-run table and the summary statistics say what they are: percentages with one decimal, raw and
debiased, and the mean over the last min(20, n) evaluations with n recorded."""

from __future__ import annotations

from dytrim.engine.runlog import format_summary, summarize


def _rows(n: int, debiased: bool) -> list[dict]:
    rows = []
    for i in range(n):
        r = {"step": 100 * (i + 1), "acc": 0.1 * (i + 1), "bacc": 0.1 * (i + 1), "gm": 0.05 * (i + 1),
             "many": 0.9, "medium": 0.5, "few": 0.1 * i}
        if debiased:
            r |= {"bacc_debiased": 0.1 * (i + 1) + 0.05}
        rows.append(r)
    return rows


def test_short_run_mean_counts_every_evaluation_and_says_so() -> None:
    s = summarize(_rows(8, False), 12.0, 800)
    assert s["bacc"]["n_last"] == 8 and abs(s["bacc"]["mean_last20"] - 0.45) < 1e-12
    s = summarize(_rows(25, False), 12.0, 2500)
    assert s["bacc"]["n_last"] == 20 and abs(s["bacc"]["mean_last20"] - sum(0.1 * i for i in range(6, 26)) / 20) < 1e-9


def test_end_of_run_table_in_percent_with_debiased_rows() -> None:
    s = summarize(_rows(8, True), 61.7, 800)
    text = format_summary(s, "runs/x")
    assert "bACC                             80.0   80.0                  45.0" in text
    assert "bACC, debiased                   85.0   85.0                  50.0" in text
    assert "mean of last 8 evals" in text and "many / medium / few: 90.0 / 50.0 / 70.0 (last evaluation)" in text
    final = text.split("\n\n")[1].splitlines()  # the headline: the final model, raw and debiased
    assert final[0].split()[-2:] == ["raw", "debiased"] and final[2].split() == ["bACC", "80.0", "85.0"]
    assert text.splitlines()[-1] == "800 steps in 62 s; everything is in runs/x (summary.json: fractions to 6 decimals)"
    assert "0.6739999" not in text and "{" not in text
