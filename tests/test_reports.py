"""The summary table: mean and sample std over seeds, and no made-up std for a single seed."""

import numpy as np
import pandas as pd
import pytest

from benchmarks.reports import markdown_table, summarize
from benchmarks.units import in_file_units, percent


def _rows(method: str, seed: int, accs: list[float]) -> list[dict]:
    n = len(accs)
    rows = []
    for i, a in enumerate(accs):
        row = {"method": method, "seed": seed, "experience": i, "n_experiences": n, "acc_seen": a,
               "trainable_params": 10, "stored_params": 20 + i, "train_seconds": 1.0, "eval_seconds": 0.5}
        row.update({f"acc_exp_{j}": (a if j <= i else np.nan) for j in range(n)})
        rows.append(row)
    return rows


def test_summary_uses_sample_std_and_table_omits_std_of_one_seed():
    per_task = pd.DataFrame(_rows("a", 0, [0.9, 0.6]) + _rows("a", 1, [0.8, 0.5]) + _rows("b", 0, [0.7, 0.4]))
    s = summarize(per_task).set_index("method")
    assert s.loc["a", "acc_mean"] == pytest.approx(0.55)
    assert s.loc["a", "acc_std"] == pytest.approx(np.std([0.6, 0.5], ddof=1))
    assert s.loc["a", "aaa_mean"] == pytest.approx(np.mean([0.75, 0.65]))
    assert np.isnan(s.loc["b", "acc_std"]) and s.loc["b", "n_seeds"] == 1
    table = markdown_table(in_file_units(summarize(per_task)))
    assert "| a | 55.00 ± 7.07 | 70.00 ± 7.07 |" in table
    assert "| b | 40.00 | 55.00 |" in table


def test_a_stopped_seed_is_counted_not_averaged_and_a_method_with_none_finished_still_shows():
    stopped = _rows("a", 2, [0.9, 0.6, 0.4])[:2]  # diverged before its last experience
    stopped = [{**r, "n_experiences": 3} for r in stopped]
    per_task = pd.DataFrame(_rows("a", 0, [0.9, 0.6, 0.3]) + _rows("a", 1, [0.8, 0.5, 0.5]) + stopped
                            + [{**r, "n_experiences": 3} for r in _rows("c", 0, [0.9, 0.1, 0.1])[:1]])
    s = summarize(per_task).set_index("method")
    assert s.loc["a", "acc_mean"] == pytest.approx(0.4) and s.loc["a", "n_seeds"] == 2
    assert s.loc["a", "n_unfinished"] == 1
    assert s.loc["c", "n_seeds"] == 0 and s.loc["c", "n_unfinished"] == 1 and np.isnan(s.loc["c", "acc_mean"])
    table = markdown_table(in_file_units(summarize(per_task)))
    assert "| a | 40.00 ± 14.14 |" in table and "| 2 (+1 unfinished) |" in table
    assert "| c | n/a | n/a | n/a | n/a | 10 | 20 | n/a | 0 (+1 unfinished) |" in table


def test_summary_csv_holds_in_percent_under_pct_names_the_fractions_summarize_computes(tmp_path):
    """summary.csv's accuracy-like columns say their unit and hold 100 x the fractions computed (by hand: Acc of
    seeds 0 and 1 is 0.6 and 0.5, AAA 0.75 and 0.65, forgetting 0.3 and 0.3, BWT -0.3 and -0.3); costs unchanged."""
    from benchmarks.reports import write_reports

    per_task = pd.DataFrame(_rows("a", 0, [0.9, 0.6]) + _rows("a", 1, [0.8, 0.5]))
    write_reports(per_task, tmp_path)
    written = pd.read_csv(tmp_path / "summary.csv", float_precision="round_trip").set_index("method")
    assert list(written.columns) == ["acc_mean_pct", "acc_std_pct", "aaa_mean_pct", "aaa_std_pct", "forgetting_pct",
                                     "bwt_pct", "trainable_params", "stored_params", "train_seconds", "eval_seconds",
                                     "n_seeds", "n_unfinished"]
    row = written.loc["a"]
    assert row["acc_mean_pct"] == pytest.approx(55.0)
    assert row["acc_std_pct"] == pytest.approx(100 * np.std([0.6, 0.5], ddof=1))
    assert row["aaa_mean_pct"] == pytest.approx(70.0)
    assert row["aaa_std_pct"] == pytest.approx(100 * np.std([0.75, 0.65], ddof=1))
    assert row["forgetting_pct"] == pytest.approx(30.0) and row["bwt_pct"] == pytest.approx(-30.0)
    assert (row["stored_params"], row["train_seconds"], row["n_seeds"]) == (21, 2.0, 2)
    computed = summarize(per_task).set_index("method").loc["a"]
    for name in ("acc_mean", "acc_std", "aaa_mean", "aaa_std", "forgetting", "bwt"):
        assert row[f"{name}_pct"] == percent(computed[name])  # exactly: one conversion, at writing
    # per_task.csv, the raw record (and resume state), keeps Avalanche's fractions under their names
    assert pd.read_csv(tmp_path / "per_task.csv")["acc_seen"].tolist() == [0.9, 0.6, 0.8, 0.5]


