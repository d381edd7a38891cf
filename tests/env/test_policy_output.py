"""A policy's output as the closed-loop evaluators take it: single actions or chunks, checked and clipped."""

import numpy as np
import pytest

from hlrp_lab.env.policy_output import checked_actions


def test_actions_are_checked_and_clipped():
    got = checked_actions(np.array([[2.0, -3.0, 0.5, 0.0]]), 1, 1, 4)
    np.testing.assert_array_equal(got, [[[1, -1, 0.5, 0]]])
    assert checked_actions(np.zeros((2, 4)), 2, 1, 4).dtype == np.float32
    chunks = np.arange(24, dtype=float).reshape(2, 3, 4) / 100
    np.testing.assert_array_equal(checked_actions(chunks, 2, 2, 4), chunks[:, :2].astype(np.float32))
    np.testing.assert_array_equal(checked_actions(np.array([[0.5, 7.0]]), 1, 1, 2), [[[0.5, 1.0]]])
    for bad in (
        np.zeros((1, 3)),
        np.zeros((2, 4)),
        np.full((1, 4), np.nan),
        np.zeros(4),
        np.zeros((1, 1, 4)),
    ):
        with pytest.raises(ValueError, match=r"\(1, 4\) actions"):
            checked_actions(bad, 1, 1 if bad.ndim < 3 else 2, 4)
