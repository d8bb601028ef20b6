"""Outlier ejection and cooldowns (service.ejection): the state machine on a fake clock, and
one table shared by two handles as two workers share it."""

from __future__ import annotations

import os

import pytest

from service.ejection import PROBE_LEASE_SECS, Ejections, OutlierPolicy, create_table

POLICY = OutlierPolicy(consecutive_failures=3, base_ejection_secs=10, max_ejection_secs=35)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(clock: Clock) -> Ejections:
    return Ejections(None, clock)


def test_consecutive_failures_eject_and_a_success_in_between_resets_the_count(table, clock):
    assert table.gate("a").allowed
    assert not table.failure("a", POLICY)
    assert not table.failure("a", POLICY)
    table.success("a")
    assert not table.failure("a", POLICY)
    assert not table.failure("a", POLICY)
    assert table.failure("a", POLICY)  # the third in a row
    g = table.gate("a")
    assert (g.allowed, g.why, g.until) == (False, "ejected", clock.t + 10)
    assert table.ejected("a") and not table.ejected("b")
    assert table.gate("b").allowed  # others are not affected


def test_one_probe_at_a_time_after_the_ejection_then_a_success_restores(table, clock):
    for _ in range(3):
        table.failure("a", POLICY)
    clock.t += 10
    first = table.gate("a")
    assert first.allowed and first.probe
    second = table.gate("a")  # another request meanwhile: still skipped
    assert (second.allowed, second.why) == (False, "ejected")
    table.success("a")
    assert table.gate("a").allowed and not table.gate("a").probe
    assert not table.ejected("a")


def test_a_failed_probe_ejects_again_for_twice_as_long_up_to_the_cap(table, clock):
    for _ in range(3):
        table.failure("a", POLICY)
    waits = []
    for _ in range(4):
        until = table.gate("a").until
        waits.append(until - clock.t)
        clock.t = until
        assert table.gate("a").probe
        assert table.failure("a", POLICY)  # one failure while probing is enough
    assert waits == [10, 20, 35, 35]


def test_an_unfinished_probe_is_released_after_its_lease(table, clock):
    for _ in range(3):
        table.failure("a", POLICY)
    clock.t += 10
    assert table.gate("a").probe
    clock.t += PROBE_LEASE_SECS + 0.1  # the probing request never reported back
    assert table.gate("a").probe


def test_a_cooldown_is_extended_never_shortened(table, clock):
    table.cool("a", 30)
    g = table.gate("a")
    assert (g.allowed, g.why, g.until) == (False, "cooling", clock.t + 30)
    table.cool("a", 5)  # shorter: ignored
    assert table.gate("a").until == clock.t + 30
    table.cool("a", 60)
    assert table.gate("a").until == clock.t + 60
    clock.t += 60
    assert table.gate("a").allowed
    assert not table.ejected("a")  # cooling is not an ejection


def test_peek_never_claims_the_probe(table, clock):
    for _ in range(3):
        table.failure("a", POLICY)
    clock.t += 10
    assert table.peek("a").allowed
    assert table.peek("a").allowed
    assert table.gate("a").probe  # still free to claim


def test_two_workers_share_one_table(clock) -> None:
    path = create_table()
    try:
        w1, w2 = Ejections(path, clock), Ejections(path, clock)
        for _ in range(2):
            w1.failure("up", POLICY)
        w2.failure("up", POLICY)  # the third failure, seen by the other worker
        assert not w1.gate("up").allowed and not w2.gate("up").allowed
        clock.t += 10
        assert w1.gate("up").probe
        assert not w2.gate("up").allowed  # w1 holds the probe
        w1.success("up")
        assert w2.gate("up").allowed
        w2.cool("up", 5)
        assert w1.gate("up").why == "cooling"
        w1.close()
        w2.close()
    finally:
        os.unlink(path)


def test_names_are_kept_apart_and_slots_are_bounded(table) -> None:
    for i in range(300):  # more names than slots: the rest are never ejected, never an error
        for _ in range(3):
            table.failure(f"u{i}", POLICY)
    assert table.ejected("u0") and table.ejected("u255")
    assert not table.ejected("u299") and table.gate("u299").allowed


RATE = OutlierPolicy(
    consecutive_failures=100,
    base_ejection_secs=10,
    max_ejection_secs=35,
    failure_rate=0.5,
    failure_rate_min_attempts=4,
    failure_rate_window_secs=10,
)


def test_a_failure_rate_over_a_window_ejects_without_consecutive_failures(table, clock):
    table.success("a", RATE)
    assert not table.failure("a", RATE)
    table.success("a", RATE)
    assert table.failure("a", RATE)  # 2 of 4 attempts failed in the window: half
    assert table.gate("a").why == "ejected"


