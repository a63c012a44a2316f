"""Issue 21 (items 3, 4, 5, 10): bad values are 422s naming the field, never 500s; oversize bodies are
413s before parsing; /metrics stays bounded, escaped and counts every status; one bad append cannot
lock a user out, and an operator can repair a user."""

from __future__ import annotations

import time

import httpx
import pytest

from eventrec.serving import InvalidInput, OutOfOrderEvents, RankingService
from eventrec.serving.http import create_app
from http_server import running
from test_core import candidates, click
from test_http import parse_metrics

CONTEXT = {"placement": "feed"}
EVENT = click(900, 8, "bags")
RANK = {"user_id": 1, "candidates": candidates(3), "context": CONTEXT, "timestamp": 1000}
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store, max_candidates=50)
    with running(create_app(service, max_body_bytes=4096)) as client:
        yield client, service


def events(user, **changes) -> dict:
    return {"user_id": user, "events": [EVENT | changes]}


BAD = [  # (path, JSON body or raw bytes, the field the 422 names)
    ("/events", events(20, price="cheap"), ["body", "events", "0", "price"]),
    ("/events", b'{"user_id": 20, "events": [{"event_type": "click", "timestamp": 900, "ad_id": 8, "category": "bags", "price": Infinity}]}',
     ["body", "events", "0", "price"]),
    ("/events", events(20, timestamp=1e30), ["body", "events", "0", "timestamp"]),
    ("/events", events(20, timestamp=2**63), ["body", "events", "0", "timestamp"]),
    ("/events", events(20, timestamp=1_700_000_000_000), ["body", "events", "0", "timestamp"]),  # milliseconds as seconds
    ("/events", events(20, timestamp=-5), ["body", "events", "0", "timestamp"]),
    ("/events", events(20, timestamp=900.5), ["body", "events", "0", "timestamp"]),
    ("/events", b'{"user_id": 20, "events": [{"event_type": "click", "timestamp": NaN, "ad_id": 8, "category": "bags", "price": 1}]}',
     ["body", "events", "0", "timestamp"]),
    ("/events", events(20, ad_id=1.5), ["body", "events", "0", "ad_id"]),
    ("/events", events(20, ad_id={"a": 1}), ["body", "events", "0", "ad_id"]),
    ("/events", events(20, category=[1]), ["body", "events", "0", "category"]),
    ("/events", events(20, stream={}), ["body", "events", "0", "stream"]),
    ("/events", {"user_id": 20, "events": [{"event_type": "view", "timestamp": 5, "category": "x", "topics": "ab"}]},
     ["body", "events", "0", "topics"]),
    ("/rank", RANK | {"timestamp": 2**63}, ["body", "timestamp"]),
    ("/rank", RANK | {"timestamp": 1e30}, ["body", "timestamp"]),
    ("/rank", b'{"user_id": 1, "candidates": [], "top_k": NaN}', ["body", "top_k"]),
    ("/rank", b'{"user_id": NaN, "candidates": []}', ["body", "user_id"]),
    ("/rank", RANK | {"candidates": [{"ad_id": 1.5, "category": "hats"}]}, ["body", "candidates", "0", "ad_id"]),
    ("/rank", RANK | {"candidates": [{"ad_id": {"x": 1}, "category": "hats"}]}, ["body", "candidates", "0", "ad_id"]),
    ("/rank", RANK | {"candidates": {"ad_id": [5, 2.5], "category": ["hats", "shoes"]}}, ["body", "candidates", "ad_id", "1"]),
    ("/rank", RANK | {"context": {"placement": {"a": 1}}}, ["body", "context", "placement"]),
]


@pytest.mark.parametrize("path, payload, loc", BAD, ids=[f"{p}:{'.'.join(loc[1:])}:{i}" for i, (p, _, loc) in enumerate(BAD)])
def test_bad_values_are_422_naming_the_field(server, path, payload, loc):
    client, _ = server
    response = client.post(path, content=payload, headers=JSON) if isinstance(payload, bytes) else client.post(path, json=payload)
    assert response.status_code == 422, response.text
    assert [str(x) for x in response.json()["detail"][0]["loc"]][: len(loc)] == loc  # (a union adds its member: user_id.int)
    assert client.get("/health").status_code == 200  # the connection and the server still serve


