"""Where an upload's webhook may be POSTed: never to this machine, its private network or a cloud
metadata service, unless DOCENT_WEBHOOK_ALLOW_PRIVATE=true.

A webhook URL is chosen by whoever uploads, and the worker that POSTs it sits inside the deployment:
without this check any user could make it call internal services (server-side request forgery). The
host is resolved and every address it resolves to must be public; checked at upload (a clear
INVALID_ARGUMENT) and again before each delivery (DNS may have changed since).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

# cloud metadata endpoints outside the link-local range (which is refused as a whole)
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")})


def forbidden(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return (address.is_loopback or address.is_private or address.is_link_local or address.is_reserved
            or address.is_multicast or address.is_unspecified or address in METADATA_ADDRESSES)


async def refused_reason(url: str, allow_private: bool) -> str | None:
    """Why `url` may not receive a webhook, or None when it may."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "it is not an http(s) URL with a host"
    if allow_private:
        return None
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        return f"{host} does not resolve"
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if forbidden(address):
            return f"{host} resolves to {address}, a loopback, private, link-local or metadata address"
    return None
