"""Tests of list refreshes, range lookups and the allowlist against the real session server.

HTTP sources are served by a ListServer on 127.0.0.1; nothing talks to any other host.
"""

from __future__ import annotations

import bisect
import ipaddress
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from list_server import ListServer

from scoring.blocklists import SourceOutcome, SourceResult, live_manifest, refresh_lists, swap_in
from scoring.cli import cli
from scoring.embedded import ServerInfo
from scoring.engine import BatchResult, BatchScorer
from scoring.keys import Keys
from scoring.locks import SingleFlightLock
from scoring.ranges import parse_member
from scoring.settings import Settings, get_settings
from scoring.sources import ListSource
from scoring.store import IpListing, connect, ensure_group, read_batch, read_new

@pytest.fixture
def server() -> Iterator[ListServer]:
    running = ListServer()
    try:
        yield running
    finally:
        running.close()


def file_source(path: Path, text: str | bytes, **options: object) -> ListSource:
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return ListSource(name=options.pop("name", path.stem), path=path, **options)  # type: ignore[arg-type]


def listings(client: redis.Redis, keys: Keys, *ips: str) -> dict[str, IpListing]:
    return read_batch(client, keys, ips, [], 0.8).listings


def blocklisted(client: redis.Redis, keys: Keys, ip: str) -> bool:
    return listings(client, keys, ip)[ip].blocklisted


def score_fields(client: redis.Redis, settings: Settings, entries: list[dict[str, str]]) -> BatchResult:
    """Add entries to the stream, read them through the consumer group and score them in one batch."""
    keys = Keys.from_settings(settings)
    ensure_group(client, keys)
    for fields in entries:
        client.xadd(keys.stream, fields)  # type: ignore[arg-type]
    batch = read_new(client, keys, "test", len(entries))
    assert len(batch) == len(entries)
    return BatchScorer(client, settings).score(batch)


def score(client: redis.Redis, settings: Settings, ips: dict[str, str]) -> dict[str, dict[str, str]]:
    """Score one transaction per (tx_id, ip) with a small amount and no history; return the hashes."""
    score_fields(client, settings, [{"tx_id": tx_id, "user_id": "user_1", "amount": "10", "ip": ip} for tx_id, ip in ips.items()])
    keys = Keys.from_settings(settings)
    hashes = {}
    for tx_id in ips:
        raw = client.hgetall(keys.transaction(tx_id))
        hashes[tx_id] = {name.decode(): value.decode() for name, value in raw.items()}
    return hashes


# --- real public lists ----------------------------------------------------------------------------

# file, format, single addresses, networks, lines: the counts in the data folder's SOURCES.md.
REAL_LISTS = [
    ("firehol_level1.netset", "netset", 403, 2_341, 2_777),
    ("spamhaus_drop.txt", "spamhaus", 0, 1_385, 1_390),
    ("spamhaus_dropv6.txt", "spamhaus", 0, 78, 83),
    ("ipsum.txt", "ipsum", 120_430, 0, 120_437),
    ("et_compromised-ips.txt", "plain", 539, 0, 539),
]
FIREHOL_UNIQUE_ADDRESSES = 619_265_499
"""The address count in the header of firehol_level1.netset ("619265499 unique IPs")."""


def real_sources(data: Path, names: list[str] | None = None) -> list[ListSource]:
    return [
        ListSource(name=name.split(".")[0], path=data / name, format=fmt)  # type: ignore[arg-type]
        for name, fmt, *_ in REAL_LISTS
        if names is None or name in names
    ]


class Reference:
    """An independent model of the lists, built with ipaddress.collapse_addresses and sets."""

    def __init__(self, data: Path) -> None:
        from scoring.lists import read_blocklist

        self.singles: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for name, fmt, *_ in REAL_LISTS:
            parsed = read_blocklist(data / name, fmt)
            self.singles.update(parsed.addresses)
            networks += [ipaddress.ip_network(text) for text in parsed.networks]
        self.v4 = list(ipaddress.collapse_addresses(n for n in networks if n.version == 4))
        self.v6 = list(ipaddress.collapse_addresses(n for n in networks if n.version == 6))
        self._starts = {4: [int(n.network_address) for n in self.v4], 6: [int(n.network_address) for n in self.v6]}

    def in_range(self, text: str) -> bool:
        address = ipaddress.ip_address(text)
        networks = self.v4 if address.version == 4 else self.v6
        position = bisect.bisect_right(self._starts[address.version], int(address)) - 1
        return position >= 0 and address in networks[position]


_REFERENCES: dict[Path, Reference] = {}


