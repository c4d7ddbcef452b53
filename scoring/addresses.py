"""Canonical spelling of IP addresses, so that every spelling of one address matches."""

from __future__ import annotations

import functools
import ipaddress


# Real traffic repeats addresses, so the parse is cached; a ValueError is raised again each time.
@functools.lru_cache(maxsize=65_536)
def canonical_ip(text: str) -> str:
    """Return the canonical text of an IP address, or raise ValueError saying why it is invalid.

    Surrounding whitespace is ignored, IPv6 is compressed and lower-cased, and an IPv4-mapped IPv6
    address (`::ffff:a.b.c.d`) becomes its IPv4 address. Python's `ipaddress` rejects IPv4 octets
    with leading zeros (`010.1.1.1`), which are ambiguous (octal in some parsers).
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty IP address")
    if "%" in stripped:
        raise ValueError(f"IP address with a zone id is not accepted: {stripped!r}")
    try:
        address = ipaddress.ip_address(stripped)
    except ValueError:
        raise ValueError(f"not an IP address: {stripped!r}") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)
