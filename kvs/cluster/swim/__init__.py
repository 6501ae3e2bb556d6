"""SWIM membership: `state` is the pure table and transitions, `node` runs it over HTTP."""

from kvs.cluster.swim.membership import Membership
from kvs.cluster.swim.state import ALIVE, DEAD, LEFT, SUSPECT, Member, Timing, Update

__all__ = ["ALIVE", "DEAD", "LEFT", "SUSPECT", "Member", "Membership", "Timing", "Update"]