@pytest.fixture
def reference(shared_data: Path) -> Reference:
    """The Reference of the real lists, built once per test session."""
    if shared_data not in _REFERENCES:
        _REFERENCES[shared_data] = Reference(shared_data)
    return _REFERENCES[shared_data]


@pytest.fixture
def real_lists(client, keys, settings, shared_data: Path):
    """All five real lists loaded together; returns the refresh report."""
    report = refresh_lists(client, keys, settings, real_sources(shared_data))
    assert report.swapped, report.message
    return report


def test_real_lists_loaded_counts(client, keys, real_lists):
    assert [outcome.result for outcome in real_lists.outcomes] == [SourceResult.updated] * 5
    for name, fmt, addresses, networks, lines in REAL_LISTS:
        status = {k.decode(): v.decode() for k, v in client.hgetall(keys.list_source_status(name.split(".")[0])).items()}
        assert int(status["addresses"]) == addresses, name
        assert int(status["networks"]) == networks, name
        assert int(status["lines"]) == lines, name
        assert int(status["invalid"]) == 0, name
        assert status["format"] == fmt, name
        assert status["version"] == real_lists.version, name


def test_real_lists_ranges_match_reference(client, keys, real_lists, reference):
    members = [parse_member(member) for member in client.zrange(keys.blocklist_ranges, 0, -1)]
    covered = {4: 0, 6: 0}
    for version, start, end in members:
        covered[version] += end - start + 1
    assert covered[4] == sum(network.num_addresses for network in reference.v4)
    assert covered[6] == sum(network.num_addresses for network in reference.v6)
    outside = {address for address in reference.singles if not reference.in_range(address)}
    assert real_lists.counts["bloom_addresses"] == len(outside)
    assert real_lists.counts["addresses_in_ranges"] == len(reference.singles) - len(outside)
    assert int(client.execute_command("BF.CARD", keys.blocklist)) <= len(outside)


def test_real_firehol_covers_header_count(client, keys, settings, shared_data):
    report = refresh_lists(client, keys, settings, real_sources(shared_data, ["firehol_level1.netset"]))
    members = [parse_member(member) for member in client.zrange(keys.blocklist_ranges, 0, -1)]
    in_ranges = sum(end - start + 1 for _version, start, end in members)
    assert in_ranges + report.counts["bloom_addresses"] == FIREHOL_UNIQUE_ADDRESSES


def test_real_range_bounds(client, keys, real_lists, reference, shared_data):
    from scoring.lists import read_blocklist

    probes: dict[str, bool] = {}
    for name in ("spamhaus_drop.txt", "spamhaus_dropv6.txt", "firehol_level1.netset"):
        for text in read_blocklist(shared_data / name, "spamhaus" if "spamhaus" in name else "netset").networks[:60]:
            network = ipaddress.ip_network(text)
            probes[str(network.network_address)] = True
            probes[str(network.broadcast_address)] = True
            for step in (-1, 1):
                edge = network.network_address if step < 0 else network.broadcast_address
                try:
                    neighbour = str(edge + step)
                except ipaddress.AddressValueError:
                    continue  # no address before 0.0.0.0 or after the last one
                probes[neighbour] = reference.in_range(neighbour)

    found = listings(client, keys, *probes)
    for address, expected_in_range in probes.items():
        assert found[address].match.startswith("range") is expected_in_range, address
        if expected_in_range:
            assert found[address].blocklisted, address


def test_real_random_addresses_agree(client, keys, real_lists, reference):
    generator = random.Random(20260822)
    v4 = [str(ipaddress.IPv4Address(generator.getrandbits(32))) for _ in range(3000)]
    v6_networks = reference.v6
    v6 = []
    for _ in range(500):
        network = generator.choice(v6_networks)
        # Half inside a DROPv6 range, half just beyond its end.
        offset = generator.randrange(network.num_addresses)
        v6.append(str(network.network_address + offset) if generator.random() < 0.5 else str(network.broadcast_address + 1 + offset % 1000))
    singles = generator.sample(sorted(reference.singles), 2000)

    found = listings(client, keys, *v4, *v6, *singles)
    false_positives = 0
    not_listed = 0
    for address, listing in found.items():
        in_range = reference.in_range(address)
        assert listing.match.startswith("range") is in_range, address
        expected = in_range or address in reference.singles
        if expected:
            assert listing.blocklisted, address
        else:
            not_listed += 1
            false_positives += listing.blocklisted
    # Single addresses come from a Bloom filter with a 1% error rate.
    assert false_positives <= 0.03 * not_listed


