"""End-to-end basics of one node: write, read, history, list, delete."""

from tests.conftest import Api


async def test_put_get_delete_roundtrip(api: Api) -> None:
    put = await api.put("a/b", {"value": {"x": [1, "two"]}})
    assert put.status == 200
    assert put.body["modify_index"] == put.body["create_index"] == put.index
    got = await api.get("a/b")
    assert got.status == 200
    assert got.body["value"] == {"x": [1, "two"]}
    assert got.body["version"] == put.body["version"]
    assert got.body["parent"] is None and got.body["deleted"] is False
    deleted = await api.delete("a/b")
    assert deleted.status == 200 and deleted.body["modify_index"] > put.body["modify_index"]
    assert (await api.get("a/b")).status == 404
    history = await api.get("a/b", history="true")
    assert [r["deleted"] for r in history.body["revisions"]] == [True, False]
    assert history.body["revisions"][0]["parent"] == put.body["version"]
