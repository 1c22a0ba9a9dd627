"""SASL negotiation on a client stream (RFC 6120 s6): mechanisms offered, the exchange, success or failure.

Offered: SCRAM-SHA-256 and SCRAM-SHA-1, with their -PLUS variants when the stream is on TLS and channel
binding data is available (tls-exporter, tls-server-end-point; advertised per XEP-0440), and PLAIN only
over TLS (RFC 6120 s13.8: never expose a password on a plaintext stream). Credentials come from
``xmppd.accounts``; a lookup that fails answers ``temporary-auth-failure``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import TYPE_CHECKING

from lxml import etree
from twisted.internet.defer import Deferred, ensureDeferred

from xmppd.jid import JIDError, prep_local
from xmppd.log import logger
from xmppd.sasl.channel_binding import tls_channel_bindings
from xmppd.sasl.errors import SASLError
from xmppd.sasl.plain import parse_plain
from xmppd.sasl.scram import ScramServer, mechanism_names, parse_mechanism
from xmppd.xml.stanza import add_child

if TYPE_CHECKING:
    from xmppd.accounts import Accounts

NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_SASL_CB = "urn:xmpp:sasl-cb:0"

log = logger("xmppd.sasl")


class SASLNegotiation:
    """One stream's SASL state. ``send`` writes an element to the peer; ``on_success(user)`` is called
    with the authenticated localpart once ``<success/>`` has been sent."""

    def __init__(
        self,
        accounts: Accounts,
        domain: str,
        *,
        tls_connection: object | None,
        send: Callable[[etree._Element], None],
        on_success: Callable[[str], None],
        on_failure: Callable[[str], None],
    ) -> None:
        self.accounts = accounts
        self.domain = domain
        self.tls = tls_connection is not None
        self.channel_bindings = tls_channel_bindings(tls_connection) if tls_connection is not None else {}
        self.send = send
        self.on_success = on_success
        self.on_failure = on_failure
        self._scram: ScramServer | None = None
        self._user_name: str | None = None  # the SCRAM user once known (None: unknown account)
        self.mechanism: str | None = None  # the offered mechanism of the latest <auth/> (for server.stats)
        self.busy = False  # an answer is being computed; the stream holds further input

    # -- features ----------------------------------------------------------------------------------------

    def mechanisms(self) -> list[str]:
        names = mechanism_names(plus=bool(self.channel_bindings))
        if self.tls:
            names.append("PLAIN")
        return names

    def add_features(self, features: etree._Element) -> None:
        mechs = add_child(features, NS_SASL, "mechanisms")
        for name in self.mechanisms():
            add_child(mechs, NS_SASL, "mechanism", name)
        if self.channel_bindings:
            cb = add_child(features, NS_SASL_CB, "sasl-channel-binding")
            for kind in self.channel_bindings:
                add_child(cb, NS_SASL_CB, "channel-binding").set("type", kind)

    # -- exchange -----------------------------------------------------------------------------------------

    def handle(self, el: etree._Element) -> None:
        """Process ``<auth/>``, ``<response/>`` or ``<abort/>`` (RFC 6120 s6.4)."""
        name = etree.QName(el).localname
        try:
            if name == "auth":
                self._auth(el)
            elif name == "response":
                self._response(el)
            elif name == "abort":
                self._scram = None
                raise SASLError("aborted")
            else:
                raise SASLError("malformed-request", f"unexpected <{name}/>")
        except SASLError as e:
            self._fail(e)

    def _auth(self, el: etree._Element) -> None:
        if self._scram is not None:
            raise SASLError("malformed-request", "an exchange is already running")
        mechanism = el.get("mechanism") or ""
        if mechanism not in self.mechanisms():
            self.mechanism = None
            raise SASLError("invalid-mechanism")
        self.mechanism = mechanism
        data = _decode(el.text)
        if mechanism == "PLAIN":
            self._run(self._plain(data))
            return
        hash_name, plus = parse_mechanism(mechanism)
        self._scram = ScramServer(
            hash_name,
            plus=plus,
            plus_advertised=bool(self.channel_bindings),
            channel_bindings=self.channel_bindings,
        )
        self._run(self._scram_first(data, hash_name))

    async def _plain(self, data: bytes) -> None:
        authzid, authcid, password = parse_plain(data)
        user = self._user(authcid, authzid)
        ok = await self.accounts.check_password(self.domain, user, password)
        if not ok:
            raise SASLError("not-authorized")
        self._succeed(user, None)

    async def _scram_first(self, data: bytes, hash_name: str) -> None:
        scram = self._scram
        authcid = scram.client_first(data)
        try:
            user = self._user(authcid, scram.authzid)
        except SASLError as e:
            if e.condition != "not-authorized":
                raise
            user = None  # unknown user: run the exchange to its end so it reveals nothing (RFC 5802 s9)
        creds = await self.accounts.credentials(self.domain, user, hash_name) if user else None
        self._user_name = user
        self._challenge(scram.server_first(creds))

    def _response(self, el: etree._Element) -> None:
        scram = self._scram
        if scram is None:
            raise SASLError("malformed-request", "no exchange is running")
        self._scram = None
        final = scram.client_final(_decode(el.text))
        if not self._user_name:
            raise SASLError("not-authorized")
        self._succeed(self._user_name, final)

    def _user(self, authcid: str, authzid: str | None) -> str:
        try:
            user = prep_local(authcid)
        except JIDError:
            raise SASLError("not-authorized") from None
        if authzid and authzid not in (f"{user}@{self.domain}", user):
            raise SASLError("invalid-authzid")
        return user

    def _run(self, coro: object) -> None:
        self.busy = True
        d: Deferred = ensureDeferred(coro)

        def done(_: object) -> None:
            self.busy = False

        def failed(failure) -> None:
            self.busy = False
            if failure.check(SASLError):
                self._scram = None
                self._fail(failure.value)
            else:
                log.failure("SASL step failed", failure)
                self._scram = None
                self._fail(SASLError("temporary-auth-failure"))

        d.addCallbacks(done, failed)

    def _challenge(self, data: bytes) -> None:
        el = etree.Element(f"{{{NS_SASL}}}challenge", nsmap={None: NS_SASL})
        el.text = base64.b64encode(data).decode("ascii")
        self.send(el)

    def _succeed(self, user: str, additional: bytes | None) -> None:
        el = etree.Element(f"{{{NS_SASL}}}success", nsmap={None: NS_SASL})
        if additional:
            el.text = base64.b64encode(additional).decode("ascii")
        self.send(el)
        self.on_success(user)

    def _fail(self, error: SASLError) -> None:
        el = etree.Element(f"{{{NS_SASL}}}failure", nsmap={None: NS_SASL})
        add_child(el, NS_SASL, error.condition)
        self.send(el)
        self.on_failure(error.condition)


def _decode(text: str | None) -> bytes:
    """The base64 payload of an SASL element; "=" is an empty response (RFC 6120 s6.4.2)."""
    text = (text or "").strip()
    if text in ("", "="):
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SASLError("incorrect-encoding") from None