def test_oversize_bodies_are_413_before_parsing(server):
    client, _ = server
    big = b'{"user_id": 1, "events": [' + b" " * 5000 + b"]}"
    assert client.post("/events", content=big, headers=JSON).status_code == 413  # Content-Length above the limit

    def chunked():  # no Content-Length: the body grows past the limit chunk by chunk
        yield b'{"user_id": 1, "events": ['
        for _ in range(100):
            yield b" " * 100

    response = client.post("/events", content=chunked(), headers=JSON)
    assert response.status_code == 413 and "limit is 4096" in response.text
    small = client.post("/events", content=(x for x in [b'{"user_id": 30, ', b'"events": [' + httpx.Response(200, json=EVENT).content + b"]}"]),
                        headers=JSON)
    assert small.status_code == 200, small.text  # a chunked body within the limit is served
    samples = parse_metrics(client.get("/metrics").text)
    assert samples[("eventrec_requests_total", (("endpoint", "/events"), ("status", "413")))] == 2


def test_metrics_bounded_escaped_and_count_500(server, monkeypatch):
    client, service = server
    client.get("/metrics")
    before = len(client.get("/metrics").text)
    for i in range(200):
        client.get(f"/nope/{i}/%22%7D%0A%7Bx%3D%22{i}")  # a quote, a brace and a newline in the raw path
    text = client.get("/metrics").text
    samples = parse_metrics(text)  # parses: labels are escaped
    endpoints = {dict(labels).get("endpoint") for _, labels in samples}
    assert endpoints <= {None, "/rank", "/events", "/health", "/metrics", "/admin/drop-events", "<unmatched>"}
    assert samples[("eventrec_requests_total", (("endpoint", "<unmatched>"), ("status", "404")))] >= 200
    assert len(text) < before + 4000  # one label for all unknown paths, not one per path

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "rank", fail)
    response = client.post("/rank", json=RANK)
    assert response.status_code == 500 and response.json()["detail"][0]["type"] == "InternalError"
    assert client.get("/health").status_code == 200
    assert parse_metrics(client.get("/metrics").text)[("eventrec_requests_total", (("endpoint", "/rank"), ("status", "500")))] == 1


def test_bad_append_cannot_lock_a_user_out_and_can_be_repaired(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store)
    with pytest.raises(InvalidInput, match="out of range"):
        service.append_events(7, [click(1_700_000_000_000)])  # milliseconds as seconds: refused by the range check
    with pytest.raises(InvalidInput, match="clock"):
        service.append_events(7, [click(int(time.time()) + 2 * 86_400)])  # beyond now + future_tolerance_s
    service.append_events(7, [click(int(time.time()) + 3600)])  # within the tolerance
    # a time within the range but wrong (no clock check configured): every later correct append is a 409 ...
    lenient = RankingService.load(checkpoint, store, future_tolerance_s=None)
    for s in (service, lenient):
        s.append_events(1, [click(300, 9, "bags")])
    lenient.append_events(1, [click(7_000_000_000)])
    with pytest.raises(OutOfOrderEvents):
        lenient.append_events(1, [click(400)])
    lenient.rank(1, candidates(), CONTEXT, 1000)
    # ... until the operator drops the user's appended events after the last good time: the store's history stays
    assert lenient.drop_appended_events(1, 300) == {"dropped": 1, "events": 8}
    assert lenient.append_events(1, [click(400)])["events"] == 9
    service.append_events(1, [click(400)])
    assert lenient.rank(1, candidates(), CONTEXT, 1000).scores.tolist() == service.rank(1, candidates(), CONTEXT, 1000).scores.tolist()
    assert lenient.drop_appended_events(1, 0) == {"dropped": 2, "events": 7}  # never below the store's history
    assert lenient.drop_appended_events(99, 0) == {"dropped": 0, "events": 0}


def test_admin_drop_endpoint(server):
    client, service = server
    assert client.post("/events", json=events(40, timestamp=500)).status_code == 200
    assert client.post("/events", json=events(40, timestamp=600)).status_code == 200
    response = client.post("/admin/drop-events", json={"user_id": 40, "after": 500})
    assert response.status_code == 200 and response.json() == {"dropped": 1, "events": 1}
    assert client.post("/admin/drop-events", json={"user_id": 40, "after": -1}).status_code == 422
