"""Entity Capabilities (XEP-0115): learn what local clients can do, and advertise what the server can do.

Presence is never changed: the ``<c/>`` element a client puts in its presence reaches its contacts as it
was sent. This plugin only watches the available presence local clients broadcast (no ``to``), remembers
the advertised ``(node, ver, hash)`` in ``session.data["caps"]``, and finds out the features behind a
``ver`` it has not seen: it asks that client with a disco#info query to ``node#ver`` (s6.2), rebuilds the
verification string from the answer (s5.1) and caches the answer only if it matches (s5.4), in a bounded
LRU in memory and in the plugin's store, where it outlives restarts (s8.2). Clients advertising a known
``ver`` are never asked again. One query per ``ver`` is in flight however many clients advertise it, and
at most ``max_queries`` in all, no more than three of them unanswered by one account. An answer that does
not verify is not cached; another account advertising the same ``ver`` is asked instead (s5.4 step 3.9),
at most three in all per round. A ``hash`` this server does not implement is queried but not verified,
and its answer is kept for that session only (s5.4 step 2); a ``<c/>`` without ``hash`` is the legacy
format (s13), which is not supported and so ignored.

Other plugins (PEP) read the result with ``features(full_jid)`` or ``info(full_jid)``, or hook the
``caps-updated`` event (a :class:`CapsUpdated`), fired when a session's features become known.

The server advertises its own capabilities as a stream feature (s6.3) to authenticated clients, computed
from the domain's disco#info at that moment, and answers disco#info to ``https://xmppd.invalid#<ver>``.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from lxml import etree
from twisted.python.failure import Failure
from xmppd.plugins.disco import info_query

from xmppd.jid import JID, JIDError, parse_jid
from xmppd.plugin import Context, Option, Plugin
from xmppd.router import IQError, IQTimeout, StanzaEvent
from xmppd.xml.stanza import XML_LANG, add_child, make_stanza, payload

NS_CAPS = "http://jabber.org/protocol/caps"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_DATA = "jabber:x:data"

#: The caps ``node`` of this software (s4: a URI naming the application; ``.invalid`` cannot clash).
SERVER_NODE = "https://xmppd.invalid"
#: The hash the server uses for its own verification string (s9.1: SHA-1 is mandatory to implement).
SERVER_HASH = "sha-1"

#: s8.1, s9.1: the hashes we verify, by their names in the IANA Hash Function Textual Names registry.
#: MD2 and MD5 are left out on purpose: a ver hashed with them is queried but never cached globally.
HASHES: dict[str, Callable[[bytes], Any]] = {
    "sha-1": hashlib.sha1,
    "sha-224": hashlib.sha224,
    "sha-256": hashlib.sha256,
    "sha-384": hashlib.sha384,
    "sha-512": hashlib.sha512,
}

#: s5.4 step 3.9: how many accounts advertising one ver are asked before giving up for now.
MAX_ATTEMPTS = 3
#: Unanswered queries one account may have at once: a client that changes its ver in every presence and
#: never answers must not take all ``max_queries`` slots from everyone else.
MAX_PER_ACCOUNT = 3

Identity = tuple[str, str, str, str]  # category, type, xml:lang, name ("" when absent)
Form = tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]  # FORM_TYPE, ((var, sorted values), ...)
IDENTITY_ATTRIBUTES = ("category", "type", XML_LANG, "name")


class IllFormed(ValueError):
    """A disco#info answer that XEP-0115 s5.4 step 3 calls ill-formed (duplicates)."""


class UnsupportedHash(ValueError):
    """A hash algorithm this plugin does not implement."""


