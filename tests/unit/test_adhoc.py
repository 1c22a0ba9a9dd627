"""Ad-hoc commands (plugins/adhoc.py, XEP-0050) and the service administration commands built on them
(plugins/admin_commands.py, XEP-0133), end to end on a memory server: discovery, each admin command with
its forms, multi-stage commands with prev/next/complete, cancel, session errors, limits and timeouts,
non-admins refused, malformed requests and forms."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree
from xmppd.plugins.adhoc import CommandError, CommandRequest, Completed, Note, Stage, bad_payload

from xmppd.config import DEFAULT_PLUGINS
from xmppd.plugin import Context, Plugin, PluginError
from xmppd.testing import ExpectationError, MemoryServer, TestClient
from xmppd.xml.dataform import Field, build_form

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_ADMIN = "http://jabber.org/protocol/admin"
NS_DATA = "jabber:x:data"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
ADMIN = "admin@localhost"
ADMIN_NODES = [
    f"{NS_ADMIN}#{name}"
    for name in (
        "add-user",
        "delete-user",
        "end-user-session",
        "change-user-password",
        "get-registered-users-num",
        "get-online-users-num",
        "get-registered-users-list",
        "get-online-users-list",
        "announce",
    )
]


class Wizard(Plugin):
    """A three-stage command (name, then colour, then done) any local user may run, plus commands that
    fail in the ways a handler can."""

    name = "wizard"
    requires = ("adhoc",)

    def setup(self, ctx: Context) -> None:
        adhoc = ctx.depends("adhoc")
        self.removers = [
            adhoc.add_command("urn:test#wizard", "Wizard", self.start, allowed="local"),
            adhoc.add_command("urn:test#crash", "Crash", self.crash, allowed="anyone"),
            adhoc.add_command("urn:test#refuse", "Refuse", self.refuse, allowed="anyone"),
            adhoc.add_command("urn:test#bob", "Bob only", self.start, allowed=lambda j: j.local == "bob"),
        ]

    def teardown(self) -> None:
        for remove in self.removers:
            remove()

    def start(self, request: CommandRequest) -> Stage:
        form = build_form("urn:test", [Field("name", required=True)])
        return Stage(form, self.named, actions=("next",))

    def named(self, request: CommandRequest) -> Stage:
        name = request.require_form("urn:test").text("name")
        if not name:
            raise bad_payload("name is required")
        request.data["name"] = name
        form = build_form("urn:test", [Field("colour", "list-single", options=[("", "red"), ("", "blue")])])
        return Stage(form, self.done, actions=("next", "complete"), default="complete", notes=[Note("hi")])

    async def done(self, request: CommandRequest) -> Completed:
        colour = request.require_form("urn:test").text("colour")
        return Completed([Note(f"{request.data['name']} likes {colour} ({request.action})")])

    def crash(self, request: CommandRequest) -> Completed:
        raise RuntimeError("boom")

    def refuse(self, request: CommandRequest) -> Completed:
        raise CommandError("not-allowed", "never")


@pytest.fixture
def server(make_xmpp) -> MemoryServer:
    return make_xmpp(
        plugins=[Wizard],
        enabled=[*DEFAULT_PLUGINS, "wizard"],
        options={"ping": {"keepalive_interval": 0}},
        config={"server": {"admins": [ADMIN, "not a jid@@"]}},
    )


# -- helpers -------------------------------------------------------------------------------------------------


def command_xml(
    node: str,
    *,
    sessionid: str | None = None,
    action: str | None = None,
    form: dict[str, Any] | None = None,
    form_type: str | None = NS_ADMIN,
    raw: str = "",
) -> str:
    """``<command/>`` in an iq set to the domain. ``form`` ({var: value or [values]}) is submitted as a
    data form with ``form_type`` as its FORM_TYPE; ``raw`` is XML added to the command as it is."""
    attrs = f" node='{node}'" if node else ""
    if sessionid:
        attrs += f" sessionid='{sessionid}'"
    if action:
        attrs += f" action='{action}'"
    payload = raw
    if form is not None:
        fields = [] if form_type is None else [f"<field var='FORM_TYPE'><value>{form_type}</value></field>"]
        for var, value in form.items():
            values = value if isinstance(value, list) else [value]
            fields.append(f"<field var='{var}'>{''.join(f'<value>{v}</value>' for v in values)}</field>")
        payload += f"<x xmlns='{NS_DATA}' type='submit'>{''.join(fields)}</x>"
    body = f"<command xmlns='{NS_COMMANDS}'{attrs}>{payload}</command>"
    return f"<iq type='set' id='c1' to='localhost'>{body}</iq>"


def command(client: TestClient, node: str, **kwargs: Any) -> etree._Element:
    """Send ``command_xml(node, **kwargs)`` and return the answer."""
    return client.request(command_xml(node, **kwargs))


def cmd(answer: etree._Element) -> etree._Element:
    assert answer.get("type") == "result", etree.tostring(answer)
    element = answer.find(f"{{{NS_COMMANDS}}}command")
    assert element is not None
    return element


def error(answer: etree._Element) -> tuple[str, str | None]:
    """(defined condition, XEP-0050 specific condition or None) of an error answer."""
    assert answer.get("type") == "error", etree.tostring(answer)
    element = answer.find("error")
    defined = next(
        etree.QName(c).localname
        for c in element
        if etree.QName(c).namespace == NS_STANZAS and etree.QName(c).localname != "text"
    )
    specific = [etree.QName(c).localname for c in element if etree.QName(c).namespace == NS_COMMANDS]
    return defined, specific[0] if specific else None


def notes(element: etree._Element) -> list[tuple[str, str]]:
    return [(n.get("type"), n.text) for n in element.iterchildren(f"{{{NS_COMMANDS}}}note")]


def fields(element: etree._Element) -> dict[str, list[str]]:
    form = element.find(f"{{{NS_DATA}}}x")
    return {
        f.get("var"): [v.text or "" for v in f.iterchildren(f"{{{NS_DATA}}}value")]
        for f in form.iterchildren(f"{{{NS_DATA}}}field")
    }


def field_types(element: etree._Element) -> dict[str, tuple[str | None, bool]]:
    form = element.find(f"{{{NS_DATA}}}x")
    return {
        f.get("var"): (f.get("type"), f.find(f"{{{NS_DATA}}}required") is not None)
        for f in form.iterchildren(f"{{{NS_DATA}}}field")
    }


def start(client: TestClient, node: str) -> tuple[str, etree._Element]:
    """Execute ``node``; its first stage must be a form. Returns (sessionid, the <command/>)."""
    element = cmd(command(client, node, action="execute"))
    assert element.get("status") == "executing" and element.get("node") == node
    assert element.get("sessionid")
    return element.get("sessionid"), element


def run(client: TestClient, node: str, form: dict[str, Any], **kwargs: Any) -> etree._Element:
    """Execute ``node`` and submit ``form`` to its one stage; the answer to the submission."""
    sessionid, _ = start(client, node)
    return command(client, node, sessionid=sessionid, form=form, **kwargs)


def admin_node(name: str) -> str:
    return f"{NS_ADMIN}#{name}"


def disco_items(client: TestClient, node: str = NS_COMMANDS) -> etree._Element:
    return client.request(
        f"<iq type='get' id='d1' to='localhost'><query xmlns='{NS_ITEMS}' node='{node}'/></iq>"
    )


def disco_info(client: TestClient, node: str | None = None) -> etree._Element:
    attr = f" node='{node}'" if node else ""
    return client.request(f"<iq type='get' id='d2' to='localhost'><query xmlns='{NS_INFO}'{attr}/></iq>")


# -- discovery (XEP-0050 s2) ---------------------------------------------------------------------------------


def test_domain_announces_commands(server):
    alice = server.login("alice@localhost/phone")
    features = {f.get("var") for f in disco_info(alice)[0].iterchildren(f"{{{NS_INFO}}}feature")}
    assert NS_COMMANDS in features


def test_admin_sees_the_admin_commands_and_others_do_not(server):
    admin = server.login(f"{ADMIN}/console")
    items = disco_items(admin)[0]
    assert items.get("node") == NS_COMMANDS
    listed = [(i.get("jid"), i.get("node"), i.get("name")) for i in items]
    assert [node for _, node, _ in listed if node.startswith(NS_ADMIN)] == ADMIN_NODES
    assert all(jid == "localhost" and name for jid, _, name in listed)
    # the wizard is for local users, admins included; bob's command is bob's alone
    assert "urn:test#wizard" in [n for _, n, _ in listed] and "urn:test#bob" not in [n for _, n, _ in listed]

    alice = server.login("alice@localhost/phone")
    nodes = [i.get("node") for i in disco_items(alice)[0]]
    assert nodes == ["urn:test#wizard", "urn:test#crash", "urn:test#refuse"]


def test_disco_info_of_a_command_node(server):
    admin = server.login(f"{ADMIN}/console")
    query = disco_info(admin, admin_node("add-user"))[0]
    assert query.get("node") == admin_node("add-user")
    identity = query.find(f"{{{NS_INFO}}}identity")
    assert (identity.get("category"), identity.get("type"), identity.get("name")) == (
        "automation",
        "command-node",
        "Add a User",
    )
    features = {f.get("var") for f in query.iterchildren(f"{{{NS_INFO}}}feature")}
    assert features == {NS_COMMANDS, NS_DATA}

    listing = disco_info(admin, NS_COMMANDS)[0].find(f"{{{NS_INFO}}}identity")
    assert (listing.get("category"), listing.get("type")) == ("automation", "command-list")

    alice = server.login("alice@localhost/phone")
    assert error(disco_info(alice, admin_node("add-user"))) == ("forbidden", None)
    # nodes nobody defined are still the disco plugin's: item-not-found
    assert error(disco_info(alice, "urn:nothing")) == ("item-not-found", None)
    assert error(disco_items(alice, "urn:nothing")) == ("item-not-found", None)


@pytest.mark.parametrize("node", ADMIN_NODES)
def test_non_admins_are_forbidden_every_admin_command(server, node):
    alice = server.login("alice@localhost/phone")
    assert error(command(alice, node, action="execute")) == ("forbidden", None)
    assert error(command(alice, node)) == ("forbidden", None)


def test_an_admin_of_the_configuration_is_matched_by_bare_jid_whatever_the_resource(server):
    for resource in ("a", "b"):
        admin = server.login(f"{ADMIN}/{resource}", create=resource == "a")
        start(admin, admin_node("add-user"))


# -- XEP-0133 s4.1 add user ----------------------------------------------------------------------------------


def test_add_user_then_the_new_user_logs_in(server):
    admin = server.login(f"{ADMIN}/console")
    sessionid, element = start(admin, admin_node("add-user"))
    actions = element.find(f"{{{NS_COMMANDS}}}actions")
    assert actions.get("execute") == "complete" and [etree.QName(c).localname for c in actions] == [
        "complete"
    ]
    form = element.find(f"{{{NS_DATA}}}x")
    assert form.get("type") == "form" and form.findtext(f"{{{NS_DATA}}}title") == "Adding a User"
    assert field_types(element) == {
        "FORM_TYPE": ("hidden", False),
        "accountjid": ("jid-single", True),
        "password": ("text-private", True),
        "password-verify": ("text-private", True),
    }
    assert fields(element)["FORM_TYPE"] == [NS_ADMIN]

    done = cmd(
        command(
            admin,
            admin_node("add-user"),
            sessionid=sessionid,
            form={"accountjid": "juliet@localhost", "password": "R0m30", "password-verify": "R0m30"},
        )
    )
    assert (done.get("status"), done.get("sessionid")) == ("completed", sessionid)
    assert notes(done) == [("info", "created juliet@localhost")]
    juliet = server.login("juliet@localhost/balcony", "R0m30", create=False)
    assert juliet.jid == "juliet@localhost/balcony"


def test_add_user_refuses_an_existing_account_with_conflict(server):
    admin = server.login(f"{ADMIN}/console")
    server.adduser("juliet@localhost", "old")
    answer = run(
        admin,
        admin_node("add-user"),
        {"accountjid": "juliet@localhost", "password": "x", "password-verify": "x"},
    )
    assert error(answer) == ("conflict", None)
    server.login("juliet@localhost/r", "old", create=False)  # unchanged


@pytest.mark.parametrize(
    ("form", "why"),
    [
        ({"password": "pw", "password-verify": "pw"}, "accountjid is required"),
        ({"accountjid": "juliet@localhost", "password": "pw", "password-verify": "wp"}, "do not match"),
        ({"accountjid": "juliet@localhost", "password-verify": ""}, "password is required"),
        ({"accountjid": "juliet@@localhost", "password": "pw", "password-verify": "pw"}, "not a valid JID"),
        ({"accountjid": "localhost", "password": "pw", "password-verify": "pw"}, "not an account address"),
        (
            {"accountjid": "juliet@example.org", "password": "pw", "password-verify": "pw"},
            "not an account of",
        ),
        (
            {"accountjid": ["a@localhost", "b@localhost"], "password": "p", "password-verify": "p"},
            "one value",
        ),
    ],
)
def test_add_user_bad_forms_answer_bad_payload_and_may_be_sent_again(server, form, why):
    admin = server.login(f"{ADMIN}/console")
    sessionid, _ = start(admin, admin_node("add-user"))
    answer = command(admin, admin_node("add-user"), sessionid=sessionid, form=form)
    assert error(answer) == ("bad-request", "bad-payload")
    assert why in answer.find("error").findtext(f"{{{NS_STANZAS}}}text")
    fixed = {"accountjid": "juliet@localhost", "password": "pw", "password-verify": "pw"}
    assert (
        cmd(command(admin, admin_node("add-user"), sessionid=sessionid, form=fixed)).get("status")
        == "completed"
    )


def test_malformed_forms_answer_bad_payload(server):
    admin = server.login(f"{ADMIN}/console")
    node = admin_node("add-user")
    sessionid, _ = start(admin, node)
    # no form at all
    assert error(command(admin, node, sessionid=sessionid)) == ("bad-request", "bad-payload")
    # a field twice
    twice = (
        f"<x xmlns='{NS_DATA}' type='submit'><field var='accountjid'><value>a@localhost</value></field>"
        "<field var='accountjid'><value>b@localhost</value></field></x>"
    )
    assert error(command(admin, node, sessionid=sessionid, raw=twice)) == ("bad-request", "bad-payload")
    # not a form type
    odd = f"<x xmlns='{NS_DATA}' type='odd'/>"
    assert error(command(admin, node, sessionid=sessionid, raw=odd)) == ("bad-request", "bad-payload")
    # another FORM_TYPE
    answer = command(
        admin, node, sessionid=sessionid, form={"accountjid": "a@localhost"}, form_type="urn:other"
    )
    assert error(answer) == ("bad-request", "bad-payload")
    # without FORM_TYPE, and as a 'cancel' form (s4.4.1: treated as submit), it is accepted
    form = (
        f"<x xmlns='{NS_DATA}' type='cancel'><field var='accountjid'><value>a@localhost</value></field>"
        "<field var='password'><value>p</value></field>"
        "<field var='password-verify'><value>p</value></field></x>"
    )
    assert cmd(command(admin, node, sessionid=sessionid, raw=form)).get("status") == "completed"


# -- s4.2 delete user ----------------------------------------------------------------------------------------


def test_delete_user_ends_sessions_and_removes_the_account(server):
    admin = server.login(f"{ADMIN}/console")
    juliet = server.login("juliet@localhost/balcony", "R0m30")
    server.adduser("romeo@localhost")
    sessionid, element = start(admin, admin_node("delete-user"))
    assert field_types(element)["accountjids"] == ("jid-multi", True)
    done = cmd(
        command(
            admin,
            admin_node("delete-user"),
            sessionid=sessionid,
            form={"accountjids": ["juliet@localhost", "romeo@localhost", "nobody@localhost"]},
        )
    )
    assert done.get("status") == "completed"
    assert notes(done) == [
        ("info", "deleted juliet@localhost"),
        ("info", "deleted romeo@localhost"),
        ("warn", "nobody@localhost does not exist"),
    ]
    juliet.drain()
    assert juliet.stream_errors == ["not-authorized"]
    with pytest.raises(ExpectationError, match="authentication failed"):
        server.login("juliet@localhost/again", "R0m30", create=False)


def test_delete_user_that_does_not_exist_completes_with_an_error_note(server):
    admin = server.login(f"{ADMIN}/console")
    done = cmd(run(admin, admin_node("delete-user"), {"accountjids": "nobody@localhost"}))
    assert done.get("status") == "completed"
    assert notes(done) == [("error", "nobody@localhost does not exist")]
    answer = run(admin, admin_node("delete-user"), {"accountjids": []})
    assert error(answer) == ("bad-request", "bad-payload")


# -- s4.7 change user password -------------------------------------------------------------------------------


def test_change_user_password(server):
    admin = server.login(f"{ADMIN}/console")
    server.adduser("juliet@localhost", "old")
    sessionid, element = start(admin, admin_node("change-user-password"))
    assert field_types(element) == {
        "FORM_TYPE": ("hidden", False),
        "accountjid": ("jid-single", True),
        "password": ("text-private", True),
    }
    done = cmd(
        command(
            admin,
            admin_node("change-user-password"),
            sessionid=sessionid,
            form={"accountjid": "juliet@localhost", "password": "V3r0n4"},
        )
    )
    assert notes(done) == [("info", "password changed for juliet@localhost")]
    with pytest.raises(ExpectationError, match="authentication failed"):
        server.login("juliet@localhost/r", "old", create=False)
    server.login("juliet@localhost/r", "V3r0n4", create=False)

    missing = run(
        admin, admin_node("change-user-password"), {"accountjid": "nobody@localhost", "password": "x"}
    )
    assert error(missing) == ("item-not-found", None)


# -- s4.13, s4.15, s4.18, s4.20 numbers and lists ------------------------------------------------------------


def test_online_users_number_and_list(server):
    admin = server.login(f"{ADMIN}/console")
    server.login("alice@localhost/phone")
    server.login("alice@localhost/laptop", create=False)
    server.login("bob@localhost/pc")
    server.adduser("carol@localhost")  # registered, not online

    element = cmd(command(admin, admin_node("get-online-users-num"), action="execute"))
    assert element.get("status") == "completed" and element.get("sessionid")
    assert element.find(f"{{{NS_DATA}}}x").get("type") == "result"
    assert fields(element) == {"FORM_TYPE": [NS_ADMIN], "onlineusersnum": ["3"]}  # users, not sessions

    sessionid, form = start(admin, admin_node("get-online-users-list"))
    assert field_types(form)["max_items"] == ("list-single", False)
    options = [o.findtext(f"{{{NS_DATA}}}value") for o in form.iter(f"{{{NS_DATA}}}option")]
    assert options == ["25", "50", "75", "100", "150", "200", "none"]
    done = cmd(
        command(admin, admin_node("get-online-users-list"), sessionid=sessionid, form={"max_items": "none"})
    )
    assert fields(done)["onlineuserjids"] == ["admin@localhost", "alice@localhost", "bob@localhost"]
    assert field_types(done)["onlineuserjids"][0] == "jid-multi"
    assert notes(done) == []

    cut = cmd(run(admin, admin_node("get-online-users-list"), {"max_items": "2"}))
    assert fields(cut)["onlineuserjids"] == ["admin@localhost", "alice@localhost"]
    assert notes(cut) == [("warn", "showing 2 of 3 online users")]
    assert error(run(admin, admin_node("get-online-users-list"), {"max_items": "many"})) == (
        "bad-request",
        "bad-payload",
    )

    registered = cmd(command(admin, admin_node("get-registered-users-num")))
    assert fields(registered)["registeredusersnum"] == ["4"]
    listed = cmd(run(admin, admin_node("get-registered-users-list"), {"max_items": "25"}))
    assert fields(listed)["registereduserjids"] == [
        "admin@localhost",
        "alice@localhost",
        "bob@localhost",
        "carol@localhost",
    ]


def test_lists_never_exceed_max_list_items(make_xmpp):
    server = make_xmpp(
        options={"admin_commands": {"max_list_items": 2}}, config={"server": {"admins": [ADMIN]}}
    )
    admin = server.login(f"{ADMIN}/console")
    for user in ("alice", "bob", "carol"):
        server.adduser(f"{user}@localhost")
    done = cmd(run(admin, admin_node("get-registered-users-list"), {"max_items": "none"}))
    assert fields(done)["registereduserjids"] == ["admin@localhost", "alice@localhost"]
    assert notes(done) == [("warn", "showing 2 of 4 registered users")]


# -- s4.23 announce ------------------------------------------------------------------------------------------


def test_announce_reaches_every_online_session(server):
    admin = server.login(f"{ADMIN}/console")
    alice = server.login("alice@localhost/phone", available=True)
    bob = server.login("bob@localhost/pc")
    sessionid, element = start(admin, admin_node("announce"))
    assert field_types(element)["announcement"] == ("text-multi", True)
    lines = ["Going down for", "maintenance in 2 minutes."]
    admin.send(command_xml(admin_node("announce"), sessionid=sessionid, form={"announcement": lines}))
    announcement = (
        "<message type='headline' from='localhost'><body>Going down for\nmaintenance in 2 minutes.</body>"
        "</message>"
    )
    admin.expect(announcement)  # the admin is online too, and the announcement goes out before the answer
    done = cmd(admin.next())
    assert notes(done) == [("info", "announced to 3 session(s)")]
    for client in (alice, bob):
        client.expect(announcement)

    assert error(run(admin, admin_node("announce"), {"announcement": ["", "  "]})) == (
        "bad-request",
        "bad-payload",
    )


# -- s4.5 end user session -----------------------------------------------------------------------------------


def test_end_user_session_one_resource_or_all(server):
    admin = server.login(f"{ADMIN}/console")
    phone = server.login("alice@localhost/phone")
    laptop = server.login("alice@localhost/laptop", create=False)
    bob = server.login("bob@localhost/pc")
    sessionid, element = start(admin, admin_node("end-user-session"))
    assert field_types(element)["accountjids"] == ("jid-multi", True)
    done = cmd(
        command(
            admin,
            admin_node("end-user-session"),
            sessionid=sessionid,
            form={"accountjids": "alice@localhost/phone"},
        )
    )
    assert notes(done) == [("info", "kicked 1 session(s) of alice@localhost/phone")]
    phone.drain()
    assert phone.stream_errors == ["policy-violation"] and not phone.connected
    assert laptop.connected

    done = cmd(
        run(admin, admin_node("end-user-session"), {"accountjids": ["alice@localhost", "carol@localhost"]})
    )
    assert notes(done) == [
        ("info", "kicked 1 session(s) of alice@localhost"),
        ("warn", "carol@localhost has no session"),
    ]
    laptop.drain()
    assert laptop.stream_errors == ["policy-violation"]
    assert bob.connected

    nobody = cmd(run(admin, admin_node("end-user-session"), {"accountjids": "alice@localhost"}))
    assert notes(nobody) == [("error", "alice@localhost has no session")]
    for bad in ("localhost", "bob@example.org", "@@"):
        answer = run(admin, admin_node("end-user-session"), {"accountjids": bad})
        assert error(answer) == ("bad-request", "bad-payload"), bad


# -- the XEP-0050 framework: stages, actions, sessions -------------------------------------------------------


def test_multi_stage_command_with_prev_next_and_complete(server):
    alice = server.login("alice@localhost/phone")
    node = "urn:test#wizard"
    sessionid, first = start(alice, node)
    actions = first.find(f"{{{NS_COMMANDS}}}actions")
    assert actions.get("execute") == "next" and [etree.QName(c).localname for c in actions] == ["next"]
    # complete is not offered at the first stage
    assert error(
        command(alice, node, sessionid=sessionid, action="complete", form={"name": "Al"}, form_type=None)
    ) == (
        "bad-request",
        "bad-action",
    )
    second = cmd(
        command(alice, node, sessionid=sessionid, action="next", form={"name": "Al"}, form_type="urn:test")
    )
    assert second.get("status") == "executing"
    actions = second.find(f"{{{NS_COMMANDS}}}actions")
    assert actions.get("execute") == "complete"
    assert [etree.QName(c).localname for c in actions] == ["prev", "next", "complete"]
    assert notes(second) == [("info", "hi")]
    # back to the first stage, then forward with another name
    back = cmd(command(alice, node, sessionid=sessionid, action="prev"))
    assert "name" in fields(back) and back.find(f"{{{NS_COMMANDS}}}actions").get("execute") == "next"
    assert error(command(alice, node, sessionid=sessionid, action="prev")) == ("bad-request", "bad-action")
    cmd(command(alice, node, sessionid=sessionid, form={"name": "Alice"}, form_type="urn:test"))
    # no action: the stage's default (complete)
    done = cmd(command(alice, node, sessionid=sessionid, form={"colour": "blue"}, form_type="urn:test"))
    assert done.get("status") == "completed"
    assert notes(done) == [("info", "Alice likes blue (complete)")]
    assert error(command(alice, node, sessionid=sessionid, form={"colour": "red"})) == (
        "not-allowed",
        "session-expired",
    )


def test_cancel_ends_the_session(server):
    alice = server.login("alice@localhost/phone")
    node = "urn:test#wizard"
    sessionid, _ = start(alice, node)
    canceled = cmd(command(alice, node, sessionid=sessionid, action="cancel"))
    assert (canceled.get("status"), canceled.get("sessionid"), canceled.get("node")) == (
        "canceled",
        sessionid,
        node,
    )
    assert len(canceled) == 0
    assert error(command(alice, node, sessionid=sessionid, action="cancel")) == (
        "not-allowed",
        "session-expired",
    )
    assert error(command(alice, node, sessionid=sessionid, form={"name": "x"})) == (
        "not-allowed",
        "session-expired",
    )


def test_sessionids_are_bound_to_requester_and_node(server):
    alice = server.login("alice@localhost/phone")
    laptop = server.login("alice@localhost/laptop", create=False)
    bob = server.login("bob@localhost/pc")
    node = "urn:test#wizard"
    sessionid, _ = start(alice, node)
    # never issued
    assert error(command(alice, node, sessionid="nosuch", form={"name": "x"})) == (
        "bad-request",
        "bad-sessionid",
    )
    # someone else's, even the same account's other resource (s3.4: one requester/responder pair)
    for other in (bob, laptop):
        assert error(command(other, node, sessionid=sessionid, form={"name": "x"})) == (
            "bad-request",
            "bad-sessionid",
        )
    # the session of another command
    assert error(command(alice, "urn:test#bob", sessionid=sessionid)) == ("forbidden", None)
    admin_session = server.login(f"{ADMIN}/console")
    admin_sid, _ = start(admin_session, admin_node("announce"))
    assert error(command(admin_session, "urn:test#wizard", sessionid=admin_sid)) == (
        "bad-request",
        "bad-sessionid",
    )
    # and the session still works for its owner
    assert cmd(command(alice, node, sessionid=sessionid, form={"name": "Al"}, form_type=None)).get(
        "status"
    ) == ("executing")


def test_malformed_and_bad_actions(server):
    alice = server.login("alice@localhost/phone")
    node = "urn:test#wizard"
    assert error(command(alice, node, action="jump")) == ("bad-request", "malformed-action")
    for action in ("next", "complete", "prev", "cancel"):
        assert error(command(alice, node, action=action)) == ("bad-request", "bad-action"), action
    sessionid, _ = start(alice, node)
    assert error(command(alice, node, sessionid=sessionid, action="jump")) == (
        "bad-request",
        "malformed-action",
    )
    assert error(command(alice, "urn:nothing", action="execute")) == ("item-not-found", None)
    assert error(command(alice, "", action="execute")) == ("bad-request", None)


def test_handler_errors(server):
    alice = server.login("alice@localhost/phone")
    assert error(command(alice, "urn:test#crash")) == ("internal-server-error", None)
    answer = command(alice, "urn:test#refuse")
    assert error(answer) == ("not-allowed", None)
    assert answer.find("error").findtext(f"{{{NS_STANZAS}}}text") == "never"
    # and a form the stage's handler refuses keeps the session at that stage
    sessionid, _ = start(alice, "urn:test#wizard")
    answer = command(alice, "urn:test#wizard", sessionid=sessionid, form={"name": ""}, form_type="urn:test")
    assert error(answer) == ("bad-request", "bad-payload")
    again = command(alice, "urn:test#wizard", sessionid=sessionid, form={"name": "A"}, form_type=None)
    assert cmd(again).get("status") == "executing"


def test_sessions_time_out(server):
    alice = server.login("alice@localhost/phone")
    node = "urn:test#wizard"
    sessionid, _ = start(alice, node)
    server.advance(500)
    cmd(command(alice, node, sessionid=sessionid, form={"name": "Al"}, form_type=None))  # restarts the clock
    server.advance(500)
    cmd(command(alice, node, sessionid=sessionid, action="prev"))
    server.advance(601)
    assert error(command(alice, node, sessionid=sessionid, form={"name": "x"})) == (
        "not-allowed",
        "session-expired",
    )


def test_open_sessions_per_requester_are_bounded(make_xmpp):
    server = make_xmpp(
        plugins=[Wizard],
        enabled=[*DEFAULT_PLUGINS, "wizard"],
        options={"adhoc": {"max_sessions_per_user": 2}},
    )
    alice = server.login("alice@localhost/phone")
    laptop = server.login("alice@localhost/laptop", create=False)
    bob = server.login("bob@localhost/pc")
    first, _ = start(alice, "urn:test#wizard")
    second, _ = start(laptop, "urn:test#wizard")
    bobs, _ = start(bob, "urn:test#wizard")
    third, _ = start(alice, "urn:test#wizard")  # the account's oldest session ends
    assert error(command(alice, "urn:test#wizard", sessionid=first, form={"name": "x"})) == (
        "not-allowed",
        "session-expired",
    )
    for client, sessionid in ((laptop, second), (alice, third), (bob, bobs)):
        assert (
            cmd(command(client, "urn:test#wizard", sessionid=sessionid, action="cancel")).get("status")
            == "canceled"
        )


def test_open_sessions_on_the_domain_are_bounded(make_xmpp):
    server = make_xmpp(
        plugins=[Wizard], enabled=[*DEFAULT_PLUGINS, "wizard"], options={"adhoc": {"max_sessions": 2}}
    )
    clients = [server.login(f"{user}@localhost/r") for user in ("alice", "bob", "carol")]
    start(clients[0], "urn:test#wizard")
    sessionid, _ = start(clients[1], "urn:test#wizard")
    assert error(command(clients[2], "urn:test#wizard")) == ("resource-constraint", None)
    cmd(command(clients[1], "urn:test#wizard", sessionid=sessionid, action="cancel"))
    start(clients[2], "urn:test#wizard")
    # commands that complete at once need no session
    admin_server = make_xmpp(options={"adhoc": {"max_sessions": 1}}, config={"server": {"admins": [ADMIN]}})
    admin = admin_server.login(f"{ADMIN}/console")
    start(admin, admin_node("announce"))
    for _ in range(3):
        assert cmd(command(admin, admin_node("get-online-users-num"))).get("status") == "completed"


def test_unloading_the_plugin_removes_its_commands_and_their_sessions(server):
    admin = server.login(f"{ADMIN}/console")
    sessionid, _ = start(admin, admin_node("announce"))
    server.server.plugins.unload("admin_commands", "localhost")
    assert [i.get("node") for i in disco_items(admin)[0] if i.get("node").startswith(NS_ADMIN)] == []
    assert error(command(admin, admin_node("announce"), sessionid=sessionid)) == ("item-not-found", None)
    server.server.plugins.load("admin_commands", "localhost")
    assert [i.get("node") for i in disco_items(admin)[0] if i.get("node").startswith(NS_ADMIN)] == ADMIN_NODES
    start(admin, admin_node("announce"))


def test_add_command_refuses_a_node_twice(server):
    adhoc = server.server.plugins.instance("localhost", "adhoc")
    with pytest.raises(PluginError, match="already registered"):
        adhoc.add_command(admin_node("announce"), "Again", lambda r: Completed())
    with pytest.raises(PluginError, match="command list"):
        adhoc.add_command(NS_COMMANDS, "List", lambda r: Completed())
    with pytest.raises(ValueError, match="allowed"):
        adhoc.add_command("urn:test#x", "X", lambda r: Completed(), allowed="everybody")
    with pytest.raises(ValueError, match="next and/or complete"):
        Stage(build_form(None, []), lambda r: Completed(), actions=("prev",))


def test_commands_are_per_domain(make_xmpp):
    server = make_xmpp(domains=["localhost", "example.org"], config={"server": {"admins": [ADMIN]}})
    admin = server.login(f"{ADMIN}/console")
    server.adduser("alice@example.org")
    answer = run(admin, admin_node("delete-user"), {"accountjids": "alice@example.org"})
    assert error(answer) == ("bad-request", "bad-payload")
    assert "not an account of localhost" in answer.find("error").findtext(f"{{{NS_STANZAS}}}text")
    # sent to example.org, a command applies to example.org
    element = cmd(
        admin.request(
            f"<iq type='set' id='x' to='example.org'><command xmlns='{NS_COMMANDS}' "
            f"node='{admin_node('get-registered-users-num')}'/></iq>"
        )
    )
    assert fields(element)["registeredusersnum"] == ["1"]
