"""What a download may connect to: http(s) only, no userinfo, no internal addresses (SSRF)."""

from __future__ import annotations

import ipaddress
import socket
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


def _forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    # Never: cloud metadata (169.254.169.254), multicast, "this host", reserved ranges.
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a multicast, unspecified or reserved address"
    if allow_private:
        return None
    if address.is_loopback:
        return "a loopback address"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "a carrier-grade NAT address"
    if address.is_private:
        return "a private address"
    return None


def check_url(url: str, allow_private: bool = False) -> str:
    """Raise UnsafeUrl unless `url` is http(s), has no userinfo, and resolves only to public addresses.

    Returns the host. Checked again at every redirect hop by the caller.
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
    host = parts.hostname
    if not host:
        raise UnsafeUrl("the URL has no host")
    try:
        infos = socket.getaddrinfo(host, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeUrl(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        reason = _forbidden(address, allow_private)
        if reason:
            raise UnsafeUrl(f"{host} resolves to {address}, {reason}: refused")
    return host
