"""Who may see the dashboard and press its buttons: the ``auth`` the user chose, a
same-origin check on every POST (no other site can make a signed-in browser press
retry or purge), and headers that keep its pages out of other sites' frames and its
scripts to its own."""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
from collections.abc import Awaitable, Callable, Collection
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..exceptions import ConfigurationError

#: ``("user", "password")`` for HTTP Basic, ``(request) -> bool`` (sync or async), or
#: None: the mount is protected by the app around it.
Auth: TypeAlias = tuple[str, str] | Callable[[Request], bool | Awaitable[bool]] | None

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = 'Basic realm="errands dashboard", charset="UTF-8"'
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'; "
        b"object-src 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"SAMEORIGIN"),
]
NO_STORE = (b"cache-control", b"no-store")

_AUTH_HELP = (
    "auth= takes ('user', 'password') for HTTP Basic, a callable (request) -> bool (sync "
    "or async) for your own scheme, or None when the app around the mount protects it"
)


def check_auth(auth: object) -> Auth:
    """``auth`` as given, if it is one the dashboard can use; ConfigurationError else."""
    if auth is None:
        return auth
    if callable(auth):
        try:
            inspect.signature(auth).bind(None)
        except TypeError:
            raise ConfigurationError(
                f"auth={auth!r:.80} must take one argument, the request: "
                f"def auth(request: Request) -> bool"
            ) from None
        except ValueError:
            pass  # no signature to read (a builtin): it will tell when called
        return auth
    if isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str) for a in auth):
        user, password = auth
        if not user or not password:
            raise ConfigurationError(
                "the dashboard's Basic auth needs a user name and a password, neither empty "
                f"(got user {user!r} and {'an empty' if not password else 'a'} password)"
            )
        if ":" in user:
            raise ConfigurationError(f"a Basic auth user name cannot hold ':' (got {user!r})")
        return (user, password)
    raise ConfigurationError(f"{_AUTH_HELP}; got {type(auth).__name__} {auth!r:.60}")


class Guard:
    """ASGI middleware in front of the dashboard's routes."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = await self.refuse(request)
        if refusal is not None:
            await headed(refusal)(scope, receive, send)
            return
        await headed(self.app)(scope, receive, send)

    async def refuse(self, request: Request) -> Response | None:
        """The answer to a request that may not go on, or None."""
        wants_json = is_api(request)
        if isinstance(self.auth, tuple):
            if not basic_matches(request.headers.get("authorization"), self.auth):
                return answer(
                    401,
                    "sign in to see the errands dashboard",
                    wants_json,
                    {"www-authenticate": REALM},
                )
        elif self.auth is not None:
            allowed = self.auth(request)
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                return answer(403, "the dashboard's auth refused this request", wants_json)
        if request.method not in SAFE_METHODS:
            problem = cross_site(request)
            if problem is not None:
                return answer(403, f"refused: {problem}", wants_json)
        return None


def only_hosts(app: ASGIApp, hosts: Collection[str]) -> ASGIApp:
    """``app`` answering only requests whose ``Host`` names one of ``hosts`` (any port):
    served with no auth on a loopback address, the dashboard must not answer a page of
    another site whose name a DNS rebinding has pointed at this machine."""
    allowed = {host.lower() for host in hosts}

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = Request(scope).headers.get("host", "").lower()
            name = header[: header.find("]") + 1] if header.startswith("[") else header
            name = name.partition(":")[0] if not name.startswith("[") else name
            if name not in allowed:
                shown = ", ".join(sorted(allowed))
                refusal = PlainTextResponse(
                    f"this dashboard has no auth, so it answers only to {shown}", 421
                )
                await refusal(scope, receive, send)
                return
        await app(scope, receive, send)

    return call


def basic_matches(header: str | None, expected: tuple[str, str]) -> bool:
    """Whether an ``Authorization: Basic`` header carries ``expected``, compared in
    constant time (both parts always compared)."""
    given = b""
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "basic":
            try:
                given = base64.b64decode(token.strip(), validate=True)
            except (binascii.Error, ValueError):
                given = b""
    user, _, password = given.partition(b":")
    user_ok = hmac.compare_digest(user, expected[0].encode())
    password_ok = hmac.compare_digest(password, expected[1].encode())
    return user_ok and password_ok and b":" in given


def cross_site(request: Request) -> str | None:
    """Why a POST must be refused as another site's, or None. Browsers say where a
    request comes from (``Sec-Fetch-Site``, ``Origin``); a client that says neither is
    no browser, so no other site's page could have sent it (it still needs the auth)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"a {site} request (only the dashboard's own pages may post here)"
    origin = request.headers.get("origin")
    if origin is not None:
        # Behind a proxy that rewrites Host, the public one is in X-Forwarded-Host (a
        # page of another site cannot set that header on a cross-site request).
        forwarded = request.headers.get("x-forwarded-host", "").split(",")[0].strip()
        hosts = {request.headers.get("host", "").lower(), forwarded.lower()} - {""}
        if origin == "null" or urlsplit(origin).netloc.lower() not in hosts:
            return f"a request from {origin[:100]!r}, another origin than this dashboard's"
    return None


def is_api(request: Request) -> bool:
    root = request.scope.get("root_path", "")
    return request.url.path.startswith(f"{root}/api/")


def answer(
    status: int, message: str, wants_json: bool, headers: dict[str, str] | None = None
) -> Response:
    if wants_json:
        return JSONResponse({"detail": message}, status, headers)
    return PlainTextResponse(message, status, headers)


def headed(app: ASGIApp | Callable[..., Any]) -> ASGIApp:
    """``app`` with the dashboard's security headers on its responses (no-store on all
    but its static files, which carry no data)."""

    async def call(scope: Scope, receive: Receive, send: Send) -> None:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        static = path.removeprefix(root).startswith("/static/")

        async def send_headed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *HEADERS]
                if not static:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_headed)

    return call
