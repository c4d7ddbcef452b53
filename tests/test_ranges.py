"""Unit tests of range members, merging and the reserved ranges (no Redis)."""

import ipaddress

import pytest

from scoring.ranges import (
    RESERVED_NETWORKS,
    IntervalIndex,
    describe_interval,
    is_reserved,
    lookup_bound,
    member_contains,
    merge_intervals,
    network_interval,
    parse_member,
    range_member,
)


def test_member_ipv4_fixed_width():
    assert range_member(network_interval("10.0.0.0/8")) == "40a000000-0affffff"
    assert range_member(network_interval("1.2.3.4")) == "401020304-01020304"


def test_member_ipv6_fixed_width():
    member = range_member(network_interval("2c0f:6c0::/28"))
    assert member == "62c0f06c0000000000000000000000000-2c0f06cfffffffffffffffffffffffff"
    assert len(member) == 1 + 32 + 1 + 32


def test_member_round_trip():
    for text in ("0.0.0.0/8", "224.0.0.0/3", "::/128", "fe80::/10", "192.0.2.7"):
        interval = network_interval(text)
        assert parse_member(range_member(interval)) == interval
        assert parse_member(range_member(interval).encode()) == interval


def test_members_sort_like_addresses():
    texts = ["9.255.255.255", "10.0.0.0", "100.0.0.0", "255.255.255.255", "::", "::1", "2001:db8::", "ffff::"]
    members = [range_member(network_interval(text)) for text in texts]
    assert sorted(members) == members


@pytest.mark.parametrize(
    ("address", "member", "inside"),
    [
        ("10.0.0.0", "40a000000-0affffff", True),
        ("10.255.255.255", "40a000000-0affffff", True),
        ("11.0.0.0", "40a000000-0affffff", False),
        ("2c0f:6c0::", range_member(network_interval("2c0f:6c0::/28")), True),
        ("::a00:1", "40a000000-0affffff", False),
    ],
)
def test_member_contains(address, member, inside):
    assert member_contains(member, address) is inside


def test_member_contains_none():
    assert member_contains(None, "10.0.0.1") is False


def test_lookup_bound_includes_range_starting_at_address():
    member = range_member(network_interval("10.0.0.0/8"))
    bound = lookup_bound("10.0.0.0")
    assert bound.startswith("(")
    assert member < bound[1:]
    assert range_member(network_interval("10.0.0.1/32")) > bound[1:]


def test_merge_overlapping_and_adjacent():
    intervals = [network_interval(text) for text in ("10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "10.0.3.0/24")]
    merged = merge_intervals(intervals)
    assert [describe_interval(item) for item in merged] == ["10.0.0.0-10.0.1.255", "10.0.3.0-10.0.3.255"]


def test_merge_keeps_families_apart():
    # ::ffff:ffff (IPv6) and 0.0.0.0 (IPv4) are numerically adjacent but must stay apart.
    merged = merge_intervals([network_interval("255.255.255.255"), network_interval("::1"), network_interval("::")])
    assert merged == [(4, 0xFFFFFFFF, 0xFFFFFFFF), (6, 0, 1)]


def test_merge_contained_range():
    merged = merge_intervals([network_interval("10.0.0.0/8"), network_interval("10.1.2.3"), network_interval("10.2.0.0/16")])
    assert merged == [network_interval("10.0.0.0/8")]


def test_describe_interval():
    assert describe_interval(network_interval("192.0.2.0/24")) == "192.0.2.0-192.0.2.255"
    assert describe_interval(network_interval("2001:db8::1")) == "2001:db8::1"


def test_interval_index_contains():
    index = IntervalIndex.of([network_interval("10.0.0.0/8"), network_interval("2001:db8::/32")])
    assert index.contains("10.0.0.0")
    assert index.contains("10.255.255.255")
    assert not index.contains("9.255.255.255")
    assert not index.contains("11.0.0.0")
    assert index.contains("2001:db8::")
    assert not index.contains("2001:db9::")
    assert not IntervalIndex.of([]).contains("10.0.0.1")


@pytest.mark.parametrize(
    "address",
    ["10.1.2.3", "192.168.0.1", "172.31.255.255", "127.0.0.1", "100.64.0.1", "169.254.1.1", "0.0.0.0",
     "224.0.0.1", "255.255.255.255", "::1", "fd12:3456::1", "fe80::1", "ff02::1", "2001:db8::5"],
)  # fmt: skip
def test_reserved_addresses(address):
    assert is_reserved(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "172.32.0.1", "100.128.0.1", "223.255.255.255", "2606:4700::1111"])
def test_public_addresses_not_reserved(address):
    assert not is_reserved(address)


def test_reserved_networks_are_valid_cidrs():
    for text in RESERVED_NETWORKS:
        assert str(ipaddress.ip_network(text, strict=True)) == text
