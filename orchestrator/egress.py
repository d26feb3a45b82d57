"""The HTTP client of ``http`` steps and webhooks: it connects only where the policy allows.

Checking a URL's host before the call is not enough: the HTTP library would resolve the
name again when it connects, and a name can answer a public address to the check and
``127.0.0.1`` to the connection (DNS rebinding). So the check sits where the connection
is made, in an httpcore network backend: it resolves the host itself, checks every
address with :meth:`~contracts.egress.EgressPolicy.check_addresses`, and connects to
one of the addresses it checked. TLS still verifies the URL's host name (SNI and
certificate), and every connection goes through it: each redirect hop, each new
connection of a pool. Environment proxies are not used (a proxy would be the only
address checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import Any

import httpcore
import httpx

from contracts.egress import EgressPolicy, IPAddress

__all__ = ["GuardedBackend", "GuardedTransport", "Resolver", "guarded_client", "resolve"]

#: Resolves (host, port) to addresses, in the order to try them.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

# httpcore's errors as httpx's, as httpx's own transport maps them (most specific first).
_ERRORS: dict[type[Exception], type[httpx.HTTPError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}


@contextlib.contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = next((_ERRORS[t] for t in type(exc).__mro__ if t in _ERRORS), None)
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of ``host`` from the system resolver, without duplicates.

    Raises:
        httpcore.ConnectError: the name does not resolve.
    """
    try:
        return [ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
    # The scope of a link-local IPv6 address (fe80::1%eth0) is not part of the address.
    found = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    return list(dict.fromkeys(found))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address, then connects to a checked one.

    Args:
        policy: What the operator opened.
        resolver: Where addresses come from (the system resolver by default).
        inner: The backend that makes the connection to the address (anyio's).
    """

    def __init__(self, policy: EgressPolicy, *, resolver: Resolver = resolve,
                 inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self._resolve = resolver
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        self.policy.check_host(host)
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took over {timeout}s") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        self.policy.check_addresses(host, addresses)
        failure: Exception | None = None
        for address in addresses:  # by address: nothing resolves the name again
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
            self, path: str, timeout: float | None = None,
            socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("no unix sockets for outbound calls")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    """A response body read from httpcore, its errors raised as httpx's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        if hasattr(self._stream, "aclose"):
            with _as_httpx():
                await self._stream.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose every connection passes the egress policy.

    Args:
        policy: What the operator opened.
        resolver: Where addresses come from (the system resolver by default).
        limits: Connection pool bounds (httpx's defaults).
    """

    def __init__(self, policy: EgressPolicy, *, resolver: Resolver = resolve,
                 limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self.policy = policy
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy, resolver=resolver))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # Each hop of a redirect comes through here: a redirect to file:// stops too.
        self.policy.check_scheme(request.url.scheme, request.url.host)
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw, content=request.stream,
            extensions=request.extensions)
        with _as_httpx():
            response = await self._pool.handle_async_request(core)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_Body(response.stream), extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


def guarded_client(policy: EgressPolicy, *, resolver: Resolver = resolve,
                   **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` over :class:`GuardedTransport` (``kwargs`` go to it)."""
    return httpx.AsyncClient(transport=GuardedTransport(policy, resolver=resolver), **kwargs)
