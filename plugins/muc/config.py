"""Room configuration: the ``muc#roomconfig`` form (XEP-0045 s10.2, s15.5.3) and the room info form.

A room's configuration is a plain dict (stored as it is for persistent rooms). ``FIELDS`` lists every
option once: its key in that dict, its form variable, type and label, and how a submitted value is
checked; the owner form, form submission and the stored document all come from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from xmppd.jid import JIDError, parse_jid
from xmppd.xml.dataform import Field, FormError, SubmittedForm, build_form

NS_ROOMCONFIG = "http://jabber.org/protocol/muc#roomconfig"
NS_ROOMINFO = "http://jabber.org/protocol/muc#roominfo"

ROLES = ("moderator", "participant", "visitor")
ROLE_CHOICES = tuple((r.capitalize(), r) for r in ROLES)
WHOIS = (("Moderators only", "moderators"), ("Anyone", "anyone"))
ALLOW_PM = (
    ("Anyone", "anyone"),
    ("Participants", "participants"),
    ("Moderators", "moderators"),
    ("Nobody", "none"),
)


@dataclass(frozen=True)
class Option:
    key: str  # key in the configuration dict
    var: str  # form variable
    type: str  # XEP-0004 field type
    label: str
    choices: tuple[tuple[str, str], ...] = ()


def roles_option(key: str, var: str, label: str) -> Option:
    """A list-multi field whose values are roles."""
    return Option(key, var, "list-multi", label, ROLE_CHOICES)


FIELDS: tuple[Option, ...] = (
    Option("name", "muc#roomconfig_roomname", "text-single", "Name"),
    Option("description", "muc#roomconfig_roomdesc", "text-single", "Description"),
    Option("lang", "muc#roomconfig_lang", "text-single", "Language of discussion"),
    Option("logging", "muc#roomconfig_enablelogging", "boolean", "Archive discussions"),
    Option("changesubject", "muc#roomconfig_changesubject", "boolean", "Occupants may change the subject"),
    Option("allowinvites", "muc#roomconfig_allowinvites", "boolean", "Occupants may invite others"),
    Option("allowpm", "muc#roomconfig_allowpm", "list-single", "Who may send private messages", ALLOW_PM),
    Option("maxusers", "muc#roomconfig_maxusers", "text-single", "Maximum number of occupants"),
    roles_option(
        "presencebroadcast", "muc#roomconfig_presencebroadcast", "Roles whose presence is broadcast"
    ),
    roles_option("getmemberlist", "muc#roomconfig_getmemberlist", "Roles that may see the member list"),
    Option("public", "muc#roomconfig_publicroom", "boolean", "List the room in the directory"),
    Option("persistent", "muc#roomconfig_persistentroom", "boolean", "Keep the room when it is empty"),
    Option("moderated", "muc#roomconfig_moderatedroom", "boolean", "Only participants may speak"),
    Option("membersonly", "muc#roomconfig_membersonly", "boolean", "Only members may enter"),
    Option("passwordprotected", "muc#roomconfig_passwordprotectedroom", "boolean", "Password required"),
    Option("password", "muc#roomconfig_roomsecret", "text-private", "Password"),
    Option("whois", "muc#roomconfig_whois", "list-single", "Who may see occupants' real addresses", WHOIS),
    Option("historylength", "muc#maxhistoryfetch", "text-single", "Messages of history sent on entering"),
)
BY_VAR = {o.var: o for o in FIELDS}
#: Affiliation lists an owner may set through the form (s10.2, s10.5, s10.8).
ROOM_ADMINS = "muc#roomconfig_roomadmins"
ROOM_OWNERS = "muc#roomconfig_roomowners"


def default_config(options: Callable[[str], Any]) -> dict[str, Any]:
    """A new room's configuration, from the service's options."""
    return {
        "name": "",
        "description": "",
        "lang": "",
        "logging": False,
        "changesubject": False,
        "allowinvites": False,
        "allowpm": "anyone",
        "maxusers": options("default_max_occupants"),
        "presencebroadcast": list(ROLES),
        "getmemberlist": list(ROLES),
        "public": options("public_rooms"),
        "persistent": options("persistent_rooms"),
        "moderated": options("moderated_rooms"),
        "membersonly": options("members_only_rooms"),
        "passwordprotected": False,
        "password": "",
        "whois": "moderators",
        "historylength": options("default_history"),
    }


def _value(option: Option, value: Any) -> list[str]:
    if option.type == "boolean":
        return ["1" if value else "0"]
    if option.type == "list-multi":
        return list(value)
    return [str(value)] if value != "" else []


def owner_form(config: dict[str, Any], owners: list[str], admins: list[str]) -> etree._Element:
    """The configuration form an owner is sent (s10.2 example 163), filled with the current values."""
    fields = [Field(o.var, o.type, o.label, _value(o, config[o.key]), o.choices) for o in FIELDS]
    fields.append(Field(ROOM_ADMINS, "jid-multi", "Room admins", admins))
    fields.append(Field(ROOM_OWNERS, "jid-multi", "Room owners", owners))
    return build_form(
        NS_ROOMCONFIG,
        fields,
        title="Room configuration",
        instructions="Fill in the fields to configure the room; an empty submission accepts the defaults.",
    )


def apply_form(
    config: dict[str, Any], form: SubmittedForm, *, max_users: int, max_history: int
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The configuration after an owner's submitted form, and the affiliation lists it sets
    (``{"admin": [...], "owner": [...]}`` for the jid-multi fields present). FormError on a bad value;
    nothing is changed then."""
    new = dict(config)
    for var in form.values:
        option = BY_VAR.get(var)
        if option is None:
            continue  # unknown fields are ignored (XEP-0004 s3.2 lets a submitter echo anything)
        if option.type == "boolean":
            new[option.key] = form.boolean(var)
        elif option.type == "list-multi":
            values = form.multi(var) or []
            allowed = {v for _, v in option.choices}
            if not set(values) <= allowed:
                raise FormError(f"{var} takes {', '.join(sorted(allowed))}")
            new[option.key] = values
        elif option.key in ("maxusers", "historylength"):
            limit = max_users if option.key == "maxusers" else max_history
            number = form.integer(var, limit, minimum=0 if option.key == "historylength" else 1)
            if number is not None and number > limit:
                raise FormError(f"{var} may be at most {limit}")
            new[option.key] = number
        else:
            value = form.text(var, "") or ""
            if option.choices and value not in {v for _, v in option.choices}:
                raise FormError(f"{var} takes {', '.join(v for _, v in option.choices)}")
            if len(value) > 1024:
                raise FormError(f"{var} is too long")
            new[option.key] = value
    if new["passwordprotected"] and not new["password"]:
        raise FormError("a password-protected room needs muc#roomconfig_roomsecret")
    lists = {}
    for var, affiliation in ((ROOM_ADMINS, "admin"), (ROOM_OWNERS, "owner")):
        values = form.multi(var)
        if values is not None:
            try:
                lists[affiliation] = [str(parse_jid(v).bare) for v in values if v]
            except JIDError as e:
                raise FormError(f"{var}: {e}") from None
    if "owner" in lists and not lists["owner"]:
        raise FormError("a room needs at least one owner")
    return new, lists


def info_form(config: dict[str, Any], occupants: int, subject: str) -> etree._Element:
    """The room information form of disco#info (XEP-0045 s6.4, s15.5.4; XEP-0128)."""
    fields = [
        Field("muc#roominfo_description", label="Description", values=[config["description"]]),
        Field("muc#roominfo_occupants", label="Number of occupants", values=[str(occupants)]),
        Field("muc#roominfo_subject", label="Subject", values=[subject]),
        Field(
            "muc#roominfo_subjectmod",
            "boolean",
            "Occupants may change the subject",
            ["1" if config["changesubject"] else "0"],
        ),
        Field("muc#roomconfig_roomname", label="Name", values=[config["name"]]),
        Field("muc#maxhistoryfetch", label="Maximum history", values=[str(config["historylength"])]),
    ]
    if config["lang"]:
        fields.append(Field("muc#roominfo_lang", label="Language", values=[config["lang"]]))
    return build_form(NS_ROOMINFO, fields, type_="result")
