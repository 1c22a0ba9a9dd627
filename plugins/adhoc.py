"""Ad-Hoc Commands (XEP-0050): the framework other plugins register commands with.

A plugin that ``requires = ("adhoc",)`` gets this plugin's instance from ``ctx.depends("adhoc")`` and calls
``add_command(node, name, handler, allowed=...)``. The framework does the protocol:

* Discovery (s2.1, s2.2): ``http://jabber.org/protocol/commands`` in the domain's disco#info; disco#items
  of that node lists the commands the requester may run (nothing else: a non-admin sees no admin
  command); disco#info of a command node answers the ``automation/command-node`` identity, or
  ``forbidden`` to a requester who may not run it.
* Execution (s2.4): ``<command node='...'/>`` in an iq set to the domain. A requester who may not run the
  command gets ``forbidden``; an unknown node ``item-not-found``. A command runs in a session named by
  ``sessionid``, bound to the requester's full JID (s3.3: valid only between one requester/responder pair).
  Each stage that shows a form answers ``status='executing'`` with ``<actions/>`` (``<prev/>`` once there
  is an earlier stage, then ``<next/>`` or ``<complete/>``); the last answers ``completed`` with notes and
  possibly a result form; ``action='cancel'`` answers ``canceled``. A submitted form of type ``cancel``
  counts as ``submit`` (s3.5.1).
* Errors (s4.4): an action that is not one of the five, ``bad-request`` + ``<malformed-action/>``; an
  action the stage does not offer, ``bad-request`` + ``<bad-action/>``; a sessionid never issued to this
  requester for this node, ``bad-request`` + ``<bad-sessionid/>``; one that was completed, canceled or
  timed out, ``not-allowed`` + ``<session-expired/>``; a form that is not well-formed or lacks what the
  stage needs, ``bad-request`` + ``<bad-payload/>`` (the session stays at that stage, so the form can be
  sent again).
* Bounds: a requester (bare JID) has at most ``max_sessions_per_user`` open sessions (starting one more
  ends the oldest, whose sessionid then answers ``session-expired``), the domain at most ``max_sessions``
  (beyond: ``resource-constraint``), and a session left alone for ``session_timeout`` seconds expires.
  The sessionids of ended sessions are remembered in a bounded list, to tell ``session-expired`` from
  ``bad-sessionid``.

A handler is called with a ``CommandRequest`` and returns (or, being ``async``, resolves to) a ``Stage``
(show a form; the next submission goes to ``stage.then``) or a ``Completed``. It raises ``CommandError``
to answer a stanza error. ``allowed`` is ``"admins"`` (the default: the bare JIDs in ``[server] admins``),
``"local"`` (accounts of this domain), ``"anyone"``, or a function of the requester's JID.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from xmppd.jid import JID, JIDError, parse_jid
from xmppd.plugin import Context, Option, Plugin, PluginError
from xmppd.router import StanzaEvent
from xmppd.xml.dataform import NS_DATA, FormError, SubmittedForm, find_form, parse_form
from xmppd.xml.stanza import add_child, copy_stanza, make_error

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_INFO = "http://jabber.org/protocol/disco#info"
NS_ITEMS = "http://jabber.org/protocol/disco#items"
ACTIONS = ("execute", "cancel", "prev", "next", "complete")
NOTE_TYPES = ("info", "warn", "error")
#: How many ended sessionids are remembered (to answer session-expired rather than bad-sessionid).
REMEMBERED_ENDED = 1000


class CommandError(Exception):
    """A stanza error answering a command request: a defined condition (RFC 6120 s8.3.3), a text, and
    possibly a XEP-0050 specific condition (s4.4: ``bad-payload``, ``bad-action``, ...). The session ends,
    unless ``keep_session`` (a form to correct and send again)."""

    def __init__(
        self,
        condition: str,
        text: str | None = None,
        *,
        specific: str | None = None,
        keep_session: bool = False,
    ) -> None:
        super().__init__(text or condition)
        self.condition = condition
        self.text = text
        self.specific = specific
        self.keep_session = keep_session


def bad_payload(text: str) -> CommandError:
    """The submitted form lacks something or holds a wrong value (s4.4 ``<bad-payload/>``); the form may
    be sent again."""
    return CommandError("bad-request", text, specific="bad-payload", keep_session=True)


@dataclass(frozen=True)
class Note:
    """A ``<note/>`` (s4.3): ``info``, ``warn`` or ``error`` (a completed command that failed MUST carry
    an error note, s3.6)."""

    text: str
    type: str = "info"


@dataclass
class Stage:
    """Show ``form`` (``status='executing'``) and wait. The submission goes to ``then``. ``actions`` are
    what the requester may do next besides ``prev`` (added when there is an earlier stage) and
    ``cancel``: ``("next",)`` for an intermediate stage, ``("complete",)`` for the last; ``default`` is
    what ``execute`` means (the last of ``actions`` unless given)."""

    form: etree._Element
    then: Callable[[CommandRequest], Any]
    actions: tuple[str, ...] = ("complete",)
    default: str | None = None
    notes: Sequence[Note] = ()

    def __post_init__(self) -> None:
        if not self.actions or not set(self.actions) <= {"next", "complete"}:
            raise ValueError("a stage offers next and/or complete")
        if self.default is None:
            self.default = self.actions[-1]
        elif self.default not in self.actions:
            raise ValueError("the default action must be one of the stage's actions")


@dataclass
class Completed:
    """The command is done (``status='completed'``): notes and possibly a result form."""

    notes: Sequence[Note] = ()
    form: etree._Element | None = None


@dataclass
class CommandRequest:
    """What a command handler is given: who asks, the session's own ``data`` dict (for state between
    stages), the submitted form (None on the first call or when none was sent) and the action taken."""

    requester: JID
    node: str
    sessionid: str
    data: dict[str, Any]
    form: SubmittedForm | None
    action: str
    event: StanzaEvent

    def require_form(self, form_type: str | None = None) -> SubmittedForm:
        """The submitted form, which must be there (and carry ``form_type`` as its FORM_TYPE when it has
        one); CommandError ``bad-payload`` otherwise."""
        if self.form is None:
            raise bad_payload("this stage needs the form submitted")
        if form_type is not None and self.form.form_type not in (None, form_type):
            raise bad_payload(f"the form's FORM_TYPE must be {form_type}")
        return self.form


#: A command's first stage: returns (or resolves to) a Stage or Completed, or raises CommandError.
Handler = Callable[[CommandRequest], Any]


@dataclass
class Command:
    node: str
    name: str
    handler: Handler
    allowed: Callable[[JID], bool]


@dataclass
class Session:
    id: str
    command: Command
    requester: JID
    started: float
    data: dict[str, Any] = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)  # shown so far; the last is the current one
    busy: bool = False
    ended: bool = False
    timer: Any = None


class AdHocCommands(Plugin):
    """XEP-0050 for the domain; commands come from other plugins through ``add_command``."""

    name = "adhoc"
    requires = ("disco",)
    options = {
        "session_timeout": Option(
            float, 600.0, "seconds an unfinished command session lives after its last step", min=10
        ),
        "max_sessions_per_user": Option(
            int, 5, "open command sessions per requester; one more ends the oldest", min=1, max=100
        ),
        "max_sessions": Option(int, 1000, "open command sessions on the domain, all requesters", min=1),
    }

    def setup(self, ctx: Context) -> None:
        self.commands: dict[str, Command] = {}
        self.sessions: dict[str, Session] = {}
        self.ended: OrderedDict[str, None] = OrderedDict()
        ctx.add_feature(NS_COMMANDS)
        ctx.hook_iq("set", NS_COMMANDS, "command", self.on_command, to="host")
        # Before the disco plugin (priority 0), which answers item-not-found for every node.
        ctx.hook_iq("get", NS_ITEMS, "query", self.on_items, to="host", priority=10)
        ctx.hook_iq("get", NS_INFO, "query", self.on_info, to="host", priority=10)

    def teardown(self) -> None:
        self.sessions.clear()
        self.commands.clear()

    # -- the API other plugins use -------------------------------------------------------------------------

    def add_command(
        self,
        node: str,
        name: str,
        handler: Handler,
        *,
        allowed: str | Callable[[JID], bool] = "admins",
    ) -> Callable[[], None]:
        """Offer a command on this domain. ``allowed``: ``"admins"``, ``"local"``, ``"anyone"`` or a
        function of the requester's JID. Returns a function that removes the command again (and ends its
        open sessions); call it from the registering plugin's ``teardown``."""
        if node in self.commands:
            raise PluginError(f"ad-hoc command {node!r} is already registered on {self.ctx.domain}")
        if node == NS_COMMANDS:
            raise PluginError(f"{NS_COMMANDS} is the command list's node, not a command")
        command = Command(node, name, handler, self._policy(allowed))
        self.commands[node] = command

        def remove() -> None:
            if self.commands.get(node) is command:
                del self.commands[node]
                for session in [s for s in self.sessions.values() if s.command is command]:
                    self._end(session)

        return remove

    def is_admin(self, jid: JID) -> bool:
        """Whether ``jid``'s bare JID is listed in ``[server] admins``."""
        bare = str(jid.bare)
        for entry in self.ctx.server.config.get("server", "admins"):
            try:
                if str(parse_jid(entry).bare) == bare:
                    return True
            except JIDError:
                continue
        return False

    def may_run(self, node: str, requester: JID) -> bool:
        command = self.commands.get(node)
        return command is not None and command.allowed(requester)

    def _policy(self, allowed: str | Callable[[JID], bool]) -> Callable[[JID], bool]:
        if callable(allowed):
            return allowed
        if allowed == "admins":
            return self.is_admin
        if allowed == "local":
            return lambda jid: jid.local is not None and jid.domain == self.ctx.domain
        if allowed == "anyone":
            return lambda jid: True
        raise ValueError(f"allowed must be 'admins', 'local', 'anyone' or a function, not {allowed!r}")

    # -- discovery (s2.1, s2.2) ----------------------------------------------------------------------------

    def on_items(self, event: StanzaEvent) -> Any:
        if event.stanza[0].get("node") != NS_COMMANDS:
            return None  # the disco plugin answers
        reply = event.result()
        query = add_child(reply, NS_ITEMS, "query")
        query.set("node", NS_COMMANDS)
        for command in self.commands.values():
            if command.allowed(event.from_):
                item = add_child(query, NS_ITEMS, "item")
                item.set("jid", self.ctx.domain)
                item.set("node", command.node)
                item.set("name", command.name)
        return reply

    def on_info(self, event: StanzaEvent) -> Any:
        node = event.stanza[0].get("node")
        if node == NS_COMMANDS:
            identity = ("automation", "command-list", "Commands")
            features: tuple[str, ...] = (NS_COMMANDS,)
        elif node in self.commands:
            command = self.commands[node]
            if not command.allowed(event.from_):
                return event.error("forbidden")
            identity = ("automation", "command-node", command.name)
            features = (NS_COMMANDS, NS_DATA)
        else:
            return None  # the disco plugin answers
        reply = event.result()
        query = add_child(reply, NS_INFO, "query")
        query.set("node", node)
        element = add_child(query, NS_INFO, "identity")
        element.set("category", identity[0])
        element.set("type", identity[1])
        element.set("name", identity[2])
        for var in features:
            add_child(query, NS_INFO, "feature").set("var", var)
        return reply

    # -- execution (s2.4, s3) ------------------------------------------------------------------------------

    async def on_command(self, event: StanzaEvent) -> etree._Element:
        request = event.stanza[0]
        node = request.get("node")
        action = request.get("action") or "execute"
        sessionid = request.get("sessionid")
        if not node:
            return event.error("bad-request", text="a command needs a node")
        if action not in ACTIONS:
            return _error(
                event, CommandError("bad-request", f"unknown action {action!r}", specific="malformed-action")
            )
        command = self.commands.get(node)
        if command is None:
            return event.error("item-not-found", text=f"no command {node}")
        if not command.allowed(event.from_):
            self.ctx.log.debug("{jid} may not run {node}", jid=event.from_, node=node)
            return event.error("forbidden", "cancel", "you may not run this command")  # s4.4: type cancel
        if sessionid is None:
            if action != "execute":
                return _error(
                    event, CommandError("bad-request", f"{action} needs a sessionid", specific="bad-action")
                )
            session = Session(_new_id(), command, event.from_, self.ctx.clock.seconds())
            return await self._step(event, session, command.handler, form=None, action="execute")
        session = self.sessions.get(sessionid)
        if session is None or session.requester != event.from_ or session.command is not command:
            if session is None and sessionid in self.ended:
                return _error(
                    event, CommandError("not-allowed", "this session has ended", specific="session-expired")
                )
            return _error(event, CommandError("bad-request", "no such session", specific="bad-sessionid"))
        if session.busy:
            return event.error("unexpected-request", "wait", "the previous step of this session is running")
        if action == "cancel":
            self._end(session)
            return self._answer(event, session, "canceled")
        stage = session.stages[-1]
        if action == "prev":
            if len(session.stages) < 2:
                return _error(
                    event, CommandError("bad-request", "there is no previous stage", specific="bad-action")
                )
            session.stages.pop()
            self._touch(session)
            return self._answer(event, session, "executing", stage=session.stages[-1])
        if action == "execute":
            action = stage.default or stage.actions[-1]
        elif action not in stage.actions:
            offered = ", ".join(stage.actions)
            return _error(
                event,
                CommandError(
                    "bad-request", f"this stage offers {offered}, not {action}", specific="bad-action"
                ),
            )
        form = find_form(request)
        try:
            submitted = parse_form(form) if form is not None else None
        except FormError as e:
            return _error(event, bad_payload(f"the form is not well-formed: {e}"))
        if submitted is not None and submitted.type == "cancel":
            submitted.type = "submit"  # s3.5.1: responders treat a cancel form as submit
        return await self._step(event, session, stage.then, form=submitted, action=action)

    def _admit(self, session: Session) -> CommandError | None:
        """Open a new session (its first stage shows a form): the requester's oldest sessions end to stay
        within max_sessions_per_user; beyond max_sessions on the domain, resource-constraint."""
        mine = sorted(
            (s for s in self.sessions.values() if s.requester.bare == session.requester.bare),
            key=lambda s: s.started,
        )
        for old in mine[: max(0, len(mine) - self.ctx.option("max_sessions_per_user") + 1)]:
            if not old.busy:
                self._end(old)
        if len(self.sessions) >= self.ctx.option("max_sessions"):
            self._end(session)
            return CommandError("resource-constraint", "too many command sessions are open; try again later")
        self.sessions[session.id] = session
        return None

    async def _step(
        self,
        event: StanzaEvent,
        session: Session,
        handler: Callable[[CommandRequest], Any],
        *,
        form: SubmittedForm | None,
        action: str,
    ) -> etree._Element:
        request = CommandRequest(
            event.from_, session.command.node, session.id, session.data, form, action, event
        )
        session.busy = True
        try:
            result = handler(request)
            if isinstance(result, Awaitable):
                result = await result
        except CommandError as e:
            if not e.keep_session or not session.stages:
                self._end(session)
            return _error(event, e)
        except Exception:
            self.ctx.log.failure(
                "ad-hoc command {node} failed for {jid}", node=session.command.node, jid=event.from_
            )
            self._end(session)
            return event.error("internal-server-error")
        finally:
            session.busy = False
        if isinstance(result, Stage):
            if session.ended or self.commands.get(session.command.node) is not session.command:
                # the session timed out or the command was removed meanwhile
                return _error(
                    event, CommandError("not-allowed", "this session has ended", specific="session-expired")
                )
            if not session.stages:
                refused = self._admit(session)
                if refused is not None:
                    return _error(event, refused)
            session.stages.append(result)
            self._touch(session)
            return self._answer(event, session, "executing", stage=result)
        if isinstance(result, Completed):
            self._end(session)
            return self._answer(event, session, "completed", notes=result.notes, form=result.form)
        raise TypeError(f"a command handler returns Stage or Completed, not {result!r}")

    def _answer(
        self,
        event: StanzaEvent,
        session: Session,
        status: str,
        *,
        stage: Stage | None = None,
        notes: Sequence[Note] = (),
        form: etree._Element | None = None,
    ) -> etree._Element:
        reply = event.result()
        command = add_child(reply, NS_COMMANDS, "command")
        command.set("node", session.command.node)
        command.set("sessionid", session.id)
        command.set("status", status)
        if stage is not None:
            actions = add_child(command, NS_COMMANDS, "actions")
            actions.set("execute", stage.default or stage.actions[-1])
            if len(session.stages) > 1:
                add_child(actions, NS_COMMANDS, "prev")
            for name in ("next", "complete"):
                if name in stage.actions:
                    add_child(actions, NS_COMMANDS, name)
            notes, form = stage.notes, stage.form
        for note in notes:
            if note.type not in NOTE_TYPES:
                raise ValueError(f"a note is info, warn or error, not {note.type!r}")
            add_child(command, NS_COMMANDS, "note", note.text).set("type", note.type)
        if form is not None:
            command.append(copy_stanza(form))
        return reply

    # -- session lifetime (s3.3) ---------------------------------------------------------------------------

    def _touch(self, session: Session) -> None:
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        session.timer = self.ctx.call_later(self.ctx.option("session_timeout"), self._expire, session.id)

    def _expire(self, sessionid: str) -> None:
        session = self.sessions.get(sessionid)
        if session is None:
            return
        if session.busy:
            self._touch(session)
            return
        self.ctx.log.debug("command session {id} of {jid} timed out", id=sessionid, jid=session.requester)
        self._end(session)

    def _end(self, session: Session) -> None:
        session.ended = True
        self.sessions.pop(session.id, None)
        if session.timer is not None and session.timer.active():
            session.timer.cancel()
        self.ended[session.id] = None
        while len(self.ended) > REMEMBERED_ENDED:
            self.ended.popitem(last=False)


def _new_id() -> str:
    return secrets.token_urlsafe(12)


def _error(event: StanzaEvent, error: CommandError) -> etree._Element:
    """A stanza error with the XEP-0050 specific condition beside the defined one (s4.4)."""
    reply = make_error(event.stanza, error.condition, text=error.text)
    if error.specific:
        element = reply.find("error")
        # RFC 6120 s8.3.2: the application-specific condition follows the defined condition and text.
        etree.SubElement(element, f"{{{NS_COMMANDS}}}{error.specific}", nsmap={None: NS_COMMANDS})
    return reply


__all__ = [
    "NS_COMMANDS",
    "AdHocCommands",
    "CommandError",
    "CommandRequest",
    "Completed",
    "Note",
    "Stage",
    "bad_payload",
]
