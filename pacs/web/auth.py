"""HTTP authentication and roles (``http_auth = true``): one middleware in front of every route.

A request carries either HTTP Basic credentials (a user of ``pacs user add``) or
``Authorization: Bearer <token>`` from ``POST /auth/token``. Without credentials the answer is
401 with ``WWW-Authenticate: Basic realm="pacs"`` (a browser prompts, then resends the
credentials on the viewer's same-origin fetches and images) and ``Bearer realm="pacs"``;
bad credentials are 401 and an audit "login" failure; a role too low for the route is 403.
The role each (method, path) needs is the one table ``ACCESS`` below.

For handlers: the authenticated user is on the request, ``request.get(USER, "")`` (or
``authenticated_user(request)``), its role ``request.get(ROLE, "")``; both are "" when
``http_auth`` is off, since the middleware is then not installed at all.

Tokens are ``v1.<payload>.<signature>`` (base64url): the payload names the user, role, expiry
and a digest of the user's password hash, signed with HMAC-SHA256 under the secret in
``data_dir/state/token-secret`` (created once, mode 0600), so tokens survive restarts and hold
in every process. A token of a user removed since, or whose password changed, is refused; the
role applied is the user's role now.

Verifying an argon2 hash costs ~50-150 ms of CPU, so a verified Basic credential is remembered
for ``BASIC_CACHE_SECONDS`` under a keyed hash of (name, password) whose key lives only in this
process's memory; the password itself is never kept. The cache empties when the users file
changes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import CIMultiDict

from pacs.errors import ConfigError
from pacs.web.context import WebContext, http_error

if TYPE_CHECKING:
    # pacs.users (argon2, getpass) is imported only when HTTP authentication is on: a worker
    # without it saves its memory.
    from pacs.users import User, UserStore

__all__ = ["ACCESS", "ROLE", "USER", "Authenticator", "TokenSigner", "authenticated_user",
           "install", "load_secret", "required_role"]

log = logging.getLogger("pacs.web.auth")

USER: web.RequestKey[str] = web.RequestKey("user", str)
ROLE: web.RequestKey[str] = web.RequestKey("role", str)

OPEN = "open"  # no credentials needed (the route checks its own)
READ = frozenset(("GET", "HEAD"))
POST = frozenset(("POST",))

# (methods or None for any, path, role): the first match wins. A path ending in "/" matches
# itself without the slash and everything below; others match exactly. Whatever no row names
# needs admin: DELETE anywhere, PUT/POST on /modalities, /tools/*, and routes added later.
ACCESS: tuple[tuple[frozenset[str] | None, str, str], ...] = (
    (POST, "/auth/token", OPEN),
    (READ, "/", "viewer"),  # QIDO, WADO, metadata, rendered, the viewer, REST GET, /metrics
    (POST, "/tools/find", "viewer"),  # a query, like QIDO-RS (other /tools/*: admin)
    (POST, "/dicom-web/studies/", "uploader"),  # STOW-RS
    (POST, "/instances", "uploader"),  # REST upload (Orthanc's POST /instances)
    (POST, "/fhir/ServiceRequest", "uploader"),  # an EHR placing imaging orders
    (frozenset(("PUT",)), "/fhir/ServiceRequest/", "uploader"),
    (None, "/", "admin"),
)

BASIC_CACHE_SECONDS = 60.0
BASIC_CACHE_SIZE = 4096
REALM = 'realm="pacs"'


def required_role(method: str, path: str) -> str:
    """The role a request needs: ``viewer``, ``uploader``, ``admin``, or ``open``."""
    for methods, pattern, role in ACCESS:
        if methods is not None and method not in methods:
            continue
        if pattern.endswith("/"):
            if path.startswith(pattern) or path == pattern[:-1]:
                return role
        elif path == pattern:
            return role
    return "admin"


def authenticated_user(request: web.Request) -> str:
    """The name of the user who made the request; "" when HTTP authentication is off."""
    name: str = request.get(USER, "")
    return name


def load_secret(state_dir: Path) -> bytes:
    """The token signing secret, created (32 random bytes, mode 0600) by the first caller."""
    path = state_dir / "token-secret"
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f".token-secret-{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, secrets.token_bytes(32).hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces: two processes starting at once share one secret
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (ValueError, UnicodeDecodeError):
        secret = b""
    if len(secret) < 16:
        from pacs.users import UserError

        raise UserError(f"{path}: not a secret of 16+ bytes in hex (delete it: a new one is "
                        "made, and every token issued so far stops working)")
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hash_tag(user: User) -> str:
    """A short digest of the stored hash: changes with a new password (or a re-added user)."""
    return hashlib.sha256(user.hash.encode()).hexdigest()[:16]


class TokenError(Exception):
    """A bearer token that is malformed, forged, expired or no longer valid."""

    def __init__(self, reason: str, user: str = "") -> None:
        super().__init__(reason)
        self.user = user  # the signed user name, when the signature held


@dataclass(frozen=True, slots=True)
class TokenSigner:
    secret: bytes
    lifetime: float

    def issue(self, user: User, now: float | None = None) -> str:
        expiry = round((time.time() if now is None else now) + self.lifetime, 3)
        payload = json.dumps({"sub": user.name, "role": user.role, "exp": expiry,
                              "key": _hash_tag(user)}, separators=(",", ":")).encode()
        body = "v1." + _b64(payload)
        return body + "." + _b64(self._sign(body))

    def _sign(self, body: str) -> bytes:
        return hmac.new(self.secret, body.encode(), hashlib.sha256).digest()

    def check(self, token: str, store: UserStore, now: float | None = None) -> User:
        """The token's user as the users file has it now; TokenError with the reason if not."""
        version, _, rest = token.partition(".")
        payload_text, _, signature = rest.partition(".")
        if version != "v1" or not payload_text or not signature:
            raise TokenError("malformed token")
        try:
            good = hmac.compare_digest(_unb64(signature), self._sign("v1." + payload_text))
        except (binascii.Error, ValueError):
            good = False
        if not good:
            raise TokenError("bad token signature")
        payload: Any = json.loads(_unb64(payload_text))  # ours: signed above
        name = str(payload["sub"])
        if (time.time() if now is None else now) >= float(payload["exp"]):
            raise TokenError("token expired", name)
        user = store.get(name)
        if user is None:
            raise TokenError("user removed", name)
        if not hmac.compare_digest(_hash_tag(user), str(payload["key"])):
            raise TokenError("password changed since the token was issued", name)
        return user


