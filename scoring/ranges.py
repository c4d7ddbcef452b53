"""IP ranges as sorted-set members, and the reserved ranges an allowlist setting can cover.

A range store is a sorted set whose members all have score 0, so the server orders them by their
bytes. Each member is `<family><start>-<end>`: the family is `4` or `6`, and start and end are the
first and last address as fixed-width lower-case hex (8 digits for IPv4, 32 for IPv6). Fixed width
makes the byte order of members the numeric order of their start addresses. The ranges in one
store never overlap, because they are merged before they are written, so the only range that can
contain an address is the one with the greatest start not above it:

    ZRANGE <key> (<family><address hex>. - BYLEX REV LIMIT 0 1

The bound is exclusive and ends in `.`, which sorts after the `-` of a member, so a range that
starts exactly at the address is included. Whether the address is also at or below the range's
end is checked here, in Python, so one lookup costs one command.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Interval = tuple[int, int, int]
"""(IP version, first address, last address), with addresses as integers."""

_HEX_WIDTH = {4: 8, 6: 32}
_FAMILY = {4: "4", 6: "6"}
_VERSION = {"4": 4, "6": 6}

# Addresses that are not globally reachable, from the IANA IPv4 and IPv6 Special-Purpose Address
# Registries (RFC 6890 and its updates), plus all of multicast and 240.0.0.0/4. FireHOL level1
# lists the IPv4 ones through its fullbogons source, so an internal proxy address is flagged unless
# these are allowlisted (RISK_ALLOWLIST_RESERVED).
RESERVED_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/3",
    "::/128",
    "::1/128",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:db8::/32",
    "3fff::/20",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)


# Real traffic repeats addresses, and parsing is a large share of a batch's client time.
@functools.lru_cache(maxsize=65_536)
def address_interval(text: str) -> Interval:
    """Return the one-address interval of a canonical address (see scoring.addresses.canonical_ip)."""
    address = ipaddress.ip_address(text)
    value = int(address)
    return address.version, value, value


def network_interval(text: str) -> Interval:
    """Return the interval of a CIDR text such as `10.0.0.0/8`, or of a single address."""
    if "/" not in text:
        return address_interval(text)
    network = ipaddress.ip_network(text, strict=True)
    return network.version, int(network.network_address), int(network.broadcast_address)


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Merge overlapping and adjacent intervals; return them sorted by version and start."""
    merged: list[Interval] = []
    for version, start, end in sorted(intervals):
        if merged:
            last_version, last_start, last_end = merged[-1]
            if version == last_version and start <= last_end + 1:
                merged[-1] = (version, last_start, max(end, last_end))
                continue
        merged.append((version, start, end))
    return merged


def _hex(version: int, value: int) -> str:
    return format(value, f"0{_HEX_WIDTH[version]}x")


def range_member(interval: Interval) -> str:
    """Return the sorted-set member of an interval."""
    version, start, end = interval
    return f"{_FAMILY[version]}{_hex(version, start)}-{_hex(version, end)}"


def parse_member(member: str | bytes) -> Interval:
    """Return the interval of a sorted-set member written by range_member."""
    text = member.decode("ascii") if isinstance(member, bytes) else member
    version = _VERSION[text[0]]
    start, end = text[1:].split("-", 1)
    return version, int(start, 16), int(end, 16)


def lookup_bound(address: str | Interval) -> str:
    """Return the exclusive ZRANGE BYLEX bound that finds the range with the greatest start <= address.

    `address` is a canonical address or its address_interval.
    """
    version, value, _ = address_interval(address) if isinstance(address, str) else address
    return f"({_FAMILY[version]}{_hex(version, value)}."


def member_contains(member: str | bytes | None, address: str | Interval) -> bool:
    """Return True when the range of `member` (a lookup's reply, or None) contains `address`.

    `address` is a canonical address or its address_interval. A lookup for an IPv6 address can
    return an IPv4 range, the greatest member below it, so the family is compared too.
    """
    if not member:
        return False
    version, start, end = parse_member(member)
    address_version, value, _ = address_interval(address) if isinstance(address, str) else address
    return version == address_version and start <= value <= end


def _address_text(version: int, value: int) -> str:
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, value.to_bytes(4, "big"))
    return str(ipaddress.IPv6Address(value))


def describe_interval(interval: Interval) -> str:
    """Return `first-last` in address notation, or the address alone for a one-address interval."""
    version, start, end = interval
    if start == end:
        return _address_text(version, start)
    return f"{_address_text(version, start)}-{_address_text(version, end)}"


def interval_contains(interval: Interval, point: Interval) -> bool:
    """Return True when `interval` contains the address of the one-address interval `point`."""
    return interval[0] == point[0] and interval[1] <= point[1] <= interval[2]


@dataclass(frozen=True)
class IntervalIndex:
    """Merged intervals in memory, for containment tests without Redis."""

    intervals: Sequence[Interval]

    @classmethod
    def of(cls, intervals: Iterable[Interval]) -> IntervalIndex:
        return cls(merge_intervals(intervals))

    def contains(self, address: str) -> bool:
        """Return True when an interval contains the canonical `address`."""
        version, value, _ = address_interval(address)
        position = bisect.bisect_right(self.intervals, (version, value, 1 << 129)) - 1
        if position < 0:
            return False
        found_version, start, end = self.intervals[position]
        return found_version == version and start <= value <= end


RESERVED = IntervalIndex.of(network_interval(text) for text in RESERVED_NETWORKS)
"""The RESERVED_NETWORKS, merged."""


def is_reserved(address: str) -> bool:
    """Return True when the canonical `address` is in one of the RESERVED_NETWORKS."""
    return RESERVED.contains(address)
