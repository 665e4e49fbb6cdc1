"""The units of the CSVs the harness writes, stated once (issue 35: a CSV column says its unit).

Two kinds of CSV, two conventions:

* The raw per-experience record, a run folder's ``parts/*.csv`` and ``per_task.csv``, holds what Avalanche's
  metrics return: accuracies as **fractions** in [0, 1] (``acc_seen``, ``acc_exp_<j>``, ``aaa_avalanche``,
  ``forgetting_avalanche``, ``bwt_avalanche``). It is the resume state: :mod:`benchmarks.resume` and
  :mod:`benchmarks.folder_checks` check its columns, every command reads it back, and Avalanche's own values go
  into it unconverted, so its names and units stay Avalanche's.
* Every **derived** report CSV (a run folder's ``summary.csv``, a class-order report's ``orders.csv``,
  ``orders_summary.csv``, ``paired.csv`` and ``paired_summary.csv``, tuning's ``candidates.csv``, a study's
  ``runs.csv``, ``cells.csv`` and ``unfinished.csv``, a machine-drift report's ``pairs.csv``, ``curves.csv`` and
  ``summary.csv``, a findings folder's ``f1b_*.csv`` and ``f3_*.csv``) is in the
  units its ``table.md`` or README shows, and each column's name ends with its unit:

  - ``_pct``: percent, 0-100 (Acc, AAA, forgetting, BWT, a validation accuracy, their means and sample stds);
  - ``_pts``: percentage points, a difference of two percentages (a paired difference, its mean and std);
  - ``_seconds``: seconds of wall time; ``_params``: a number of parameters (``trainable_params``,
    ``stored_params``); ``n_``: a count.

The computations work in fractions; :func:`in_file_units` converts (times 100, rounded to 10 decimals) and renames when a table is written,
the one place that does, from the one list of accuracy-like columns below. (The findings' summaries, verdicts and
README are computed from their measurement CSVs, so in percent from the start, under names that say so.)
"""

from __future__ import annotations

import pandas as pd

PERCENT = "_pct"
POINTS = "_pts"
DECIMALS = 10  # of a percent or a point in a derived CSV (in_percent)

# Accuracy-like columns of the derived tables, as the computations name them (fractions in [0, 1]).
FRACTIONS: tuple[str, ...] = (
    "acc", "aaa", "forgetting", "bwt",  # one run (orders.csv, a study's runs.csv)
    "acc_mean", "acc_std", "aaa_mean", "aaa_std", "forgetting_mean", "forgetting_std",  # over seeds or orders
    "acc_reference", "acc_method", "aaa_reference", "aaa_method", "forgetting_reference", "forgetting_method",
    "acc_seen_mean", "acc_seen_std",  # a study's unfinished cells
    "val_acc", "val_mean_acc",  # tuning's validation scores
    "acc_seen", "accuracy",  # the findings' rows per experience (f1b_per_task.csv) and path point (f3_interpolation)
    "own_prompt", "own_prompt_mean",  # DualPrompt's test images given their own task's E-prompt (class-order report)
    "acc_other",  # the same run's Acc on another machine (machine_drift's pairs.csv)
)
# Differences of two such columns (paired.csv, paired_summary.csv): percentage points once written.
DIFFERENCES: tuple[str, ...] = ("acc_diff", "aaa_diff", "forgetting_diff", "acc_diff_mean", "acc_diff_std",
                                "aaa_diff_mean", "aaa_diff_std",
                                "acc_diff_bound",  # twice a paired difference's standard error on its test images
                                "acc_diff_abs_mean", "largest_gap")  # machine_drift: mean |diff|, largest per-task gap
# The derived tables, by file name (what python -m benchmarks.migrate rewrites); never per_task.csv nor a part.
DERIVED_CSVS: tuple[str, ...] = ("summary.csv", "orders.csv", "orders_summary.csv", "paired.csv",
                                 "paired_summary.csv", "candidates.csv", "runs.csv", "cells.csv", "unfinished.csv",
                                 "pairs.csv", "curves.csv")
# A findings folder's measurements; its summaries, verdicts and README are computed from them (in percent).
FINDINGS_CSVS: tuple[str, ...] = ("f1b_runs.csv", "f1b_per_task.csv", "f3_interpolation.csv")


def file_name(column: str) -> str:
    """The name a computed column has in a derived CSV: its unit appended to an accuracy-like one."""
    if column in FRACTIONS:
        return column + PERCENT
    if column in DIFFERENCES:
        return column + POINTS
    return column


def in_file_units(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` as its CSV holds it: every accuracy-like column (fractions) times 100 under :func:`file_name`
    (``acc_mean`` -> ``acc_mean_pct``, ``acc_diff`` -> ``acc_diff_pts``); the other columns and the order kept."""
    out = table.copy()
    for column in table.columns:
        if file_name(column) != column:
            out[column] = in_percent(table[column].astype(float))
    return out.rename(columns=file_name)


def in_computed_units(table: pd.DataFrame) -> pd.DataFrame:
    """The inverse of :func:`in_file_units`: a derived CSV read back as the computations name and hold it (what a
    command that summarises committed reports starts from, so it formats cells exactly as the report did)."""
    back = {file_name(c): c for c in (*FRACTIONS, *DIFFERENCES)}
    out = table.rename(columns=back)
    for column in out.columns:
        if column in back.values():
            out[column] = out[column].astype(float) / 100
    return out


def percent(fraction: float) -> float:
    """``fraction`` times 100, rounded to 10 decimals: 0.839 * 100 is 83.89999999999999 in float64, a tail that
    says nothing (test-set accuracies are counts over at most 10^5 images) and that a reader would copy."""
    return round(100 * float(fraction), DECIMALS)


def in_percent(fractions: pd.Series) -> pd.Series:
    """:func:`percent` of every cell (NaN stays NaN)."""
    return fractions.map(percent)

