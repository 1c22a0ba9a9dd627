"""Moderation, administration and ownership of a room (XEP-0045 s8, s9, s10) and nickname registration
(s7.10): the ``muc#admin``, ``muc#owner`` and ``jabber:iq:register`` iqs sent to a room's bare JID.

Each handler takes the room, the iq and the sender and returns the reply iq, or raises ``Refused``.
The permission rules are the tables of s5.1.1 (roles) and s5.2.1 (affiliations).
"""

from __future__ import annotations

from typing import Any

from lxml import etree
from xmppd.plugins.muc.config import NS_ROOMCONFIG, apply_form, owner_form
from xmppd.plugins.muc.occupant import (
    AFFILIATIONS,
    BANNED,
    CONFIG_CHANGED,
    KICKED,
    LOGGING_OFF,
    LOGGING_ON,
    NOW_NON_ANONYMOUS,
    NOW_SEMI_ANONYMOUS,
    NS_ADMIN,
    NS_OWNER,
    NS_USER,
    RANK,
    REMOVED_AFFILIATION,
    REMOVED_MEMBERS_ONLY,
    ROLES,
    Occupant,
)
from xmppd.plugins.muc.room import Refused, Room, check_nick

from xmppd.jid import JID, JIDError, parse_jid, prep_resource
from xmppd.xml.dataform import Field, FormError, SubmittedForm, build_form, find_form, parse_form
from xmppd.xml.stanza import add_child, copy_stanza, make_result

NS_REGISTER = "jabber:iq:register"
NS_MUC_REGISTER = "http://jabber.org/protocol/muc#register"
MAX_ITEMS = 100  # items in one muc#admin request


def _actor(room: Room, sender: JID) -> tuple[Occupant | None, str]:
    return room.by_jid.get(sender), room.affiliation(sender.bare)


# -- muc#admin: roles and affiliations (s8, s9) -------------------------------------------------------------


def admin_get(room: Room, iq: etree._Element, sender: JID) -> etree._Element:
    """s8.5, s9.5, s9.8, s10.5, s10.8: the list of one role or one affiliation."""
    query = iq[0]
    items = query.findall(f"{{{NS_ADMIN}}}item")
    if len(items) != 1:
        raise Refused("bad-request", "ask for one list")
    role, affiliation = items[0].get("role"), items[0].get("affiliation")
    occupant, actor_affiliation = _actor(room, sender)
    reply = make_result(iq)
    out = add_child(reply, NS_ADMIN, "query")
    if affiliation is not None:
        if affiliation not in AFFILIATIONS or affiliation == "none":
            raise Refused("bad-request", f"no list of affiliation {affiliation!r}")
        if actor_affiliation not in ("owner", "admin") or (
            affiliation in ("owner", "admin") and actor_affiliation != "owner"
        ):
            raise Refused("forbidden", "you may not see that list")  # s9.5, s10.5, s10.8
        for bare, held in sorted(room.affiliations.items()):
            if held == affiliation:
                item = add_child(out, NS_ADMIN, "item")
                item.set("affiliation", held)
                item.set("jid", bare)
                if bare in room.nicks:
                    item.set("nick", room.nicks[bare])
        return reply
    if role not in ("moderator", "participant", "visitor"):
        raise Refused("bad-request", "ask for a role or an affiliation list")
    if occupant is None or occupant.role != "moderator":
        raise Refused("forbidden", "only moderators see role lists")
    for other in room.occupants.values():
        if other.role == role:
            item = add_child(out, NS_ADMIN, "item")
            item.set("role", other.role)
            item.set("affiliation", room.affiliation(other.bare))
            item.set("nick", other.nick)
            item.set("jid", str(other.jid))
    return reply