@dataclass(frozen=True)
class DiscoInfo:
    """The parts of a disco#info answer that the verification string covers (s5.1)."""

    identities: tuple[Identity, ...]  # sorted by category, type, xml:lang, name
    features: frozenset[str]
    forms: tuple[Form, ...]  # sorted by FORM_TYPE; only forms with a hidden FORM_TYPE (s5.4 step 3.6)

    @classmethod
    def from_query(cls, query: etree._Element) -> DiscoInfo:
        """Read a ``<query xmlns='http://jabber.org/protocol/disco#info'/>``; IllFormed per s5.4 3.3-3.5.

        Only each identity's own ``xml:lang`` counts, not one inherited from the iq: the router stamps
        the stream's language on every client stanza, which the client did not hash."""
        identities: list[Identity] = []
        features: list[str] = []
        forms: list[Form] = []
        form_types: set[str] = set()
        for child in query:
            if child.tag == f"{{{NS_INFO}}}identity":
                category, type_, lang, name = (child.get(a) or "" for a in IDENTITY_ATTRIBUTES)
                identities.append((category, type_, lang, name))
            elif child.tag == f"{{{NS_INFO}}}feature":
                var = child.get("var")
                if var is not None:
                    features.append(var)
            elif child.tag == f"{{{NS_DATA}}}x":
                form = _read_form(child, form_types)
                if form is not None:
                    forms.append(form)
        if len(set(identities)) != len(identities):
            raise IllFormed("the same identity twice")  # s5.4 step 3.3
        if len(set(features)) != len(features):
            raise IllFormed("the same feature twice")  # s5.4 step 3.4
        return cls(tuple(sorted(identities)), frozenset(features), tuple(sorted(forms)))

    def hash_input(self) -> str:
        """The string S of s5.1. Python sorts str by code point, which is the byte order of UTF-8: the
        "i;octet" collation s5.1 asks for."""
        parts = ["/".join(identity) for identity in self.identities]  # steps 2-3
        parts += sorted(self.features)  # steps 4-5
        for form_type, fields in self.forms:  # steps 6-7
            parts.append(form_type)
            for var, values in fields:
                parts.append(var)
                parts.extend(values)
        return "".join(f"{part}<" for part in parts)

    def verification_string(self, hash_name: str = SERVER_HASH) -> str:
        """s5.1 steps 8-9: UTF-8, hash with the named algorithm, Base64 (RFC 4648 s4, padded)."""
        algorithm = HASHES.get(hash_name)
        if algorithm is None:
            raise UnsupportedHash(hash_name)
        return base64.b64encode(algorithm(self.hash_input().encode("utf-8")).digest()).decode("ascii")

    # storage (JSON)
    def to_json(self) -> dict[str, Any]:
        return {
            "identities": [list(identity) for identity in self.identities],
            "features": sorted(self.features),
            "forms": [[ft, [[var, list(values)] for var, values in fields]] for ft, fields in self.forms],
        }

    @classmethod
    def from_json(cls, data: Any) -> DiscoInfo:
        """The inverse of ``to_json``; ValueError for anything else."""
        try:
            identities = tuple(_strings(i, 4) for i in data["identities"])
            features = frozenset(_strings(data["features"]))
            forms = tuple(
                (_string(ft), tuple((_string(var), _strings(values)) for var, values in fields))
                for ft, fields in data["forms"]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not stored caps: {e}") from None
        return cls(identities, features, forms)  # type: ignore[arg-type]


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _strings(values: Any, length: int | None = None) -> tuple[str, ...]:
    result = tuple(_string(v) for v in values)
    if length is not None and len(result) != length:
        raise ValueError(f"expected {length} strings")
    return result


def _read_form(x: etree._Element, form_types: set[str]) -> Form | None:
    """One XEP-0128 form for the verification string, or None when s5.4 step 3.6 says to ignore it."""
    fields = [f for f in x if f.tag == f"{{{NS_DATA}}}field"]
    typed = [f for f in fields if f.get("var") == "FORM_TYPE"]
    if not typed:
        return None  # step 3.6: no FORM_TYPE
    values = {v.text or "" for f in typed for v in f if v.tag == f"{{{NS_DATA}}}value"}
    if len(values) > 1:
        raise IllFormed("a FORM_TYPE with different values")  # step 3.5
    if not values:
        return None  # a FORM_TYPE without a value types nothing
    form_type = values.pop()
    if form_type in form_types:
        raise IllFormed(f"two forms of FORM_TYPE {form_type}")  # step 3.5
    form_types.add(form_type)
    if any(f.get("type") != "hidden" for f in typed):
        return None  # step 3.6: FORM_TYPE not hidden
    entries = []
    for f in fields:
        var = f.get("var")
        if var is None or var == "FORM_TYPE":
            continue  # s5.1 step 7.3: every field other than FORM_TYPE, by var
        entries.append((var, tuple(sorted(v.text or "" for v in f if v.tag == f"{{{NS_DATA}}}value"))))
    return form_type, tuple(sorted(entries))


def verification_string(query: etree._Element, hash_name: str = SERVER_HASH) -> str:
    """The XEP-0115 verification string of a disco#info ``<query/>`` (IllFormed, UnsupportedHash)."""
    return DiscoInfo.from_query(query).verification_string(hash_name)


class Caps(NamedTuple):
    """What a session advertised: ``session.data["caps"]``."""

    node: str
    ver: str
    hash: str | None  # None: the legacy format (no 'hash' attribute)


@dataclass(frozen=True)
class CapsUpdated:
    """Fired as ``caps-updated`` on the domain's bus when a session's features become known."""

    session: Any
    features: frozenset[str]
    info: DiscoInfo
    verified: bool  # False only for a hash this server does not implement (s5.4 step 2)


@dataclass
class _Query:
    """Finding out one ver: its stored copy first, then disco#info to clients that advertise it."""

    key: str
    hash: str
    ver: str
    waiters: list[Any] = field(default_factory=list)  # sessions advertising it, in order
    tried: set[JID] = field(default_factory=set)  # accounts asked (bare JIDs)


def _key(caps: Caps | None) -> str | None:
    if caps is None or caps.hash is None:
        return None
    return f"{caps.hash}:{caps.ver}"  # ':' cannot appear in a localpart, so never an account's key


class EntityCapabilities(Plugin):
    """XEP-0115 for the server: client caps verified and cached (s5.4, s6.2, s8.2); own caps (s6.3)."""

    name = "caps"
    requires = ("disco",)
    options = {
        "cache_size": Option(int, 10000, "verification strings remembered in memory", min=1),
        "query_timeout": Option(float, 30.0, "seconds a client has to answer the disco#info query", min=1),
        "max_queries": Option(int, 100, "disco#info queries to clients in flight at once", min=1),
    }

    def setup(self, ctx: Context) -> None:
        self._closed = False
        self._cache: OrderedDict[str, DiscoInfo] = OrderedDict()
        self._store = ctx.store()
        self._known: dict[str, tuple[DiscoInfo, bool]] = {}  # session id -> what its caps stand for
        self._queries: dict[str, _Query] = {}  # key -> query, coalescing clients with the same ver
        self._unverified = 0  # queries for hashes we do not implement, in flight
        self._own: tuple[bytes, tuple[str, etree._Element] | None] | None = None  # (query's XML, own_caps)
        self._asking: dict[JID, int] = {}  # account -> its unanswered queries
        ctx.add_feature(NS_CAPS)
        # Above the filters and the presence plugin: presence they stop still tells what the client can do.
        ctx.hook("pre-presence/bare", self.on_presence, priority=100)
        ctx.hook("session-ended", lambda event: self._forget(event.session))
        ctx.hook("stream-features", self.on_stream_features)
        ctx.hook_iq("get", NS_INFO, "query", self.on_own_node, to="host", priority=10)
        for session in ctx.sessions:  # after a reload: sessions that advertised caps before
            if session.host == ctx.domain and session.data.get("caps") is not None:
                self._resolve(session, session.data["caps"])

    def teardown(self) -> None:
        self._closed = True  # queries still in flight are answered into the void

    # -- API for other plugins ---------------------------------------------------------------------------

    def info(self, jid: JID | str) -> DiscoInfo | None:
        """The disco#info behind the current caps of the session bound to ``jid``, None if unknown."""
        try:
            full = parse_jid(jid) if isinstance(jid, str) else jid
        except JIDError:
            return None
        session = self.ctx.sessions.get(full)
        if session is None:
            return None
        known = self._known.get(session.id)
        return None if known is None else known[0]

    def features(self, jid: JID | str) -> frozenset[str] | None:
        """The features of the session bound to ``jid`` as its caps advertise them, None if unknown."""
        info = self.info(jid)
        return None if info is None else info.features

    # -- client caps -------------------------------------------------------------------------------------

    def on_presence(self, event: StanzaEvent) -> None:
        """Presence broadcast by a local client (RFC 6121 s4.2, s4.4, s4.5): note its caps (s6.1)."""
        session = event.origin
        if session is None or event.stanza.get("to") is not None:
            return None
        if event.type == "unavailable":
            self._forget(session)
            return None
        if event.type is not None:
            return None
        c = event.stanza.find(f"{{{NS_CAPS}}}c")
        if c is None:
            # Kept: a client that learnt of caps optimization (s8.4) may leave <c/> out when nothing
            # changed. Prosody's mod_pep keeps them too.
            return None
        node, ver, hash_ = c.get("node"), c.get("ver"), c.get("hash")
        if not node or not ver:
            self._forget(session)  # s4: both are required; this <c/> says nothing usable
            return None
        caps = Caps(node, ver, hash_.lower() if hash_ else None)
        if session.data.get("caps") == caps:
            return None  # s6.1: clients repeat their caps in every presence
        self._forget(session)
        session.data["caps"] = caps
        self._resolve(session, caps)
        return None

    def _forget(self, session: Any) -> None:
        session.data.pop("caps", None)
        self._known.pop(session.id, None)

    def _current(self, session: Any) -> Caps | None:
        """The caps of a session still bound here, or None."""
        if session.jid is None or self.ctx.sessions.get(session.jid) is not session:
            return None
        return session.data.get("caps")

    def _in_flight(self) -> int:
        return len(self._queries) + self._unverified

    def _resolve(self, session: Any, caps: Caps) -> None:
        if caps.hash is None:
            # s5.4 step 1, s13: the legacy format cannot be verified; we do not support it.
            self.ctx.log.debug("{jid} advertises legacy caps; ignored", jid=session.jid)
            return
        if caps.hash not in HASHES:
            self._ask_unverified(session, caps)  # s5.4 step 2
            return
        key = _key(caps)
        info = self._cache.get(key)
        if info is not None:
            self._cache.move_to_end(key)
            self._learned(session, info, verified=True)
            return
        query = self._queries.get(key)
        if query is not None:
            query.waiters.append(session)  # coalesced with the query under way
            return
        if self._in_flight() >= self.ctx.option("max_queries"):
            self.ctx.log.info(
                "too many caps queries in flight; {ver} of {jid} left unknown", ver=caps.ver, jid=session.jid
            )
            return
        query = _Query(key, caps.hash, caps.ver, [session])
        self._queries[key] = query
        d = self._store.get(key)
        d.addCallbacks(self._stored, self._store_failed, callbackArgs=(query,), errbackArgs=(query,))

    def _stored(self, value: Any, query: _Query) -> None:
        if self._closed:
            return
        if value is not None:
            try:
                info = DiscoInfo.from_json(value)
                if info.verification_string(query.hash) == query.ver:
                    self._verified(query, info, fresh=False)
                    return
                self.ctx.log.warn("stored caps {key} do not match their hash; asking again", key=query.key)
            except ValueError as e:
                self.ctx.log.warn(
                    "stored caps {key} unreadable ({error}); asking again", key=query.key, error=str(e)
                )
        self._ask_next(query)

    def _store_failed(self, failure: Failure, query: _Query) -> None:
        self.ctx.log.failure("reading stored caps {key} failed", failure, key=query.key)
        if not self._closed:
            self._ask_next(query)

    def _ask_next(self, query: _Query) -> None:
        """Send disco#info (s6.2) to the next client advertising the ver, of an account not yet asked."""
        candidates = [
            s
            for s in query.waiters
            if _key(self._current(s)) == query.key and s.jid.bare not in query.tried and self._may_ask(s)
        ]
        if not candidates or len(query.tried) >= MAX_ATTEMPTS:
            self._queries.pop(query.key, None)
            return
        session = candidates[0]
        query.tried.add(session.jid.bare)
        d = self._send_query(session, self._current(session))
        d.addCallbacks(
            self._answered, self._unanswered, callbackArgs=(query, session), errbackArgs=(query, session)
        )

    def _may_ask(self, session: Any) -> bool:
        return self._asking.get(session.jid.bare, 0) < MAX_PER_ACCOUNT

    def _send_query(self, session: Any, caps: Caps) -> Any:
        """disco#info to the client's full JID, node ``node#ver`` (s6.2)."""
        account = session.jid.bare
        self._asking[account] = self._asking.get(account, 0) + 1

        def done(result: Any) -> Any:
            left = self._asking.pop(account, 1) - 1
            if left:
                self._asking[account] = left
            return result

        iq = make_stanza("iq", to=str(session.jid), from_=self.ctx.domain, type_="get")
        add_child(iq, NS_INFO, "query").set("node", f"{caps.node}#{caps.ver}")
        return self.ctx.send_iq(iq, timeout=self.ctx.option("query_timeout")).addBoth(done)

    def _answered(self, iq: etree._Element, query: _Query, session: Any) -> None:
        if self._closed:
            return
        result = iq.find(f"{{{NS_INFO}}}query")
        try:
            if result is None:
                raise IllFormed("no disco#info query in the result")
            info = DiscoInfo.from_query(result)
            computed = info.verification_string(query.hash)
        except IllFormed as e:
            self._not_verified(query, session, str(e))
            return
        if computed != query.ver:  # s5.4 step 3.9
            self._not_verified(query, session, f"the answer hashes to {computed}")
            return
        self.ctx.log.info(
            "caps {hash} {ver} of {jid} verified: {count} features",
            hash=query.hash,
            ver=query.ver,
            jid=session.jid,
            count=len(info.features),
        )
        self._verified(query, info, fresh=True)

    def _unanswered(self, failure: Failure, query: _Query, session: Any) -> None:
        if self._closed:
            return
        if failure.check(IQError, IQTimeout):
            self._not_verified(query, session, f"no answer ({failure.getErrorMessage()})")
        else:
            self.ctx.log.failure("caps query to {jid} failed", failure, jid=session.jid)
            self._ask_next(query)

    def _not_verified(self, query: _Query, session: Any, why: str) -> None:
        self.ctx.log.info(
            "caps {hash} {ver} of {jid} not verified: {why}",
            hash=query.hash,
            ver=query.ver,
            jid=session.jid,
            why=why,
        )
        self._ask_next(query)  # s5.4 step 3.9: try another client advertising it

    def _verified(self, query: _Query, info: DiscoInfo, *, fresh: bool) -> None:
        """s5.4 step 3.8: cache globally, and tell every session still advertising it."""
        self._queries.pop(query.key, None)
        self._cache[query.key] = info
        self._cache.move_to_end(query.key)
        while len(self._cache) > self.ctx.option("cache_size"):
            self._cache.popitem(last=False)
        if fresh:
            self._store.set(query.key, info.to_json()).addErrback(
                lambda f: self.ctx.log.failure("storing caps {key} failed", f, key=query.key)
            )
        done: set[str] = set()
        for session in query.waiters:
            if session.id not in done and _key(self._current(session)) == query.key:
                done.add(session.id)
                self._learned(session, info, verified=True)

    def _ask_unverified(self, session: Any, caps: Caps) -> None:
        """s5.4 step 2: a hash we do not implement; the answer stands for this session only."""
        if self._in_flight() >= self.ctx.option("max_queries") or not self._may_ask(session):
            return
        self._unverified += 1

        def answered(iq: etree._Element) -> None:
            result = iq.find(f"{{{NS_INFO}}}query")
            if self._closed or result is None or self._current(session) != caps:
                return
            try:
                info = DiscoInfo.from_query(result)
            except IllFormed:
                return
            self._learned(session, info, verified=False)

        def done(result: Any) -> None:
            self._unverified -= 1
            if isinstance(result, Failure):
                result.trap(IQError, IQTimeout)

        d = self._send_query(session, caps)
        d.addCallback(answered)
        d.addBoth(done)
        d.addErrback(lambda f: self.ctx.log.failure("caps query to {jid} failed", f, jid=session.jid))

    def _learned(self, session: Any, info: DiscoInfo, *, verified: bool) -> None:
        self._known[session.id] = (info, verified)
        self.ctx.fire("caps-updated", CapsUpdated(session, info.features, info, verified))

    # -- the server's own caps (s6.3) --------------------------------------------------------------------

    def own_query(self) -> etree._Element:
        """The domain's disco#info ``<query/>``, exactly as the disco plugin answers it."""
        return info_query(self.ctx.host)

    def own_caps(self) -> tuple[str, etree._Element] | None:
        """The domain's verification string and the query it covers; None if the data is ill-formed
        (two plugins adding forms of one FORM_TYPE)."""
        query = self.own_query()
        # The hash is worked out again only when the query changed (a plugin loaded or unloaded): every
        # login is offered it.
        xml = etree.tostring(query)
        if self._own is not None and self._own[0] == xml:
            cached = self._own[1]
            return None if cached is None else (cached[0], query)
        try:
            own: tuple[str, etree._Element] | None = (
                DiscoInfo.from_query(query).verification_string(SERVER_HASH),
                query,
            )
        except IllFormed as e:
            self.ctx.log.debug("no caps for {domain}: {error}", domain=self.ctx.domain, error=str(e))
            own = None
        self._own = (xml, own)
        return own

    def on_stream_features(self, event: Any) -> None:
        """s6.3: offered once the client has authenticated, the only time it can act on it."""
        if getattr(event.stream, "user", None) is None:
            return None
        own = self.own_caps()
        if own is not None:
            c = add_child(event.features, NS_CAPS, "c")
            c.set("hash", SERVER_HASH)
            c.set("node", SERVER_NODE)
            c.set("ver", own[0])
        return None

    def on_own_node(self, event: StanzaEvent) -> etree._Element | None:
        """disco#info to ``SERVER_NODE#ver`` (s6.2, s6.3): the domain's info; other nodes go to disco."""
        node = payload(event.stanza).get("node")
        if not node or not node.startswith(f"{SERVER_NODE}#"):
            return None
        own = self.own_caps()
        if own is None or node != f"{SERVER_NODE}#{own[0]}":
            return None
        reply = event.result()
        query = own[1]
        query.set("node", node)
        reply.append(query)
        return reply
