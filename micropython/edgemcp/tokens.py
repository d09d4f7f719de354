# Signed client tokens on the board (issue 13 item 2): the JWT a client carries in its
# initialize params._meta["dev.edge-agent/token"], checked by the Pi's rules
# (edge_agent/server/tokens.py) with HS256 only: HMAC-SHA256 (RFC 2104, RFC 7518 3.2) over the
# firmware's hashlib.sha256. MicroPython's ESP32 firmware has no Ed25519 nor ECDSA for Python
# code (docs/esp32.md "Signed tokens"). Imported only when the config has "auth".
import time
from binascii import a2b_base64
from hashlib import sha256

from .core import jsonrpc
from .core.jsonrpc import FORBIDDEN, RpcError

META = "dev.edge-agent/token"


def b64url(s):
    """The bytes of base64url text ``s`` (unpadded, RFC 7515 section 2). Raises on bad input."""
    s = s.replace("-", "+").replace("_", "/")
    return a2b_base64((s + "=" * (-len(s) % 4)).encode())


def pads(key):
    """HMAC-SHA256's inner and outer padded keys of ``key`` (bytes), RFC 2104."""
    if len(key) > 64:
        key = sha256(key).digest()
    key += bytes(64 - len(key))
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def hmac(pad, msg):
    """HMAC-SHA256 of ``msg`` with the :func:`pads` of a key (32 bytes)."""
    h = sha256(pad[0])
    h.update(msg)
    return sha256(pad[1] + h.digest()).digest()


def same(a, b):
    """``a == b`` in a time that does not depend on where they differ."""
    r = len(a) ^ len(b)
    for x, y in zip(a, b):
        r |= x ^ y
    return r == 0


