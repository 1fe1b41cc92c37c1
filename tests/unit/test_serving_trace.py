"""The bundled trace and user CSVs load as regular rate grids; replay math is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepedge.errors import DataError
from deepedge.serving import RateTrace, load_bikeshare, load_trace


def test_bikeshare_is_a_full_hourly_year_with_missing_hours_filled() -> None:
    tr = load_bikeshare()
    assert len(tr) == 365 * 24 and tr.interval_s == 3600
    assert tr.filled == 115
    assert tr.counts[0] == 16  # day 1, hr 0
    assert tr.counts[(2 - 1) * 24 + 5] == 0  # day 2, 5 am is missing: filled with 0
    assert tr.counts.max() == 651
    assert "CC BY 4.0" in tr.source


def test_compression_keeps_requests_and_scaling_sets_the_peak() -> None:
    tr = RateTrace(np.array([1.0, 2.0, 4.0]), 3600.0, "x", "test")
    c = tr.compressed(10.0)
    assert c.interval_s == 10.0
    np.testing.assert_allclose(c.counts, tr.counts)
    s = c.scaled(50.0)
    assert s.rates.max() == pytest.approx(50.0)
    np.testing.assert_allclose(s.rates / s.rates.max(), tr.rates / tr.rates.max())


def test_poisson_arrivals_match_the_integrated_rate() -> None:
    tr = RateTrace(np.array([100.0, 0.0, 300.0, 50.0]), 10.0, "x", "test")
    t = tr.poisson_arrivals(seed=7)
    expected = tr.counts.sum()  # 4500
    assert abs(len(t) - expected) < 4 * np.sqrt(expected)
    assert np.all(np.diff(t) >= 0) and t.min() >= 0 and t.max() < 40
    assert not np.any((t >= 10) & (t < 20))  # zero-rate interval stays empty
    np.testing.assert_array_equal(t, tr.poisson_arrivals(seed=7))
    part = tr.poisson_arrivals(seed=1, start=25.0, end=35.0)
    assert part.min() >= 25 and part.max() < 35
    assert abs(len(part) - 1750) < 4 * np.sqrt(1750)  # 5 s at 300/s + 5 s at 50/s


def test_user_csv_t_rate_and_timestamps(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("t,rate\n0,1.5\n60,2.5\n120,0\n")
    tr = load_trace(p)
    assert tr.interval_s == 60 and list(tr.rates) == [1.5, 2.5, 0.0]
    q = tmp_path / "ts.csv"
    q.write_text("timestamp\n10.0\n10.5\n11.2\n13.9\n")
    tr = load_trace(q, bin_s=1.0)
    assert list(tr.counts) == [2, 1, 0, 1]


@pytest.mark.parametrize(
    "text",
    ["", "t,rate\n", "t,rate\n0,1\n60,x\n", "t,rate\n0,1\n60,2\n180,3\n", "a,b,c\n1,2,3\n"],
)
def test_bad_csv_is_one_line_data_error(tmp_path: Path, text: str) -> None:
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(DataError) as err:
        load_trace(p)
    assert "\n" not in err.value.one_line()
