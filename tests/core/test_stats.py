"""distill.stats against values worked out by hand (the formulas are in each test's comment)."""

from __future__ import annotations

import numpy as np
import pytest

from distill.stats import BOOTSTRAP_RESAMPLES, mcnemar_exact, paired_bootstrap_interval, wilson_interval


def test_wilson_interval_matches_the_hand_computed_score_interval():
    # z = 1.959964, z^2/n = 0.3841459; centre = (0.8 + z^2/2n) / (1 + z^2/n) = 0.716739;
    # half = z / (1 + z^2/n) * sqrt(0.8 * 0.2 / 10 + z^2 / 400) = 1.416010 * 0.160011 = 0.226577
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.716739 - 0.226577, abs=2e-6)
    assert high == pytest.approx(0.716739 + 0.226577, abs=2e-6)


def test_wilson_interval_at_zero_successes_is_not_a_point():
    # centre = (z^2/2n) / (1 + z^2/n) = 0.138763; half = 1.416010 * sqrt(z^2/400) = 0.138767 -> [0, 0.277533]
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-6)
    assert high == pytest.approx(0.277533, abs=2e-6)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_wilson_interval_at_1000_rows_is_about_two_points_wide():
    # 900 / 1000: z^2/n = 0.0038415; centre = 0.9019207 / 1.0038415 = 0.898469;
    # half = 1.952464 * sqrt(0.00009 + 0.00000096) = 0.018621 -> [0.879848, 0.917090]
    low, high = wilson_interval(900, 1000)
    assert low == pytest.approx(0.879848, abs=2e-5) and high == pytest.approx(0.917090, abs=2e-5)


def test_mcnemar_exact_p_values():
    # 1 row only a gets right, 9 only b: p = 2 * P(X <= 1 | Bin(10, 1/2)) = 2 * (1 + 10) / 1024
    a = np.array([1] * 1 + [0] * 9 + [1] * 20 + [0] * 5, dtype=bool)
    b = np.array([0] * 1 + [1] * 9 + [1] * 20 + [0] * 5, dtype=bool)
    r = mcnemar_exact(a, b)
    assert (r.a_only, r.b_only) == (1, 9)
    assert r.p_value == pytest.approx(22 / 1024, rel=1e-12)
    # 0 vs 5: p = 2 * (1/2)^5 = 0.0625; 3 vs 3 (symmetric): p = 1; nothing discordant: p = 1
    assert mcnemar_exact([0] * 5, [1] * 5).p_value == pytest.approx(0.0625, rel=1e-12)
    assert mcnemar_exact([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]).p_value == pytest.approx(1.0)
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]).p_value == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([1, 0], [1])


def test_paired_bootstrap_interval_is_exact_when_every_row_differs_alike():
    assert paired_bootstrap_interval([1] * 50, [0] * 50) == (1.0, 1.0)
    assert paired_bootstrap_interval([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)
    assert paired_bootstrap_interval([], []) is None
    with pytest.raises(ValueError):
        paired_bootstrap_interval([1, 2], [1, 0])


def test_paired_bootstrap_interval_agrees_with_the_normal_approximation_and_is_seeded():
    # 1000 rows, 100 only a right, 50 only b right: d = a - b has mean 0.05, E[d^2] = 0.15, var 0.1475,
    # se = sqrt(0.1475 / 1000) = 0.012145 -> normal 95% interval 0.05 +- 0.023804 = [0.026196, 0.073804]
    a = np.zeros(1000, bool)
    b = np.zeros(1000, bool)
    a[:100] = True
    b[100:150] = True
    a[150:800] = b[150:800] = True  # both right: cancels
    rng = np.random.default_rng(3)
    order = rng.permutation(1000)
    a, b = a[order], b[order]
    low, high = paired_bootstrap_interval(a, b, seed=0)
    assert low == pytest.approx(0.026196, abs=0.003) and high == pytest.approx(0.073804, abs=0.003)
    assert paired_bootstrap_interval(a, b, seed=0) == (low, high)
    assert BOOTSTRAP_RESAMPLES == 10_000