def admin_set(room: Room, iq: etree._Element, sender: JID) -> etree._Element:
    """s8.2-8.4, s9.1-9.7, s10.3-10.8: change roles (kick, voice, moderator) or affiliations (ban,
    membership, admin, owner). Every item is checked before any is applied."""
    items = iq[0].findall(f"{{{NS_ADMIN}}}item")
    if not items or len(items) > MAX_ITEMS:
        raise Refused("bad-request", f"give 1 to {MAX_ITEMS} items")
    changes = [_check_item(room, item, sender) for item in items]
    owners = set(room.owners())
    for kind, target, value, _ in changes:
        if kind == "affiliation":
            if value == "owner":
                owners.add(target)
            else:
                owners.discard(target)
    if not owners:
        raise Refused("conflict", "a room needs an owner")  # s10.6, s10.9
    actor = room.by_jid.get(sender)
    actor_nick = actor.nick if actor is not None else None
    for kind, target, value, reason in changes:
        if kind == "role":
            change_role(room, target, value, actor=actor_nick, reason=reason)
        else:
            change_affiliation(room, target, value, actor=actor_nick, reason=reason)
    return make_result(iq)


def _check_item(room: Room, item: etree._Element, sender: JID) -> tuple[str, Any, str, str | None]:
    role, affiliation = item.get("role"), item.get("affiliation")
    reason = item.findtext(f"{{{NS_ADMIN}}}reason")
    occupant, actor_affiliation = _actor(room, sender)
    if (role is None) == (affiliation is None):
        raise Refused("bad-request", "an item changes a role or an affiliation")
    if role is not None:
        if role not in ROLES:
            raise Refused("bad-request", f"unknown role {role!r}")
        target = room.occupants.get(item.get("nick") or "")
        if target is None:
            raise Refused("item-not-found" if item.get("nick") else "bad-request", "no such occupant")
        if occupant is None or occupant.role != "moderator":
            raise Refused("forbidden", "only moderators change roles")  # s8
        target_affiliation = room.affiliation(target.bare)
        if target_affiliation in ("owner", "admin") and role != "moderator":
            raise Refused("not-allowed", "admins and owners keep their role")  # s8.2, s9.7
        if (role == "moderator" or target.role == "moderator") and actor_affiliation not in (
            "owner",
            "admin",
        ):
            raise Refused("not-allowed", "only admins grant or revoke moderator")  # s9.6, s9.7
        return "role", target, role, reason
    if affiliation not in AFFILIATIONS:
        raise Refused("bad-request", f"unknown affiliation {affiliation!r}")
    if item.get("jid"):
        try:
            bare = str(parse_jid(item.get("jid")).bare)
        except JIDError:
            raise Refused("jid-malformed", "bad jid") from None
    elif item.get("nick") in room.occupants:
        bare = str(room.occupants[item.get("nick")].bare)
    else:
        raise Refused("bad-request", "an affiliation item needs a jid or an occupant's nick")
    if actor_affiliation not in ("owner", "admin"):
        raise Refused("forbidden", "only admins and owners change affiliations")  # s9
    if actor_affiliation == "admin":
        if room.affiliation(bare) in ("owner", "admin"):
            raise Refused("not-allowed", "admins cannot change admins and owners")  # s9.1
        if affiliation in ("owner", "admin"):
            raise Refused("forbidden", "only owners grant admin and owner")  # s10.3, s10.6
    return "affiliation", bare, affiliation, reason


def change_role(room: Room, target: Occupant, role: str, *, actor: str | None, reason: str | None) -> None:
    if role == "none":
        room.remove_occupant(target, codes=(KICKED,), actor=actor, reason=reason)  # s8.2
        return
    if target.role != role:
        target.role = role
        room.broadcast_presence(target, actor=actor, reason=reason)  # s8.3, s8.4, s9.6, s9.7


def change_affiliation(
    room: Room, bare: str, affiliation: str, *, actor: str | None, reason: str | None
) -> None:
    previous = room.affiliation(bare)
    room.set_affiliation(bare, affiliation)
    room.service.save(room)
    for occupant in [o for o in room.occupants.values() if str(o.bare) == bare]:
        if affiliation == "outcast":
            room.remove_occupant(occupant, codes=(BANNED,), actor=actor, reason=reason)  # s9.1
        elif room.config["membersonly"] and RANK[affiliation] < RANK["member"]:
            room.remove_occupant(occupant, codes=(REMOVED_AFFILIATION,), actor=actor, reason=reason)  # s9.4
        elif previous != affiliation:
            occupant.role = room.default_role(affiliation)
            room.broadcast_presence(occupant, actor=actor, reason=reason)


