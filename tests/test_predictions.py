"""Per-image predictions and the paired bound: the statistic by hand, the file (round trip, damaged, refused), the
class-order report's ± per order, publish copying them, and the tuning's ties under a paired bound."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmarks import orders, predictions, publish
from benchmarks.folder_checks import DamagedRunFile
from benchmarks.run_folder import RunFolder
from benchmarks.tune_confirm import bound_between, noise_bound, ties
from benchmarks.tune_runs import Outcome
from conftest import fake_run

N = 200  # test images of a made-up order: labels 0..9 repeated


def made_up(wrong: range | list[int], experience: int = 1) -> predictions.Predictions:
    """Predictions on N images that are wrong exactly on the images ``wrong``."""
    y_true = np.arange(N) % 10
    y_pred = y_true.copy()
    y_pred[list(wrong)] = (y_true[list(wrong)] + 1) % 10
    return predictions.Predictions(experience, y_true, y_pred)


def test_paired_difference_by_hand():
    y = np.arange(10)
    a = predictions.Predictions(3, y, np.where(y < 8, y, -1))  # right on 0-7
    b = predictions.Predictions(3, y, np.where((y < 5) | (y == 8), y, -1))  # right on 0-4 and 8
    d = predictions.paired_difference(a, b)
    assert (d.n, d.only_a, d.only_b) == (10, 3, 1)
    assert d.diff == pytest.approx(a.accuracy - b.accuracy) == pytest.approx(0.2)
    assert d.bound == pytest.approx(2 * math.sqrt((0.4 - 0.04) / 10))  # 2 sqrt(((b + c)/n - d^2) / n)
    assert not d.resolved  # 0.2 < 0.379
    same = predictions.paired_difference(a, a)
    assert (same.diff, same.bound) == (0.0, 0.0)
    # the paired bound is far under the independent-scores one when the two share most of their errors
    c = made_up(range(80))
    e = made_up([*range(78), 150, 151, 152, 153])
    paired = predictions.paired_difference(c, e)
    assert 100 * paired.bound < noise_bound(c.accuracy, N) / 2


def test_pairs_of_other_images_are_refused():
    with pytest.raises(ValueError, match="not scored on the same images.*experiences 1 and 2"):
        predictions.paired_difference(made_up([1]), made_up([1], experience=2))
    other = predictions.Predictions(1, np.arange(N) % 7, np.arange(N) % 7)
    with pytest.raises(ValueError, match="same protocol and class order"):
        predictions.paired_difference(made_up([1]), other)


def test_the_file_round_trips_and_a_damaged_one_is_refused_naming_it(tmp_path):
    path = tmp_path / "predictions" / "sdlora-seed0.csv"
    predictions.save(path, made_up([3, 4, 5], experience=9))
    back = predictions.load(path)
    assert back.experience == 9 and back.accuracy == pytest.approx(1 - 3 / N)
    np.testing.assert_array_equal(back.y_true, np.arange(N) % 10)
    path.write_bytes(path.read_bytes()[:40])  # truncated
    with pytest.raises(DamagedRunFile, match=r"sdlora-seed0.csv' is not a predictions file the harness wrote.*delete"):
        predictions.load(path)
    path.write_text("method,seed\n")
    with pytest.raises(DamagedRunFile, match="not a predictions file"):
        predictions.load(path)


ACC = {"sdlora": {1993: 0.60, 1994: 0.50}, "seq-lora": {1993: 0.55, 1994: 0.58}}
# the images each run gets wrong: seq-lora's errors include all of sdlora's on 1993 (a 5-point lead on 10 images
# of 200: paired bound 2 sqrt((10/200 - 0.05^2) / 200) = 3.08 points, resolved); on 1994 they differ on 34 + 50
# images (-8 points, bound 2 sqrt((84/200 - 0.08^2) / 200) = 9.10: not resolved)
WRONG = {("sdlora", 1993): range(80), ("seq-lora", 1993): range(90),
         ("sdlora", 1994): range(100), ("seq-lora", 1994): [*range(50), *range(100, 134)]}


def _order_folders(root, kept=True):
    folders = []
    for order in (1993, 1994):
        runs = {(m, order): [0.9, ACC[m][order]] for m in ACC}
        folder = fake_run(root / f"order{order}", runs, class_order_seed=order)
        if kept:
            for m in ACC:
                predictions.save(RunFolder(folder).predictions(m, order), made_up(WRONG[(m, order)]))
        folders.append(folder)
    return folders


def test_the_report_shows_each_orders_paired_bound_and_how_many_orders_exceed_it(tmp_path):
    out = orders.main([*map(str, _order_folders(tmp_path / "runs")), "--out", str(tmp_path / "report")])
    pairs = pd.read_csv(out / "paired.csv").set_index("class_order_seed")
    bound93 = 200 * math.sqrt((10 / N - 0.05 ** 2) / N)
    only_a, only_b = 34, 50  # 1994: sdlora right and seq-lora wrong on 100-133, the reverse on 50-99
    bound94 = 200 * math.sqrt(((only_a + only_b) / N - 0.08 ** 2) / N)
    assert pairs.loc[1993, "acc_diff_bound_pts"] == pytest.approx(bound93)
    assert pairs.loc[1994, "acc_diff_bound_pts"] == pytest.approx(bound94)
    summary = pd.read_csv(out / "paired_summary.csv").iloc[0]
    assert (summary["n_acc_bounded"], summary["n_acc_resolved"]) == (2, 1)  # +5 > 3.08; -8 within 9.10
    table = (out / "table.md").read_text()
    assert f"| +5.00 ± {bound93:.2f} | -8.00 ± {bound94:.2f} |" in table
    assert "1 of 2; beyond ± on 1 of 2" in table and "paired standard error" in table


def test_without_predictions_the_report_is_as_before(tmp_path):
    out = orders.main([*map(str, _order_folders(tmp_path / "runs", kept=False)), "--out", str(tmp_path / "report")])
    assert pd.read_csv(out / "paired.csv")["acc_diff_bound_pts"].isna().all()
    table = (out / "table.md").read_text()
    assert "| +5.00 | -8.00 |" in table and "±  on" not in table and "paired standard error" not in table


def test_predictions_that_do_not_score_their_run_are_refused_naming_the_file(tmp_path):
    folders = _order_folders(tmp_path / "runs")
    wrong = RunFolder(folders[0]).predictions("sdlora", 1993)
    predictions.save(wrong, made_up(range(81)))  # 59.5 %, its part says 60
    with pytest.raises(SystemExit, match=r"sdlora-seed1993.csv' does not hold the predictions of its run's last "
                                         r"experience .*59.50 %.*60.00 %.*delete it"):
        orders.main([*map(str, folders), "--out", str(tmp_path / "report")])


def test_publish_copies_a_finished_runs_predictions_and_adds_them_later(tmp_path):
    src = fake_run(tmp_path / "runs" / "r", {("sdlora", 0): [0.9, 0.6]})
    dest = tmp_path / "results" / "r"
    publish.publish(src, dest)  # published before the run had predictions (an older version)
    assert not RunFolder(dest).predictions("sdlora", 0).exists()
    predictions.save(RunFolder(src).predictions("sdlora", 0), made_up(range(80)))
    assert publish.publish(src, dest) == ["sdlora-seed0"]  # the part is equal; its predictions are added
    assert RunFolder(dest).predictions("sdlora", 0).read_bytes() == RunFolder(src).predictions("sdlora", 0).read_bytes()
    predictions.save(RunFolder(src).predictions("sdlora", 0), made_up(range(80), experience=0))
    (dest / "predictions" / "sdlora-seed0.csv").unlink()
    with pytest.raises(SystemExit, match="follow experience 0 and score 60.00 %, the part ends at experience 1"):
        publish.publish(src, dest)


def _outcome(candidate: str, acc: float, path=None) -> Outcome:
    return Outcome("sdlora", candidate, "sgd", 0.01, "{}", "grid", "done", val_acc=acc, val_mean_acc=acc,
                   predictions=path)


def test_tuning_ties_use_the_paired_bound_where_both_candidates_kept_predictions(tmp_path):
    paths = {}
    for key, wrong in (("a", range(80)), ("b", range(92)), ("c", [*range(50), *range(100, 142)])):
        paths[key] = tmp_path / f"{key}.csv"
        predictions.save(paths[key], made_up(wrong))
    best, b, c = _outcome("a", 0.60, paths["a"]), _outcome("b", 0.54, paths["b"]), _outcome("c", 0.54, paths["c"])
    # a leads both by 6 points, within the independent bound (9.8 at 200 images)
    assert 6 < noise_bound(0.60, N)
    # b errs wherever a does: paired bound 2 sqrt((12/200 - 0.06^2)/200) = 3.36, so b is no tie; c differs on 72
    # images (bound 8.44), a tie
    assert bound_between(best, b, N) == (pytest.approx(200 * math.sqrt((12 / N - 0.06 ** 2) / N)), True)
    assert [o.candidate for o in ties(best, [best, b, c], N)] == ["c"]
    # a candidate without predictions (trained before they were kept) falls back to the independent bound
    old = _outcome("d", 0.54)
    assert bound_between(best, old, N) == (noise_bound(0.60, N), False)
    assert [o.candidate for o in ties(best, [best, b, old], N)] == ["d"]
    assert "predictions" not in best.record()  # a local path never reaches candidates.csv


def test_runs_from_before_get_their_predictions_from_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    from benchmarks import compare, runner
    from conftest import TINY, _require_cifar

    _require_cifar()
    run = RunFolder(compare.main(TINY + ["--methods", "sdlora", "simplecil", "naive", "--out", str(tmp_path),
                                         "--run-id", "r"]))
    kept = {m: predictions.load(run.predictions(m, 0)) for m in ("sdlora", "simplecil", "naive")}
    for m in kept:
        run.predictions(m, 0).unlink()  # as a run of an older version left it
    assert predictions.main([str(run.path)]) == ["sdlora-seed0", "simplecil-seed0"]
    for m in ("sdlora", "simplecil"):  # the same answers, image by image
        np.testing.assert_array_equal(predictions.load(run.predictions(m, 0)).y_pred, kept[m].y_pred)
    assert not run.predictions("naive", 0).exists()  # Avalanche's naive keeps no checkpoint
    assert "naive-seed0: naive seed 0 has no checkpoint of its last experience" in capsys.readouterr().err
    assert predictions.main([str(run.path)]) == []  # nothing left to do
    for bad, named in ((["--methods", "sdlroa"], "--methods: unknown method"), (["--threads", "0"], "--threads"),
                       ([], "not a run folder")):
        with pytest.raises(SystemExit, match=named):
            predictions.main([str(run.path if bad else tmp_path), *bad])
    capsys.readouterr()
    # an evaluation that does not reproduce the recorded accuracy is not kept
    run.predictions("sdlora", 0).unlink()
    real = runner.predict_again
    monkeypatch.setattr(runner, "predict_again", lambda *a: (real(*a)[0], 0.123))
    assert predictions.main([str(run.path), "--methods", "sdlora"]) == []
    assert "scores 12.30 %, the run recorded" in capsys.readouterr().err and not run.predictions("sdlora", 0).exists()
