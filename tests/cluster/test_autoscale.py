"""cluster.autoscale: Ray Serve's rule (ceil(in flight / target), bounded, after a delay)."""

from __future__ import annotations

from onnxforge.cluster.autoscale import Autoscaler


def scaler() -> Autoscaler:
    return Autoscaler(1, 4, target_ongoing=2.0, upscale_delay=5.0, downscale_delay=60.0)


def test_what_the_load_calls_for_is_bounded() -> None:
    rule = scaler()
    assert [rule.wanted(n) for n in (0, 1, 2, 3, 5, 8, 9, 100)] == [1, 1, 1, 2, 3, 4, 4, 4]
    assert [rule.wanted(n) for n in (0.4, 2.0, 2.01, 7.5)] == [1, 1, 2, 4]  # means, too
    assert not Autoscaler(2, 2).enabled and rule.enabled


def test_more_replicas_only_once_the_load_has_called_for_them_for_the_delay() -> None:
    rule = scaler()
    assert rule.decide(0.0, ongoing=7, current=1) == 1  # the call starts
    assert rule.decide(4.9, ongoing=6, current=1) == 1  # not long enough yet
    assert rule.decide(5.0, ongoing=7, current=1) == 4  # straight to what it calls for
    assert rule.decide(5.5, ongoing=7, current=4) == 4


def test_a_pause_in_the_load_starts_the_delay_again() -> None:
    rule = scaler()
    assert rule.decide(0.0, ongoing=5, current=1) == 1
    assert rule.decide(3.0, ongoing=1, current=1) == 1  # back to what there is: reset
    assert rule.decide(6.0, ongoing=5, current=1) == 1  # a new call, from 6 s
    assert rule.decide(10.9, ongoing=5, current=1) == 1
    assert rule.decide(11.0, ongoing=5, current=1) == 3


def test_fewer_replicas_one_at_a_time_each_after_the_longer_delay() -> None:
    rule = scaler()
    assert rule.decide(0.0, ongoing=0, current=4) == 4
    assert rule.decide(59.0, ongoing=0, current=4) == 4
    assert rule.decide(60.0, ongoing=0, current=4) == 3  # one drained
    assert rule.decide(61.0, ongoing=0, current=3) == 3  # the next waits its own delay
    assert rule.decide(121.0, ongoing=0, current=3) == 2


def test_a_change_of_direction_restarts_the_delay() -> None:
    rule = scaler()
    assert rule.decide(0.0, ongoing=0, current=2) == 2  # calls for fewer
    assert rule.decide(30.0, ongoing=8, current=2) == 2  # now for more: the clock restarts
    assert rule.decide(34.0, ongoing=8, current=2) == 2
    assert rule.decide(35.0, ongoing=8, current=2) == 4
