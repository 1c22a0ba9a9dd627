"""Who is signed in to the web admin: server-side sessions behind a random cookie, their CSRF tokens, and
the rate limit on sign-in attempts.

* A session is created only by a successful sign-in, under a fresh random id (no session fixation). The
  table is keyed by a SHA-256 of the id, so what sits in memory cannot be replayed as a cookie.
* A session ends after ``idle_timeout`` seconds without a request and ``max_age`` seconds after sign-in,
  whatever happens; at most ``limit`` live at once (the least recently used goes first).
* Every session has its own CSRF token (a hidden field in every form, compared in constant time). The
  sign-in form, which comes before any session, is protected the stateless way: its token is an HMAC of a
  random nonce the browser holds in a cookie, so anonymous visitors cost the server no memory.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

TOKEN_BYTES = 32


def same(given: str, expected: str) -> bool:
    """Constant-time comparison of two tokens (any text; a non-ASCII guess is just wrong)."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


@dataclass
class AdminSession:
    """One signed-in administrator in one browser."""

    jid: str
    csrf: str
    created: float
    seen: float
    #: A message for the next page shown (after an action's redirect): (kind, text), kind "ok" or "error".
    flash: tuple[str, str] | None = field(default=None)

    def take_flash(self) -> tuple[str, str] | None:
        flash, self.flash = self.flash, None
        return flash


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode("utf-8", "replace")).hexdigest()


class SessionStore:
    """The live sessions, bounded in number and in time."""

    def __init__(self, clock: Any, *, idle_timeout: float, max_age: float, limit: int) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self.limit = limit
        self._sessions: OrderedDict[str, AdminSession] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: AdminSession, now: float) -> bool:
        return now - session.seen >= self.idle_timeout or now - session.created >= self.max_age

    def create(self, jid: str) -> tuple[str, AdminSession]:
        """A new session for ``jid``: (the cookie value, the session)."""
        self.sweep()
        while len(self._sessions) >= self.limit:
            self._sessions.popitem(last=False)
        now = self.clock.seconds()
        sid = secrets.token_urlsafe(TOKEN_BYTES)
        session = AdminSession(jid, secrets.token_urlsafe(TOKEN_BYTES), now, now)
        self._sessions[_key(sid)] = session
        return sid, session

    def get(self, sid: str | None) -> AdminSession | None:
        """The live session with this cookie value (its idle time starts again), or None."""
        if not sid:
            return None
        key = _key(sid)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if self._expired(session, now):
            del self._sessions[key]
            return None
        session.seen = now
        self._sessions.move_to_end(key)
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(_key(sid), None)

    def end_where(self, predicate: Any) -> int:
        """End every session for which ``predicate(session)`` is true; how many ended."""
        keys = [k for k, s in self._sessions.items() if predicate(s)]
        for key in keys:
            del self._sessions[key]
        return len(keys)

    def sweep(self) -> None:
        """Forget expired sessions (they are refused anyway; this frees their memory)."""
        now = self.clock.seconds()
        self.end_where(lambda s: self._expired(s, now))


class LoginTokens:
    """CSRF tokens for the sign-in form: ``token(nonce)`` is an HMAC of the nonce cookie under a secret
    that lives as long as the plugin instance."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(TOKEN_BYTES)

    @staticmethod
    def nonce() -> str:
        return secrets.token_urlsafe(TOKEN_BYTES)

    def token(self, nonce: str) -> str:
        return hmac.new(
            self._secret, b"login:" + nonce.encode("utf-8", "replace"), hashlib.sha256
        ).hexdigest()

    def check(self, nonce: str | None, given: str | None) -> bool:
        if not nonce or not given:
            return False
        return same(given, self.token(nonce))
