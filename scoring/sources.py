"""List sources: where a blocklist or allowlist comes from, and fetching it with limits.

A source is a local file or an http(s) URL. Fetching follows at most MAX_REDIRECTS redirects, to
http:// or https:// URLs only and never from https:// down to http://, reads at most a set number
of bytes, and gives up after a connect timeout, a timeout on each read, and a total time limit. An HTTP fetch sends the ETag and Last-Modified of the list it last accepted,
so that the server replies 304 Not Modified for an unchanged list, which is then neither downloaded
nor rebuilt.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from scoring.errors import RiskscoreError
from scoring.lists import ListFormat

USER_AGENT = "riskscore-list-refresh/1"
MAX_REDIRECTS = 5
_CHUNK_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class SourceKind(str, Enum):
    """The role of a source's entries: flag a transaction's IP, or keep it from ever being flagged."""

    blocklist = "blocklist"
    allowlist = "allowlist"


class ListSource(BaseModel):
    """One configured list: a name, a `url` or a `path`, its format and options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Unique name, shown in status.")
    url: str | None = Field(default=None, description="http:// or https:// URL of the list.")
    path: Path | None = Field(default=None, description="Local file of the list.")
    format: ListFormat | None = Field(default=None, description="List format; guessed from the content when unset.")
    min_count: int = Field(default=1, ge=1, description="ipsum lists: minimum blacklist count of an address.")
    kind: SourceKind = Field(default=SourceKind.blocklist, description="blocklist or allowlist.")
    max_drop: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Overrides RISK_BLOCKLIST_MAX_DROP for this source."
    )
    max_invalid_share: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Overrides RISK_BLOCKLIST_MAX_INVALID_SHARE for this source."
    )

    @model_validator(mode="after")
    def _one_location(self) -> ListSource:
        if (self.url is None) == (self.path is None):
            raise ValueError(f"source {self.name!r}: give exactly one of url and path")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
                raise ValueError(f"source {self.name!r}: url must be http:// or https:// with a host")
            try:
                parts.port  # noqa: B018 - urlsplit checks the port only when it is read
            except ValueError:
                raise ValueError(f"source {self.name!r}: url has an invalid port") from None
        return self

    @property
    def location(self) -> str:
        """The path, or the URL without user name, password and query, which may hold secrets."""
        if self.path is not None:
            return str(self.path)
        assert self.url is not None
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        query = "?..." if parts.query else ""
        return f"{parts.scheme}://{host}{port}{parts.path}{query}"

    def fingerprint(self) -> str:
        """Return a digest of what decides the parsed entries: location, format, count and kind.

        A source whose fingerprint changed is fetched in full and is not held to the count-drop
        guard, because its previous entries came from another configuration.
        """
        identity = {
            "url": self.url,
            "path": None if self.path is None else str(self.path),
            "format": None if self.format is None else self.format.value,
            "min_count": self.min_count,
            "kind": self.kind.value,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def check_unique_names(sources: list[ListSource]) -> list[ListSource]:
    """Return `sources`, or raise ValueError naming a name that appears more than once."""
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise ValueError(f"source name {source.name!r} is used more than once")
        seen.add(source.name)
    return sources


class FetchError(RiskscoreError):
    """Raised when a source cannot be read: missing file, HTTP error, timeout, body too large."""


@dataclass(frozen=True)
class FetchLimits:
    """Time and size limits of one fetch."""

    connect_timeout_s: float
    read_timeout_s: float
    total_timeout_s: float
    max_bytes: int


@dataclass(frozen=True)
class Fetched:
    """A fetch result: the body, or not_modified for an HTTP 304, with the validators to send next time."""

    body: bytes | None
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None


def fetch(source: ListSource, limits: FetchLimits, *, etag: str | None = None, last_modified: str | None = None) -> Fetched:
    """Read the source's bytes. Raise FetchError saying what failed and where."""
    if source.path is not None:
        return Fetched(body=_read_file(source.path, limits.max_bytes))
    assert source.url is not None
    return _http_get(source, limits, etag, last_modified)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        with path.open("rb") as handle:
            body = handle.read(max_bytes + 1)
    except FileNotFoundError:
        raise FetchError(f"file not found: {path}") from None
    except OSError as error:
        raise FetchError(f"cannot read {path}: {error.strerror or error}") from None
    if len(body) > max_bytes:
        raise FetchError(f"{path} is larger than the limit of {max_bytes:,} bytes (RISK_BLOCKLIST_MAX_BYTES)")
    return body


def _connection(url: str, connect_timeout_s: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        # Only the scheme and host are shown: the query of a redirect target may hold a token.
        shown = f"{parts.scheme}://{parts.hostname or ''}"
        raise FetchError(f"unsupported URL {shown!r}: only http:// and https:// URLs with a host are fetched")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    if scheme == "https":
        context = ssl.create_default_context()
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=connect_timeout_s, context=context), target
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=connect_timeout_s), target


def _http_get(source: ListSource, limits: FetchLimits, etag: str | None, last_modified: str | None) -> Fetched:
    assert source.url is not None
    url = source.url
    deadline = time.monotonic() + limits.total_timeout_s
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified

    for _redirect in range(MAX_REDIRECTS + 1):
        connection, target = _connection(url, limits.connect_timeout_s)
        try:
            try:
                connection.connect()
            except (socket.timeout, TimeoutError):
                raise FetchError(f"{source.location}: connect timed out after {limits.connect_timeout_s:g} s") from None
            assert connection.sock is not None
            connection.sock.settimeout(limits.read_timeout_s)
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()

            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"{source.location}: HTTP {response.status} redirect without a Location header")
                target_url = urljoin(url, location)
                if urlsplit(url).scheme.lower() == "https" and urlsplit(target_url).scheme.lower() != "https":
                    raise FetchError(f"{source.location}: redirect from https:// to a URL that is not https:// rejected")
                url = target_url
                continue
            if response.status == 304:
                return Fetched(
                    body=None,
                    not_modified=True,
                    etag=response.getheader("ETag") or etag,
                    last_modified=response.getheader("Last-Modified") or last_modified,
                )
            if response.status != 200:
                raise FetchError(f"{source.location}: HTTP {response.status} {response.reason}")
            body = _read_body(response, source, limits, deadline)
            return Fetched(
                body=body,
                etag=response.getheader("ETag"),
                last_modified=response.getheader("Last-Modified"),
            )
        except (socket.timeout, TimeoutError):
            raise FetchError(f"{source.location}: read timed out after {limits.read_timeout_s:g} s") from None
        except ssl.SSLError as error:
            raise FetchError(f"{source.location}: TLS failed: {error}") from None
        except (OSError, http.client.HTTPException) as error:
            raise FetchError(f"{source.location}: request failed: {error}") from None
        finally:
            connection.close()
    raise FetchError(f"{source.location}: more than {MAX_REDIRECTS} redirects")


def _read_body(response: http.client.HTTPResponse, source: ListSource, limits: FetchLimits, deadline: float) -> bytes:
    too_large = f"{source.location}: the body is larger than the limit of {limits.max_bytes:,} bytes (RISK_BLOCKLIST_MAX_BYTES)"
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise FetchError(too_large)
    chunks: list[bytes] = []
    received = 0
    while True:
        if time.monotonic() > deadline:
            raise FetchError(f"{source.location}: download took longer than {limits.total_timeout_s:g} s")
        chunk = response.read1(_CHUNK_BYTES)
        if not chunk:
            break
        received += len(chunk)
        if received > limits.max_bytes:
            raise FetchError(too_large)
        chunks.append(chunk)
    return b"".join(chunks)
