"""Expected synchronous step time from profiles: the slowest of noisy devices."""

from __future__ import annotations

import time

import pytest

from deepedge.profile import DeviceProfile, Profile, ProfileKey, ProfilePoint, SoftwareVersions
from deepedge.profile.throughput import expected_step_s


def _profile(name: str, times_by_batch: dict[int, list[float]]) -> DeviceProfile:
    now = time.time()
    profile = Profile(
        id=1,
        key=ProfileKey.build("k", {}, "sig", []),
        software=SoftwareVersions.current(),
        created_at=now,
        updated_at=now,
        stale_reason=None,
        partial_reason=None,
        cost_s=1.0,
        points=tuple(
            ProfilePoint(b, tuple(ts), 400.0, now) for b, ts in sorted(times_by_batch.items())
        ),
        device_name=name,
    )
    return DeviceProfile.from_profile(name, profile, reused=True)


def test_without_noise_the_step_is_the_slowest_median_plus_allreduce():
    steady = {
        "a": _profile("a", {10: [0.1] * 5, 20: [0.2] * 5}),
        "b": _profile("b", {10: [0.3] * 5, 20: [0.6] * 5}),
    }
    assert expected_step_s(steady, {"a": 20, "b": 10}, 0.05) == pytest.approx(0.35)


def test_noise_makes_the_expected_maximum_exceed_every_median():
    noisy = {
        n: _profile(n, {10: [0.08, 0.1, 0.1, 0.1, 0.14], 20: [0.16, 0.2, 0.2, 0.2, 0.28]})
        for n in "abcde"
    }
    medians = max(p.step_s(10) for p in noisy.values())
    assert expected_step_s(noisy, dict.fromkeys("abcde", 10)) > 1.05 * medians


def test_a_plans_throttled_compute_replaces_the_profiles_step():
    steady = {
        "a": _profile("a", {10: [0.1] * 5, 20: [0.2] * 5}),
        "b": _profile("b", {10: [0.3] * 5, 20: [0.6] * 5}),
    }
    # a at intensity 0.25 takes 0.8 s for its 20 samples: it, not b, is now the slowest
    got = expected_step_s(steady, {"a": 20, "b": 10}, 0.05, compute_s={"a": 0.8})
    assert got == pytest.approx(0.85)