def first_ipsum_address_outside_ranges(data: Path, reference: Reference) -> str:
    for line in (data / "ipsum.txt").read_text().splitlines():
        if not line.startswith("#") and not reference.in_range(line.split()[0]):
            return line.split()[0]
    raise AssertionError("every ipsum address is inside a range")


def test_real_ipv6_and_mapped_addresses_scored(client, keys, settings, real_lists, shared_data, reference):
    ipsum_address = first_ipsum_address_outside_ranges(shared_data, reference)
    hashes = score(
        client,
        settings,
        {
            "tx_v6_first": "2c0f:6c0::",
            "tx_v6_last": "2C0F:06CF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF",
            "tx_v6_after": "2c0f:6d0::",
            "tx_mapped_range": "::ffff:10.20.30.40",
            "tx_mapped_single": f"::ffff:{ipsum_address}",
            "tx_clean": "8.8.8.8",
        },
    )
    drop_range = "range 2c0f:6c0::-2c0f:6cf:ffff:ffff:ffff:ffff:ffff:ffff"
    assert hashes["tx_v6_first"]["ip_blocklist_match"] == drop_range
    assert hashes["tx_v6_last"]["ip_blocklist_match"] == drop_range
    assert hashes["tx_v6_last"]["ip_checked"] == "2c0f:6cf:ffff:ffff:ffff:ffff:ffff:ffff"
    assert hashes["tx_v6_last"]["outcome"] == "flagged"
    assert hashes["tx_v6_after"]["ip_blocklist_match"] == ""
    assert hashes["tx_mapped_range"]["ip_checked"] == "10.20.30.40"
    assert hashes["tx_mapped_range"]["ip_blocklist_match"] == "range 10.0.0.0-10.255.255.255"
    assert hashes["tx_mapped_range"]["reasons"].split(",")[0] == "ip_blocklisted"
    assert hashes["tx_mapped_single"]["ip_blocklist_match"] == "address"
    assert not reference.in_range("8.8.8.8")
    assert "8.8.8.8" not in reference.singles
    assert hashes["tx_clean"]["ip_risk"] == "0"
    for fields in hashes.values():
        assert fields["list_version"] == real_lists.version


def test_real_allowlist_wins(client, keys, settings, shared_data, tmp_path, reference):
    ipsum_address = first_ipsum_address_outside_ranges(shared_data, reference)
    allow = file_source(tmp_path / "allow.txt", f"10.20.0.0/16\n{ipsum_address}\n", kind="allowlist")
    report = refresh_lists(client, keys, settings, [*real_sources(shared_data), allow])
    assert report.counts["allowlist_ranges"] == 2

    hashes = score(client, settings, {"tx_allowed": "10.20.1.1", "tx_blocked": "10.30.1.1", "tx_single": ipsum_address})

    assert hashes["tx_allowed"]["outcome"] == "approved"
    assert hashes["tx_allowed"]["ip_risk"] == "0"
    assert "ip_allowlisted" in hashes["tx_allowed"]["reasons"].split(",")
    assert hashes["tx_allowed"]["ip_blocklist_match"] == "range 10.0.0.0-10.255.255.255"
    assert hashes["tx_allowed"]["ip_allowlist_match"] == "10.20.0.0-10.20.255.255"
    assert hashes["tx_blocked"]["outcome"] == "flagged"
    assert hashes["tx_single"]["outcome"] == "approved"
    assert hashes["tx_single"]["ip_allowlist_match"] == ipsum_address


def test_reserved_allowlist_setting(client, keys, make_settings, shared_data):
    default = make_settings()
    refresh_lists(client, keys, default, real_sources(shared_data, ["firehol_level1.netset"]))

    flagged = score(client, default, {"tx_proxy_default": "192.168.1.10"})["tx_proxy_default"]
    allowed = score(client, make_settings(allowlist_reserved=True), {"tx_proxy_allowed": "192.168.1.10", "tx_public": "1.1.1.1"})

    assert flagged["outcome"] == "flagged"
    assert flagged["ip_blocklist_match"] == "range 192.168.0.0-192.168.255.255"
    assert allowed["tx_proxy_allowed"]["outcome"] == "approved"
    assert allowed["tx_proxy_allowed"]["ip_allowlist_match"] == "reserved"
    assert allowed["tx_public"]["ip_allowlist_match"] == ""


# --- versions -------------------------------------------------------------------------------------


def test_no_refresh_records_no_version(client, settings):
    fields = score(client, settings, {"tx_1": "192.0.2.1"})["tx_1"]
    assert fields["list_version"] == "none"
    assert fields["ip_risk"] == "0"


