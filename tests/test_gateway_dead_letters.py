"""``GET /dead-letters``: the letters of the dead-letter stream, newest first, paged."""

from __future__ import annotations

import httpx
from helpers import read_dead_letters
from nats.aio.client import Client

from gateway import create_app
from transport.connect import NatsSettings


async def test_dead_letters_newest_first_with_reasons_and_pages(
        engine: object, settings: NatsSettings, nc: Client) -> None:
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        js = nc.jetstream()
        s = settings.subjects
        for i in range(3):  # not JSON: the orchestrator keeps each as a dead letter
            await js.publish(s.submit, f"not json {i}".encode())
        await read_dead_letters(nc, s, count=3, timeout=20)

        page = (await http.get("/dead-letters", params={"limit": 2})).json()
        assert page["total"] == 3 and len(page["items"]) == 2, page
        newest, older = page["items"]
        assert newest["seq"] > older["seq"]
        assert newest["letter"]["data"] == "not json 2"
        assert newest["letter"]["reason"]["code"] and newest["letter"]["reason"]["message"]
        rest = (await http.get("/dead-letters", params={"before": page["next_before"]})).json()
        assert [x["letter"]["data"] for x in rest["items"]] == ["not json 0"]
        assert "next_before" not in rest
        bad = await http.get("/dead-letters", params={"limit": 0})
        assert bad.status_code == 400 and bad.json()["field"] == "query.limit"


async def test_no_dead_letter_stream_is_an_empty_list(settings: NatsSettings,
                                                      nc: Client) -> None:
    transport = httpx.ASGITransport(app=create_app(settings, auth=None, nc=nc))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        assert (await http.get("/dead-letters")).json() == {"items": [], "total": 0}
