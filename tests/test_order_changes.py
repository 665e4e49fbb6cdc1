"""What changed between two class-order reports (benchmarks.order_changes): verdicts, ranks and the changed list,
checked by hand on made-up runs."""

import pandas as pd
import pytest

from benchmarks import order_changes, orders
from conftest import fake_run


def _report(root, name, final):
    """A --class-order seed folder of ``final`` = {method: [acc on order 1993, 1994]} and its class-order report."""
    runs = {(m, s): [0.9, a] for m, accs in final.items() for s, a in zip((1993, 1994), accs)}
    folder = fake_run(root / "runs" / name, runs, class_order="seed")
    return orders.main([str(folder), "--out", str(root / name)])


def test_verdicts_ranks_and_changed_conclusions_by_hand(tmp_path):
    before = _report(tmp_path, "small", {"sdlora": [0.60, 0.60], "ncm": [0.50, 0.55], "l2p": [0.70, 0.50],
                                         "ranpac": [0.65, 0.66], "aper": [0.40, 0.40]})
    after = _report(tmp_path, "full", {"sdlora": [0.70, 0.70], "ncm": [0.75, 0.72], "l2p": [0.60, 0.65],
                                       "ranpac": [0.80, 0.80]})  # aper only in the small table
    text = order_changes.changes(before, after, "small", "full")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "ranpac", "ncm", "sdlora", "l2p"}  # aper is in one table only
    # ncm: sdlora +10, +5 in small (ahead), -5, -2 in full (behind); ranks among the 4: 4th, then 2nd
    assert "| ncm | 52.50 ± 3.54 | 4 | no training | 73.50 ± 2.12 | 2 |" in rows["ncm"]
    assert rows["ncm"].endswith("| +7.50 ± 3.54 (2 of 2) | -3.50 ± 2.12 (0 of 2) | ahead → behind (changed) |")
    # l2p: -10, +10 (split), then +10, +5 (ahead)
    assert rows["l2p"].endswith("| +0.00 ± 14.14 (1 of 2) | +7.50 ± 3.54 (2 of 2) | split → ahead (changed) |")
    assert rows["ranpac"].endswith("| behind → behind |") and rows["sdlora"].endswith("| (reference) |")
    assert text.rstrip().endswith("Conclusions that changed (2): ncm, l2p.")
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ")][1:] == \
        ["| ranpac", "| ncm", "| sdlora", "| l2p"]  # the full table's order


def test_a_method_without_a_finished_run_has_no_verdict_and_reports_must_share_their_reference(tmp_path):
    before = _report(tmp_path, "small", {"sdlora": [0.60, 0.60], "ncm": [0.50, 0.55]})
    after = _report(tmp_path, "full", {"sdlora": [0.70, 0.70], "ncm": [0.75, 0.72]})
    text = order_changes.changes(before, after, "small", "full")
    assert text.rstrip().endswith("Conclusions that changed (1): ncm.")
    same = order_changes.changes(before, before, "small", "small again")
    assert same.rstrip().endswith("No verdict changed.")
    other = tmp_path / "other"
    orders.main([str(tmp_path / "runs" / "small"), "--reference", "ncm", "--out", str(other)])
    with pytest.raises(SystemExit, match="take different reference methods .*the same --reference"):
        order_changes.changes(before, other, "small", "full")
    assert order_changes.verdict(None) is None  # not in the report's paired summary
    assert order_changes.verdict(pd.Series({"acc_orders": 0, "acc_wins": 0, "acc_ties": 0})) is None  # none finished
    assert order_changes.verdict(pd.Series({"acc_orders": 2, "acc_wins": 1, "acc_ties": 1})) == "split"
    assert order_changes.verdict(pd.Series({"acc_orders": 2, "acc_wins": 0, "acc_ties": 1})) == "split"  # a tie
