"""The pure SWIM state machine, driven with an explicit `now`: no sockets, no sleeps."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvs.cluster.swim.state import (
    ALIVE,
    DEAD,
    LEFT,
    REMOVED,
    SUSPECT,
    BroadcastQueue,
    MemberTable,
    Timing,
    Update,
    initial_incarnation,
)

DEFAULTS = Timing(interval=0.2, probe_timeout=0.5, suspicion_multiplier=4)


def table(self_id: str = "a", incarnation: int = 10, timing: Timing = DEFAULTS) -> MemberTable:
    return MemberTable(
        self_id=self_id, address=f"{self_id}.local:1", joined_at=1, incarnation=incarnation,
        timing=timing, now=0.0, rng=random.Random(7),
    )


def upd(member: str, state: str, inc: int, source: str = "z") -> Update:
    return Update(member, f"{member}.local:{inc + 1}", 1, state, inc, source)  # type: ignore[arg-type]


def with_peers(t: MemberTable, *ids: str) -> MemberTable:
    for member in ids:
        t.apply(upd(member, ALIVE, 1), 0.0)
    return t


def queued(t: MemberTable) -> dict[str, tuple[str, int]]:
    return {u.id: (u.state, u.incarnation) for u in t.queue.pending()}


# -- refutation ------------------------------------------------------------------------


def test_suspicion_about_self_is_refuted_with_a_higher_incarnation() -> None:
    t = table(incarnation=10)
    t.apply(upd("a", SUSPECT, 10), 1.0)
    assert (t.me.state, t.me.incarnation) == (ALIVE, 11)
    assert queued(t)["a"] == (ALIVE, 11)


def test_death_notice_from_the_future_is_refuted_above_it() -> None:
    t = table(incarnation=10)
    t.apply(upd("a", DEAD, 42), 1.0)
    assert (t.me.state, t.me.incarnation) == (ALIVE, 43)


def test_stale_suspicion_about_self_is_ignored() -> None:
    t = table(incarnation=10)
    assert t.apply(upd("a", SUSPECT, 9), 1.0) is None
    assert t.apply(upd("a", ALIVE, 10), 1.0) is None
    assert t.me.incarnation == 10
    assert len(t.queue) == 0


def test_alive_about_self_from_an_older_life_with_a_higher_incarnation_is_outbid() -> None:
    t = table(incarnation=10)
    t.apply(upd("a", ALIVE, 15), 1.0)
    assert t.me.incarnation == 16


def test_a_leaving_node_does_not_refute() -> None:
    t = table(incarnation=10)
    t.leave(1.0)
    t.apply(upd("a", DEAD, 10), 2.0)
    assert (t.me.state, t.me.incarnation) == (LEFT, 10)


# -- incarnation ordering --------------------------------------------------------------


def test_incarnation_ordering() -> None:
    t = table()
    assert t.apply(upd("b", ALIVE, 1), 0.0) is not None
    assert t.apply(upd("b", ALIVE, 1), 0.0) is None  # duplicate
    assert t.apply(upd("b", SUSPECT, 1), 0.0).state == SUSPECT  # same inc: suspect wins
    assert t.apply(upd("b", ALIVE, 1), 0.0) is None  # alive needs a higher inc
    assert t.apply(upd("b", ALIVE, 2), 0.0).state == ALIVE  # refutation
    assert t.apply(upd("b", SUSPECT, 1), 0.0) is None  # old suspicion
    assert t.apply(upd("b", DEAD, 2), 0.0).state == DEAD
    assert t.apply(upd("b", SUSPECT, 2), 0.0) is None  # dead beats suspect
    assert t.apply(upd("b", ALIVE, 3), 0.0).state == ALIVE
    assert t.members["b"].address == "b.local:4"  # the winner brings its address


def test_unknown_member_is_created_from_any_update() -> None:
    t = table()
    assert t.apply(upd("b", DEAD, 5), 0.0).state == DEAD
    assert t.apply(upd("b", ALIVE, 5), 0.0) is None


def test_left_is_final_until_a_higher_incarnation() -> None:
    t = table()
    t.apply(upd("b", LEFT, 3), 0.0)
    for state in (ALIVE, SUSPECT, DEAD):
        assert t.apply(upd("b", state, 3), 1.0) is None
    assert t.apply(upd("b", DEAD, 2), 1.0) is None
    assert t.members["b"].state == LEFT
    assert t.apply(upd("b", ALIVE, 4), 2.0).state == ALIVE


def test_left_overrides_dead_at_the_same_incarnation() -> None:
    t = table()
    t.apply(upd("b", DEAD, 3), 0.0)
    assert t.apply(upd("b", LEFT, 3), 0.0).state == LEFT


def test_restarted_node_wins_over_its_old_dead_record() -> None:
    first_life = initial_incarnation(1_700_000_000.0)
    t = table()
    # Its first life refuted a few times and then died.
    t.apply(upd("b", ALIVE, first_life + 3), 0.0)
    t.apply(upd("b", DEAD, first_life + 3), 1.0)
    restarted = initial_incarnation(1_700_000_000.5)  # half a second later
    record = t.apply(Update("b", "b.local:9", 1, ALIVE, restarted, "b"), 2.0)
    assert record is not None
    assert (record.state, record.joined_at, record.address) == (ALIVE, 1, "b.local:9")


def test_restart_with_a_clock_behind_refutes_its_old_record_at_join() -> None:
    t = table(self_id="b", incarnation=100)  # clock stepped back: lower than before
    t.apply(upd("b", DEAD, 5_000), 0.0)  # the seed's record of our first life
    assert (t.me.state, t.me.incarnation) == (ALIVE, 5_001)


# -- suspicion timer -------------------------------------------------------------------


def test_suspect_becomes_dead_after_the_max_timeout_without_confirmations() -> None:
    t = with_peers(table(), "b", "c", "d", "e")
    low, high = DEFAULTS.suspicion_bounds(5)
    assert (low, high) == pytest.approx((0.8, 4.8))
    t.suspect("b", 1, now=10.0)
    assert t.members["b"].state == SUSPECT
    assert t.expire(10.0 + high - 0.01) == []
    [dead] = t.expire(10.0 + high)
    assert (dead.id, dead.state, dead.incarnation) == ("b", DEAD, 1)
    assert queued(t)["b"] == (DEAD, 1)
    assert t.expire(100.0) == []


def test_independent_confirmations_shorten_the_suspicion() -> None:
    t = with_peers(table(), "b", "c", "d", "e")
    low, high = DEFAULTS.suspicion_bounds(5)
    t.suspect("b", 1, now=0.0)
    t.apply(upd("b", SUSPECT, 1, source="c"), 0.1)
    assert t.expire(low) == []  # one of k=2 confirmations: somewhere between min and max
    assert t.expire(high - 0.01) != []


def test_two_confirmations_bring_the_timeout_down_to_min() -> None:
    t = with_peers(table(), "b", "c", "d", "e")
    low, _ = DEFAULTS.suspicion_bounds(5)
    t.suspect("b", 1, now=0.0)
    t.apply(upd("b", SUSPECT, 1, source="c"), 0.1)
    t.apply(upd("b", SUSPECT, 1, source="c"), 0.1)  # same confirmer twice counts once
    assert t.expire(low + 1.0) == []
    t.apply(upd("b", SUSPECT, 1, source="d"), 0.2)
    assert [m.id for m in t.expire(low)] == ["b"]


def test_small_cluster_has_no_confirmations_to_wait_for() -> None:
    t = with_peers(table(), "b", "c")
    low, _ = DEFAULTS.suspicion_bounds(3)
    t.suspect("b", 1, now=0.0)
    assert [m.id for m in t.expire(low)] == ["b"]


def test_refutation_cancels_the_timer() -> None:
    t = with_peers(table(), "b", "c", "d", "e")
    t.suspect("b", 1, now=0.0)
    t.apply(upd("b", ALIVE, 2), 0.5)
    assert t.expire(100.0) == []
    assert t.members["b"].state == ALIVE


def test_probe_result_for_an_old_incarnation_is_ignored() -> None:
    t = with_peers(table(), "b")
    t.apply(upd("b", ALIVE, 2), 0.0)
    assert t.suspect("b", 1, now=0.0) is None


def test_defaults_detect_a_crash_within_ten_seconds_on_five_nodes() -> None:
    assert DEFAULTS.detection_bound(5) <= 10.0


# -- broadcast queue -------------------------------------------------------------------


def test_broadcast_is_sent_retransmit_limit_times_then_dropped() -> None:
    q = BroadcastQueue(retransmit_mult=4)
    q.push(upd("b", ALIVE, 1))
    limit = q.retransmit_limit(5)
    assert limit == 4
    sends = [q.take(limit=10, n=5) for _ in range(limit + 2)]
    assert [len(s) for s in sends] == [1, 1, 1, 1, 0, 0]
    assert len(q) == 0


def test_newer_update_about_a_member_replaces_the_queued_one() -> None:
    q = BroadcastQueue()
    q.push(upd("b", ALIVE, 1))
    q.take(limit=10, n=5)
    q.push(upd("b", DEAD, 1))
    assert [(u.state, u.incarnation) for u in q.pending()] == [(DEAD, 1)]
    assert len([q.take(10, 5) for _ in range(4)][-1]) == 1  # a fresh budget


def test_least_sent_updates_go_first_within_the_limit() -> None:
    q = BroadcastQueue()
    q.push(upd("b", ALIVE, 1))
    q.take(limit=1, n=5)
    q.push(upd("c", ALIVE, 1))
    assert [u.id for u in q.take(limit=1, n=5)] == ["c"]


# -- probing ---------------------------------------------------------------------------


def test_round_robin_probes_every_live_peer_once_per_round() -> None:
    t = with_peers(table(), "b", "c", "d", "e")
    t.apply(upd("e", DEAD, 1), 0.0)
    first = [t.next_probe_target().id for _ in range(3)]
    second = [t.next_probe_target().id for _ in range(3)]
    assert sorted(first) == sorted(second) == ["b", "c", "d"]


def test_newcomer_is_probed_within_the_current_round() -> None:
    t = with_peers(table(), "b", "c", "d")
    t.next_probe_target()
    t.apply(upd("n", ALIVE, 1), 0.0)
    rest = [t.next_probe_target().id for _ in range(3)]
    assert "n" in rest


def test_no_probe_target_when_alone() -> None:
    assert table().next_probe_target() is None


def test_helpers_are_alive_peers_other_than_the_target() -> None:
    t = with_peers(table(), "b", "c", "d", "e")
    t.apply(upd("e", SUSPECT, 1), 0.0)
    assert sorted(m.id for m in t.helpers("b", 3)) == ["c", "d"]


def test_bad_news_is_only_for_suspect_or_dead_peers() -> None:
    t = with_peers(table(), "b", "c")
    t.apply(upd("c", DEAD, 1), 0.0)
    assert t.bad_news_for("b") is None
    assert (t.bad_news_for("c").state, t.bad_news_for("c").source) == (DEAD, "a")


# -- wire format -----------------------------------------------------------------------


def test_update_round_trips_through_the_wire_format() -> None:
    u = upd("b", SUSPECT, 3, source="c")
    assert Update.from_wire(u.to_wire()) == u


@pytest.mark.parametrize("patch", [
    {"id": ""}, {"id": 5}, {"address": "nohost"}, {"address": "h:99999"}, {"state": "gone"},
    {"incarnation": -1}, {"incarnation": True}, {"incarnation": 2**60}, {"joined_at": "1"},
    {"from": ""},
])
def test_malformed_updates_are_rejected(patch: dict) -> None:
    with pytest.raises(ValueError):
        Update.from_wire({**upd("b", ALIVE, 1).to_wire(), **patch})


def test_non_object_update_is_rejected() -> None:
    with pytest.raises(ValueError):
        Update.from_wire(["b"])


# -- properties ------------------------------------------------------------------------

updates = st.builds(
    upd,
    st.sampled_from(["b", "c", "d"]),
    st.sampled_from([ALIVE, SUSPECT, DEAD, LEFT]),
    st.integers(0, 3),
    st.sampled_from(["x", "y"]),
)


@given(st.lists(updates, max_size=25).flatmap(lambda us: st.tuples(st.just(us), st.permutations(us))))
def test_the_table_does_not_depend_on_delivery_order(orders: tuple[list[Update], list[Update]]) -> None:
    views = []
    for order in orders:
        t = table()
        for u in order + order[:3]:  # duplicates change nothing either
            t.apply(u, 0.0)
        views.append({m.id: (m.state, m.incarnation, m.address) for m in t.members.values()})
    assert views[0] == views[1]


@given(st.lists(st.tuples(st.sampled_from([ALIVE, SUSPECT, DEAD, LEFT]), st.integers(0, 20)),
                max_size=20))
def test_we_always_end_alive_and_above_every_accusation(news: list[tuple[str, int]]) -> None:
    t = table(incarnation=5)
    for state, inc in news:
        t.apply(upd("a", state, inc), 0.0)
    assert t.me.state == ALIVE
    for state, inc in news:
        assert t.me.incarnation > inc or (state == ALIVE and t.me.incarnation >= inc)


@given(st.lists(st.one_of(st.sampled_from(["b", "c", "d"]), st.integers(1, 3)), max_size=60),
       st.integers(1, 20))
def test_no_broadcast_is_sent_more_often_than_the_limit(ops: list[str | int], n: int) -> None:
    q = BroadcastQueue(retransmit_mult=4)
    limit = q.retransmit_limit(n)
    sent: dict[tuple[str, int], int] = {}
    for step, op in enumerate(ops):
        if isinstance(op, str):
            q.push(upd(op, ALIVE, step))
        else:
            for u in q.take(limit=op, n=n):
                sent[(u.id, u.incarnation)] = sent.get((u.id, u.incarnation), 0) + 1
    assert all(count <= limit for count in sent.values())


def test_a_member_back_from_the_dead_is_probed_in_the_current_round() -> None:
    t = with_peers(table(), "b", "c", "d")
    t.apply(upd("d", DEAD, 1), 0.0)
    t.next_probe_target()  # a round without d has started
    t.apply(upd("d", ALIVE, 2), 1.0)
    assert "d" in [t.next_probe_target().id for _ in range(3)]


# -- reaping and removal ---------------------------------------------------------------

DEAD_AFTER, LEFT_AFTER = 100.0, 30.0


def test_dead_and_left_members_are_reaped_after_their_periods_and_never_ourselves() -> None:
    t = with_peers(table(), "b", "c", "d")
    t.apply(upd("b", DEAD, 1), 10.0)
    t.apply(upd("c", LEFT, 1), 10.0)
    t.leave(10.0)  # our own `left` record is not ours to reap
    assert t.reap(10.0 + LEFT_AFTER - 0.1, DEAD_AFTER, LEFT_AFTER) == []
    assert [m.id for m in t.reap(10.0 + LEFT_AFTER, DEAD_AFTER, LEFT_AFTER)] == ["c"]
    assert [m.id for m in t.reap(10.0 + DEAD_AFTER, DEAD_AFTER, LEFT_AFTER)] == ["b"]
    assert {m.id: m.state for m in t.members.values()} == {
        "a": LEFT, "b": REMOVED, "c": REMOVED, "d": ALIVE}
    assert {u.id for u in t.snapshot()} == {"a", "d"}  # tombstones are not handed out
    assert len(t.queue) <= 4 and all(u.state != REMOVED for u in t.queue.pending())  # nor gossiped


def test_stale_gossip_does_not_bring_a_reaped_member_back_but_a_new_life_does() -> None:
    t = with_peers(table(), "b")
    t.apply(upd("b", DEAD, 1), 0.0)
    t.reap(DEAD_AFTER, DEAD_AFTER, LEFT_AFTER)
    for state in (ALIVE, SUSPECT, DEAD, LEFT):  # what peers that have not reaped yet still say
        assert t.apply(upd("b", state, 1), DEAD_AFTER + 1) is None
    assert t.members["b"].state == REMOVED
    back = t.apply(upd("b", ALIVE, 2), DEAD_AFTER + 2)  # restarted, or refuted its removal
    assert back is not None and back.state == ALIVE
    assert "b" in [t.next_probe_target().id for _ in range(2)]


def test_a_tombstone_is_forgotten_after_the_longer_reap_period() -> None:
    t = with_peers(table(), "b")
    t.apply(upd("b", DEAD, 1), 0.0)
    t.reap(DEAD_AFTER, DEAD_AFTER, LEFT_AFTER)
    t.reap(2 * DEAD_AFTER - 1, DEAD_AFTER, LEFT_AFTER)
    assert "b" in t.members
    t.reap(2 * DEAD_AFTER, DEAD_AFTER, LEFT_AFTER)
    assert "b" not in t.members


def test_remove_takes_only_dead_or_left_members_and_gossips_the_removal() -> None:
    t = with_peers(table(), "b", "c", "d")
    t.apply(upd("c", SUSPECT, 1), 0.0)
    t.apply(upd("d", DEAD, 1), 0.0)
    for member_id in ("a", "b", "c"):  # ourselves, alive, suspect: it may still be running
        with pytest.raises(ValueError, match="only dead or left"):
            t.remove(member_id, 1.0)
    with pytest.raises(LookupError):
        t.remove("nobody", 1.0)
    removed = t.remove("d", 1.0)
    assert removed.state == REMOVED and t.members["d"].state == REMOVED
    assert queued(t)["d"] == (REMOVED, 1)
    with pytest.raises(LookupError):
        t.remove("d", 2.0)


def test_a_live_member_told_of_its_removal_refutes_and_is_back_everywhere() -> None:
    a, b = table("a"), table("b", incarnation=7)
    a.apply(upd("b", DEAD, 7), 0.0)
    a.remove("b", 1.0)
    news = a.bad_news_for("b")  # sent along with every message to b
    assert news is not None and news.state == REMOVED
    b.apply(news, 2.0)
    assert (b.me.state, b.me.incarnation) == (ALIVE, 8)
    assert a.apply(b.me.update("b"), 3.0) is not None
    assert a.members["b"].state == ALIVE
