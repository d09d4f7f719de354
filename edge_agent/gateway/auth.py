"""The gateway's Streamable HTTP endpoint as an OAuth 2.1 protected resource (issue 13 item 8).

MCP authorization (spec 2025-11-25 ``basic/authorization``): the gateway is a *resource
server*. Every request to ``/mcp`` carries ``Authorization: Bearer <token>``; without a valid
one the answer is ``401`` with ``WWW-Authenticate: Bearer ... resource_metadata=...``, which
points at the Protected Resource Metadata (RFC 9728) served at
``/.well-known/oauth-protected-resource/mcp``: the resource and the authorization server that
issues its tokens. The bearer check, the 401/403 answers and the metadata route are the ``mcp``
SDK's (``mcp.server.auth``); this module gives it a token verifier:

- :class:`JwtBearer`: a JWT from an authorization server, checked against its JWKS (a file or an
  ``https://`` URL, PyJWT; RS256, PS256, ES256, EdDSA), its issuer, an audience (the gateway's
  resource URL by default: a token for another resource is refused, no passthrough), expiry;
- :class:`StaticTokens`: for small setups without an authorization server, tokens listed in a
  file (or a systemd credential), each with its subject and roles; compared in constant time,
  and the file may hold ``sha256:<hex>`` digests instead of the tokens.

The caller's identity then goes to the devices as a **device token** the gateway signs with its
own key (:class:`DeviceTokens`: short-lived, bound to the gateway's mcp-client-id and the
device, the caller's subject and roles copied; never the caller's own token), which a device
with ``[auth]`` verifies (:mod:`edge_agent.server.tokens`) like any client token.

:func:`refuse_open_bind` refuses to serve a non-loopback address without any of this.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

USER_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


@dataclass(frozen=True)
class Caller:
    """Who called the gateway: ``subject`` and ``roles`` (from the token), ``client_id`` (the
    OAuth client the token was issued to)."""

    subject: str
    roles: tuple[str, ...] = ()
    client_id: str = ""


def _access_token(token: str, caller: Caller, expires: float | None, scopes: list[str], resource: str | None,
                  claims: dict[str, Any] | None = None):
    from mcp.server.auth.provider import AccessToken

    return AccessToken(token=token, client_id=caller.client_id or caller.subject, scopes=scopes,
                       expires_at=int(expires) if expires else None, resource=resource, subject=caller.subject,
                       claims={**(claims or {}), "roles": list(caller.roles)})


def current_caller() -> Caller | None:
    """The caller of the request being served (from the SDK's auth context), or None (stdio,
    or no auth configured)."""
    from mcp.server.auth.middleware.auth_context import get_access_token

    token = get_access_token()
    if token is None or not token.subject:
        return None
    roles = (token.claims or {}).get("roles") or []
    return Caller(token.subject, tuple(r for r in roles if isinstance(r, str)), token.client_id)


@dataclass
class JwtBearer:
    """``mcp.server.auth.provider.TokenVerifier`` for JWT access tokens (RFC 9068).

    ``jwks``: a JWKS file path or an ``https://`` URL (fetched by PyJWT's ``PyJWKClient``, cached);
    ``issuer``: the required ``iss``; ``audience``: the accepted ``aud`` values (the gateway's
    resource URL); ``roles_claim``: where the roles are (a list or a space-separated string;
    ``scope`` is read too); ``leeway``: seconds of clock skew.
    """

    jwks: str
    issuer: str
    audience: tuple[str, ...]
    roles_claim: str = "roles"
    leeway: float = 30.0
    _keys: Any = field(default=None, repr=False)

    def _key_for(self, token: str) -> Any:
        import jwt

        if self.jwks.startswith(("https://", "http://")):
            if self._keys is None:
                self._keys = jwt.PyJWKClient(self.jwks, cache_keys=True, lifespan=300)
            return self._keys.get_signing_key_from_jwt(token).key
        if self._keys is None:
            with open(self.jwks, "rb") as fh:
                self._keys = jwt.PyJWKSet.from_json(fh.read(256 * 1024).decode())
        kid = jwt.get_unverified_header(token).get("kid")
        keys = [k for k in self._keys.keys if kid is None or k.key_id == kid]
        if not keys:
            raise jwt.exceptions.InvalidKeyError(f"no key {kid!r}")
        return keys[0].key

    async def verify_token(self, token: str):
        """The SDK's ``AccessToken`` for a valid token, else None (the SDK answers 401)."""
        import jwt

        try:
            key = self._key_for(token)
            claims = jwt.decode(token, key=key, algorithms=list(USER_ALGORITHMS), audience=list(self.audience),
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": ["exp", "sub", "iss", "aud"]})
        except (jwt.exceptions.PyJWTError, OSError, ValueError) as exc:
            log.info("bearer token refused: %s", exc)
            return None
        roles = claims.get(self.roles_claim) or []
        roles = roles.split() if isinstance(roles, str) else [r for r in roles if isinstance(r, str)]
        scopes = str(claims.get("scope") or "").split()
        aud = claims.get("aud")
        resource = next((a for a in ([aud] if isinstance(aud, str) else aud or []) if a in self.audience), None)
        caller = Caller(str(claims["sub"]), tuple(roles), str(claims.get("client_id") or claims.get("azp") or ""))
        return _access_token(token, caller, claims.get("exp"), scopes, resource, {"iss": claims.get("iss")})


@dataclass
class StaticTokens:
    """``TokenVerifier`` for tokens listed in a file, one per line::

        # token-or-sha256-digest   subject   roles (comma-separated)
        sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  alice  operator
        Zm9vYmFyYmF6cXV4...  bob  viewer

    Blank lines and ``#`` comments are skipped. A token shorter than 16 characters is refused
    at load (guessable).

    Raises (at construction):
        ValueError: a malformed line (the message names its number, never the token).
    """

    path: str
    entries: list[tuple[bytes, Caller]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            lines = fh.read(1024 * 1024).splitlines()
        for n, line in enumerate(lines, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(f"{self.path}:{n}: expected 'TOKEN SUBJECT [ROLES]'")
            secret, subject = parts[0], parts[1]
            roles = tuple(r for r in (parts[2].split(",") if len(parts) > 2 else []) if r)
            if secret.startswith("sha256:"):
                try:
                    digest = bytes.fromhex(secret[7:])
                except ValueError:
                    raise ValueError(f"{self.path}:{n}: sha256: wants 64 hex digits") from None
                if len(digest) != 32:
                    raise ValueError(f"{self.path}:{n}: sha256: wants 64 hex digits")
            elif len(secret) < 16:
                raise ValueError(f"{self.path}:{n}: a token of at least 16 characters (or sha256:<hex>)")
            else:
                digest = hashlib.sha256(secret.encode()).digest()
            self.entries.append((digest, Caller(subject, roles, subject)))
        if not self.entries:
            raise ValueError(f"{self.path}: no tokens")

    async def verify_token(self, token: str):
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, caller in self.entries:  # every entry compared: no timing by position
            if hmac.compare_digest(known, digest):
                found = caller
        if found is None:
            return None
        return _access_token(token, found, None, [], None)


@dataclass
class DeviceTokens:
    """Signs the short-lived device tokens the gateway hands devices for a caller (EdDSA with
    the gateway's Ed25519 key, or ES256 with a P-256 key). ``issuer``: the ``iss`` devices
    trust for it (``[[auth.issuers]]`` with the JWKS :meth:`jwks` gives); ``lifetime``: seconds.
    """

    private_key: Any
    issuer: str = "edge-agent-gateway"
    kid: str = "gateway-1"
    lifetime: float = 300.0

    @classmethod
    def from_pem(cls, path: str, **kw: Any) -> "DeviceTokens":
        """The key from a PEM file (``openssl genpkey -algorithm ed25519 -out gateway.key``).

        Raises:
            ValueError: not an Ed25519 or P-256 private key.
        """
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        with open(path, "rb") as fh:
            key = load_pem_private_key(fh.read(), password=None)
        if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
            raise ValueError(f"{path}: an Ed25519 or P-256 private key is needed for device tokens")
        return cls(key, **kw)

    @property
    def algorithm(self) -> str:
        from cryptography.hazmat.primitives.asymmetric import ec

        return "ES256" if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else "EdDSA"

    def jwks(self) -> dict[str, Any]:
        """The public JWKS a device's ``[[auth.issuers]] jwks_file`` holds for this gateway."""
        from jwt.algorithms import ECAlgorithm, OKPAlgorithm

        public = self.private_key.public_key()
        to_jwk = ECAlgorithm.to_jwk if self.algorithm == "ES256" else OKPAlgorithm.to_jwk
        jwk = {**json.loads(to_jwk(public)), "alg": self.algorithm, "kid": self.kid, "use": "sig"}
        return {"keys": [jwk]}

    def mint(self, caller: Caller, *, client_id: str, audience: str, now: float | None = None) -> str:
        """A device token for ``caller`` on the session of the gateway's ``client_id`` with the
        device ``audience`` (its server-id or server-name): ``sub`` and ``roles`` copied from the
        caller, ``act`` naming the gateway (RFC 8693 delegation), ``exp`` in :attr:`lifetime` s."""
        import jwt

        t = time.time() if now is None else now
        claims = {"iss": self.issuer, "sub": caller.subject, "aud": audience, "client_id": client_id,
                  "roles": list(caller.roles), "iat": int(t), "exp": int(t + self.lifetime),
                  "act": {"sub": self.issuer}}
        return jwt.encode(claims, self.private_key, algorithm=self.algorithm, headers={"kid": self.kid})


@dataclass
class HttpAuth:
    """What ``--http`` serves with: the SDK's ``AuthSettings`` and a token verifier."""

    settings: Any
    verifier: Any
    kind: str  # "jwt" or "static"


def http_auth(*, resource_url: str, jwks: str | None = None, issuer: str | None = None,
              audience: list[str] | None = None, tokens_file: str | None = None,
              roles_claim: str = "roles") -> HttpAuth | None:
    """The auth of the HTTP endpoint from the gateway's flags (None: none configured).

    Raises:
        ValueError: both or half of the options given (``--auth-jwks`` needs ``--auth-issuer``),
            or a bad tokens file.
    """
    if jwks and tokens_file:
        raise ValueError("give --auth-jwks (OAuth JWTs) or --auth-tokens (a token file), not both")
    if not jwks and not tokens_file:
        return None
    from mcp.server.auth.settings import AuthSettings
    from pydantic import AnyHttpUrl

    if jwks:
        if not issuer:
            raise ValueError("--auth-jwks needs --auth-issuer (the authorization server's issuer URL)")
        verifier: Any = JwtBearer(jwks, issuer, tuple(audience or [resource_url]), roles_claim)
        settings = AuthSettings(issuer_url=AnyHttpUrl(issuer), resource_server_url=AnyHttpUrl(resource_url),
                                validate_token_resource=False)
        return HttpAuth(settings, verifier, "jwt")
    assert tokens_file is not None
    verifier = StaticTokens(tokens_file)
    # no authorization server: the metadata names the gateway itself (clients are configured
    # with their token out of band)
    settings = AuthSettings(issuer_url=AnyHttpUrl(issuer or resource_url), resource_server_url=AnyHttpUrl(resource_url),
                            validate_token_resource=False)
    return HttpAuth(settings, verifier, "static")


def refuse_open_bind(host: str, auth: HttpAuth | None) -> None:
    """Refuse to serve MCP without authentication on anything but a loopback address.

    Raises:
        ValueError: ``host`` is not loopback and no auth is configured.
    """
    if auth is not None:
        return
    loopback = host in ("localhost",)
    try:
        loopback = loopback or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    if not loopback:
        raise ValueError(f"refusing to serve MCP on {host} without authentication: anyone who reaches it would "
                         "drive every device; give --auth-jwks and --auth-issuer, or --auth-tokens FILE "
                         "(docs/security.md, \"The gateway\"), or bind 127.0.0.1")


def tokens_file_line(token: str, subject: str, roles: list[str]) -> str:
    """A :class:`StaticTokens` line holding the token's SHA-256 (not the token itself)."""
    return f"sha256:{hashlib.sha256(token.encode()).hexdigest()} {subject} {','.join(roles)}"


def describe(auth: HttpAuth | None) -> str:
    """For the start-up line: how callers authenticate."""
    if auth is None:
        return "no authentication (loopback only)"
    return "bearer JWTs of " + json.dumps(str(auth.settings.issuer_url)) if auth.kind == "jwt" else "bearer tokens from a file"


TOKEN_META = "dev.edge-agent/token"  # the key a device's edge_agent.server.tokens verifies


def caller_of(ctx: Any) -> Caller | None:
    """The caller of a gateway request: from the HTTP request of the SDK's request context
    (``ctx.request.user``, set by the bearer middleware), else the auth context variable."""
    request = getattr(ctx, "request", None)
    try:
        user = request.scope.get("user") if request is not None and hasattr(request, "scope") else None
    except Exception:  # not an HTTP request (stdio)
        user = None
    token = getattr(user, "access_token", None)
    if token is not None and getattr(token, "subject", None):
        roles = (token.claims or {}).get("roles") or []
        return Caller(token.subject, tuple(r for r in roles if isinstance(r, str)), token.client_id)
    return current_caller()


def with_device_token(params: dict[str, Any] | None, ctx: Any, minter: DeviceTokens | None, client_id: str | None,
                      server_id: str) -> dict[str, Any] | None:
    """``params`` with ``_meta["dev.edge-agent/token"]``: a device token :class:`DeviceTokens`
    signs for the caller of ``ctx`` (bound to the gateway's ``client_id``, for ``server_id``), so
    the device applies the caller's role to this request (never the caller's own token: no
    passthrough). Unchanged without a minter, a caller or a client id."""
    caller = caller_of(ctx) if minter is not None and client_id else None
    if caller is None or minter is None or client_id is None:
        return params
    out = dict(params or {})
    out["_meta"] = {**(out.get("_meta") or {}), TOKEN_META: minter.mint(caller, client_id=client_id, audience=server_id)}
    return out