# -- muc#owner: configuration and destruction (s10) ---------------------------------------------------------


def owner_get(room: Room, iq: etree._Element, sender: JID) -> etree._Element:
    if room.affiliation(sender.bare) != "owner":
        raise Refused("forbidden", "only owners configure the room")
    reply = make_result(iq)
    query = add_child(reply, NS_OWNER, "query")
    admins = sorted(j for j, a in room.affiliations.items() if a == "admin")
    query.append(owner_form(room.config, room.owners(), admins))
    return reply


def owner_set(room: Room, iq: etree._Element, sender: JID) -> etree._Element:
    """s10.1.2-10.2 (submit or cancel the configuration form), s10.9 (destroy the room)."""
    if room.affiliation(sender.bare) != "owner":
        raise Refused("forbidden", "only owners configure the room")
    query = iq[0]
    destroy = query.find(f"{{{NS_OWNER}}}destroy")
    if destroy is not None:
        destroy_room(room, destroy)
        return make_result(iq)
    form = submitted_form(query, NS_ROOMCONFIG, "send a configuration form or a destroy request")
    if form is None:
        if room.locked:
            room.service.destroy(room)  # s10.1.3: cancelling the initial configuration
        return make_result(iq)
    try:
        new, lists = apply_form(
            room.config, form, max_users=room.service.max_occupants, max_history=room.service.max_history
        )
    except FormError as e:
        raise Refused("not-acceptable", str(e)) from None
    apply_config(room, new, lists)
    return make_result(iq)


def submitted_form(query: etree._Element, form_type: str, missing: str) -> SubmittedForm | None:
    """The submitted data form of a request (XEP-0004 s3.1), or None when the requester cancels.
    Refused: ``bad-request`` without a form, ``not-acceptable`` for a malformed one or another FORM_TYPE."""
    element = find_form(query)
    if element is None:
        raise Refused("bad-request", missing)
    try:
        form = parse_form(element)
    except FormError as e:
        raise Refused("not-acceptable", str(e)) from None
    if form.type == "cancel":
        return None
    if form.type != "submit":
        raise Refused("not-acceptable", "submit the form")
    if form.form_type not in (None, form_type):
        raise Refused("not-acceptable", f"FORM_TYPE must be {form_type}")
    return form


def apply_config(room: Room, new: dict[str, Any], lists: dict[str, list[str]]) -> None:
    old, was_locked = room.config, room.locked
    room.config = new
    room.locked = False
    for affiliation, jids in lists.items():
        for bare, held in list(room.affiliations.items()):
            if held == affiliation and bare not in jids:
                change_affiliation(room, bare, "none", actor=None, reason=None)
        for bare in jids:
            if room.affiliation(bare) != affiliation:
                change_affiliation(room, bare, affiliation, actor=None, reason=None)
    room.config_changed()
    room.service.saved_config(room, old)
    if was_locked:
        return
    codes = [CONFIG_CHANGED] if old != new else []
    if old["logging"] != new["logging"]:
        codes.append(LOGGING_ON if new["logging"] else LOGGING_OFF)
    if old["whois"] != new["whois"]:
        codes.append(NOW_NON_ANONYMOUS if new["whois"] == "anyone" else NOW_SEMI_ANONYMOUS)
    if codes:
        room.status_message(*codes)  # s10.2.1
    if new["membersonly"] and not old["membersonly"]:
        for occupant in list(room.occupants.values()):
            if RANK[room.affiliation(occupant.bare)] < RANK["member"]:
                room.remove_occupant(occupant, codes=(REMOVED_MEMBERS_ONLY,))  # s9.4 / s10.2
    elif new["moderated"] != old["moderated"]:
        for occupant in list(room.occupants.values()):
            role = room.default_role(room.affiliation(occupant.bare))
            if occupant.role in ("participant", "visitor") and role != occupant.role:
                occupant.role = role
                room.broadcast_presence(occupant)