def test_version_recorded_and_advances(client, keys, settings, tmp_path):
    path = tmp_path / "list.txt"
    source = file_source(path, "192.0.2.1\n")
    first = refresh_lists(client, keys, settings, [source])
    assert score(client, settings, {"tx_1": "192.0.2.1"})["tx_1"]["list_version"] == first.version

    path.write_text("192.0.2.1\n192.0.2.2\n")
    second = refresh_lists(client, keys, settings, [source])

    assert int(second.version) > int(first.version)
    fields = score(client, settings, {"tx_2": "192.0.2.2"})["tx_2"]
    assert fields["list_version"] == second.version
    assert fields["ip_blocklist_match"] == "address"
    manifest = live_manifest(client, keys)
    assert manifest is not None
    assert manifest["version"] == second.version
    assert [item["name"] for item in manifest["sources"]] == ["list"]
    assert client.llen(keys.list_versions) == 2


def test_unchanged_file_keeps_version(client, keys, settings, tmp_path):
    source = file_source(tmp_path / "list.txt", "192.0.2.1\n198.51.100.0/24\n")
    first = refresh_lists(client, keys, settings, [source])

    second = refresh_lists(client, keys, settings, [source])

    assert second.swapped is False
    assert second.outcomes[0].result is SourceResult.unchanged
    assert second.version == first.version
    assert client.get(keys.list_counter) == first.version.encode()


def test_refresh_leaves_no_build_keys(client, keys, settings, tmp_path):
    source = file_source(tmp_path / "list.txt", "192.0.2.1\n198.51.100.0/24\n")
    refresh_lists(client, keys, settings, [source])
    assert list(client.scan_iter(match=f"{keys.prefix}:lists:build:*")) == []
    assert client.pttl(keys.blocklist) == -1
    assert client.pttl(keys.blocklist_ranges) == -1


def test_empty_range_set_removed_on_swap(client, keys, settings, tmp_path):
    path = tmp_path / "list.txt"
    source = file_source(path, "192.0.2.1\n198.51.100.0/24\n")
    refresh_lists(client, keys, settings, [source])
    path.write_text("192.0.2.1\n192.0.2.9\n")

    refresh_lists(client, keys, settings, [source], force=True)

    assert not client.exists(keys.blocklist_ranges)
    assert not blocklisted(client, keys, "198.51.100.7")
    assert blocklisted(client, keys, "192.0.2.9")


def test_swap_refused_without_lock(client, keys, settings, tmp_path):
    source = file_source(tmp_path / "list.txt", "192.0.2.1\n")
    first = refresh_lists(client, keys, settings, [source])
    stranger = SingleFlightLock(client, keys.list_lock)
    data = refresh_lists(client, keys, settings, [source]).outcomes[0].data
    outcome = SourceOutcome(source, SourceResult.updated, data=data, data_is_new=True)

    with pytest.raises(redis.ResponseError, match="LOCKLOST"):
        swap_in(client, keys, stranger, [outcome], error_rate=0.01, capacity=10)

    assert live_manifest(client, keys)["version"] == first.version  # type: ignore[index]
    assert list(client.scan_iter(match=f"{keys.prefix}:lists:build:*")) == []


# --- guards: a bad source never replaces a good list ----------------------------------------------

GOOD_LIST = "".join(f"192.0.2.{n}\n" for n in range(1, 41)) + "198.51.100.0/24\n"


def assert_live_list_kept(client: redis.Redis, keys: Keys, version: str, name: str, error: str) -> dict[str, str]:
    assert blocklisted(client, keys, "192.0.2.1")
    assert blocklisted(client, keys, "198.51.100.77")
    assert live_manifest(client, keys)["version"] == version  # type: ignore[index]
    status = {k.decode(): v.decode() for k, v in client.hgetall(keys.list_source_status(name)).items()}
    assert status["last_result"] == "failed"
    assert error in status["last_error"]
    assert status["consecutive_failures"] == "1"
    assert status["last_success_at"] < status["last_error_at"]
    assert int(status["entries"]) == 41
    return status


def test_guard_missing_file(client, keys, settings, tmp_path):
    path = tmp_path / "list.txt"
    source = file_source(path, GOOD_LIST)
    good = refresh_lists(client, keys, settings, [source])
    path.unlink()

    report = refresh_lists(client, keys, settings, [source])

    assert report.failed[0].error == f"file not found: {path}"
    assert not report.swapped
    assert_live_list_kept(client, keys, good.version, "list", "file not found")