def now():
    """Unix time (s), or None while the clock is not set (an ESP32's starts at 2000-01-01)."""
    if time.gmtime()[0] < 2024:
        return None
    return time.time() + (946684800 if time.gmtime(0)[0] == 2000 else 0)  # epoch 2000 ports


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Auth:
    """The board's token check and roles. ``cfg``: the config's ``auth`` dict:
    ``issuers`` ({iss: secret or [secrets]}, each the base64url ``k`` of the issuer's oct JWK,
    >= 32 bytes), ``audience`` (default: server-id and server-name), ``clock_skew`` (s, 30),
    ``roles_claim`` ("roles"), ``roles`` ({name: "all" | "read_only" | [tool names]}, default
    operator: all, viewer: read_only), ``default_role`` ("viewer"). Raises ValueError at start,
    naming what is wrong: no ``issuers`` (or not an issuer -> secret(s) map), a secret that is
    not base64url or shorter than 32 bytes, ``roles`` not mapping each role to "all",
    "read_only" or a list, a default role not in ``roles``."""

    def __init__(self, cfg, server_id, server_name):
        iss = cfg.get("issuers") if isinstance(cfg, dict) else None
        if not iss or not isinstance(iss, dict):
            raise ValueError('auth: "issuers" must map each token issuer to its secret(s): {iss: k or [k, ...]}')
        self.keys = {}
        for i, ks in iss.items():
            self.keys[i] = p = []
            for k in ks if isinstance(ks, list) else [ks]:
                try:
                    k = b64url(k)
                except Exception:  # not a str, not base64url
                    k = b""
                if len(k) < 32:
                    raise ValueError("auth: a secret of issuer %r is not base64url of 32 bytes or more" % i)
                p.append(pads(k))
        a = cfg.get("audience")
        self.aud = a if isinstance(a, list) else [a] if a else [server_id, server_name]
        self.skew = cfg.get("clock_skew", 30)
        self.claim = cfg.get("roles_claim", "roles")
        self.roles = r = cfg.get("roles") or {"operator": "all", "viewer": "read_only"}
        if not isinstance(r, dict) or any(v not in ("all", "read_only") and not isinstance(v, list) for v in r.values()):
            raise ValueError('auth: "roles" must map each role to "all", "read_only" or a list of tool names')
        self.default = cfg.get("default_role", "viewer")
        if self.default not in self.roles:
            raise ValueError("auth: default_role %r is not in roles" % self.default)

    def install(self, server):
        """Check tokens at initialize (``MqttLink`` calls :meth:`open`), each request against
        the token's expiry and each tool against the session's role."""
        server.auth = self
        self.server = server
        server.authorize = self.authorize
        t = server.table
        call, lst = t.get("tools/call").handler, t.get("tools/list").handler

        async def tools_call(s, p, req):
            n = p.get("name")
            if not self.may(s, n):
                r = s.role
                raise RpcError(FORBIDDEN, "Forbidden: role %r may not call tool %s" % (r, n), {"role": r, "tool": n})
            return await call(s, p, req)

        async def tools_list(s, p, req):  # the tools the role may call, as on the Pi
            full = server.tools
            server.tools = {n: v for n, v in full.items() if self.may(s, n)}
            try:  # (the list is built before the first await: no other task sees the subset)
                return await lst(s, p, req)
            finally:
                server.tools = full

        t.add("tools/call", tools_call)
        t.add("tools/list", tools_list)

    def may(self, s, name):
        a = self.roles.get(getattr(s, "role", None), "all")  # no role: the serial line (see docs)
        if a == "all" or name not in self.server.tools:
            return True
        if a == "read_only":
            return bool((self.server.tool(name)[0].get("annotations") or {}).get("readOnlyHint"))
        return name in a

    def authorize(self, s, m):
        e = getattr(s, "expires", None)
        if e is not None and m.name != "initialize" and (now() or 0) > e + self.skew:
            raise RpcError(FORBIDDEN, "Unauthorized: the session's token has expired; initialize again with a fresh one",
                           {"reason": "expired"})

    async def open(self, link, cid, msg):
        """The new session of ``cid`` on ``link`` for ``msg`` (its initialize), with the role,
        subject and expiry of its token; None when refused: answered -32003 with the Pi's
        words, or dropped unanswered when ``cid`` has a live session (a spoofed re-initialize:
        its owner sees nothing)."""
        p = msg.get("params")
        m = p.get("_meta") if isinstance(p, dict) else None
        t = m.get(META) if isinstance(m, dict) else None
        live = self.server.sessions.get(cid)
        try:
            if t is None:
                raise ValueError("this device requires a signed token in params._meta[%r]" % META)
            c = self.verify(t, cid)
            if live and getattr(live, "subject", None) not in (None, c["sub"]):
                raise RpcError(FORBIDDEN, "Unauthorized: this client id has a live session of another subject",
                               {"reason": "subject"})
        except Exception as e:  # (ValueError: why the token is refused; anything else: a bug, refused too)
            if not isinstance(e, RpcError):
                e = RpcError(FORBIDDEN, "Unauthorized: " + (e.args[0] if isinstance(e, ValueError) else repr(e)),
                             {"reason": "token"})
            self.server.log("initialize from %s refused: %s" % (cid, e.message))
            if not live:
                await link.send(cid, jsonrpc.error(msg.get("id"), e))
            return None
        s = self.server.open_session(cid, link)
        r = c.get(self.claim)
        r = [n for n in (r.split() if isinstance(r, str) else r if isinstance(r, list) else []) if isinstance(n, str) and n in self.roles]
        s.role, s.subject, s.expires = r[0] if r else self.default, c["sub"], c["exp"]
        return s

    def verify(self, token, cid):
        """The claims of ``token`` (a compact JWS) for client ``cid``. Raises ValueError saying
        why, in the Pi's words (refused while the clock is not set: expiry cannot be told)."""
        t = now()
        if t is None:
            raise ValueError("the board's clock is not set yet (no NTP answer), so no token can be checked: "
                             "try again in a moment")
        if not isinstance(token, str) or not token:  # (no length check: max_packet bounds it)
            raise ValueError("the token must be a JWT string")
        p = token.split(".")
        if len(p) != 3:
            raise ValueError("not a JWT (three base64url parts)")
        try:
            h = jsonrpc.loads(b64url(p[0]))  # nesting bounded before parsing (jsonrpc.MAX_DEPTH)
            c = jsonrpc.loads(b64url(p[1]))
            sig = b64url(p[2])
        except Exception:
            h = None
        if not isinstance(h, dict) or not isinstance(c, dict):
            raise ValueError("not a JWT (base64url JSON objects expected)")
        a = h.get("alg")
        if a != "HS256" or "crit" in h:
            raise ValueError("algorithm %r is not accepted (only HS256)" % a)
        i = c.get("iss")
        keys = self.keys.get(i) if isinstance(i, str) else None
        if not keys:
            raise ValueError("issuer %r is not trusted by this device" % i)
        m = (p[0] + "." + p[1]).encode()
        for k in keys:
            if same(hmac(k, m), sig):
                break
        else:
            raise ValueError("bad signature (no key of issuer %r verifies it)" % i)
        for n in ("exp", "sub", "aud"):
            if n not in c:
                raise ValueError("the token has no %r claim" % n)
        a = c["aud"]
        if not any(x in self.aud for x in (a if isinstance(a, list) else [a])):
            raise ValueError("the token is for another audience (this device accepts %s)" % ", ".join(self.aud))
        if not _num(c["exp"]) or t > c["exp"] + self.skew:
            raise ValueError("the token has expired")
        for n in ("nbf", "iat"):
            v = c.get(n) or 0
            if not _num(v) or v > t + self.skew:
                raise ValueError("the token is not valid yet (nbf/iat in the future)")
        s = c["sub"]
        if not isinstance(s, str) or not s:
            raise ValueError("the token has no subject (sub)")
        b = c.get("client_id")
        f = c.get("client_id_prefix")
        if isinstance(b, str):
            if b != cid:
                raise ValueError("the token is bound to another client id, not %r" % cid)
        elif isinstance(f, str) and f:
            if not cid.startswith(f):
                raise ValueError("the token is bound to client ids starting %r, not %r" % (f, cid))
        else:
            raise ValueError("the token is bound to no client id (client_id or client_id_prefix claim)")
        return c