class Unauthorized(Exception):
    """Refused credentials: ``user`` (maybe "") and why, for the 401 and the audit trail."""

    def __init__(self, reason: str, user: str = "", method: str = "", audit: bool = True):
        super().__init__(reason)
        self.reason, self.user, self.method, self.audit = reason, user, method, audit


class Authenticator:
    """Checks the credentials of a request against the users file and the token secret."""

    def __init__(self, ctx: WebContext) -> None:
        from pacs.users import UserStore

        self.ctx = ctx
        self.store = UserStore(ctx.settings.users_file)
        self.signer = TokenSigner(load_secret(ctx.settings.state_dir),
                                  ctx.settings.token_lifetime)
        self._cache_key = secrets.token_bytes(32)  # this process only: cache keys stay opaque
        self._cache: dict[bytes, tuple[str, int, float]] = {}  # key -> name, generation, until
        self._pending: dict[bytes, asyncio.Future[User | None]] = {}

    async def basic(self, name: str, password: str) -> tuple[User, bool]:
        """(the user, whether argon2 ran) for good credentials; Unauthorized otherwise."""
        key = hmac.new(self._cache_key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        user = self.store.get(name)  # a stat; re-reads the users file when it changed
        hit = self._cache.get(key)
        if (user is not None and hit is not None and hit[1] == self.store.generation
                and hit[2] > time.monotonic()):
            return user, False
        pending = self._pending.get(key)
        first = pending is None  # only this request audits and caches the verification
        if pending is None:
            # One argon2 verification for a burst of requests with the same credentials (a
            # viewer opening a study fetches dozens of images at once).
            pending = asyncio.ensure_future(self._run(self.store.verify, name, password))
            self._pending[key] = pending
            pending.add_done_callback(lambda _f: self._pending.pop(key, None))
        verified = await asyncio.shield(pending)
        if verified is None:
            raise Unauthorized("wrong user name or password", name, "basic")
        if first:
            if len(self._cache) >= BASIC_CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (name, self.store.generation,
                                time.monotonic() + BASIC_CACHE_SECONDS)
        return verified, first

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.ctx.archive.executor,
                                                                fn, *args)

    async def authenticate(self, request: web.Request) -> User:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if not header:
            raise Unauthorized("credentials required", audit=False)
        if scheme.lower() == "basic":
            name, password = _basic_credentials(value)
            user, verified = await self.basic(name, password)
            if verified:  # a real password check (not a cache hit): an ATNA user login
                self.audit(request, "success", user.name, "basic")
            return user
        if scheme.lower() == "bearer":
            try:
                return self.signer.check(value, self.store)
            except TokenError as exc:
                raise Unauthorized(str(exc), exc.user, "bearer") from None
            except (ValueError, KeyError, TypeError, UnicodeDecodeError, binascii.Error):
                raise Unauthorized("malformed token", method="bearer") from None
        raise Unauthorized(f"unsupported authorization scheme {scheme[:20]!r}")

    def audit(self, request: web.Request, outcome: str, user: str, method: str,
              detail: str = "") -> None:
        trail = self.ctx.archive.audit
        if trail is None:
            return
        extra = {"detail": detail} if detail else {}
        trail.record("login", "success" if outcome == "success" else "failure", user=user,
                     source=client_address(request), method=method, path=request.path,
                     **extra)


