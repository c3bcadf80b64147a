"""The prior's learning-rate schedules: warm-up, halving on plateaus (paper App. B.2), cosine."""

from __future__ import annotations

import math

import pytest

from dalle_zero.training.schedules import PlateauHalving, warmup_cosine


def _feed(s: PlateauHalving, losses, start: int = 1) -> list[int]:
    """Observe losses for updates start, start+1, ...; return the updates after which lr halved."""
    return [step for step, loss in enumerate(losses, start) if s.observe(step, loss)]


def test_warmup_is_linear_to_the_peak_then_flat():
    s = PlateauHalving(4.5e-4, warmup_steps=10, patience=5)
    assert s.lr_at(0) == pytest.approx(4.5e-5)
    assert s.lr_at(4) == pytest.approx(2.25e-4)
    assert s.lr_at(9) == pytest.approx(4.5e-4)
    assert s.lr_at(1000) == pytest.approx(4.5e-4)


def test_decreasing_loss_never_halves():
    s = PlateauHalving(1.0, warmup_steps=0, patience=3, smoothing=0.0)
    assert _feed(s, [10.0 / (1 + i) for i in range(100)]) == []
    assert s.lr_at(100) == 1.0


def test_flat_loss_halves_after_patience_steps_and_again_after_another_patience():
    s = PlateauHalving(1.0, warmup_steps=0, patience=4, smoothing=0.0)
    # update 1 sets the best; updates 2..5 are 4 steps without improvement -> halve after update 5
    assert _feed(s, [2.0] * 9) == [5, 9]
    assert s.halvings == 2
    assert s.lr_at(10) == pytest.approx(0.25)


def test_no_halving_during_warmup():
    s = PlateauHalving(1.0, warmup_steps=20, patience=2, smoothing=0.0)
    assert _feed(s, [1.0] * 20) == []
    assert _feed(s, [1.0] * 3, start=21) == [23]


def test_at_most_max_halvings_final_rate_is_peak_over_32():
    s = PlateauHalving(4.5e-4, warmup_steps=0, patience=1, smoothing=0.0, max_halvings=5)
    halved = _feed(s, [1.0] * 50)
    assert len(halved) == 5
    assert s.lr_at(50) == pytest.approx(4.5e-4 / 32)


def test_improvement_smaller_than_threshold_counts_as_plateau():
    s = PlateauHalving(1.0, warmup_steps=0, patience=3, threshold=0.01, smoothing=0.0)
    losses = [1.0 * (1 - 0.001) ** i for i in range(10)]  # 0.1 % per step < 1 % threshold
    assert _feed(s, losses) == [4, 7, 10]


def test_smoothing_ignores_noise_around_a_falling_trend():
    s = PlateauHalving(1.0, warmup_steps=20, patience=20, smoothing=0.9)
    losses = [5.0 - 0.01 * i + (0.3 if i % 2 else -0.3) for i in range(300)]
    assert _feed(s, losses) == []
    assert s.smoothed_loss == pytest.approx(5.0 - 0.01 * 299, abs=0.4)


def test_non_finite_losses_are_ignored():
    s = PlateauHalving(1.0, warmup_steps=0, patience=2, smoothing=0.0)
    assert _feed(s, [1.0, math.nan, math.inf, math.nan]) == []
    assert s.n_observed == 1


def test_state_dict_round_trip_continues_identically():
    losses = [3.0, 2.0, 2.0, 2.0, 1.9, 1.9, 1.9] + [1.0] * 30
    full = PlateauHalving(1.0, warmup_steps=2, patience=3, smoothing=0.5)
    expect = _feed(full, losses)
    first = PlateauHalving(1.0, warmup_steps=2, patience=3, smoothing=0.5)
    got = _feed(first, losses[:6])
    second = PlateauHalving(1.0, warmup_steps=2, patience=3, smoothing=0.5)
    second.load_state_dict(first.state_dict())
    got += _feed(second, losses[6:], start=7)
    assert got == expect and expect
    assert second.state_dict() == full.state_dict()


@pytest.mark.parametrize(
    "kw", [{"patience": 0}, {"warmup_steps": -1}, {"smoothing": 1.0}, {"max_halvings": -1}]
)
def test_bad_settings_raise(kw):
    args = {"warmup_steps": 0, "patience": 1, **kw}
    with pytest.raises(ValueError):
        PlateauHalving(1.0, **args)


def test_warmup_cosine_ends_at_the_final_fraction():
    kw = {"peak": 1.0, "end": 1 / 32, "warmup_steps": 10, "total_steps": 110}  # end: the final fraction of the peak
    assert warmup_cosine(0, **kw) == pytest.approx(0.1)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx((1 + 1 / 32) / 2)
    assert warmup_cosine(110, **kw) == pytest.approx(1 / 32)
    assert warmup_cosine(500, **kw) == pytest.approx(1 / 32)