@pytest.mark.parametrize(
    ("route", "error"),
    [
        ({"status": 500}, "HTTP 500"),
        ({"status": 404}, "HTTP 404"),
        ({"delay_s": 1.5}, "read timed out after 0.3 s"),
        ({"body": "x" * 3000}, "larger than the limit of 2,048 bytes"),
        ({"body": "x" * 3000, "send_length": False}, "larger than the limit of 2,048 bytes"),
        ({"body": "# only a comment\n"}, "the list has no entries"),
        ({"body": "".join(f"192.0.2.{n}\n" for n in range(1, 9)) + "junk\n" * 2}, "2 of 10 data lines are invalid"),
        ({"body": "192.0.2.1\n192.0.2.2\n"}, "entries dropped from 41 to 2"),
        ({"body": b"192.0.2.1\n\xff\xfe\n"}, "line 2 is not valid UTF-8"),
        ({"redirect_to": "/list"}, "more than 5 redirects"),
    ],
    ids=["http-500", "http-404", "read-timeout", "too-large", "too-large-streamed", "empty", "invalid-share", "drop", "not-utf8", "redirect-loop"],
)
def test_guard_http(client, keys, make_settings, server, route, error):
    settings = make_settings(blocklist_read_timeout_s=0.3, blocklist_max_bytes=2048)
    source = ListSource(name="feed", url=server.serve("/list", GOOD_LIST, etag='"v1"'))
    good = refresh_lists(client, keys, settings, [source])
    assert good.swapped
    server.serve("/list", **{"body": GOOD_LIST, **route})

    report = refresh_lists(client, keys, settings, [source])

    assert not report.swapped
    assert error in (report.failed[0].error or "")
    assert_live_list_kept(client, keys, good.version, "feed", error)


def test_guard_connection_refused(client, keys, settings, server):
    source = ListSource(name="feed", url=server.serve("/list", GOOD_LIST))
    good = refresh_lists(client, keys, settings, [source])
    closed = ListServer()
    closed.close()
    moved = ListSource(name="feed", url=closed.url("/list"))

    report = refresh_lists(client, keys, settings, [moved])

    assert "request failed" in (report.failed[0].error or "")
    assert blocklisted(client, keys, "192.0.2.1")
    assert live_manifest(client, keys)["version"] == good.version  # type: ignore[index]


def test_guard_file_too_large(client, keys, make_settings, tmp_path):
    settings = make_settings(blocklist_max_bytes=1024)
    path = tmp_path / "list.txt"
    source = file_source(path, GOOD_LIST[:1000])
    good = refresh_lists(client, keys, settings, [source])
    path.write_text(GOOD_LIST * 3)

    report = refresh_lists(client, keys, settings, [source])

    assert "larger than the limit of 1,024 bytes" in (report.failed[0].error or "")
    assert live_manifest(client, keys)["version"] == good.version  # type: ignore[index]


def test_invalid_share_below_limit_accepted(client, keys, settings, tmp_path):
    source = file_source(tmp_path / "list.txt", GOOD_LIST + "junk\n")
    report = refresh_lists(client, keys, settings, [source])
    assert report.swapped
    assert report.outcomes[0].parsed.invalid == 1  # type: ignore[union-attr]
    assert report.outcomes[0].parsed.invalid_examples[0][0] == 42  # type: ignore[union-attr]


def test_drop_accepted_with_force(client, keys, settings, tmp_path):
    path = tmp_path / "list.txt"
    source = file_source(path, GOOD_LIST)
    refresh_lists(client, keys, settings, [source])
    path.write_text("192.0.2.1\n")
    assert refresh_lists(client, keys, settings, [source]).failed

    report = refresh_lists(client, keys, settings, [source], force=True)

    assert report.swapped
    assert not blocklisted(client, keys, "198.51.100.77")


def test_drop_guard_per_source_override(client, keys, settings, tmp_path):
    path = tmp_path / "list.txt"
    refresh_lists(client, keys, settings, [file_source(path, GOOD_LIST)])
    path.write_text("192.0.2.1\n")

    report = refresh_lists(client, keys, settings, [ListSource(name="list", path=path, max_drop=1.0)])

    assert report.swapped


def test_changed_options_skip_drop_guard(client, keys, settings, tmp_path):
    path = tmp_path / "ipsum.txt"
    body = "".join(f"192.0.2.{n}\t{1 if n > 5 else 3}\n" for n in range(1, 41))
    refresh_lists(client, keys, settings, [file_source(path, body, format="ipsum")])

    report = refresh_lists(client, keys, settings, [ListSource(name="ipsum", path=path, format="ipsum", min_count=3)])

    assert report.swapped, report.failed
    assert report.outcomes[0].data.entries == 5  # type: ignore[union-attr]


