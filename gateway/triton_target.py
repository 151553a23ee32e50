"""What ``GATEWAY_TRITON_URL`` names: one Triton, a list of them, or a DNS name for several.

Three forms (parsed by ``parse_target``, which ``Settings.from_env`` calls so that a bad value
stops the gateway at start-up with the variable's name):

- ``host:port``: one server, as before.
- ``host1:port1,host2:port2,...``: several servers. gRPC's ``ipv4:``/``ipv6:`` targets take
  only address literals, so host names are resolved here each time a channel is made (and at
  every readiness check, which replaces the channel when the addresses changed).
- ``dns:///name:port`` (or ``dns://resolver/name:port``): gRPC resolves the name itself and
  re-resolves it when a connection drops: a Kubernetes headless Service, whose name has one
  address per ready Triton pod, or a Compose service with several replicas.

The last two are *balanced*: the channel spreads requests over every address with gRPC's
client-side ``round_robin`` policy. No ``tritonclient`` here, so config validation and unit
tests need none.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})$")
_DNS = re.compile(r"^dns:(?://[A-Za-z0-9.\-:\[\]]*/)?([A-Za-z0-9.\-]+):(\d{1,5})$")
#: Upper bound of the servers one list may name (a typo guard, not a design limit).
MAX_SERVERS = 64


class TargetError(ValueError):
    """The value is not a Triton target; the message says which forms are accepted."""


class ResolveError(OSError):
    """No address could be found for a target's servers (DNS failure or no such name)."""


@dataclass(frozen=True)
class Server:
    """One ``host:port`` of a target; ``host`` is a name or an address literal (no brackets)."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class TritonTarget:
    """A parsed ``GATEWAY_TRITON_URL``: ``servers`` for the list forms, ``dns_name`` for dns:."""

    text: str
    servers: tuple[Server, ...] = ()
    dns_name: Server | None = None

    @property
    def balanced(self) -> bool:
        """True when requests are spread over several servers (a list or a DNS name)."""
        return self.dns_name is not None or len(self.servers) > 1

    def channel_target(self, addresses: tuple[Server, ...] | None = None) -> str:
        """The gRPC target string for one channel: a list's `addresses` (resolved now if None)."""
        if self.dns_name is not None:
            return self.text
        if len(self.servers) == 1:
            return str(self.servers[0])
        return _address_target(addresses if addresses is not None else self.addresses())

    def addresses(self) -> tuple[Server, ...]:
        """Every server address now: each list entry's addresses, or the DNS name's records."""
        wanted = (self.dns_name,) if self.dns_name is not None else self.servers
        found: list[Server] = []
        for server in wanted:
            for address in resolve(server):
                if address not in found:
                    found.append(address)
        # One gRPC target holds one address family. IPv4 is preferred when both exist (a name
        # that resolves to ::1 and 127.0.0.1 is the same server twice).
        ipv4 = [a for a in found if ipaddress.ip_address(a.host).version == 4]
        chosen = ipv4 or found
        if not chosen:
            raise ResolveError(f"no address found for {self.text}")
        return tuple(chosen)


def parse_target(text: str) -> TritonTarget:
    """Parse ``GATEWAY_TRITON_URL`` (see the module docstring), raising TargetError."""
    value = text.strip()
    if value.startswith("dns:"):
        match = _DNS.fullmatch(value)
        if match is None:
            raise TargetError(
                "a DNS target must look like dns:///triton.visionai.svc.cluster.local:8001"
            )
        return TritonTarget(text=value, dns_name=Server(match.group(1), _port(match.group(2))))
    parts = [part.strip() for part in value.split(",")]
    if len(parts) > MAX_SERVERS:
        raise TargetError(f"at most {MAX_SERVERS} servers may be listed")
    servers: list[Server] = []
    for part in parts:
        match = _HOST_PORT.fullmatch(part)
        if match is None:
            raise TargetError(
                f"{part!r} is not a gRPC host:port such as 127.0.0.1:8001 (several are "
                "separated by commas; dns:///name:port asks DNS for them)"
            )
        server = Server(match.group(1).strip("[]"), _port(match.group(2)))
        if server in servers:
            raise TargetError(f"{server} is listed twice")
        servers.append(server)
    return TritonTarget(text=value, servers=tuple(servers))


def resolve(server: Server) -> list[Server]:
    """The addresses of one server (itself when it is an address literal); ResolveError if none."""
    if _is_address(server.host):
        return [server]
    try:
        infos = socket.getaddrinfo(server.host, server.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ResolveError(f"cannot resolve {server.host!r}: {exc}") from None
    found: list[Server] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = Server(str(sockaddr[0]), server.port)
        if address not in found:
            found.append(address)
    return found


def _address_target(addresses: tuple[Server, ...]) -> str:
    family = ipaddress.ip_address(addresses[0].host).version
    return f"ipv{family}:" + ",".join(str(a) for a in addresses)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise TargetError(f"port {port} is not between 1 and 65535")
    return port
