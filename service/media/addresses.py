"""Which addresses a URL anyone can write may reach: the public internet, and nothing
else, whatever the family or the spelling.

One rule (``is_public``) for IPv4 and IPv6, judged on the resolved address, never on
the text of a URL (IPv6 forms that carry an IPv4 address are judged by it); host
spellings that resolvers read differently (``0177.0.0.1``, ``2130706433``) are named
(``odd_ipv4_spelling``) so they can be refused as what they are. Used by the photo
fetcher (``service.media.fetch``) and the provider downloads (``service.media.delivery``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket

import httpx

from service.media.pinned import normal_host

Origin = tuple[str, str, int]
"""``(scheme, host, port)`` with the host as ``normal_host`` spells it."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# --------------------------------------------------------------------- address rules

# Everything that is not the public internet, beyond what ``ipaddress.is_global``
# already excludes (its tables vary between Python patch releases, so the ones that
# matter for SSRF are spelt out here as well).
_NOT_PUBLIC = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
        "::/96",  # unspecified, loopback, IPv4-compatible (deprecated)
        "::ffff:0:0:0/96",  # IPv4-translated (RFC 2765): only inside a translator
        "64:ff9b:1::/48",  # local-use NAT64
        "100::/64",  # discard
        "100:0:0:1::/64",  # dummy prefix (RFC 9780)
        "2001::/23",  # IETF protocol assignments, Teredo
        "2001:db8::/32",
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
"""Every IPv6 address IANA gives the public internet lies here: the rest (``::/8``
beyond the forms that carry IPv4, ``100::/8``, ``4000::/3``, ``fe00::/9``...) is
reserved or local, whatever ``is_global`` says of it."""


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, for the forms that reach IPv4 hosts:
    IPv4-mapped (``::ffff:a.b.c.d``), 6to4 (``2002::/16``) and NAT64 (``64:ff9b::/96``)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """The one rule: an address on the public internet, whatever its family or spelling.

    Refused: loopback, private, link-local, CGNAT, multicast, reserved, documentation
    and unspecified addresses, IPv6 addresses outside 2000::/3 (global unicast), and
    IPv6 addresses whose embedded IPv4 address is any of those (so
    ``::ffff:127.0.0.1`` is judged as 127.0.0.1).
    """
    if isinstance(address, ipaddress.IPv6Address):
        # Judged as the IPv4 address it reaches, and by that alone: Python releases
        # disagree on whether 2002::/16 itself is "global" (3.11.2 says no, 3.11.7 yes).
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
        if address not in _GLOBAL_UNICAST:
            return False
    if not address.is_global or address.is_multicast:
        return False
    return not any(address in net for net in _NOT_PUBLIC if net.version == address.version)


# ------------------------------------------------------------------- names and origins


def default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def redirect_target(url: httpx.URL, location: str) -> str:
    """Where a redirect from ``url`` leads: ``location`` resolved against it, or as it
    stands when it cannot be (the check of the next hop then refuses it by name)."""
    try:
        return str(url.join(location))
    except (httpx.InvalidURL, ValueError, UnicodeError):
        return location


def origin_of(url: str) -> Origin:
    """``(scheme, host, port)`` of a URL, normalised as the fetcher compares them."""
    parsed = httpx.URL(url)
    scheme = parsed.scheme.lower()
    return scheme, normal_host(parsed.host), parsed.port or default_port(scheme)


def parse_host_ports(text: str) -> frozenset[tuple[str, int]]:
    """``"photos.internal:8443, [fd00::5]:80"`` -> {(host, port), ...}; ValueError if bad."""
    pairs = set()
    for raw in text.replace(";", ",").split(","):
        entry = raw.strip()
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{entry!r} is not host:port (e.g. photos.internal:8443)")
        if host.startswith("[") != host.endswith("]") or ("/" in host) or ("@" in host):
            raise ValueError(f"{entry!r} is not host:port (e.g. [fd00::5]:443)")
        try:
            pairs.add((normal_host(host.strip("[]")), int(port)))
        except (httpx.InvalidURL, UnicodeError) as err:
            raise ValueError(f"{entry!r} does not name a valid host") from err
    return frozenset(pairs)


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver (it also reads ``2130706433`` and ``127.1``)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")
"""A host label that reads as a number: a URL parser takes a host whose last label is
one for an IPv4 address, and C's inet_aton reads each part as hex, octal or decimal."""


def odd_ipv4_spelling(host: str) -> str | None:
    """Why ``host`` (lower case) is an IPv4 address not written as a.b.c.d, or None.

    ``0177.0.0.1`` is 127.0.0.1 to C's resolver (octal) and 177.0.0.1 to others;
    ``2130706433``, ``0x7f.1`` and ``127.1`` are 127.0.0.1 to some and invalid to
    others. Whichever way the resolver at hand reads one, a photo URL is not written
    so: it is refused, saying what it can be read as.
    """
    labels = host.removesuffix(".").split(".")
    if ":" in host or not _NUMBER.fullmatch(labels[-1]):
        return None  # an IPv6 address, or a name (no top-level domain is a number)
    try:
        if str(ipaddress.IPv4Address(host)) == host:
            return None  # a.b.c.d, four decimal numbers without leading zeros
    except ValueError:
        pass
    readings = sorted({str(a) for a in (_inet_aton(labels), _decimal(labels)) if a is not None})
    if not readings:
        return f"{host} ends in a number, so it reads as an IPv4 address, but not as a.b.c.d"
    return (
        f"{host} is an IPv4 address not written as a.b.c.d, which resolvers read as "
        + " or ".join(readings)
    )


def _inet_aton(labels: list[str]) -> ipaddress.IPv4Address | None:
    """What C's inet_aton makes of these labels: 1 to 4 parts, each hex (0x), octal
    (leading 0) or decimal, the last filling the bytes left."""
    if not 1 <= len(labels) <= 4 or not all(_NUMBER.fullmatch(label) for label in labels):
        return None
    try:
        values = [
            int(label, 16) if label.startswith("0x") else int(label, 8 if label[0] == "0" else 10)
            for label in labels
        ]
    except ValueError:  # "0x" alone, or 8 and 9 in octal
        return None
    *head, last = values
    if any(value > 255 for value in head) or last >= 256 ** (5 - len(values)):
        return None
    number = sum(value << (8 * (3 - i)) for i, value in enumerate(head)) + last
    return ipaddress.IPv4Address(number)


def _decimal(labels: list[str]) -> ipaddress.IPv4Address | None:
    """Four decimal numbers with leading zeros ignored, as some parsers read them."""
    if len(labels) != 4 or not all(label.isdigit() and int(label) < 256 for label in labels):
        return None
    return ipaddress.IPv4Address(".".join(str(int(label)) for label in labels))


def parses_public(answer: str) -> bool:
    try:
        return is_public(ipaddress.ip_address(answer))
    except ValueError:
        return False