def test_failed_source_keeps_entries_while_others_update(client, keys, settings, server, tmp_path):
    path = tmp_path / "local.txt"
    local = file_source(path, "192.0.2.1\n192.0.2.2\n")
    remote = ListSource(name="remote", url=server.serve("/remote", "198.51.100.0/24\n", etag='"a"'))
    refresh_lists(client, keys, settings, [local, remote])
    path.unlink()
    server.serve("/remote", "198.51.100.0/24\n203.0.113.0/24\n", etag='"b"')

    report = refresh_lists(client, keys, settings, [local, remote])

    assert [outcome.result for outcome in report.outcomes] == [SourceResult.failed, SourceResult.updated]
    assert report.swapped
    assert blocklisted(client, keys, "192.0.2.1")
    assert blocklisted(client, keys, "203.0.113.9")
    assert report.outcomes[0].data.entries == 2  # type: ignore[union-attr]


def test_never_accepted_source_builds_nothing(client, keys, settings, tmp_path):
    report = refresh_lists(client, keys, settings, [ListSource(name="absent", path=tmp_path / "absent.txt")])
    assert not report.swapped
    assert "no source has accepted entries" in report.message
    assert not client.exists(keys.list_version)


# --- conditional HTTP requests --------------------------------------------------------------------


def test_etag_not_modified_means_no_rebuild(client, keys, settings, server):
    source = ListSource(name="feed", url=server.serve("/list", GOOD_LIST, etag='"v1"'))
    first = refresh_lists(client, keys, settings, [source])

    second = refresh_lists(client, keys, settings, [source])

    requests = server.requests_for("/list")
    assert [request.status for request in requests] == [200, 304]
    assert "if-none-match" not in requests[0].headers
    assert requests[1].headers["if-none-match"] == '"v1"'
    assert second.outcomes[0].result is SourceResult.unchanged
    assert not second.swapped
    assert second.version == first.version
    assert client.get(keys.list_counter) == first.version.encode()


def test_last_modified_not_modified(client, keys, settings, server):
    stamp = "Sat, 22 Aug 2026 01:00:29 GMT"
    source = ListSource(name="feed", url=server.serve("/list", GOOD_LIST, last_modified=stamp))
    refresh_lists(client, keys, settings, [source])

    second = refresh_lists(client, keys, settings, [source])

    assert server.requests_for("/list")[1].headers["if-modified-since"] == stamp
    assert second.outcomes[0].result is SourceResult.unchanged


def test_changed_etag_rebuilds(client, keys, settings, server):
    source = ListSource(name="feed", url=server.serve("/list", GOOD_LIST, etag='"v1"'))
    first = refresh_lists(client, keys, settings, [source])
    server.serve("/list", GOOD_LIST + "203.0.113.5\n", etag='"v2"')

    second = refresh_lists(client, keys, settings, [source])
    third = refresh_lists(client, keys, settings, [source])

    assert second.swapped
    assert int(second.version) == int(first.version) + 1
    assert blocklisted(client, keys, "203.0.113.5")
    assert server.requests_for("/list")[2].headers["if-none-match"] == '"v2"'
    assert not third.swapped


def test_failed_download_keeps_old_validators(client, keys, settings, server):
    source = ListSource(name="feed", url=server.serve("/list", GOOD_LIST, etag='"v1"'))
    refresh_lists(client, keys, settings, [source])
    server.serve("/list", "192.0.2.1\n", etag='"v2"')
    refresh_lists(client, keys, settings, [source])

    refresh_lists(client, keys, settings, [source])

    # The rejected v2 was never accepted, so the next request is still conditional on v1.
    assert server.requests_for("/list")[2].headers["if-none-match"] == '"v1"'


def test_force_downloads_again(client, keys, settings, server):
    source = ListSource(name="feed", url=server.serve("/list", GOOD_LIST, etag='"v1"'))
    refresh_lists(client, keys, settings, [source])

    report = refresh_lists(client, keys, settings, [source], force=True)

    assert "if-none-match" not in server.requests_for("/list")[1].headers
    assert report.outcomes[0].result is SourceResult.unchanged


def test_redirect_followed(client, keys, settings, server):
    server.serve("/new", GOOD_LIST)
    source = ListSource(name="feed", url=server.serve("/old", redirect_to="/new"))

    report = refresh_lists(client, keys, settings, [source])

    assert report.swapped
    assert blocklisted(client, keys, "192.0.2.3")


