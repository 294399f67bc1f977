"""What a download may connect to: http(s) only, no userinfo, no internal addresses (SSRF)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
# Query parameters that carry credentials in URLs people paste (Civitai's `?token=`).
_SECRET_PARAMS = {"token", "access_token", "api_key", "apikey", "key"}


class UnsafeUrl(ValueError):
    """The URL must not be fetched; the message says why."""


def clean_url(url: str) -> str:
    """The URL without credential query parameters: tokens come from settings, never from a stored URL.

    Raises UnsafeUrl when it does not parse (`http://[::1/x`)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - parsing the port is what raises on a bad one
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in _SECRET_PARAMS]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded(address: Address) -> list[Address]:
    """The IPv4 addresses an IPv6 one carries (mapped, 6to4, NAT64, Teredo): each is checked too."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found: list[Address] = []
    if address.ipv4_mapped:
        found.append(address.ipv4_mapped)
    if address.sixtofour:
        found.append(address.sixtofour)
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address.teredo:
        found += list(address.teredo)
    return found


def _forbidden(address: Address, allow_private: bool) -> str | None:
    inner = _embedded(address)
    for embedded in inner:
        reason = _forbidden(embedded, allow_private)
        if reason:
            return f"{reason}, inside an IPv6 address"
    if inner:
        return None  # the traffic ends at the embedded IPv4 address, and that one passed
    # Loopback first: Python counts ::1 as "reserved", and loopback is allowed exactly when private hosts are.
    if address.is_loopback:
        return None if allow_private else "a loopback address"
    # Never: cloud metadata (169.254.169.254), multicast, "this host", reserved ranges.
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a multicast, unspecified or reserved address"
    if allow_private:
        return None
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a carrier-grade NAT address"
    if address.is_private:
        return "a private address"
    return None


@dataclass(frozen=True)
class Target:
    """Where a checked URL goes: the name (for Host, TLS SNI and the certificate) and the very address
    that was checked, which is the one to connect to (a second lookup could answer something else)."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]  # every one checked, in the resolver's order (a client tries them in turn)

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def normal_host(host: str) -> str:
    """The host name as it is resolved and connected to, or UnsafeUrl: lower case, IDNA, no escapes."""
    if "%" in host:
        raise UnsafeUrl(f"{host!r}: a host name with percent-escapes is refused (it is read two ways)")
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UnsafeUrl(f"{host!r} is not a valid host name: {exc}") from None
    if not ascii_name or not all(c.isalnum() or c in "-." for c in ascii_name) or ".." in ascii_name:
        raise UnsafeUrl(f"{host!r} is not a valid host name")
    return ascii_name


def check_url(url: str, allow_private: bool = False, known: dict[tuple, Target] | None = None) -> Target:
    """Raise UnsafeUrl unless `url` is http(s), has no userinfo, and resolves only to allowed addresses.

    Returns where to connect. Checked again at every redirect hop by the caller. `known` keeps the
    targets already resolved (by scheme, host and port): one download speaks to one address, whatever a
    later lookup of its name would answer.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"only http and https URLs can be downloaded, not {parts.scheme or 'a bare path'!r}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeUrl("URLs with a user name or password are refused: use HF_TOKEN / CIVITAI_TOKEN instead")
    if not parts.hostname:
        raise UnsafeUrl("the URL has no host")
    host = normal_host(parts.hostname)
    port = port or (443 if parts.scheme == "https" else 80)
    key = (parts.scheme, host, port)
    if known is not None and key in known:
        return known[key]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"cannot resolve {host}: {exc}") from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        reason = _forbidden(address, allow_private)
        if reason:
            raise UnsafeUrl(f"{host} resolves to {address}, {reason}: refused")
        addresses.append(address)
    if not addresses:
        raise UnsafeUrl(f"cannot resolve {host}: no address")
    # An IPv4-mapped address is connected to as the IPv4 address it carries (the one that was checked).
    plain = [a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a for a in addresses]
    target = Target(parts.scheme, host, port, tuple(dict.fromkeys(str(a) for a in plain)))
    if known is not None:
        known[key] = target
    return target


# Hugging Face's own names: with HF_ENDPOINT set to a mirror, URLs to them are fetched from the mirror
# (what huggingface_hub does with the same variable), so workflows and presets work behind one.
HF_PUBLIC = frozenset({"huggingface.co", "hf.co", "www.huggingface.co"})


def mirrored(url: str, hf_endpoint: str) -> str:
    """`url` with a public Hugging Face origin replaced by HF_ENDPOINT's, when that is a mirror: where
    the bytes really come from, so that is the address checked."""
    parts = urlsplit(url)
    if (parts.hostname or "") in HF_PUBLIC and (urlsplit(hf_endpoint).hostname or "") not in HF_PUBLIC:
        mirror = urlsplit(hf_endpoint)
        return urlunsplit((mirror.scheme, mirror.netloc, parts.path, parts.query, ""))
    return url
