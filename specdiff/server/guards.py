"""Cross-site protection: refuse foreign ``Host`` headers (DNS rebinding) and foreign ``Origin``s.

The service has no authentication; what keeps a web page on another site from using it through a
visitor's browser is that the browser says where a request comes from:

- ``Host``: a page that rebinds its own name to 127.0.0.1 talks to us under *its* name. Only the
  names the service is reached by are accepted: the bound address, for a loopback address also
  ``localhost`` and the loopback addresses, for a wildcard address (0.0.0.0, ::) also any IP
  literal and this machine's names, plus ``--allow-host`` names (``*``: any).
- ``Origin``: a page on another origin can still send a "simple" request (a form POST, ``fetch``
  with ``no-cors``) that the browser delivers without asking. State-changing requests (anything but
  GET, HEAD, OPTIONS) whose Origin is not the service's own (or an ``--allow-origin`` one) are
  refused; so are those that carry no Origin but a ``Sec-Fetch-Site`` other than same-origin/none.
  Programs (curl, httpx) send neither header and are not affected.

Plain ASGI, no FastAPI import: ``specdiff.commands.serve`` uses :func:`is_loopback` for ``--help``-time
checks without loading the web stack.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
from collections.abc import Iterable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: Methods that only read; everything else changes state and is origin-checked.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
DEFAULT_PORTS = {"http": 80, "https": 443}
#: Most of a refused request's body read and dropped before the answer (see :func:`drain_body`).
DRAIN_BYTES = 64 * 2**20


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this machine only."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None]:
    """``Host`` header -> (lower-case name without brackets or trailing dot, port or None)."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port = value.partition(":")
    else:  # a bare name, or a bare IPv6 address
        name, port = value, ""
    return name.rstrip("."), int(port) if port.isdigit() else None


class HostPolicy:
    """Which ``Host`` names this service answers to (see the module docstring)."""

    def __init__(self, bind_host: str, extra: Iterable[str] = ()) -> None:
        extra = [str(e).strip().lower() for e in extra]
        self.any = "*" in extra
        bind = bind_host.strip("[]").lower()
        self.names = {split_host(e)[0] for e in extra if e != "*"} | {bind}
        self.wildcard = bind in WILDCARD_ADDRESSES
        self.loopback = is_loopback(bind) or self.wildcard
        if self.loopback:
            self.names |= LOOPBACK_NAMES
        if self.wildcard:  # reachable by every address of this machine: its names too
            self.names |= {socket.gethostname().lower(), socket.getfqdn().lower()}

    def allows(self, name: str) -> bool:
        if self.any or name in self.names:
            return True
        if self.wildcard and _is_ip(name):  # an IP literal cannot be rebound to another site
            return True
        return self.loopback and _is_ip(name) and ipaddress.ip_address(name).is_loopback


def _origin_key(scheme: str, name: str, port: int | None) -> tuple[str, str, int | None]:
    return scheme, name, port if port is not None else DEFAULT_PORTS.get(scheme)


class CrossSiteGuard:
    """ASGI middleware: 400 for a ``Host`` not in ``hosts``, 403 for a state-changing request from
    another origin (``allowed_origins``: more origins to accept, ``*``: any)."""

    def __init__(self, app: Any, hosts: HostPolicy, allowed_origins: Iterable[str] = ()) -> None:
        self.app, self.hosts = app, hosts
        origins = [str(o).strip().rstrip("/").lower() for o in allowed_origins]
        self.any_origin = "*" in origins
        self.origins = {self._key(o) for o in origins if o != "*"}

    @staticmethod
    def _key(origin: str) -> tuple[str, str, int | None] | None:
        parts = urlsplit(origin)
        if not parts.scheme or not parts.netloc:
            return None  # "null" (sandboxed frames, file: pages) or garbage: matches nothing
        name, port = split_host(parts.netloc)
        return _origin_key(parts.scheme, name, port)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get("host")
        if host is not None and not self.hosts.allows(split_host(host)[0]):
            name = split_host(host)[0]
            await _refuse(receive, send, 400, f"Host {name!r} is not a name of this server (DNS rebinding protection); "
                          f"start it with --allow-host {name} to accept it")  # fmt: skip
            return
        if scope.get("method", "GET") not in SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None:
                name, port = split_host(host or "")
                own = _origin_key(scope.get("scheme", "http"), name, port)
                key = self._key(origin.lower())
                if not (self.any_origin or key == own or key in self.origins):
                    await _refuse(receive, send, 403, f"cross-origin request refused: Origin {origin!r} is not this "
                                  "server's; start it with --allow-origin ORIGIN to allow it")  # fmt: skip
                    return
            elif headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
                await _refuse(receive, send, 403, "cross-site request refused (Sec-Fetch-Site: "
                              f"{headers['sec-fetch-site']})")  # fmt: skip
                return
        await self.app(scope, receive, send)


