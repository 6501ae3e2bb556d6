"""JSON forms of kvs/paxos.py's data: Paxos messages between nodes, and the acceptor state
and voter configuration a node keeps in RocksDB. Pure.

The value of a kvs key's register is `Register(seq, Version)`: the version is an ordinary
kvs version (what GET, history and replication show), `seq` its place on the key's chain.

Decoding is as strict as a client write: whatever a peer (or anyone who can reach
/internal/) sends raises ValueError unless it is what a kvs node produces; the caller
turns that into a 400 and checks what depends on its own settings (key rules, value size).
"""

from __future__ import annotations

from typing import Any

from kvs.model import MAX_ORIGIN_LEN, MAX_U64, Version, from_wire
from kvs.paxos import (
    Accept,
    AcceptorState,
    Ack,
    Ballot,
    Config,
    Installed,
    Nack,
    Prepare,
    Promise,
    Proposal,
    Register,
    Reply,
    Stale,
)

MAX_VOTERS = 64


def _uint(name: str, raw: Any, low: int = 0) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= MAX_U64:
        raise ValueError(f"{name} must be an integer from {low} to {MAX_U64}")
    return raw


def _node(raw: Any) -> str:
    if not isinstance(raw, str) or not 0 < len(raw) <= MAX_ORIGIN_LEN or not raw.isprintable():
        raise ValueError("a node id must be a printable string")
    return raw


def _dict(raw: Any, name: str, fields: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict) or not fields.issuperset(raw):
        raise ValueError(f"{name} must be an object with fields {', '.join(sorted(fields))}")
    return raw


# -- ballots, configurations, registers ------------------------------------------------------


def ballot_json(ballot: Ballot | None) -> list[Any] | None:
    return None if ballot is None else [ballot.counter, ballot.node]


def ballot_from(raw: Any) -> Ballot | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 2:
        raise ValueError("a ballot is [counter, node id]")
    return Ballot(_uint("ballot counter", raw[0]), _node(raw[1]))


def config_json(config: Config) -> dict[str, Any]:
    return {"epoch": config.epoch, "voters": sorted(config.voters),
            "prepare_quorum": config.prepare_quorum, "accept_quorum": config.accept_quorum}


def config_from(raw: Any) -> Config:
    fields = {"epoch", "voters", "prepare_quorum", "accept_quorum"}
    body = _dict(raw, "config", fields)
    voters = body.get("voters")
    if set(body) != fields or not isinstance(voters, list) or not 0 < len(voters) <= MAX_VOTERS:
        raise ValueError(f"config needs epoch, voters (1 to {MAX_VOTERS} node ids) and quorums")
    return Config(_uint("epoch", body["epoch"], 1), frozenset(_node(v) for v in voters),
                  _uint("prepare_quorum", body["prepare_quorum"], 1),
                  _uint("accept_quorum", body["accept_quorum"], 1))


def register_json(register: Register | None) -> dict[str, Any] | None:
    if register is None:
        return None
    return {"seq": register.seq, "version": register.value.to_wire()}


def register_from(raw: Any) -> Register | None:
    if raw is None:
        return None
    body = _dict(raw, "register", {"seq", "version"})
    if set(body) != {"seq", "version"}:
        raise ValueError("a register is {seq, version}")
    return Register(_uint("seq", body["seq"], 1), from_wire(body["version"]))


def register_version(register: Register | None) -> Version | None:
    return None if register is None else register.value


def _proposal_json(proposal: Proposal | None) -> dict[str, Any] | None:
    if proposal is None:
        return None
    return {"ballot": ballot_json(proposal.ballot), "value": register_json(proposal.value)}


def _proposal_from(raw: Any) -> Proposal | None:
    if raw is None:
        return None
    body = _dict(raw, "accepted", {"ballot", "value"})
    ballot = ballot_from(body.get("ballot"))
    if ballot is None:
        raise ValueError("an accepted value needs its ballot")
    return Proposal(ballot, register_from(body.get("value")))


# -- what an acceptor keeps ------------------------------------------------------------------


def state_json(state: AcceptorState) -> dict[str, Any]:
    return {"promised": ballot_json(state.promised), "accepted": _proposal_json(state.accepted)}


def state_from(raw: Any) -> AcceptorState:
    body = _dict(raw, "acceptor state", {"promised", "accepted"})
    return AcceptorState(ballot_from(body.get("promised")), _proposal_from(body.get("accepted")))


# -- messages and replies --------------------------------------------------------------------


