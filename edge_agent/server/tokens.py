"""Signed client credentials: a JWT an MCP client carries in ``initialize``
``params._meta["dev.edge-agent/token"]`` (and, under MCP 2026-07-28, in every request's
``params._meta``), verified on the device against configured issuer keys (issue 13 item 2a).

A token is accepted when (RFC 7519, RFC 8725 best current practice):

- its signature verifies with a key of its issuer (``iss``), taken from that issuer's JWKS (a
  file, or a systemd credential): ``EdDSA`` (Ed25519) and ``ES256`` with public keys, never
  ``none``; ``HS256`` (HMAC-SHA256, what an ESP32 board can verify: docs/esp32.md) only with a
  key the JWKS gives as ``kty: "oct"`` (a shared secret of >= 32 bytes). The key's type must fit
  the token's ``alg``: a public key is never used as an HMAC secret ("algorithm confusion",
  RFC 8725 section 2.1). A device holding an oct key could mint tokens for that issuer itself:
  give each device its own secret (docs/security.md);
- ``exp`` lies in the future and ``nbf``/``iat`` (when present) in the past, with ``clock_skew``
  seconds of tolerance;
- ``aud`` names this device (its server-id or server-name, or the configured audience);
- ``client_id`` equals the mcp-client-id the token arrives from (``client_id_prefix`` instead: the
  id starts with it), so a token seen by someone else is useless on another client id;
- ``sub`` is a non-empty string: the authenticated subject (``Session.subject``).

Roles come from the ``roles`` claim (a list of role names, or a space-separated string; the
claim name is configurable). PyJWT and ``cryptography`` are imported only when a token is
verified (the Pi pays their ~10 MB of RSS only with ``[auth]`` configured).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from edge_agent.errors import EdgeAgentError

TOKEN_META = "dev.edge-agent/token"
ALGORITHMS = ("EdDSA", "ES256")  # with public keys (kty OKP / EC)
HMAC = "HS256"  # with a shared secret (kty oct) only
MIN_SECRET = 32  # bytes of an oct key: RFC 7518 section 3.2, a key at least as long as the hash
MAX_TOKEN = 8192  # bytes: a JWT with a few claims is < 1 KiB


class TokenError(EdgeAgentError, ValueError):
    """A token was refused; the message says why in words a client's user can act on
    (never the token itself)."""


@dataclass(frozen=True)
class Claims:
    """What a verified token vouches for. ``expires``: Unix time (s)."""

    subject: str
    client_id: str
    issuer: str
    expires: float
    roles: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Issuer:
    """One trusted issuer: its ``iss`` and its public keys (a JWKS document)."""

    issuer: str
    jwks: dict[str, Any]
    _keys: list[Any] | None = field(default=None, repr=False)

    def keys(self) -> list[Any]:
        """The usable keys, as ``jwt.PyJWK`` (parsed once): EdDSA/ES256 public keys, and
        HS256 secrets (``kty: "oct"``, ``alg`` absent or ``HS256``, ``k`` of >= 32 bytes).

        Raises:
            TokenError: the JWKS holds no usable key.
        """
        if self._keys is None:
            import jwt

            keys = []
            for jwk in self.jwks.get("keys", []) if isinstance(self.jwks, dict) else []:
                if not isinstance(jwk, dict) or "d" in jwk:
                    continue  # never a private key: the device only verifies
                if jwk.get("kty") == "oct" and (jwk.get("alg", HMAC) != HMAC or len(_secret(jwk)) < MIN_SECRET):
                    continue  # an HS256 secret only, and not a guessable one
                try:
                    key = jwt.PyJWK(jwk)
                except (jwt.exceptions.PyJWKError, jwt.exceptions.InvalidKeyError, ValueError, TypeError):
                    continue
                if key.algorithm_name in ALGORITHMS + (HMAC,):
                    keys.append(key)
            if not keys:
                raise TokenError(f"issuer {self.issuer!r}: its JWKS has no usable key (EdDSA/ES256 public key, "
                                 f"or an HS256 secret of kty \"oct\" with >= {MIN_SECRET} bytes)")
            self._keys = keys
        return self._keys


def load_jwks(path: str) -> dict[str, Any]:
    """A JWKS document (``{"keys": [...]}``) from a small file.

    Raises:
        TokenError: unreadable, over 256 KiB, not JSON or without a ``keys`` list.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(256 * 1024 + 1)
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the JWKS ({exc.strerror})") from None
    if len(raw) > 256 * 1024:
        raise TokenError(f"{path}: a JWKS file of more than 256 KiB")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise TokenError(f"{path}: not JSON (a JWKS is {{\"keys\": [...]}})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise TokenError(f"{path}: not a JWKS (no \"keys\" list)")
    return doc


@dataclass
class Verifier:
    """Verifies tokens for one device. ``audiences``: accepted ``aud`` values (any one).
    ``clock_skew``: seconds of tolerance on ``exp``/``nbf``/``iat``."""

    issuers: dict[str, Issuer]
    audiences: tuple[str, ...]
    clock_skew: float = 30.0
    roles_claim: str = "roles"

    def verify(self, token: Any, client_id: str, now: float | None = None) -> Claims:
        """Verify ``token`` for a request from ``client_id`` at Unix time ``now`` (default: now).

        Raises:
            TokenError: not a string JWT, too long, unknown issuer or key, bad signature, an
                algorithm other than EdDSA/ES256/HS256 or one no key of the issuer is for, expired or not yet valid, wrong audience, no
                ``sub``, or bound to another client id.
        """
        import jwt

        if not isinstance(token, str) or not token:
            raise TokenError("the token must be a JWT string")
        if len(token) > MAX_TOKEN:
            raise TokenError(f"the token is longer than {MAX_TOKEN} bytes")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.exceptions.PyJWTError as exc:
            raise TokenError(f"not a JWT ({exc})") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS + (HMAC,):
            raise TokenError(f"algorithm {alg!r} is not accepted (only {', '.join(ALGORITHMS + (HMAC,))})")
        iss = unverified.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None or not isinstance(iss, str):
            raise TokenError(f"issuer {iss!r} is not trusted by this device")
        kid = header.get("kid")
        keys = [k for k in issuer.keys() if kid is None or k.key_id in (kid, None)]
        if not keys:
            raise TokenError(f"issuer {iss!r} has no key {kid!r}")
        # the key decides the algorithm, never the token: an HS256 token is checked with oct
        # secrets only, an EdDSA/ES256 one with public keys of that algorithm only
        keys = [k for k in keys if k.algorithm_name == alg and (k.key_type == "oct") == (alg == HMAC)]
        if not keys:
            raise TokenError(f"issuer {iss!r} has no key for algorithm {alg!r}"
                             + (" (HS256 needs a kty \"oct\" secret in its JWKS)" if alg == HMAC else ""))
        when = time.time() if now is None else now
        for key in keys:
            try:
                claims = _decode(jwt, token, key, alg, self.audiences, iss, self.clock_skew, when)
                break
            except jwt.exceptions.InvalidSignatureError:
                continue
            except jwt.exceptions.ExpiredSignatureError:
                raise TokenError("the token has expired") from None
            except jwt.exceptions.ImmatureSignatureError:
                raise TokenError("the token is not valid yet (nbf/iat in the future)") from None
            except jwt.exceptions.InvalidAudienceError:
                raise TokenError(f"the token is for another audience (this device accepts {', '.join(self.audiences)})") from None
            except jwt.exceptions.MissingRequiredClaimError as exc:
                raise TokenError(f"the token has no {exc.claim!r} claim") from None
            except jwt.exceptions.PyJWTError as exc:
                raise TokenError(f"the token was refused ({exc})") from None
        else:
            raise TokenError(f"bad signature (no key of issuer {iss!r} verifies it)") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError("the token has no subject (sub)")
        bound = claims.get("client_id")
        prefix = claims.get("client_id_prefix")
        if isinstance(bound, str):
            if bound != client_id:
                raise TokenError(f"the token is bound to another client id, not {client_id!r}")
        elif isinstance(prefix, str) and prefix:
            if not client_id.startswith(prefix):
                raise TokenError(f"the token is bound to client ids starting {prefix!r}, not {client_id!r}")
        else:
            raise TokenError("the token is bound to no client id (client_id or client_id_prefix claim)")
        return Claims(subject=sub, client_id=client_id, issuer=iss, expires=float(claims["exp"]),
                      roles=_roles(claims.get(self.roles_claim)), raw=claims)


def _decode(jwt: Any, token: str, key: Any, alg: str, audiences: Iterable[str], iss: str, leeway: float,
            now: float) -> dict[str, Any]:
    # PyJWT checks exp/nbf/iat against its own clock: shift by (now - time.time()) via leeway
    # is not exact, so check times here and let PyJWT verify signature, aud and iss only.
    claims = jwt.decode(token, key=key, algorithms=[alg], audience=list(audiences), issuer=iss,
                        options={"require": ["exp", "sub", "aud", "iss"], "verify_exp": False,
                                 "verify_nbf": False, "verify_iat": False})
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise jwt.exceptions.InvalidTokenError("exp must be a number")
    if now > exp + leeway:
        raise jwt.exceptions.ExpiredSignatureError()
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise jwt.exceptions.InvalidTokenError(f"{name} must be a number")
        if value > now + leeway:
            raise jwt.exceptions.ImmatureSignatureError()
    return claims


def _secret(jwk: dict[str, Any]) -> bytes:
    """The bytes of an oct JWK's ``k`` (base64url), b"" when it has none or it is malformed."""
    import base64
    import binascii

    k = jwk.get("k")
    if not isinstance(k, str):
        return b""
    try:
        return base64.urlsafe_b64decode(k + "=" * (-len(k) % 4))
    except (binascii.Error, ValueError):
        return b""


def _roles(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def verifier_from_config(table: dict[str, Any], *, server_id: str, server_name: str,
                         credentials_dir: str | None = None) -> Verifier:
    """A :class:`Verifier` from an ``[auth]`` config table (see docs/configuration.md):
    ``issuers`` (``[{issuer, jwks_file | jwks_credential}]``), ``audience`` (default: the
    server-id and the server-name), ``clock_skew`` (s, default 30), ``roles_claim``.

    Raises:
        TokenError: a JWKS cannot be read, or a credential is named while
            ``$CREDENTIALS_DIRECTORY`` is not set.
    """
    issuers = {}
    cred_dir = credentials_dir if credentials_dir is not None else os.environ.get("CREDENTIALS_DIRECTORY")
    for entry in table.get("issuers", []):
        if "jwks_credential" in entry:
            if not cred_dir:
                raise TokenError(f"jwks_credential {entry['jwks_credential']!r}: $CREDENTIALS_DIRECTORY is not set "
                                 "(systemd LoadCredential= sets it)")
            path = os.path.join(cred_dir, entry["jwks_credential"])
        else:
            path = entry["jwks_file"]
        issuer = Issuer(entry["issuer"], load_jwks(path))
        issuer.keys()  # a JWKS without a usable public key is a config error, said at load
        issuers[entry["issuer"]] = issuer
    audience = table.get("audience")
    audiences = tuple(audience) if isinstance(audience, list) else (audience,) if audience else (server_id, server_name)
    return Verifier(issuers, audiences, float(table.get("clock_skew", 30)), table.get("roles_claim", "roles"))


def sign(claims: dict[str, Any], private_key: Any, *, kid: str | None = None, algorithm: str = "EdDSA") -> str:
    """A signed JWT (for issuers of ours: the gateway's device tokens, tests, ``edge-agent token``).
    ``private_key``: a ``cryptography`` private key or PEM bytes; for ``algorithm="HS256"`` the
    shared secret (bytes, >= 32) of the device's oct key (:func:`secret_jwk`)."""
    import jwt

    return jwt.encode(claims, private_key, algorithm=algorithm, headers={"kid": kid} if kid else None)


def public_jwk(private_or_public_key: Any, kid: str | None = None) -> dict[str, Any]:
    """The public JWK of a key (``cryptography`` Ed25519 or EC P-256 key), for a JWKS file."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm

    key = private_or_public_key
    public = key.public_key() if hasattr(key, "public_key") else key
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk = json.loads(ECAlgorithm.to_jwk(public))
        jwk["alg"] = "ES256"
    else:
        jwk = json.loads(OKPAlgorithm.to_jwk(public))
        jwk["alg"] = "EdDSA"
    if kid:
        jwk["kid"] = kid
    jwk["use"] = "sig"
    return jwk


def secret_jwk(secret: bytes, kid: str | None = None) -> dict[str, Any]:
    """The oct JWK of an HS256 secret (``{"kty": "oct", "k": base64url, "alg": "HS256"}``), for
    the issuer's JWKS of a device that verifies HS256 (a board: docs/esp32.md "Signed tokens").

    Raises:
        ValueError: ``secret`` is shorter than 32 bytes (RFC 7518 section 3.2).
    """
    import base64

    if len(secret) < MIN_SECRET:
        raise ValueError(f"an HS256 secret needs at least {MIN_SECRET} bytes, got {len(secret)}")
    jwk = {"kty": "oct", "k": base64.urlsafe_b64encode(secret).rstrip(b"=").decode(), "alg": HMAC, "use": "sig"}
    if kid:
        jwk["kid"] = kid
    return jwk
