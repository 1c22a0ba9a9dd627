"""User accounts: creation, deletion, password changes and credential look-ups.

Only SCRAM salted keys are stored (RFC 5802 s3: StoredKey and ServerKey with their salt and iteration
count), one set per hash (SHA-1 and SHA-256), never the password. PBKDF2 runs in a worker thread so the
reactor keeps serving while an account is created or a PLAIN password is checked; a test server on a
memory reactor (which runs no threads) passes ``defer_to_thread`` to run it inline instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread

from xmppd.jid import JID
from xmppd.sasl.scram import DEFAULT_ITERATIONS, HASHES, ScramCredentials, derive_credentials, verify_password
from xmppd.storage.base import KeyValueStorage

STORE = "accounts"


class AccountError(Exception):
    """An account operation that cannot be done (exists already, does not exist, bad password)."""


def _derive_all(password: str, iterations: int) -> dict[str, dict]:
    return {name: derive_credentials(password, name, iterations=iterations).to_dict() for name in HASHES}


class Accounts:
    """Accounts of all served domains, kept in the ``accounts`` store, keyed by (domain, localpart)."""

    def __init__(
        self,
        storage: KeyValueStorage,
        iterations: int = DEFAULT_ITERATIONS,
        defer_to_thread: Callable[..., Deferred[Any]] = deferToThread,
    ) -> None:
        self.storage = storage
        self.iterations = iterations
        #: Runs PBKDF2 off the reactor thread: ``defer_to_thread(fn, *args)`` returns a Deferred.
        self.defer_to_thread = defer_to_thread

    @staticmethod
    def _key(jid: JID) -> tuple[str, str]:
        if jid.local is None or jid.resource is not None:
            raise AccountError(f"{jid} is not an account address (user@domain)")
        return jid.domain, jid.local

    @inlineCallbacks
    def create(self, jid: JID, password: str) -> Deferred[None]:
        """Create the account; AccountError if it exists or the password is not acceptable."""
        domain, user = self._key(jid)
        if (yield self.storage.get(domain, STORE, user)) is not None:
            raise AccountError(f"{jid} exists already")
        yield self._store(domain, user, password)

    @inlineCallbacks
    def set_password(self, jid: JID, password: str) -> Deferred[None]:
        """Replace the credentials of an existing account."""
        domain, user = self._key(jid)
        if (yield self.storage.get(domain, STORE, user)) is None:
            raise AccountError(f"{jid} does not exist")
        yield self._store(domain, user, password)

    @inlineCallbacks
    def _store(self, domain: str, user: str, password: str) -> Deferred[None]:
        if not password:
            raise AccountError("the password is empty")
        try:
            creds = yield self.defer_to_thread(_derive_all, password, self.iterations)
        except ValueError as e:
            raise AccountError(f"the password is not acceptable: {e}") from None
        yield self.storage.set(domain, STORE, user, {"scram": creds})

    @inlineCallbacks
    def delete(self, jid: JID) -> Deferred[None]:
        """Delete the account and every document stored for it."""
        domain, user = self._key(jid)
        if (yield self.storage.get(domain, STORE, user)) is None:
            raise AccountError(f"{jid} does not exist")
        yield self.storage.purge_user(domain, user)

    @inlineCallbacks
    def exists(self, jid: JID) -> Deferred[bool]:
        domain, user = self._key(jid.bare)
        return (yield self.storage.get(domain, STORE, user)) is not None

    @inlineCallbacks
    def credentials(self, domain: str, user: str, hash_name: str) -> Deferred[ScramCredentials | None]:
        """The stored SCRAM credentials for one hash, or None for an unknown user."""
        record = yield self.storage.get(domain, STORE, user)
        if record is None:
            return None
        data = record.get("scram", {}).get(hash_name)
        return ScramCredentials.from_dict(data) if data else None

    @inlineCallbacks
    def check_password(self, domain: str, user: str, password: str) -> Deferred[bool]:
        """For SASL PLAIN: whether ``password`` matches the stored SHA-256 keys (in a worker thread)."""
        creds = yield self.credentials(domain, user, "SHA-256")
        if creds is None:
            return False
        return (yield self.defer_to_thread(verify_password, password, creds))

    def users(self, domain: str) -> Deferred[list[str]]:
        return self.storage.users(domain, STORE)


__all__ = ["Accounts", "AccountError", "DEFAULT_ITERATIONS"]