async def drain_body(receive: Any, more_body: bool = True, budget: int = DRAIN_BYTES) -> None:
    """Read and drop the rest of a request body (up to ``budget`` bytes).

    A server that answers and closes while the client is still sending leaves unread data on the
    socket; the kernel then resets the connection, which can destroy the answer before the client
    reads it (the client sees a reset instead of the status and its reason).
    """
    while more_body and budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        more_body = message.get("more_body", False)


async def _refuse(receive: Any, send: Any, status: int, detail: str) -> None:
    """A JSON error after the request body is drained, not parsed (``Connection: close`` ends it)."""
    await drain_body(receive)
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close")],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


#: The page's policy: its own scripts, styles, images and media only, no plugins, no foreign
#: frame may embed it (clickjacking: a framed page could be tricked into submitting a job).
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'self'"
)
#: The API documentation pages (FastAPI's Swagger UI and ReDoc recipes) start with an inline script
#: and inline styles, and ReDoc runs a worker from a blob; they change nothing by themselves.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'self'"
)
DOCS_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    """ASGI middleware: security headers on every response (``Content-Security-Policy`` with
    ``frame-ancestors 'self'``, ``X-Frame-Options``, ``X-Content-Type-Options: nosniff``,
    ``Referrer-Policy: no-referrer``), as Jupyter server sends them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        common = [(b"x-frame-options", b"SAMEORIGIN"), (b"x-content-type-options", b"nosniff"),
                  (b"referrer-policy", b"no-referrer")]  # fmt: skip
        self.page_headers = [(b"content-security-policy", PAGE_CSP.encode()), *common]
        self.docs_headers = [(b"content-security-policy", DOCS_CSP.encode()), *common]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.docs_headers if scope.get("path", "") in DOCS_PATHS else self.page_headers

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                message = {**message, "headers": headers + [h for h in extra if h[0] not in names]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


TOKEN_COOKIE = "specdiff_token"
#: Paths served without the token: nothing there is private or changes state.
TOKEN_FREE_PREFIXES = ("/static/", "/favicon.ico")


class TokenGuard:
    """ASGI middleware: every request must carry the server's token (as Jupyter server requires one
    off loopback): ``Authorization: Bearer TOKEN`` (or ``token TOKEN``), ``?token=TOKEN``, or the
    cookie that a page opened with ``?token=`` receives (so the page's own requests, its audio
    player and its progress stream carry it). Without it: 401 ``{"detail": ...}``."""

    def __init__(self, app: Any, token: str) -> None:
        if not token:
            raise ValueError("TokenGuard needs a non-empty token")
        self.app, self.token = app, token

    def _matches(self, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(value.encode(), self.token.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith(TOKEN_FREE_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        by_header = scheme.lower() in ("bearer", "token") and self._matches(credential.strip())
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
        by_query = self._matches(query)
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed Cookie header is no token
            cookie = SimpleCookie()
        by_cookie = TOKEN_COOKIE in cookie and self._matches(cookie[TOKEN_COOKIE].value)
        if not (by_header or by_query or by_cookie):
            await _refuse(receive, send, 401, "this server needs its token: open the URL it printed "
                          "(…/?token=…), or send 'Authorization: Bearer TOKEN'")  # fmt: skip
            return
        if not by_query or by_cookie:
            await self.app(scope, receive, send)
            return
        set_cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode()

        async def send_with_cookie(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", set_cookie)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)
