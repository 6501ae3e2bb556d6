"""`kvs get/put/cas/delete --consistency quorum` and `--if-seq` (issue 14), against three
in-process voters: the commands run in a thread (the nodes live on the test's event loop)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kvs.cli import EXIT_CONFLICT, EXIT_ERROR, EXIT_USAGE, main
from kvs.node import Node
from kvs.testing import run_kvs
from tests.conftest import NodeFactory
from tests.test_quorum import three


async def kvs(capsys: pytest.CaptureFixture[str], node: Node, *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, [args[0], "--node", node.url, *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def answer(result: tuple[int, str, str]) -> Any:
    code, out, err = result
    assert code == 0, err
    return json.loads(out)


async def test_quorum_commands_print_seq_and_take_if_seq(make_node: NodeFactory,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = await three(make_node)
    put = answer(await kvs(capsys, a, "put", "q/cli", '{"n": 1}', "--consistency", "quorum"))
    assert put["seq"] == 1
    got = answer(await kvs(capsys, b, "get", "q/cli", "--consistency", "quorum"))
    assert (got["value"], got["seq"]) == ({"n": 1}, 1)
    code, out, _ = await kvs(capsys, c, "get", "q/cli", "--raw", "--consistency", "quorum")
    assert (code, json.loads(out)) == (0, {"n": 1})
    cas = answer(await kvs(capsys, c, "cas", "q/cli", "2", "--if-seq", "1", "--consistency", "quorum"))
    assert cas["seq"] == 2
    code, _, err = await kvs(capsys, a, "cas", "q/cli", "3", "--if-seq", "1", "--consistency", "quorum")
    assert code == EXIT_CONFLICT and '"seq": 2' in err
    code, _, err = await kvs(capsys, b, "put", "q/cli", "4")  # a local write to a quorum key
    assert code == EXIT_ERROR and "consistency=quorum" in err
    code, _, err = await kvs(capsys, b, "cas", "q/cli", "4", "--cas", "3", "--consistency", "quorum")
    assert code == EXIT_ERROR and "use if_seq" in err
    deleted = answer(await kvs(capsys, a, "delete", "q/cli", "--if-seq", "2", "--consistency", "quorum"))
    assert deleted["seq"] == 3
    local = answer(await kvs(capsys, a, "put", "plain/cli", "1"))
    assert local["seq"] is None  # a local write has no cluster-wide seq


@pytest.mark.parametrize(("args", "words"), [
    (["put", "k", "1", "--consistency", "strong"], "invalid choice: 'strong'"),
    (["delete", "k/", "--recurse", "--consistency", "quorum"], "does not combine with --recurse"),
    (["put", "k", "1", "--if-seq", "-1"], "--if-seq"),
    (["cas", "k", "1", "--consistency", "quorum"], "--if-seq"),  # no condition: names --if-seq too
])
def test_quorum_usage_errors_exit_2_before_anything_is_sent(args: list[str], words: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*args[:1], "--node", "http://127.0.0.1:9", *args[1:]]  # nothing listens there
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        code = int(exit_.code or 0)
    assert code == EXIT_USAGE
    assert words in capsys.readouterr().err


async def test_kvs_lock_is_a_quorum_lease_on_several_voters_unless_told(make_node: NodeFactory) -> None:
    from kvs.client import AsyncClient, NotFound

    a, b, _ = await three(make_node)
    for key, extra in (("locks/auto", []), ("locks/local", ["--consistency", "local"])):
        # A subprocess: kvs lock installs signal handlers, which only a main thread can.
        done = await asyncio.to_thread(run_kvs, "lock", key, "--node", a.url, "--ttl", "5", *extra,
                                       "--", "true")
        assert done.returncode == 0, done.stderr
    async with AsyncClient(b.url) as kv:
        with pytest.raises(NotFound) as auto:
            await kv.get("locks/auto", consistency="quorum")
        assert auto.value.seq == 2  # acquired (cas=0) and released (delete) as a quorum key
        with pytest.raises(NotFound) as local:
            await kv.get("locks/local", consistency="quorum")
        assert local.value.seq == 0 and "consistency=local" in local.value.message


async def test_voters_list_remove_add(make_node: NodeFactory, capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _ = await three(make_node)
    listed = answer(await kvs(capsys, a, "voters", "--json"))
    assert listed == {"epoch": 1, "ids": ["qa", "qb", "qc"]}
    removed = answer(await kvs(capsys, b, "voters", "remove", "qc", "--json"))
    assert removed == {"epoch": 2, "ids": ["qa", "qb"]}
    code, out, _ = await kvs(capsys, a, "voters")
    assert code == 0 and "voters (epoch 2): qa, qb" in out
    code, out, _ = await kvs(capsys, a, "voters", "add", "qc")
    assert code == 0 and "voters (epoch 3): qa, qb, qc" in out
    code, _, err = await kvs(capsys, a, "voters", "add", "nobody")
    assert code == EXIT_CONFLICT and "nobody is not a member this node knows" in err
    assert answer(await kvs(capsys, b, "voters", "--json"))["epoch"] == 3