def _basic_credentials(value: str) -> tuple[str, str]:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Unauthorized("malformed Basic credentials", method="basic") from None
    try:
        decoded = raw.decode("utf-8")  # what we ask for (charset="UTF-8" in the challenge)
    except UnicodeDecodeError:
        decoded = raw.decode("latin-1")  # what requests and older browsers send
    name, colon, password = decoded.partition(":")
    if not colon:
        raise Unauthorized("malformed Basic credentials", method="basic")
    return name, password


def client_address(request: web.Request) -> str:
    """host:port of the peer (as the audit trail's ``source``)."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return request.remote or ""


def _challenge(reason: str, bearer_error: bool = False) -> web.HTTPError:
    headers: CIMultiDict[str] = CIMultiDict()
    headers.add("WWW-Authenticate", f'Basic {REALM}, charset="UTF-8"')
    headers.add("WWW-Authenticate",
                f'Bearer {REALM}, error="invalid_token"' if bearer_error else f"Bearer {REALM}")
    return web.HTTPUnauthorized(headers=headers, text=json.dumps({"error": reason}),
                                content_type="application/json")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def middleware(auth: Authenticator) -> Middleware:
    from pacs.users import UserError, role_allows

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        needed = required_role(request.method, request.rel_url.path_safe)
        if needed == OPEN:
            return await handler(request)
        try:
            user = await auth.authenticate(request)
        except Unauthorized as exc:
            if exc.audit:
                auth.audit(request, "failure", exc.user, exc.method, exc.reason)
            raise _challenge(exc.reason, exc.method == "bearer") from None
        except UserError as exc:  # an unreadable users file: refuse, loudly
            log.error("%s", exc)
            raise http_error(web.HTTPInternalServerError, "the users file is unreadable") \
                from None
        if not role_allows(user.role, needed):
            raise http_error(web.HTTPForbidden,
                             f"user {user.name!r} ({user.role}) may not do this: needs "
                             f"the {needed} role")
        request[USER] = user.name
        request[ROLE] = user.role
        return await handler(request)

    return check


def routes(ctx: WebContext, auth: Authenticator | None) -> list[web.RouteDef]:
    """``POST /auth/token``: Basic credentials in, a bearer token out (404 when auth is off)."""

    async def token(request: web.Request) -> web.Response:
        if auth is None:
            raise http_error(web.HTTPNotFound, "HTTP authentication is off (http_auth)")
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.strip().partition(" ")
        try:
            if scheme.lower() != "basic":
                raise Unauthorized("Basic credentials required", audit=bool(header))
            name, password = _basic_credentials(value.strip())
            user, _verified = await auth.basic(name, password)
        except Unauthorized as exc:
            if exc.audit:
                auth.audit(request, "failure", exc.user, "token", exc.reason)
            raise _challenge(exc.reason) from None
        auth.audit(request, "success", user.name, "token")
        lifetime = ctx.settings.token_lifetime
        body = {"access_token": auth.signer.issue(user), "token_type": "bearer",
                "expires_in": max(1, round(lifetime))}
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return [web.post("/auth/token", token)]


def install(app: web.Application, ctx: WebContext) -> None:
    """Add the token route and, with ``http_auth``, the middleware in front of every route."""
    auth = None
    if ctx.settings.http_auth:
        from pacs.users import UserError

        try:
            auth = Authenticator(ctx)
        except UserError as exc:  # a damaged token-secret: one line and exit status 2
            raise ConfigError(str(exc)) from None
        app.middlewares.append(middleware(auth))
        with contextlib.suppress(UserError):
            if not auth.store.users():
                log.warning("http_auth is on but %s has no users: add one with "
                            "`pacs user add NAME --role admin`", ctx.settings.users_file)
    app.add_routes(routes(ctx, auth))
