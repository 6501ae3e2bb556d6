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
