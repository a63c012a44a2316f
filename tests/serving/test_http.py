"""The HTTP service over a real uvicorn server on a free loopback port."""

from __future__ import annotations

import pytest

from eventrec.serving import RankingService
from eventrec.serving.http import create_app
from http_server import running


@pytest.fixture(scope="module")
def server(served):
    store, checkpoint, _ = served
    service = RankingService.load(checkpoint, store, max_candidates=50)
    with running(create_app(service)) as client:
        yield client, service


def body(n=20, **extra):
    ads = [5, 6, 7, 8, 9, 4242]
    return {"user_id": 1, "candidates": [{"ad_id": ads[i % 6], "category": ["hats", "shoes"][i % 2]} for i in range(n)],
            "context": {"placement": "feed"}, "timestamp": 1000} | extra


def test_rank_health_openapi(server):
    client, service = server
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["precision"] == "fp32"
    response = client.post("/rank", json=body(top_k=5))
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["model_version"] == service.version and len(data["ranked"]) == 5
    clicks = [r["scores"]["click"] for r in data["ranked"]]
    assert clicks == sorted(clicks, reverse=True) and set(data["ranked"][0]["scores"]) == {"click", "conversion"}
    direct = service.rank(1, body()["candidates"], {"placement": "feed"}, 1000)
    assert data["ranked"][0]["index"] == int(direct.order[0])
    assert abs(data["ranked"][0]["scores"]["click"] - float(direct.scores[direct.order[0], 0])) < 1e-6
    assert "/rank" in client.get("/openapi.json").json()["paths"]


def test_limits_and_malformed_payloads(server):
    client, _ = server
    assert client.post("/rank", json=body(51)).status_code == 413
    cases = [
        ({k: v for k, v in body().items() if k != "user_id"}, ["body", "user_id"]),
        (body(top_k=0), ["body", "top_k"]),
        (body(candidates="nope"), ["body", "candidates"]),
        (body(candidates=[{"ad_id": 5}]), ["body", "candidates", "0", "category"]),
        (body(context={}), ["body", "context", "placement"]),
    ]
    for payload, loc in cases:
        response = client.post("/rank", json=payload)
        assert response.status_code == 422, (payload, response.text)
        assert [str(x) for x in response.json()["detail"][0]["loc"]] == loc


def columns(records: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in records] for k in records[0]}


def test_columnar_candidates_rank_as_records(server):
    """``candidates`` as ``{column: [values]}`` ranks exactly as the same candidates as records; its
    bad shapes get 422 naming the column, and the candidate limit still answers 413."""
    client, _ = server
    records = client.post("/rank", json=body()).json()
    columnar = client.post("/rank", json=body(candidates=columns(body()["candidates"])))
    assert columnar.status_code == 200, columnar.text
    assert columnar.json()["ranked"] == records["ranked"]
    assert client.post("/rank", json=body(candidates=columns(body(51)["candidates"]))).status_code == 413
    uneven = columns(body()["candidates"]) | {"category": ["hats"]}
    cases = [(uneven, ["body", "candidates", "category"]), ({"ad_id": [5, 6]}, ["body", "candidates", "category"]),
             ({"ad_id": [5], "category": "hats"}, ["body", "candidates"])]
    for candidates, loc in cases:
        response = client.post("/rank", json=body(candidates=candidates))
        assert response.status_code == 422, (candidates, response.text)
        assert [str(x) for x in response.json()["detail"][0]["loc"]][: len(loc)] == loc


def test_events_then_metrics(server):
    client, _ = server
    event = {"event_type": "click", "timestamp": 900, "ad_id": 8, "category": "bags", "price": 3.0}
    assert client.post("/events", json={"user_id": 2, "events": [event]}).status_code == 200
    old = client.post("/events", json={"user_id": 2, "events": [event | {"timestamp": 10}]})
    assert old.status_code == 409 and "older" in old.json()["detail"][0]["msg"]
    assert client.post("/events", json={"user_id": 2, "events": [{"event_type": "click", "timestamp": 950}]}).status_code == 422
    client.post("/rank", json=body(user_id=2))
    client.post("/rank", json=body(user_id=2))
    samples = parse_metrics(client.get("/metrics").text)
    assert samples[("eventrec_requests_total", (("endpoint", "/rank"), ("status", "200")))] >= 2
    assert ("eventrec_request_latency_seconds_bucket", (("endpoint", "/rank"), ("le", "+Inf"))) in samples
    assert samples[("eventrec_requests_total", (("endpoint", "/events"), ("status", "409")))] == 1
    assert samples[("eventrec_user_cache_hits_total", ())] >= 1
    assert ("eventrec_candidate_cache_hits_total", ()) in samples and ("eventrec_user_cache_bytes", ()) in samples


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    """The exposition parsed by prometheus_client's own parser (raises on a malformed text):
    ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}