def test_format_guessed_for_url(client, keys, settings, server):
    body = "; Spamhaus DROP\n198.51.100.0/24 ; SBL1\n; EOF\n"
    report = refresh_lists(client, keys, settings, [ListSource(name="drop", url=server.serve("/drop.txt", body))])
    assert report.outcomes[0].list_format.value == "spamhaus"  # type: ignore[union-attr]
    assert blocklisted(client, keys, "198.51.100.200")


# --- single flight and concurrent scoring ---------------------------------------------------------


def test_refresh_skipped_while_another_runs(client, keys, settings, server):
    source = ListSource(name="feed", url=server.serve("/list", GOOD_LIST))
    other = SingleFlightLock(client, keys.list_lock)
    assert other.acquire()
    try:
        report = refresh_lists(client, keys, settings, [source])
    finally:
        other.release()

    assert report.skipped is not None
    assert "another list refresh is running" in report.skipped
    assert server.requests_for("/list") == []
    assert refresh_lists(client, keys, settings, [source]).swapped


def test_no_sources_skips(client, keys, settings):
    report = refresh_lists(client, keys, settings)
    assert report.skipped == "no list sources are configured (RISK_BLOCKLIST_SOURCES)"


def test_scoring_during_swaps_never_misses(client, keys, settings, tmp_path, redis_server):
    listed_singles = [f"203.0.113.{n}" for n in range(10, 20)]
    listed_ranges = ["198.51.100.0/24", "2001:db8:1::/48"]
    probes = [*listed_singles, "198.51.100.0", "198.51.100.255", "2001:db8:1::", "2001:db8:1:ffff:ffff:ffff:ffff:ffff"]
    marker = "192.0.2.5"  # listed, through a range, in odd swaps only
    generator = random.Random(7)

    def contents(with_marker: bool) -> str:
        filler = {str(ipaddress.IPv4Address(generator.getrandbits(32))) for _ in range(20_000)}
        lines = [*listed_singles, *listed_ranges, *sorted(filler)]
        if with_marker:
            lines.append("192.0.2.0/24")
        return "\n".join(lines) + "\n"

    path = tmp_path / "list.txt"
    source = ListSource(name="list", path=path, max_drop=1.0)
    path.write_text(contents(False))
    refresh_lists(client, keys, settings, [source])

    has_marker: dict[str, bool] = {}
    done = threading.Event()
    errors: list[BaseException] = []

    def swap_repeatedly() -> None:
        swapper = connect(redis_server.url(0))
        try:
            for round_number in range(1, 16):
                path.write_text(contents(round_number % 2 == 1))
                report = refresh_lists(swapper, keys, settings, [source])
                assert report.swapped, report.message
                has_marker[report.version] = round_number % 2 == 1  # type: ignore[index]
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            done.set()
            swapper.close()

    observed: list[tuple[str | None, bool]] = []
    scored = 0
    scorer_client = connect(redis_server.url(0))
    thread = threading.Thread(target=swap_repeatedly)
    thread.start()
    try:
        while not done.is_set():
            state = read_batch(scorer_client, keys, [*probes, marker], [], 0.8)
            missed = [ip for ip in probes if not state.listings[ip].blocklisted]
            assert missed == [], f"version {state.list_version} missed {missed}"
            observed.append((state.list_version, state.listings[marker].match.startswith("range")))
            if len(observed) % 10 == 0:
                scored += 1
                entries = [{"tx_id": f"tx_{scored}_{index}", "user_id": "u", "amount": "1", "ip": ip} for index, ip in enumerate(probes)]
                result = score_fields(scorer_client, settings, entries)
                assert result.outcomes["flagged"] == len(probes), result.as_dict()
    finally:
        thread.join()
        scorer_client.close()

    assert errors == []
    assert len(has_marker) == 15
    assert len({version for version, _ in observed}) > 3
    for version, marker_listed in observed:
        if version in has_marker:
            # The marker range and the version number come from one list version.
            assert marker_listed is has_marker[version], version
    assert scored > 0