def message_json(key: str, message: Prepare | Accept) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "ballot": ballot_json(message.ballot),
                           "config": config_json(message.config)}
    if isinstance(message, Accept):
        out.update(value=register_json(message.value), next=ballot_json(message.next))
    return out


def message_from(raw: Any, *, accept: bool) -> tuple[str, Prepare | Accept]:
    """(key, message) from a prepare or accept body. The key is checked by the caller."""
    fields = {"key", "ballot", "config"} | ({"value", "next"} if accept else set())
    body = _dict(raw, "message", fields)
    key, ballot = body.get("key"), ballot_from(body.get("ballot"))
    if not isinstance(key, str) or ballot is None:
        raise ValueError("a message needs a key (string) and a ballot")
    config = config_from(body.get("config"))
    if not accept:
        return key, Prepare(ballot, config)
    value = register_from(body.get("value"))
    if value is not None and value.value.key != key:
        raise ValueError("the accepted version is of another key")
    return key, Accept(ballot, value, config, ballot_from(body.get("next")))


def batch_from(raw: Any, max_messages: int) -> list[tuple[str, Prepare | Accept]]:
    """The messages of a batch body, {"messages": [["prepare" | "accept", message], ...]},
    in order; the whole batch is refused if one of them is malformed."""
    body = _dict(raw, "batch", {"messages"})
    entries = body.get("messages")
    if not isinstance(entries, list) or not 0 < len(entries) <= max_messages:
        raise ValueError(f"messages must be a list of 1 to {max_messages} entries")
    messages = []
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] not in ("prepare", "accept"):
            raise ValueError('a batch entry is ["prepare" or "accept", message]')
        messages.append(message_from(entry[1], accept=entry[0] == "accept"))
    return messages


def replies_from(raw: Any, count: int) -> list[Reply]:
    """The replies to a batch of `count` messages, in the batch's order."""
    body = _dict(raw, "batch reply", {"replies"})
    replies = body.get("replies")
    if not isinstance(replies, list) or len(replies) != count:
        raise ValueError(f"a batch of {count} messages is answered with {count} replies")
    return [reply_from(reply) for reply in replies]


def reply_json(reply: Reply) -> dict[str, Any]:
    out: dict[str, Any] = {"voter": reply.voter, "ballot": ballot_json(reply.ballot)}
    if isinstance(reply, Promise):
        out.update(type="promise", accepted=_proposal_json(reply.accepted))
    elif isinstance(reply, Ack):
        out.update(type="ack", next=ballot_json(reply.next))
    elif isinstance(reply, Nack):
        out.update(type="nack", promised=ballot_json(reply.promised), of_accept=reply.of_accept,
                   accepted=ballot_json(reply.accepted))
    else:
        out.update(type="stale", config=config_json(reply.config), of_accept=reply.of_accept,
                   accepted=ballot_json(reply.accepted))
    return out


def reply_from(raw: Any) -> Reply:
    body = _dict(raw, "reply", {"type", "voter", "ballot", "accepted", "next", "promised",
                                "of_accept", "config"})
    kind, voter, ballot = body.get("type"), _node(body.get("voter")), ballot_from(body.get("ballot"))
    of_accept = body.get("of_accept", False)
    if not isinstance(of_accept, bool):
        raise ValueError("of_accept must be a boolean")
    if kind == "stale":
        return Stale(voter, ballot, config_from(body.get("config")), of_accept,
                     ballot_from(body.get("accepted")))
    if ballot is None:
        raise ValueError("a reply needs the ballot it answers")
    if kind == "promise":
        return Promise(voter, ballot, _proposal_from(body.get("accepted")))
    if kind == "ack":
        return Ack(voter, ballot, ballot_from(body.get("next")))
    if kind == "nack":
        promised = ballot_from(body.get("promised"))
        if promised is None:
            raise ValueError("a nack names the ballot promised")
        return Nack(voter, ballot, promised, of_accept, ballot_from(body.get("accepted")))
    raise ValueError("reply type must be promise, ack, nack or stale")


def installed_json(reply: Installed | Stale) -> dict[str, Any]:
    if isinstance(reply, Installed):
        return {"type": "installed", "voter": reply.voter, "epoch": reply.epoch}
    return reply_json(reply)


def installed_from(raw: Any) -> Installed | Stale:
    body = _dict(raw, "install reply", {"type", "voter", "epoch", "ballot", "config", "of_accept",
                                        "accepted"})
    if body.get("type") == "installed":
        return Installed(_node(body.get("voter")), _uint("epoch", body.get("epoch"), 1))
    reply = reply_from(raw)
    if not isinstance(reply, Stale):
        raise ValueError("an install is answered installed or stale")
    return reply
