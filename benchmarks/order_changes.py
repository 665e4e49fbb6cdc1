"""What changed between two class-order reports: the small budget against the tuned full-data comparison.

A reader of two tables has to line them up to see which conclusions moved; this does it once, from the reports'
CSVs (``orders_summary.csv`` and ``paired_summary.csv`` of :mod:`benchmarks.orders`, in percent and points), so the
comparison stays current as runs land. Per method both tables hold: its accuracy, its rank among those methods, its
recipe, and the reference's paired difference with a verdict, "ahead" (the reference wins on every order both
finished), "behind" (on none, no tie) or "split"; a verdict that differs between the tables is a changed conclusion.
:mod:`benchmarks.headline` writes the table into docs/results.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .reports import markdown_grid


def _read(report: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    summary = pd.read_csv(report / "orders_summary.csv").set_index("method")
    path = report / "paired_summary.csv"
    if not path.read_text().strip():  # the reference alone: no pairs, and pandas reads no columns
        return summary, pd.DataFrame()
    pairs = pd.read_csv(path)
    return summary, pairs.set_index("method") if len(pairs) else pairs


def verdict(pair: pd.Series | None) -> str | None:
    """The reference against a method over the orders both finished: ahead, behind, split (None: none finished)."""
    if pair is None or int(pair["acc_orders"]) == 0:
        return None
    n, wins, ties = int(pair["acc_orders"]), int(pair["acc_wins"]), int(pair["acc_ties"])
    return "ahead" if wins == n else "behind" if wins == 0 and ties == 0 else "split"


def _acc(s: pd.Series) -> str:
    if pd.isna(s["acc_mean_pct"]):
        return "n/a"
    return f"{s['acc_mean_pct']:.2f}" + ("" if pd.isna(s["acc_std_pct"]) else f" ± {s['acc_std_pct']:.2f}")


def _diff(pair: pd.Series | None) -> str:
    if pair is None or int(pair["acc_orders"]) == 0:
        return "–"
    std = "" if pd.isna(pair["acc_diff_std_pts"]) else f" ± {pair['acc_diff_std_pts']:.2f}"
    return f"{pair['acc_diff_mean_pts']:+.2f}{std} ({int(pair['acc_wins'])} of {int(pair['acc_orders'])})"


def _ranks(summary: pd.DataFrame, methods: list[str]) -> dict[str, int]:
    """1 for the best mean accuracy among ``methods`` (ties keep the table's order)."""
    ordered = summary.loc[methods, "acc_mean_pct"].sort_values(ascending=False, kind="stable")
    return {m: k + 1 for k, m in enumerate(ordered.index)}


def changes(before: str | Path, after: str | Path, before_name: str, after_name: str) -> str:
    """The markdown table of every method both reports hold, in ``after``'s order, with the text that reads it."""
    (s0, p0), (s1, p1) = _read(Path(before)), _read(Path(after))
    reference = {r for p in (p0, p1) for r in (p["reference"] if len(p) else [])}
    if len(reference) > 1:
        raise SystemExit(f"error: {before} and {after} take different reference methods ({', '.join(sorted(reference))});"
                         " write both with the same --reference")
    ref = reference.pop() if reference else "sdlora"
    both = [m for m in s1.sort_values("acc_mean_pct", ascending=False, na_position="last").index if m in s0.index]
    # ranks among the methods finished in both tables, so that a rank moves only with the methods' own accuracies
    ranked = [m for m in both if not (pd.isna(s0.loc[m, "acc_mean_pct"]) or pd.isna(s1.loc[m, "acc_mean_pct"]))]
    ranks0, ranks1 = _ranks(s0, ranked), _ranks(s1, ranked)
    rows, changed = [], []
    for m in both:
        q0 = p0.loc[m] if m in p0.index else None
        q1 = p1.loc[m] if m in p1.index else None
        v0, v1 = verdict(q0), verdict(q1)
        if m == ref:
            moved = "(reference)"
        elif v0 is None or v1 is None:
            moved = "not yet: no finished run on both"
        else:
            moved = f"{v0} → {v1}" + (" (changed)" if v0 != v1 else "")
            if v0 != v1:
                changed.append(m)
        rows.append([m, _acc(s0.loc[m]), str(ranks0.get(m, "–")), s0.loc[m, "recipe"], _acc(s1.loc[m]),
                     str(ranks1.get(m, "–")), s1.loc[m, "recipe"], _diff(q0), _diff(q1), moved])
    head = ["method", f"Acc (%), {before_name}", "rank", "recipe", f"Acc (%), {after_name}", "rank", "recipe",
            f"{ref} minus it, {before_name}", f"{ref} minus it, {after_name}", f"{ref}'s verdict"]
    text = (f"Every method both tables hold ({len(both)}), in the order of the {after_name} table: accuracy over the "
            f"class orders each finished (mean ± sample std), its rank among the {len(ranked)} methods with a "
            f"finished run in both, its recipe; {ref} minus "
            f"it in points on the same orders (mean ± std, and on how many orders {ref} is ahead); the verdict is "
            f"\"ahead\" where {ref} wins on every order both finished, \"behind\" where it wins on none, else "
            "\"split\". A verdict over one order is a single run, not yet a finding.")
    summary = (f"Conclusions that changed ({len(changed)}): {', '.join(changed)}." if changed
               else "No verdict changed.")
    return text + "\n\n" + markdown_grid(head, rows).rstrip("\n") + "\n\n" + summary + "\n"