# --- the command line -----------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    redis_server: ServerInfo, redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """RISK_* variables that point commands at the emptied session server, with no other RISK_* set."""
    import os

    for name in list(os.environ):
        if name.startswith("RISK_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield {"RISK_REDIS_URL": redis_server.url(0), "RISK_DATA_DIR": str(tmp_path / "data")}
    get_settings.cache_clear()


def test_cli_refresh_and_status(cli_env, client, keys, tmp_path, server):
    block = tmp_path / "block.netset"
    block.write_text("# netset\n192.0.2.1\n198.51.100.0/24\n")
    allow = tmp_path / "allow.txt"
    allow.write_text("198.51.100.7\n")
    feed = json.dumps({"name": "feed", "url": server.serve("/feed", "203.0.113.0/24\n"), "format": "netset"})
    runner = CliRunner(env=cli_env)

    result = runner.invoke(cli, ["blocklist", "refresh", "--source", str(block), "--source", feed, "--allow", str(allow)])

    assert result.exit_code == 0, result.output
    assert "block.netset (blocklist" in result.output
    assert "feed (blocklist, http://127.0.0.1:" in result.output
    assert "Version 1 is live: 1 single addresses in the Bloom filter" in result.output
    assert "2 blocklisted ranges, 1 allowlisted ranges" in result.output
    assert listings(client, keys, "198.51.100.7")["198.51.100.7"].allowlisted

    status = runner.invoke(cli, ["blocklist", "status", "--json"])
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    assert report["live"]["version"] == "1"
    assert {source["name"] for source in report["sources"]} == {"block.netset", "feed", "allow.txt"}
    assert all(source["configured"] is False for source in report["sources"])

    text = runner.invoke(cli, ["blocklist", "status"])
    assert "live version      1, built" in text.output
    assert "feed (not in RISK_BLOCKLIST_SOURCES): blocklist, http://127.0.0.1:" in text.output


def test_cli_refresh_failure_exit_code(cli_env, tmp_path):
    runner = CliRunner(env=cli_env)
    result = runner.invoke(cli, ["blocklist", "refresh", "--source", str(tmp_path / "absent.txt")])
    assert result.exit_code == 1
    assert "absent.txt (blocklist" in result.output
    assert "error: file not found" in result.output


def test_cli_refresh_configured_sources(cli_env, tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("192.0.2.1\n")
    env = {**cli_env, "RISK_BLOCKLIST_SOURCES": json.dumps([{"name": "local", "path": str(path)}])}
    runner = CliRunner(env=env)

    first = runner.invoke(cli, ["blocklist", "refresh", "--json"])
    second = runner.invoke(cli, ["blocklist", "refresh"])

    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["sources"][0]["result"] == "updated"
    assert "No source changed, so the live lists stay as they are (version 1)." in second.output
    status = runner.invoke(cli, ["blocklist", "status"]).output
    assert "local: blocklist," in status
    assert "in version 1" in status


def test_cli_refresh_without_sources(cli_env):
    result = CliRunner(env=cli_env).invoke(cli, ["blocklist", "refresh"])
    assert result.exit_code == 2
    assert "no list sources: set RISK_BLOCKLIST_SOURCES, or give --source or --allow" in result.output


def test_cli_bad_source_option(cli_env):
    result = CliRunner(env=cli_env).invoke(cli, ["blocklist", "refresh", "--source", '{"name": "x", "url": "ftp://h/x"}'])
    assert result.exit_code == 2
    assert "url must be http:// or https:// with a host" in result.output


def test_status_timing_is_recorded(client, keys, settings, tmp_path):
    started = time.time()
    refresh_lists(client, keys, settings, [file_source(tmp_path / "list.txt", "192.0.2.1\n")])
    last_run = {k.decode(): v.decode() for k, v in client.hgetall(keys.list_last_run).items()}
    assert last_run["result"] == "swapped"
    assert last_run["version"] == "1"
    assert last_run["sources"] == "list"
    assert int(last_run["duration_ms"]) <= (time.time() - started) * 1000 + 1


def test_read_after_script_cache_flush(client, keys, settings, tmp_path):
    refresh_lists(client, keys, settings, [file_source(tmp_path / "list.txt", "192.0.2.1\n198.51.100.0/24\n")])
    assert blocklisted(client, keys, "192.0.2.1")

    client.script_flush()

    assert blocklisted(client, keys, "198.51.100.1")


def test_batch_larger_than_script_slices(client, keys, settings, tmp_path):
    refresh_lists(client, keys, settings, [file_source(tmp_path / "list.txt", "10.0.0.0/8\n192.0.2.1\n")])
    addresses = [str(ipaddress.IPv4Address(0x0A000000 + n)) for n in range(2500)] + ["192.0.2.1", "192.0.2.2"]

    found = listings(client, keys, *addresses)

    assert all(found[address].match.startswith("range") for address in addresses[:2500])
    assert found["192.0.2.1"].match == "address"
    assert not found["192.0.2.2"].match.startswith("range")