def destroy_room(room: Room, destroy: etree._Element | None) -> None:
    """s10.9: every occupant gets unavailable presence with the destroy notice, then the room is gone."""
    notice = etree.Element(f"{{{NS_USER}}}destroy")
    if destroy is not None:
        if destroy.get("jid"):
            try:
                notice.set("jid", str(parse_jid(destroy.get("jid"))))
            except JIDError:
                raise Refused("jid-malformed", "the alternate venue is not a JID") from None
        reason = destroy.findtext(f"{{{NS_OWNER}}}reason")
        if reason:
            add_child(notice, NS_USER, "reason", reason[:1024])
        password = destroy.findtext(f"{{{NS_OWNER}}}password")
        if password:
            add_child(notice, NS_USER, "password", password[:1024])
    for occupant in list(room.occupants.values()):
        # s10.9: each occupant hears only of its own removal, not of everyone else's
        room.remove_occupant(occupant, extra=copy_stanza(notice), broadcast=False)
    room.service.destroy(room)


# -- registration (s7.10) ------------------------------------------------------------------------------------


def register_get(room: Room, iq: etree._Element, sender: JID) -> etree._Element:
    bare = str(sender.bare)
    _may_register(room, bare)
    reply = make_result(iq)
    query = add_child(reply, NS_REGISTER, "query")
    if bare in room.nicks:
        add_child(query, NS_REGISTER, "registered")  # s7.10 example 74
        add_child(query, NS_REGISTER, "username", room.nicks[bare])
        return reply
    add_child(query, NS_REGISTER, "instructions", "Choose the nickname to reserve in this room.")
    query.append(
        build_form(
            NS_MUC_REGISTER,
            [
                Field("muc#register_roomnick", "text-single", "Nickname", required=True),
                Field("muc#register_first", "text-single", "Given name"),
                Field("muc#register_last", "text-single", "Family name"),
                Field("muc#register_url", "text-single", "A web page"),
                Field("muc#register_email", "text-single", "Email address"),
                Field("muc#register_faqentry", "text-multi", "Some information about you"),
            ],
            title=f"Registration with {room.jid}",
        )
    )
    return reply


def register_set(room: Room, iq: etree._Element, sender: JID) -> etree._Element:
    bare = str(sender.bare)
    query = iq[0]
    if query.find(f"{{{NS_REGISTER}}}remove") is not None:
        room.nicks.pop(bare, None)  # s7.10 does not define removal; XEP-0077 s3.2 does
        if room.affiliation(bare) == "member":
            change_affiliation(room, bare, "none", actor=None, reason=None)
        room.service.save(room)
        return make_result(iq)
    _may_register(room, bare)
    form = submitted_form(query, NS_MUC_REGISTER, "submit the registration form")
    if form is None:
        return make_result(iq)
    try:
        nick = prep_resource((form.text("muc#register_roomnick") or "").strip())
        check_nick(nick)
    except (FormError, JIDError) as e:
        raise Refused("not-acceptable", str(e)) from None
    holder = room.nick_owner(nick)
    in_use = room.occupants.get(nick)
    if (holder is not None and holder != bare) or (in_use is not None and str(in_use.bare) != bare):
        raise Refused("conflict", "that nickname is taken")  # s7.10 example 78
    room.nicks[bare] = nick
    if RANK[room.affiliation(bare)] < RANK["member"]:
        change_affiliation(room, bare, "member", actor=None, reason=None)
    room.service.save(room)
    return make_result(iq)


def _may_register(room: Room, bare: str) -> None:
    affiliation = room.affiliation(bare)
    if affiliation == "outcast":
        raise Refused("forbidden", "you are banned from this room")
    if room.config["membersonly"] and RANK[affiliation] < RANK["member"]:
        raise Refused("registration-required", "only members register in a members-only room")
