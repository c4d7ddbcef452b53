"""Unit tests of list source settings (no network, no Redis)."""

import json

import pytest
from pydantic import ValidationError

from scoring.errors import ConfigurationError
from scoring.settings import load_settings
from scoring.sources import ListSource


def test_location_hides_credentials_and_query():
    source = ListSource(name="feed", url="https://user:secret@lists.example/drop.txt?key=abc")
    assert source.location == "https://lists.example/drop.txt?..."


def test_location_of_path(tmp_path):
    assert ListSource(name="local", path=tmp_path / "a.txt").location == str(tmp_path / "a.txt")


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "x"},
        {"name": "x", "path": "/a", "url": "http://127.0.0.1/a"},
        {"name": "x", "url": "ftp://127.0.0.1/a"},
        {"name": "x", "url": "http:///a"},
        {"name": "x", "url": "http://127.0.0.1:port/a"},
        {"name": "x", "url": "http://127.0.0.1:99999/a"},
        {"name": "bad name", "path": "/a"},
        {"name": "x", "path": "/a", "kind": "denylist"},
        {"name": "x", "path": "/a", "min_count": 0},
        {"name": "x", "path": "/a", "unknown": 1},
    ],
)
def test_invalid_sources_rejected(fields):
    with pytest.raises(ValidationError):
        ListSource(**fields)


def test_fingerprint_follows_options():
    base = ListSource(name="ipsum", path="/a", format="ipsum")
    assert base.fingerprint() == ListSource(name="renamed", path="/a", format="ipsum").fingerprint()
    assert base.fingerprint() != ListSource(name="ipsum", path="/a", format="ipsum", min_count=3).fingerprint()
    assert base.fingerprint() != ListSource(name="ipsum", path="/a", format="ipsum", kind="allowlist").fingerprint()


def test_sources_from_environment(monkeypatch):
    value = [{"name": "drop", "url": "http://127.0.0.1:8000/drop.txt", "format": "spamhaus"}, {"name": "ours", "path": "/srv/allow.txt", "kind": "allowlist"}]
    monkeypatch.setenv("RISK_BLOCKLIST_SOURCES", json.dumps(value))
    sources = load_settings().blocklist_sources
    assert [source.name for source in sources] == ["drop", "ours"]
    assert sources[1].kind.value == "allowlist"


def test_duplicate_source_names_rejected_without_echo(monkeypatch):
    secret_url = "http://127.0.0.1:8000/drop.txt?key=secret-token"
    monkeypatch.setenv("RISK_BLOCKLIST_SOURCES", json.dumps([{"name": "a", "url": secret_url}, {"name": "a", "path": "/x"}]))
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert "RISK_BLOCKLIST_SOURCES" in message
    assert "source name 'a' is used more than once" in message
    assert "secret-token" not in message
