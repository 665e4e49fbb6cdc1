"""Acc, AAA, forgetting and BWT against hand-computed values on a made-up accuracy matrix."""

import numpy as np
import pytest

from avalanche_sdlora.metrics import (average_anytime_accuracy, backward_transfer, final_accuracy, forgetting,
                                      seen_accuracy)

NAN = np.nan
# R[i, j]: accuracy on experience j after training experience i.
R = np.array([[0.9, NAN, NAN],
              [0.7, 0.8, NAN],
              [0.6, 0.5, 0.9]])


def test_final_accuracy():
    assert final_accuracy(R) == pytest.approx((0.6 + 0.5 + 0.9) / 3)
    assert final_accuracy(R, sizes=np.array([1, 1, 2])) == pytest.approx((0.6 + 0.5 + 1.8) / 4)


def test_seen_and_aaa():
    np.testing.assert_allclose(seen_accuracy(R), [0.9, 0.75, 2.0 / 3])
    assert average_anytime_accuracy(R) == pytest.approx((0.9 + 0.75 + 2.0 / 3) / 3)
    # the same number from the seen-class accuracies measured after each experience (the harness's acc_seen)
    assert average_anytime_accuracy(seen_accuracy(R)) == average_anytime_accuracy(R)


def test_forgetting_uses_best_earlier_accuracy():
    # exp 0: best before the end 0.9, final 0.6 -> 0.3; exp 1: best 0.8, final 0.5 -> 0.3
    assert forgetting(R) == pytest.approx(0.3)
    R2 = R.copy()
    R2[1, 0] = 0.95  # a later improvement counts as the best accuracy
    assert forgetting(R2) == pytest.approx(((0.95 - 0.6) + 0.3) / 2)


def test_bwt_compares_with_accuracy_right_after_learning():
    R2 = R.copy()
    R2[1, 0] = 0.95  # BWT ignores intermediate rows
    assert backward_transfer(R2) == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)


def test_single_experience_has_no_forgetting():
    assert forgetting(R[:1, :1]) == 0.0 and backward_transfer(R[:1, :1]) == 0.0
