"""In-band registration (XEP-0077): account creation before authentication, password change and account
removal after it. Off by default: an operator who wants it adds ``"register"`` to ``[plugins] enabled``.

Before authentication (s3.1, s3.1.1 "Registration with a Server"):

* ``<register xmlns='http://jabber.org/features/iq-register'/>`` is offered among the stream features
  (s8) of a client stream that is not authenticated yet, whenever SASL is on offer: never before a
  required STARTTLS, so, with ``[tls] required`` (the default), passwords only travel over TLS (s11).
* The ``unauthenticated-iq`` event brings the iqs: a get answers the fields (``<instructions/>``,
  ``<username/>``, ``<password/>``); a set with both creates the account and answers an empty result,
  after which the client authenticates as usual. Errors: a field missing or empty, ``not-acceptable``
  (s3.1, a MUST for the empty password); a username that is not a valid localpart (PRECIS
  UsernameCaseMapped, RFC 7622 s3.3), ``jid-malformed``; a taken one, ``conflict`` (s3.1); a second
  registration on the same stream, ``not-acceptable`` (s3.1.1); ``<remove/>`` before authenticating,
  ``unexpected-request`` (s3.2, the error table).
* Rate limit, per client IP: at most ``max_per_ip`` registrations in any ``window`` seconds (default 5
  per hour; 0 turns the limit off). Beyond it: ``resource-constraint``, type ``wait``: the client may
  try again later, which is what ejabberd answers too. (s3.1.1 allows ``not-acceptable`` for "too many
  times", but that says "fix your request", which the client cannot.) The table of IPs is an LRU of at
  most 10000 entries, so memory is bounded; an IP pushed out by 10000 newer ones starts afresh.
* ``user-created`` is fired with the account JID, as ``xmppdctl adduser`` does.

After authentication (iqs to one's own account or to the domain):

* get: ``<registered/>``, the username and instructions (s3.1, "already registered").
* set with ``<username/>`` and ``<password/>``: a password change (s3.3). The username must be the
  account's own (``not-allowed`` otherwise: nobody may change another account's password in-band); an
  empty or missing password changes nothing and answers ``bad-request`` (s3.3: MUST NOT set a null
  password; bad-request is the condition of an incomplete request).
* set with ``<remove/>`` alone: the account and all its stored data are deleted; the result is sent,
  then every session of the account ends with the ``<not-authorized/>`` stream error (s3.2) and
  ``user-deleted`` is fired. ``<remove/>`` with other children: ``bad-request`` (s3.2 error table).
* ``jabber:iq:register`` is announced in the domain's disco#info (s10: clients that are connected
  look there to learn whether password changes are possible in-band).

Data forms (s4) and the legacy ``<key/>`` (s7) are not used; the fixed fields are all xmppd needs.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

from lxml import etree
from twisted.internet.defer import ensureDeferred
from twisted.python.failure import Failure

from xmppd.accounts import AccountError
from xmppd.jid import JID, JIDError
from xmppd.plugin import Context, Option, Plugin
from xmppd.router import StanzaEvent
from xmppd.xml.stanza import add_child, make_error, make_result, payload

NS_REGISTER = "jabber:iq:register"
NS_FEATURE = "http://jabber.org/features/iq-register"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
QUERY = f"{{{NS_REGISTER}}}query"
MAX_TRACKED_IPS = 10000


class RateLimiter:
    """At most ``limit`` events per key in any ``window`` seconds; keys kept in an LRU of ``max_keys``."""

    def __init__(self, limit: int, window: float, clock: Any, max_keys: int = MAX_TRACKED_IPS) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def acquire(self, key: str) -> float | None:
        """Count one event for ``key`` now and return its stamp, or None when over the limit."""
        if self.limit <= 0:
            return self.clock.seconds()
        now = self.clock.seconds()
        stamps = self._events.get(key)
        if stamps is None:
            stamps = self._events[key] = deque()
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        else:
            self._events.move_to_end(key)
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if len(stamps) >= self.limit:
            return None
        stamps.append(now)
        return now

    def release(self, key: str, stamp: float) -> None:
        """Give back an event that did not happen after all (the registration failed)."""
        stamps = self._events.get(key)
        if stamps is not None and stamp in stamps:
            stamps.remove(stamp)

    def __len__(self) -> int:
        return len(self._events)


def _field(query: etree._Element, name: str) -> str | None:
    """The text of ``<name/>`` in the query ("" when empty), or None when absent."""
    el = query.find(f"{{{NS_REGISTER}}}{name}")
    return None if el is None else (el.text or "")


class InBandRegistration(Plugin):
    """XEP-0077 for the accounts of a domain."""

    name = "register"
    options = {
        "max_per_ip": Option(
            int, 5, "registrations allowed from one IP address per window (0: no limit)", min=0
        ),
        "window": Option(float, 3600.0, "the rate limit's window, in seconds", min=1),
        "instructions": Option(
            str,
            "Choose a username and password to register with this server.",
            "the instructions sent with the registration fields",
        ),
    }

    def setup(self, ctx: Context) -> None:
        self.limiter = RateLimiter(ctx.option("max_per_ip"), ctx.option("window"), ctx.clock)
        ctx.add_feature(NS_REGISTER)
        ctx.hook("stream-features", self.stream_features)
        ctx.hook("unauthenticated-iq", self.unauthenticated_iq)
        ctx.hook_iq("get", NS_REGISTER, "query", self.registered_info, to=("self", "host"))
        ctx.hook_iq("set", NS_REGISTER, "query", self.registered_set, to=("self", "host"))

    # -- before authentication ------------------------------------------------------------------------

    def stream_features(self, event: Any) -> None:
        stream, features = event.stream, event.features
        if getattr(stream, "kind", None) != "c2s" or stream.user is not None:
            return
        if features.find(f"{{{NS_SASL}}}mechanisms") is None:
            return  # SASL is not offered yet (TLS first): neither is registration
        add_child(features, NS_FEATURE, "register")

    def unauthenticated_iq(self, event: Any) -> Any:
        iq = event.stanza
        query = payload(iq)
        if query is None or query.tag != QUERY:
            return None  # not ours: another plugin may answer, or the stream ends
        if iq.get("type") in ("result", "error"):
            return True  # never answered (RFC 6120 s8.3.1); nothing of ours expects one
        if not iq.get("id") or iq.get("type") not in ("get", "set"):
            return make_error(iq, "bad-request", text="an iq needs an id and the type get or set")
        if iq.get("type") == "get":
            return self._form(iq)
        d = ensureDeferred(self._register(event.stream, iq, query, event.peer))

        def failed(failure: Failure) -> Any:
            self.ctx.log.failure("in-band registration failed", failure)
            return make_error(iq, "internal-server-error")

        return d.addErrback(failed)

    def _form(self, iq: etree._Element) -> etree._Element:
        reply = make_result(iq)
        query = add_child(reply, NS_REGISTER, "query")
        add_child(query, NS_REGISTER, "instructions", self.ctx.option("instructions"))
        add_child(query, NS_REGISTER, "username")
        add_child(query, NS_REGISTER, "password")
        return reply

    async def _register(self, stream: Any, iq: etree._Element, query: etree._Element, peer: str) -> Any:
        if query.find(f"{{{NS_REGISTER}}}remove") is not None:
            return make_error(iq, "unexpected-request", text="authenticate first to cancel a registration")
        username, password = _field(query, "username"), _field(query, "password")
        if not username or not password:
            return make_error(iq, "not-acceptable", text="a username and a password are required")
        try:
            account = JID.make(username, self.ctx.domain)
        except JIDError as e:
            return make_error(iq, "jid-malformed", text=f"that username cannot be used: {e}")
        state = stream.data.setdefault(self.name, {})
        if state.get("registered"):
            return make_error(iq, "not-acceptable", text="one registration per connection; log in now")
        stamp = self.limiter.acquire(peer)
        if stamp is None:
            self.ctx.log.info("registration refused: too many from {peer}", peer=peer)
            return make_error(iq, "resource-constraint", text="too many registrations; try again later")
        state["registered"] = True  # also holds off a second set while this one runs
        accounts = self.ctx.server.accounts
        try:
            if await accounts.exists(account):
                raise AccountError(f"{account} exists already")
            await accounts.create(account, password)
        except AccountError as e:
            state["registered"] = False
            self.limiter.release(peer, stamp)
            if await accounts.exists(account):
                return make_error(iq, "conflict", text="that username is taken")
            return make_error(iq, "not-acceptable", text=str(e))
        except BaseException:
            state["registered"] = False
            self.limiter.release(peer, stamp)
            raise
        self.ctx.log.info("account {account} registered in-band from {peer}", account=account, peer=peer)
        self.ctx.fire("user-created", account)
        return make_result(iq)

    # -- after authentication -------------------------------------------------------------------------

    def _own_account(self, event: StanzaEvent) -> JID | None:
        """The sender's account when a local client of this domain sent the iq, else None."""
        if event.origin is None or event.from_.domain != self.ctx.domain or event.from_.local is None:
            return None
        return event.from_.bare

    def registered_info(self, event: StanzaEvent) -> Any:
        account = self._own_account(event)
        if account is None:
            return event.error("service-unavailable")
        reply = event.result()
        query = add_child(reply, NS_REGISTER, "query")
        add_child(
            query,
            NS_REGISTER,
            "instructions",
            "You are registered. Send a new password to change it, or <remove/> to delete the account.",
        )
        add_child(query, NS_REGISTER, "registered")
        add_child(query, NS_REGISTER, "username", account.local)
        return reply

    async def registered_set(self, event: StanzaEvent) -> Any:
        account = self._own_account(event)
        if account is None:
            return event.error("service-unavailable")
        query = payload(event.stanza)
        children = [c for c in query if isinstance(c.tag, str)]
        if query.find(f"{{{NS_REGISTER}}}remove") is not None:
            if len(children) != 1:
                return event.error("bad-request", text="<remove/> must be the only child")
            return await self._remove(event, account)
        username, password = _field(query, "username"), _field(query, "password")
        if username is not None:
            try:
                same = JID.make(username, self.ctx.domain) == account
            except JIDError:
                same = False
            if not same:
                return event.error("not-allowed", text="you can only change your own password")
        if not password:
            return event.error("bad-request", text="a new, non-empty password is required")
        try:
            await event.server.accounts.set_password(account, password)
        except AccountError as e:
            return event.error("not-acceptable", text=str(e))
        self.ctx.log.info("password of {account} changed in-band", account=account)
        return event.result()

    async def _remove(self, event: StanzaEvent, account: JID) -> Any:
        try:
            # The result goes straight to the asking session: it must arrive before the stream error.
            await event.server.delete_account(
                account, before_close=lambda: event.origin.send(event.result()), reason="account removed"
            )
        except AccountError:
            return event.error("registration-required")  # s3.2: not (or no longer) registered
        self.ctx.log.info("account {account} removed in-band", account=account)
        return True
