"""HMAC signing of /internal/ requests: the pure functions and the aiohttp middleware."""

from __future__ import annotations

import time

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from kvs.cluster.auth import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
    verify,
)
from kvs.errors import Unauthorized
from kvs.http.server import make_app

SECRET = "s3cret"
NOW = 1_700_000_000_000
PATH = "/internal/swim/ping?x=1"
BODY = b'{"a":1}'


def test_round_trip() -> None:
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    assert set(headers) == {TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER}
    verify(SECRET, "POST", PATH, BODY, headers, NOW + 1_000)


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in sign(SECRET, "POST", PATH, BODY, NOW).items()}
    verify(SECRET, "post", PATH, BODY, headers, NOW)


@pytest.mark.parametrize("skew", [30_001, -30_001])
def test_outside_the_window_either_way_is_rejected(skew: int) -> None:
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    with pytest.raises(Unauthorized, match="window"):
        verify(SECRET, "POST", PATH, BODY, headers, NOW + skew)


def test_edge_of_the_window_is_accepted() -> None:
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    verify(SECRET, "POST", PATH, BODY, headers, NOW + 30_000)
    verify(SECRET, "POST", PATH, BODY, headers, NOW - 30_000)


@pytest.mark.parametrize("field,value", [
    ("body", b'{"a":2}'), ("path", "/internal/swim/join?x=1"), ("path", "/internal/swim/ping"),
    ("method", "PUT"), ("secret", "other"),
])
def test_any_change_breaks_the_signature(field: str, value: object) -> None:
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    args = {"secret": SECRET, "method": "POST", "path": PATH, "body": BODY, field: value}
    with pytest.raises(Unauthorized, match="does not match"):
        verify(args["secret"], args["method"], args["path"], args["body"], headers, NOW)


def test_moving_the_timestamp_breaks_the_signature() -> None:
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    headers[TIMESTAMP_HEADER] = str(NOW + 1)
    with pytest.raises(Unauthorized, match="does not match"):
        verify(SECRET, "POST", PATH, BODY, headers, NOW)


@pytest.mark.parametrize("missing", [TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER])
def test_missing_headers_are_rejected(missing: str) -> None:
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    del headers[missing]
    with pytest.raises(Unauthorized, match=missing):
        verify(SECRET, "POST", PATH, BODY, headers, NOW)


@pytest.mark.parametrize("timestamp", ["", "abc", "-5", "1e3", "١٢٣"])
def test_malformed_timestamp_is_rejected(timestamp: str) -> None:
    headers = sign(SECRET, "POST", PATH, BODY, NOW)
    headers[TIMESTAMP_HEADER] = timestamp
    with pytest.raises(Unauthorized):
        verify(SECRET, "POST", PATH, BODY, headers, NOW)


# -- the route wrapper --------------------------------------------------------------------------


async def _client(secret: str | None) -> tuple[TestClient, list[bytes]]:
    seen: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(await request.read())
        return web.json_response({"ok": True})

    routes = [web.post("/internal/echo", handler), web.post("/public", handler)]
    app = make_app(routes, secret=secret, client_max_size=1 << 20)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, seen


async def test_wrapper_accepts_signed_and_rejects_unsigned_internal_requests() -> None:
    client, seen = await _client(SECRET)
    try:
        now = time.time_ns() // 1_000_000
        ok = await client.post("/internal/echo?q=1", data=BODY,
                               headers=sign(SECRET, "POST", "/internal/echo?q=1", BODY, now))
        assert ok.status == 200
        assert seen == [BODY]  # the handler still reads the body the wrapper read

        forged = await client.post("/internal/echo", data=b"{}",
                                   headers=sign(SECRET, "POST", "/internal/echo", BODY, now))
        assert forged.status == 401
        assert (await forged.json())["error"] == "unauthorized"

        unsigned = await client.post("/internal/echo", data=BODY)
        body = await unsigned.json()
        assert unsigned.status == 401
        assert body["error"] == "unauthorized" and TIMESTAMP_HEADER in body["message"]
        assert seen == [BODY]  # the handler never ran for a rejected request

        public = await client.post("/public", data=BODY)
        assert public.status == 200
    finally:
        await client.close()


async def test_wrapper_without_a_secret_passes_everything() -> None:
    client, seen = await _client(None)
    try:
        response = await client.post("/internal/echo", data=BODY)
        assert response.status == 200
        assert seen == [BODY]
    finally:
        await client.close()
