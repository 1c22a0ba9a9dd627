"""One room: its occupants, entering and leaving, messages, invitations and nickname changes
(XEP-0045 s7). Moderation, ownership and registration are in ``admin``; the room's service (``service``)
routes stanzas here and keeps rooms.

A room sends every stanza through its service, from its own JID (``room@service``) or an occupant JID
(``room@service/nick``) to the real full JIDs of the occupants' sessions.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

from lxml import etree
from xmppd.plugins.muc.history import History, HistoryRequest
from xmppd.plugins.muc.occupant import (
    BANNED,
    CONFIG_CHANGED,
    CREATED,
    KICKED,
    LOGGING_ON,
    NICK_CHANGED,
    NON_ANONYMOUS,
    NS_MUC,
    NS_USER,
    RANK,
    REMOVED_ERROR,
    SELF,
    Occupant,
    occupant_presence,
)

from xmppd.jid import JID, JIDError, parse_jid
from xmppd.xml.stanza import add_child, copy_stanza, error_condition, make_error, make_stanza, payload

if TYPE_CHECKING:
    from xmppd.plugins.muc.service import Service

NS_PING = "urn:xmpp:ping"
NS_VCARD = "vcard-temp"
#: Error conditions that show an occupant's client is gone (s18.1 of XEP-0045 calls these ghosts; XEP-0410
#: s3.2 lists the same): the occupant is removed with status 333.
GONE = {
    "gone",
    "item-not-found",
    "recipient-unavailable",
    "redirect",
    "remote-server-not-found",
    "remote-server-timeout",
    "service-unavailable",
}
MAX_INVITES = 20  # <invite/> elements honoured in one message
MAX_SESSIONS = 10  # sessions of one user under one nickname (s7.2.7); remote users are bounded here


class Refused(Exception):
    """A request the room answers with a stanza error."""

    def __init__(self, condition: str, text: str | None = None, type_: str | None = None) -> None:
        super().__init__(condition)
        self.condition, self.text, self.type = condition, text, type_


class Room:
    """A room's state. ``affiliations`` maps bare JIDs (text) to owner/admin/member/outcast; ``nicks``
    maps bare JIDs to their registered nickname (s7.10)."""

    def __init__(
        self,
        service: Service,
        name: str,
        config: dict[str, Any],
        *,
        affiliations: dict[str, str] | None = None,
        nicks: dict[str, str] | None = None,
        subject: tuple[str, str] = ("", ""),
        locked: bool = False,
    ) -> None:
        self.service = service
        self.name = name
        self.jid = JID(name, service.domain, None)
        self.config = config
        self.affiliations = dict(affiliations or {})
        self.nicks = dict(nicks or {})
        self.subject = subject  # (text, nick of who set it)
        self.locked = locked
        self.occupants: dict[str, Occupant] = {}  # nick -> occupant
        self.by_jid: dict[JID, Occupant] = {}  # a joined session's full JID -> its occupant
        self.history = History(self.history_length)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def history_length(self) -> int:
        return min(int(self.config["historylength"]), self.service.max_history)

    def affiliation(self, bare: JID | str) -> str:
        return self.affiliations.get(str(bare), "none")

    def set_affiliation(self, bare: str, affiliation: str) -> None:
        if affiliation == "none":
            self.affiliations.pop(bare, None)
        else:
            self.affiliations[bare] = affiliation

    def owners(self) -> list[str]:
        return sorted(j for j, a in self.affiliations.items() if a == "owner")

    def default_role(self, affiliation: str) -> str:
        """s5.1.2: the role an affiliation gets on entering."""
        if affiliation in ("owner", "admin"):
            return "moderator"
        if self.config["moderated"] and affiliation == "none":
            return "visitor"
        return "participant"

    def nick_owner(self, nick: str) -> str | None:
        """The bare JID that registered ``nick`` (s7.10), if any."""
        for bare, registered in self.nicks.items():
            if registered == nick:
                return bare
        return None

    def occupant_jid(self, nick: str | None = None) -> str:
        return str(JID(self.name, self.service.domain, nick))

    def to_doc(self) -> dict[str, Any]:
        """What is stored for a persistent room."""
        return {
            "config": self.config,
            "affiliations": self.affiliations,
            "nicks": self.nicks,
            "subject": list(self.subject),
        }

    def config_changed(self) -> None:
        self.history.resize(self.history_length)

    # -- sending -------------------------------------------------------------------------------------

    def send(self, stanza: etree._Element, to: JID | str) -> None:
        stanza.set("to", str(to))
        self.service.send(stanza)

    def send_occupant(self, occupant: Occupant, stanza: etree._Element) -> None:
        """To every session of ``occupant``."""
        sessions = list(occupant.sessions)
        for full in sessions[1:]:
            self.send(copy_stanza(stanza), full)
        if sessions:
            self.send(stanza, sessions[0])

    def sees_jid(self, recipient: Occupant) -> bool:
        """s7.2.3/s7.2.4: real JIDs go to everyone in non-anonymous rooms, to moderators otherwise."""
        return self.config["whois"] == "anyone" or recipient.role == "moderator"

    def broadcast_presence(
        self,
        occupant: Occupant,
        *,
        recipients: list[Occupant] | None = None,
        unavailable: bool = False,
        codes: tuple[str, ...] = (),
        self_codes: tuple[str, ...] = (),
        **details: Any,
    ) -> None:
        """Send ``occupant``'s presence to the room (s7.2.3): to itself with status 110 and
        ``self_codes``, to others when its role's presence is broadcast (muc#roomconfig_presencebroadcast),
        with its real JID to those who may see it."""
        affiliation = self.affiliation(occupant.bare)
        broadcast = occupant.role in self.config["presencebroadcast"]
        built: dict[tuple[bool, bool], etree._Element] = {}
        for other in list(self.occupants.values()) if recipients is None else recipients:
            own = other is occupant
            if not own and not broadcast:
                continue
            key = (own, own or self.sees_jid(other))
            if key not in built:
                built[key] = occupant_presence(
                    self.jid,
                    occupant,
                    affiliation,
                    show_jid=key[1],
                    unavailable=unavailable,
                    codes=(*codes, SELF, *self_codes) if own else codes,
                    **details,
                )
            self.send_occupant(other, copy_stanza(built[key]))

    def status_message(self, *codes: str) -> None:
        """A message from the room to every occupant carrying status codes (s10.2.1: 104, 170-174)."""
        message = make_stanza("message", from_=str(self.jid), type_="groupchat")
        x = add_child(message, NS_USER, "x")
        for code in codes:
            add_child(x, NS_USER, "status").set("code", code)
        for occupant in self.occupants.values():
            self.send_occupant(occupant, copy_stanza(message))

    # -- presence ------------------------------------------------------------------------------------

    def on_presence(self, stanza: etree._Element, sender: JID, nick: str, *, created: bool = False) -> None:
        """Presence from ``sender`` to ``room/nick``: enter, update, change nickname or leave."""
        type_ = stanza.get("type")
        occupant = self.by_jid.get(sender)
        if type_ == "unavailable":
            if occupant is not None:
                self.leave(sender, stanza)
            return
        if type_ == "error":
            if occupant is not None:
                self.remove_sessions(occupant, [sender], codes=(REMOVED_ERROR,))
            return
        if type_ is not None:
            return  # subscriptions and probes mean nothing to a room
        if occupant is None:
            self.enter(stanza, sender, nick, created=created)
        elif occupant.nick != nick:
            self.change_nick(stanza, occupant, sender, nick)
        else:
            occupant.sessions[sender] = stanza
            occupant.current = sender
            self.broadcast_presence(occupant)  # s7.7: a presence update

    def check_entry(self, stanza: etree._Element, bare: JID, nick: str) -> Occupant | None:
        """s7.2.5-s7.2.11: may ``bare`` enter as ``nick``? Returns the occupant it joins as another
        session of (s7.2.7) or None; raises Refused."""
        check_nick(nick)
        affiliation = self.affiliation(bare)
        if self.locked and affiliation != "owner":
            raise Refused("item-not-found", "this room is being set up")  # s10.1.1
        if affiliation == "outcast":
            raise Refused("forbidden", "you are banned from this room")  # s7.2.8
        existing = self.occupants.get(nick)
        if existing is not None and existing.bare != bare:
            raise Refused("conflict", "that nickname is in use")  # s7.2.9
        if existing is not None and len(existing.sessions) >= MAX_SESSIONS:
            raise Refused("resource-constraint", "too many sessions under this nickname", "wait")
        registered_by = self.nick_owner(nick)
        if registered_by is not None and registered_by != str(bare):
            raise Refused("conflict", "that nickname is registered by someone else")  # s7.2.9, s7.10
        if self.config["membersonly"] and RANK[affiliation] < RANK["member"]:
            raise Refused("registration-required", "this room is for members only")  # s7.2.6
        if self.config["passwordprotected"] and affiliation != "owner":
            x = stanza.find(f"{{{NS_MUC}}}x")
            given = x.findtext(f"{{{NS_MUC}}}password") if x is not None else None
            if given != self.config["password"]:
                raise Refused("not-authorized", "a password is required")  # s7.2.5
        if (
            existing is None
            and len(self.occupants) >= int(self.config["maxusers"])
            and affiliation not in ("owner", "admin")
        ):
            raise Refused("service-unavailable", "the room is full", "wait")  # s7.2.10
        return existing

    def enter(self, stanza: etree._Element, sender: JID, nick: str, *, created: bool = False) -> None:
        """s7.2: enter the room, then send the new session the occupants, itself, the history and the
        subject, in that order (s7.2.3, s7.2.15, s7.2.16)."""
        try:
            existing = self.check_entry(stanza, sender.bare, nick)
        except Refused as e:
            self.refuse(stanza, e)
            return
        occupant = existing or Occupant(nick, sender.bare, self.default_role(self.affiliation(sender.bare)))
        occupant.sessions[sender] = stanza
        occupant.current = sender
        self.occupants[nick] = occupant
        self.by_jid[sender] = occupant
        self.service.joined(self, sender)
        for other in list(self.occupants.values()):
            if other is not occupant and other.role in self.config["presencebroadcast"]:
                presence = occupant_presence(
                    self.jid, other, self.affiliation(other.bare), show_jid=self.sees_jid(occupant)
                )
                self.send(presence, sender)
        codes = []
        if self.config["whois"] == "anyone":
            codes.append(NON_ANONYMOUS)
        if self.config["logging"]:
            codes.append(LOGGING_ON)
        if created:
            codes.append(CREATED)
        self.broadcast_presence(occupant, self_codes=tuple(codes))
        x = stanza.find(f"{{{NS_MUC}}}x")
        for message in self.history.select(HistoryRequest(x), self.service.now(), str(self.jid)):
            self.send(message, sender)
        self.send(self.subject_message(), sender)

    def subject_message(self) -> etree._Element:
        """s7.2.15: the subject, sent last on entering, empty when none is set."""
        text, nick = self.subject
        message = make_stanza("message", from_=self.occupant_jid(nick or None), type_="groupchat")
        add_child(message, None, "subject", text or None)
        return message

    def change_nick(self, stanza: etree._Element, occupant: Occupant, sender: JID, nick: str) -> None:
        """s7.6: unavailable from the old nickname with 303 and the new one, then available from the new.
        Every session of a multi-session occupant moves with it."""
        existing = self.occupants.get(nick)
        registered_by = self.nick_owner(nick)
        try:
            check_nick(nick)
            if existing is not None or (registered_by is not None and registered_by != str(occupant.bare)):
                raise Refused("conflict", "that nickname is in use")  # s7.6
        except Refused as e:
            self.refuse(stanza, e)
            return
        self.broadcast_presence(occupant, unavailable=True, codes=(NICK_CHANGED,), nick=nick)
        del self.occupants[occupant.nick]
        occupant.nick = nick
        self.occupants[nick] = occupant
        occupant.sessions[sender] = stanza
        occupant.current = sender
        self.broadcast_presence(occupant)

    def leave(self, sender: JID, presence: etree._Element | None = None) -> None:
        """s7.14: a session leaves; the <status/> of its unavailable presence goes to the others."""
        occupant = self.by_jid.get(sender)
        if occupant is not None:
            self.remove_sessions(occupant, [sender], last=presence)

    def remove_sessions(
        self,
        occupant: Occupant,
        sessions: list[JID],
        *,
        last: etree._Element | None = None,
        broadcast: bool = True,
        **details: Any,
    ) -> None:
        """Remove sessions of an occupant. When none is left the occupant leaves the room: everyone gets
        its unavailable presence (with ``details``: codes, actor, reason, a destroy notice; the status
        text of ``last``, its own unavailable presence), or only itself unless ``broadcast``; while other
        sessions remain, only the leaving ones hear it."""
        for full in sessions:
            occupant.sessions.pop(full, None)
            self.by_jid.pop(full, None)
            self.service.left(self, full)
        if occupant.sessions:
            if occupant.current not in occupant.sessions:
                occupant.current = next(iter(occupant.sessions))
            codes = (*details.pop("codes", ()), SELF)
            for full in sessions:
                gone = Occupant(
                    occupant.nick, occupant.bare, occupant.role, {full: etree.Element("presence")}
                )
                presence = occupant_presence(
                    self.jid,
                    gone,
                    self.affiliation(occupant.bare),
                    show_jid=True,
                    unavailable=True,
                    codes=codes,
                    **details,
                )
                self.send(presence, full)
            return
        if self.occupants.get(occupant.nick) is occupant:
            del self.occupants[occupant.nick]
        final = last if last is not None else etree.Element("presence")
        leaving = Occupant(occupant.nick, occupant.bare, occupant.role, {s: final for s in sessions})
        recipients = [*self.occupants.values(), leaving] if broadcast else [leaving]
        self.broadcast_presence(leaving, recipients=recipients, unavailable=True, **details)
        if not self.occupants:
            self.service.emptied(self)

    def remove_occupant(self, occupant: Occupant, **details: Any) -> None:
        """Remove an occupant with all its sessions (kick, ban, destruction, shutdown)."""
        self.remove_sessions(occupant, list(occupant.sessions), **details)

    def refuse(self, stanza: etree._Element, error: Refused) -> None:
        """Answer a stanza with the error (presence errors carry the original <x/>, s7.2.5 example 26)."""
        if stanza.get("type") == "error":
            return
        self.service.send(
            make_error(
                stanza, error.condition, error.type, error.text, include_payload=stanza.tag == "presence"
            )
        )

    # -- messages ------------------------------------------------------------------------------------

    def on_message(self, stanza: etree._Element, sender: JID, nick: str | None) -> None:
        type_ = stanza.get("type") or "normal"
        occupant = self.by_jid.get(sender)
        if type_ == "error":
            if occupant is not None and error_condition(stanza) in GONE:
                self.remove_sessions(occupant, [sender], codes=(REMOVED_ERROR,))
            return
        try:
            if nick is not None:
                self.private_message(stanza, occupant, nick)
            elif type_ == "groupchat":
                self.groupchat(stanza, occupant)
            elif stanza.find(f"{{{NS_USER}}}x") is not None:
                self.invitations(stanza, sender, occupant)
            else:
                raise Refused("bad-request", "messages to a room are of type groupchat")
        except Refused as e:
            self.refuse(stanza, e)

    def groupchat(self, stanza: etree._Element, occupant: Occupant | None) -> None:
        """s7.4: reflect to every occupant from the sender's occupant JID; s8.1: subject changes."""
        if occupant is None:
            raise Refused("not-acceptable", "you are not in this room", "cancel")
        if occupant.role == "visitor":
            raise Refused("forbidden", "you have no voice in this room")  # s7.4, s8.3
        subject, body = stanza.find("subject"), stanza.find("body")
        if subject is not None and body is None:
            if not (
                occupant.role == "moderator"
                or (self.config["changesubject"] and occupant.role == "participant")
            ):
                raise Refused("forbidden", "you may not change the subject")  # s8.1
            self.subject = (subject.text or "", occupant.nick)
            self.service.save(self)
        message = copy_stanza(stanza)
        message.set("from", self.occupant_jid(occupant.nick))
        message.attrib.pop("to", None)
        if body is not None:
            now = self.service.now()
            text = self.history.add(message, now)
            if text is not None:
                self.service.store_history(self, text, now)
        for other in list(self.occupants.values()):
            self.send_occupant(other, copy_stanza(message))

    def private_message(self, stanza: etree._Element, occupant: Occupant | None, nick: str) -> None:
        """s7.5: a private message between occupants, from the sender's occupant JID."""
        if stanza.get("type") == "groupchat":
            raise Refused("bad-request", "a private message is not of type groupchat")
        if occupant is None:
            raise Refused("not-acceptable", "you are not in this room", "cancel")
        target = self.occupants.get(nick)
        if target is None:
            raise Refused("item-not-found", f"nobody is called {nick} here")
        allowed = self.config["allowpm"]
        if allowed == "none" or (
            allowed != "anyone"
            and occupant.role
            not in (("moderator", "participant") if allowed == "participants" else ("moderator",))
        ):
            raise Refused("forbidden", "private messages are not allowed here")
        message = copy_stanza(stanza)
        message.set("from", self.occupant_jid(occupant.nick))
        if message.find(f"{{{NS_USER}}}x") is None:
            add_child(message, NS_USER, "x")
        self.send_occupant(target, message)

    def invitations(self, stanza: etree._Element, sender: JID, occupant: Occupant | None) -> None:
        """s7.8.2 mediated invitations and s7.8.3 declines, relayed from the room's JID."""
        x = stanza.find(f"{{{NS_USER}}}x")
        invites = x.findall(f"{{{NS_USER}}}invite")[:MAX_INVITES]
        declines = x.findall(f"{{{NS_USER}}}decline")[:1]
        if not invites and not declines:
            raise Refused("bad-request", "nothing to do with this message")
        if invites:
            if occupant is None:
                raise Refused("not-acceptable", "only occupants may invite")
            affiliation = self.affiliation(sender.bare)
            if (
                self.config["membersonly"]
                and not self.config["allowinvites"]
                and affiliation not in ("owner", "admin")
            ):
                raise Refused("forbidden", "only admins may invite to this room")
        targets = []
        for element in [*invites, *declines]:
            try:
                targets.append((element, parse_jid(element.get("to") or "")))
            except JIDError:
                raise Refused("jid-malformed", "an invitation needs a valid 'to'") from None
        for element, to in targets:
            name = etree.QName(element).localname
            message = make_stanza("message", from_=str(self.jid))
            out = add_child(message, NS_USER, "x")
            relayed = add_child(out, NS_USER, name)
            relayed.set("from", str(sender.bare))
            reason = element.findtext(f"{{{NS_USER}}}reason")
            if reason:
                add_child(relayed, NS_USER, "reason", reason[:1024])
            if name == "invite":
                if self.config["membersonly"] and RANK[self.affiliation(to.bare)] < RANK["member"]:
                    self.set_affiliation(str(to.bare), "member")  # s7.8.2: invitees become members
                    self.service.save(self)
                if self.config["passwordprotected"]:
                    add_child(out, NS_USER, "password", self.config["password"])
                body = add_child(message, None, "body", f"{sender.bare} invites you to the room {self.jid}")
                if reason:
                    body.text += f": {reason[:1024]}"
            self.send(message, to)

    # -- iqs to occupants ------------------------------------------------------------------------------

    def occupant_iq(self, iq: etree._Element, sender: JID, nick: str) -> None:
        """s7.7 (iqs to an occupant JID) and XEP-0410 self-ping. Requests are forwarded to the target's
        real JID (vCards to its bare JID, XEP-0054 s3.3) with the request id rewritten to carry the
        requester, answers are sent back the same way; nothing is remembered in between."""
        type_ = iq.get("type")
        occupant = self.by_jid.get(sender)
        if type_ in ("result", "error"):
            self._iq_answer(iq, sender, nick)
            return
        if occupant is None:
            raise Refused("not-acceptable", "you are not in this room", "cancel")  # XEP-0410 s3.1
        target = self.occupants.get(nick)
        query = payload(iq)
        if target is occupant and query is not None and query.tag == f"{{{NS_PING}}}ping":
            reply = make_stanza("iq", to=str(sender), from_=iq.get("to"), type_="result", id_=iq.get("id"))
            self.service.send(reply)  # XEP-0410 s3.1: the service answers self-pings itself
            return
        if target is None:
            raise Refused("item-not-found", f"nobody is called {nick} here")
        forwarded = copy_stanza(iq)
        forwarded.set("from", self.occupant_jid(occupant.nick))
        forwarded.set("id", encode_iq_id(sender, iq.get("id") or ""))
        vcard = query is not None and etree.QName(query).namespace == NS_VCARD
        self.send(forwarded, target.bare if vcard else target.jid)

    def _iq_answer(self, iq: etree._Element, sender: JID, nick: str) -> None:
        """An answer to a forwarded request: back to the requester (carried in the id), from the occupant
        JID of the answering occupant (its session, or its account for vCards)."""
        decoded = decode_iq_id(iq.get("id") or "")
        if decoded is None:
            return
        requester, request_id = decoded
        requesting = self.by_jid.get(requester)
        answering = self.by_jid.get(sender) or next(
            (o for o in self.occupants.values() if o.bare == sender.bare), None
        )
        if requesting is None or requesting.nick != nick or answering is None:
            return
        answer = copy_stanza(iq)
        answer.set("from", self.occupant_jid(answering.nick))
        answer.set("id", request_id)
        self.send(answer, requester)


def check_nick(nick: str) -> None:
    """XEP-0045 s17.1 (Business Rules, Addresses): no empty or invisible nicknames (only white space)."""
    if not nick.strip():
        raise Refused("jid-malformed", "a nickname must have visible characters")


def encode_iq_id(requester: JID, request_id: str) -> str:
    raw = json.dumps([str(requester), request_id]).encode()
    return "muc-" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_iq_id(value: str) -> tuple[JID, str] | None:
    if not value.startswith("muc-"):
        return None
    data = value[4:]
    try:
        requester, request_id = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
        return parse_jid(requester), str(request_id)
    except (ValueError, TypeError, JIDError):
        return None


__all__ = ["Room", "Refused", "BANNED", "KICKED", "CONFIG_CHANGED"]
