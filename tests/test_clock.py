"""HLC: monotonic, and always ahead of anything observed."""

from hypothesis import given
from hypothesis import strategies as st

from kvs.clock import HLC


def test_tick_is_strictly_increasing_when_the_wall_clock_stalls_or_goes_back() -> None:
    walls = iter([100, 100, 90, 101])
    clock = HLC(lambda: next(walls))
    stamps = [clock.tick() for _ in range(4)]
    assert stamps == [(100, 0), (100, 1), (100, 2), (101, 0)]


def test_observed_remote_stamp_from_a_fast_clock_is_exceeded() -> None:
    clock = HLC(lambda: 100)
    clock.observe((250, 3))
    assert clock.tick() == (250, 4)


def test_restored_state_survives_a_clock_that_went_backwards() -> None:
    clock = HLC(lambda: 10, last=(500, 2))
    assert clock.tick() == (500, 3)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 5)), max_size=40))
def test_every_tick_exceeds_every_earlier_stamp(events: list[tuple[bool, int, int]]) -> None:
    wall = [0]
    clock = HLC(lambda: wall[0])
    highest = (0, 0)
    for is_remote, t, logical in events:
        wall[0] = t
        if is_remote:
            clock.observe((t, logical))
            highest = max(highest, (t, logical))
        else:
            stamp = clock.tick()
            assert stamp > highest
            highest = stamp


def test_the_logical_counter_carries_into_the_next_millisecond_at_its_bound() -> None:
    from kvs.model import MAX_LOGICAL

    clock = HLC(lambda: 100, last=(100, MAX_LOGICAL - 1))
    assert clock.tick() == (100, MAX_LOGICAL)
    assert clock.tick() == (101, 0)  # never a stamp a peer would refuse


class _Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_node_is_skewed_when_most_of_its_measured_peers_are_off() -> None:
    from kvs.clock import ClockMonitor

    mono = _Monotonic()
    monitor = ClockMonitor(500, keep_s=60, monotonic=mono)
    assert not monitor.skewed  # nothing measured: nothing to say
    monitor.round_trip("a:1", sent_ms=10_000, remote_ms=10_005, received_ms=10_010)
    monitor.round_trip("b:1", sent_ms=10_000, remote_ms=10_005 - 86_400_000, received_ms=10_010)
    assert not monitor.skewed  # one of two is off: that peer, not us
    monitor.refused("c:1")  # outside c's auth window
    assert monitor.skewed
    report = monitor.report()
    assert report["peers"]["b:1"]["offset_ms"] == 86_400_000
    assert report["peers"]["c:1"]["offset_ms"] is None
    mono.now += 61  # every measurement aged out
    assert not monitor.skewed and monitor.report()["peers"] == {}


def test_an_offset_within_the_round_trips_uncertainty_is_not_held_against_a_node() -> None:
    from kvs.clock import ClockMonitor

    monitor = ClockMonitor(500, monotonic=_Monotonic())
    # 600 ms apart as measured, but the round trip took 400 ms: it could be 399.
    monitor.round_trip("a:1", sent_ms=10_000, remote_ms=9_600, received_ms=10_400)
    assert not monitor.skewed
    monitor.round_trip("a:1", sent_ms=20_000, remote_ms=19_000, received_ms=20_010)
    assert monitor.skewed