def _trace_durability(monkeypatch):
    """Record fsyncs (of a file or a folder) and renames, in order."""
    import os
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_writes_are_durable_renames(tmp_path, monkeypatch):
    # the file's data is on disk before the rename, and the rename itself (the folder entry) after it
    from avalanche_sdlora.atomic import write_text

    events = _trace_durability(monkeypatch)
    write_text(tmp_path / "table.md", "| a |\n")
    assert events == [("fsync", "file"), ("rename", "table.md"), ("fsync", "dir")]
    assert (tmp_path / "table.md").read_text() == "| a |\n" and [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_plots_are_written_atomically_and_durably(tmp_path, monkeypatch):
    from benchmarks.reports import plot

    per_task = pd.DataFrame(_rows("sdlora", 0, [0.9, 0.8]))
    summary = in_file_units(summarize(per_task))
    events = _trace_durability(monkeypatch)
    plot(per_task, summary, tmp_path)
    for name in ("seen_accuracy.png", "final_accuracy.png", "seen_accuracy.pdf", "final_accuracy.pdf"):
        k = events.index(("rename", name))
        assert events[k - 1] == ("fsync", "file") and events[k + 1] == ("fsync", "dir"), events
        assert (tmp_path / name).read_bytes()[:4] == (b"\x89PNG" if name.endswith(".png") else b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_accuracy.pdf", "final_accuracy.png",
                                                          "seen_accuracy.pdf", "seen_accuracy.png"]


def test_every_method_has_its_own_colour_and_marker():
    from benchmarks.methods import method_names
    from benchmarks.reports import method_style

    styles = [tuple(method_style(m).values()) for m in method_names()]
    assert len(set(styles)) == len(styles)
    assert method_style("sdlora") != method_style("simplecil")  # they shared a colour in the old plots


def test_plots_read_as_a_reviewer_expects(tmp_path, monkeypatch):
    """Integer task ticks, the legend outside the axes, the title naming the protocol and seed count, bars sorted
    by accuracy with an error bar only for a method with several seeds."""
    from benchmarks import reports

    figures = {}

    def keep(fig, path, dpi=120, pdf=False):
        figures[path.name] = (fig, pdf)

    monkeypatch.setattr(reports, "save_figure", keep)
    per_task = pd.DataFrame(_rows("sdlora", 0, [0.9, 0.8, 0.7]) + _rows("sdlora", 1, [0.9, 0.7, 0.6])
                            + _rows("ncm", 0, [0.95, 0.9, 0.85]) + _rows("seq-lora", 0, [0.5, 0.4, 0.3]))
    reports.plot(per_task, in_file_units(summarize(per_task)), tmp_path, title="protocol p")
    (seen, pdf), (final, _) = figures["seen_accuracy.png"], figures["final_accuracy.png"]
    assert pdf
    ax = seen.axes[0]
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [1.0, 2.0, 3.0]
    assert ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted()).x0 > 1  # right of the axes
    assert ax.get_title() == "protocol p, 1/2 seeds, mean ± std"
    bars = final.axes[0]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["seq-lora", "sdlora", "ncm"]  # ascending: best on top
    assert len(bars.containers) == 2 and len(bars.containers[1].lines[2][0].get_segments()) == 1  # sdlora's only


# A few committed run folders, one of each kind: converted from before RunConfig (cpu-3seeds), a pre-identity study
# cell, an order folder whose identity used the protocol's old name, and folders written by today's compare.
COMMITTED_SAMPLE = ("cifar100-tiny128/cpu-3seeds", "study/runs/cifar100-tiny128/e1-n500-lr0.01",
                    "cifar100-tiny128/order1994", "cifar100-tiny128/peers-analytic", "cifar100-tiny128/bf16-training")


def test_committed_summaries_regenerate_byte_identical():
    """What --report-only writes from a committed run's parts is the summary.csv committed with it (on a sample:
    every folder is regenerated by the commands results/README.md names)."""
    from pathlib import Path

    from benchmarks.run_folder import RunFolder

    root = Path(__file__).resolve().parent.parent / "results"
    folders = [RunFolder(root / name) for name in COMMITTED_SAMPLE]
    for folder in folders:
        per_task = folder.gather()
        summary = in_file_units(summarize(per_task))
        assert summary.to_csv(index=False) == folder.report_path("summary.csv").read_text(), folder
        assert markdown_table(summary) == folder.report_path("table.md").read_text(), folder
        assert per_task.to_csv(index=False) == folder.per_task_path.read_text(), folder