def test_the_failure_rate_window_starts_again_when_it_ends(table, clock):
    for _ in range(3):
        table.success("a", RATE)
    clock.t += 10  # a new window: the three successes are forgotten
    assert not table.failure("a", RATE)  # 1 of 1: too few attempts to judge
    table.success("a", RATE)
    table.success("a", RATE)
    # 2 of 4 in this window trips (with the old window's three successes it would be 2 of 7)
    assert table.failure("a", RATE)


def test_failures_in_flight_do_not_eject_an_ejected_upstream_again(table, clock):
    for _ in range(3):
        table.failure("a", POLICY)
    until = table.gate("a").until
    for _ in range(10):  # attempts that were already running when it was ejected
        assert not table.failure("a", POLICY)
    assert table.gate("a").until == until  # not pushed out: 10 s, not 10 x 2^n


def test_a_released_probe_can_be_claimed_again_at_once(table, clock):
    for _ in range(3):
        table.failure("a", POLICY)
    clock.t += 10
    assert table.gate("a").probe
    assert not table.gate("a").allowed
    table.release_probe("a")
    assert table.gate("a").probe


def test_a_rate_reached_on_a_success_is_not_thrown_away(table, clock):
    """An upstream that fails every other attempt, beginning with a failure: each window's
    fourth attempt (RATE's minimum) is a success. The rate was judged on it, the window
    started again, and nothing was ejected, window after window; now the next failure ejects."""
    ejected_at = None
    for attempt in range(1, 41):
        if attempt % 2:
            if table.failure("a", RATE):
                ejected_at = attempt
                break
        else:
            table.success("a", RATE)
    assert ejected_at == 5  # 3 of 5 failed: at least half of at least 4
    assert table.gate("a").why == "ejected"


def test_a_success_sent_before_the_ejection_does_not_end_it(table, clock):
    """As failures of attempts in flight are ignored while ejected, so are successes: one
    straggling answer ended the ejection at once, with no probe (with Redis, everywhere)."""
    restored: list[str] = []
    table.on_wait = lambda name, what, secs: restored.append(what)
    for _ in range(3):
        table.failure("a", POLICY)
    until = table.gate("a").until
    clock.t += 2
    table.success("a", POLICY)  # an answer to an attempt sent before the ejection
    g = table.gate("a")
    assert (g.allowed, g.why, g.until) == (False, "ejected", until)
    assert restored == ["ejected"]  # nothing published as restored
    clock.t = until
    assert table.gate("a").probe  # its end is still a probe's
    table.success("a", POLICY)
    assert table.gate("a").allowed and not table.ejected("a")
    assert restored == ["ejected", "restored"]


def test_a_probe_s_claim_lasts_as_long_as_its_attempt_may() -> None:
    """The claim's lease covers the probe's longest attempt (connect, head, then first content
    or body), so a slow probe keeps it: with the fixed 30 s, a probe of an upstream with a
    120 s read timeout lost its claim after 30 s and a second request probed alongside it."""
    import time
    from types import SimpleNamespace

    from service.proxy.failover import _Attempts

    def lease(timeouts: dict[str, float | None], read: float, deadline: float | None) -> float:
        policy = SimpleNamespace(**{"connect_secs": None, "headers_secs": None,
                                    "first_content_secs": None, **timeouts})  # fmt: skip
        up = SimpleNamespace(profile=SimpleNamespace(
            timeouts=SimpleNamespace(connect_secs=2.0, read_secs=read)))  # fmt: skip
        attempts = SimpleNamespace(policy=policy, deadline=deadline)
        return _Attempts._probe_lease(attempts, up)  # type: ignore[arg-type]

    assert lease({}, 120, None) == 2 + 120 + 120  # head, then first content, each its read
    assert lease({"headers_secs": 60, "first_content_secs": 30}, 300, None) == 2 + 60 + 30
    assert lease({}, 5, None) == PROBE_LEASE_SECS  # never shorter than before
    soon = time.monotonic() + 100  # totalSecs: the attempt cannot outlive the request
    assert 99 < lease({}, 120, soon) <= 100.1


def test_a_success_of_a_request_that_tried_it_anyway_restores_it(table, clock):
    """A request whose every target is ejected tries them all the same: an answer from one of
    them is news (it works again), and restores it before its time."""
    for _ in range(3):
        table.failure("a", POLICY)
    clock.t += 2
    table.success("a", POLICY, tried_anyway=True)
    assert table.gate("a").allowed and not table.ejected("a")
