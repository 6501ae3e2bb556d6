"""Where a value written through /v1/ goes: a local write, or a quorum CAS round.

Consul's KV is linearizable (a Raft leader orders every write). kvs's is when a key is a
quorum key, so the Consul front follows kvs's own rule (docs/consistency.md):

    default_consistency: local   (the default) every write is local, except to a key
                                 that already takes only quorum writes (one written
                                 through /kv with consistency=quorum)
    default_consistency: quorum  every write is a quorum CAS round; `cas=N` then compares
                                 the key's cluster-wide `seq`, which is the ModifyIndex
                                 such a key shows (docs/consul.md)

A write Consul's clients send with `cas` answers False when the condition fails, as
Consul does; every other error is the engine's or the quorum's (503 without a majority).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from kvs.cluster.quorum import Quorum
from kvs.conditions import NONE, Conditions
from kvs.config import Config
from kvs.engine import Engine, Op
from kvs.errors import CASConflict, NotFound


class Writes:
    def __init__(self, config: Config, engine: Engine, quorum: Quorum) -> None:
        self.config = config
        self.engine = engine
        self.quorum = quorum

    def quorum_for(self, key: str) -> bool:
        return self.config.default_consistency == "quorum" or self.engine.is_quorum_key(key)

    async def set(self, write: Op) -> bool:
        """`write`, an Op "set" whose condition is Consul's `cas` (kvs's, see
        _quorum_condition); False, nothing written, when the condition fails."""
        try:
            if self.quorum_for(write.key):
                await self.quorum.put(write.key, *_quorum_condition(write.cond), value=write.value,
                                      flags=write.flags, ttl_ms=write.ttl_ms)
            else:
                await self.engine.put(write)
        except (CASConflict, NotFound):  # NotFound: cas=N for a key that does not exist
            return False
        return True

    async def delete(self, key: str, cond: Conditions = NONE) -> bool:
        """False only when the condition fails; deleting a missing key is True (Consul's)."""
        try:
            with contextlib.suppress(NotFound):
                if self.quorum_for(key):
                    await self.quorum.put(key, *_quorum_condition(cond), deleted=True)
                else:
                    await self.engine.delete(key, cond)
        except CASConflict:
            return False
        return True


def _quorum_condition(cond: Conditions) -> tuple[Conditions, int | None]:
    """Consul's `cas` on a quorum key: 0 stays "does not exist" (kvs's cas=0), N > 0
    becomes the key's seq (if_seq), the number a quorum key shows as its ModifyIndex."""
    if cond.cas:
        return replace(cond, cas=None), cond.cas
    return cond, None
