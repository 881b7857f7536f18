"""The demo a newcomer clicks through: forms that come back, real hints, one error format."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask.testing import FlaskClient


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    monkeypatch.setenv("FLASK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FLASK_DEMO_LIMIT", "2 per minute")
    from app import create_app

    return create_app().test_client()


def said(response: Any) -> str:
    """What a form's redirect tells the index it did."""
    assert response.status_code == 303
    location = urlsplit(response.headers["Location"])
    assert location.path == "/"
    return str(parse_qs(location.query)["done"][0])


def test_a_form_comes_back_to_the_index_with_what_it_did(client: FlaskClient) -> None:
    assert said(client.post("/hits", data={"back": "1"})) == '/hits: {"hits": 1}'
    moved = said(client.post("/transfer", data={"back": "1", "amount": "5"}))
    assert moved == '/transfer: {"account:a": 995, "account:b": 1005}'
    index = client.get("/", query_string={"done": moved})
    assert index.status_code == 200 and moved.encode() in index.data.replace(b"&#34;", b'"')
    failed = said(client.post("/transfer", data={"back": "1", "amount": "abc"}))
    assert failed.startswith("/transfer failed (400): amount must be a whole number")
    assert client.post("/hits").json == {"hits": 2}  # curl and scripts: the JSON itself


def test_the_index_hints_use_the_real_host_and_quote_urls(client: FlaskClient) -> None:
    html = client.get("/", base_url="http://demo.example:8123").data.decode()
    hint = re.search(r"curl -X POST '([^']+)'", html)
    assert hint and hint.group(1) == "http://demo.example:8123/transfer?amount=5"
    assert "localhost:8000" not in html


def test_accounts_show_the_opening_balances_before_any_transfer(client: FlaskClient) -> None:
    assert client.get("/accounts").json == {"account:a": 1000, "account:b": 1000}


def test_a_rate_limit_answers_json_like_every_other_error(client: FlaskClient) -> None:
    assert [client.get("/limited").status_code for _ in range(2)] == [200, 200]
    refused = client.get("/limited")
    assert refused.status_code == 429 and refused.is_json
    assert refused.json is not None and refused.json["error"] == "TooManyRequests"
    assert "Retry-After" in refused.headers
