"""Service Administration (XEP-0133): ad-hoc commands for the accounts in ``[server] admins``.

Each command is registered with the adhoc plugin (XEP-0050) for admins only, so nobody else sees it in
disco#items or may run it (``forbidden``, s6 Security Considerations). Every operation is one of
``xmppd.control.Commands``, the same code ``xmppdctl`` runs, so accounts are created, deleted and changed
exactly as they are from the command line. A command applies to the domain it is sent to: accounts and
sessions of other domains are refused.

The commands, with the nodes and FORM_TYPE ``http://jabber.org/protocol/admin`` fields of XEP-0133:

* ``#add-user`` (s4.1): ``accountjid``, ``password``, ``password-verify``. An existing account:
  ``conflict`` (s5 Error Handling).
* ``#delete-user`` (s4.2): ``accountjids``. The account and its data go, its sessions end.
* ``#end-user-session`` (s4.5): ``accountjids``; a bare JID ends every session of the account, a full JID
  that session alone (the client gets the ``<policy-violation/>`` stream error).
* ``#change-user-password`` (s4.7): ``accountjid``, ``password``. No such account: ``item-not-found``.
* ``#get-registered-users-num`` (s4.13), ``#get-online-users-num`` (s4.15): ``registeredusersnum``,
  ``onlineusersnum`` at once. An online user has at least one bound session.
* ``#get-registered-users-list`` (s4.18), ``#get-online-users-list`` (s4.20): ``max_items`` (25 to 200 or
  ``none``), then ``registereduserjids`` / ``onlineuserjids``, bare JIDs in order, never more than the
  ``max_list_items`` option (a warning note says when the list was cut).
* ``#announce`` (s4.23): ``announcement`` (text-multi), sent as a headline message from the domain to
  every online session of the domain.

A form without a required field, with a JID that is not an account address of the domain, or with
passwords that differ, answers ``bad-request`` + ``<bad-payload/>`` and the form may be sent again. For
several JIDs (delete, end session) each is done on its own; those that cannot be (no such account, no
session) are named in notes, and a command of which nothing could be done carries an ``error`` note
(XEP-0050 s3.6).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from lxml import etree
from xmppd.plugins.adhoc import CommandError, CommandRequest, Completed, Note, Stage, bad_payload

from xmppd.accounts import AccountError
from xmppd.control import Commands, ControlError, account_jid
from xmppd.jid import JID, JIDError, parse_jid
from xmppd.plugin import Context, Option, Plugin
from xmppd.xml.dataform import Field, FormError, SubmittedForm, build_form

NS_ADMIN = "http://jabber.org/protocol/admin"
MAX_ITEMS_CHOICES = ("25", "50", "75", "100", "150", "200", "none")


def node(name: str) -> str:
    return f"{NS_ADMIN}#{name}"


class AdminCommands(Plugin):
    """XEP-0133 commands over xmppd.control.Commands, for ``[server] admins``."""

    name = "admin_commands"
    requires = ("adhoc",)
    options = {
        "max_list_items": Option(
            int, 1000, "the most JIDs a user list returns, also when max_items is none", min=1, max=100000
        ),
    }

    def setup(self, ctx: Context) -> None:
        self.control = Commands(ctx.server)
        adhoc = ctx.depends("adhoc")
        table: Sequence[tuple[str, str, Callable[[CommandRequest], Any]]] = (
            ("add-user", "Add a User", self.add_user),
            ("delete-user", "Delete a User", self.delete_user),
            ("end-user-session", "End a User Session", self.end_user_session),
            ("change-user-password", "Change a User Password", self.change_user_password),
            ("get-registered-users-num", "Get Number of Registered Users", self.registered_users_num),
            ("get-online-users-num", "Get Number of Online Users", self.online_users_num),
            ("get-registered-users-list", "Get List of Registered Users", self.registered_users_list),
            ("get-online-users-list", "Get List of Online Users", self.online_users_list),
            ("announce", "Send Announcement to Online Users", self.announce),
        )
        self._removers = [adhoc.add_command(node(n), title, f, allowed="admins") for n, title, f in table]

    def teardown(self) -> None:
        for remove in self._removers:
            remove()

    # -- forms and values ------------------------------------------------------------------------------

    @staticmethod
    def _form(title: str, instructions: str, fields: Sequence[Field]) -> etree._Element:
        return build_form(NS_ADMIN, fields, title=title, instructions=instructions)

    @staticmethod
    def _result(fields: Sequence[Field]) -> etree._Element:
        return build_form(NS_ADMIN, fields, type_="result")

    def _account(self, text: str | None, var: str = "accountjid") -> JID:
        """An account address (user@domain) of this domain, from a submitted field."""
        if not text:
            raise bad_payload(f"{var} is required")
        try:
            jid = account_jid(text.strip())
        except ControlError as e:
            raise bad_payload(str(e)) from None
        self._here(jid)
        return jid

    def _here(self, jid: JID) -> None:
        if jid.domain != self.ctx.domain:
            raise bad_payload(f"{jid} is not an account of {self.ctx.domain}")

    def _submitted(self, request: CommandRequest) -> SubmittedForm:
        return request.require_form(NS_ADMIN)

    def _text(self, form: SubmittedForm, var: str) -> str | None:
        try:
            return form.text(var)
        except FormError as e:
            raise bad_payload(str(e)) from None

    def _jids(self, form: SubmittedForm, var: str = "accountjids") -> list[str]:
        values = [v.strip() for v in form.multi(var) or () if v.strip()]
        if not values:
            raise bad_payload(f"{var} needs at least one JID")
        return list(dict.fromkeys(values))

    def _log(self, request: CommandRequest, what: str) -> None:
        self.ctx.log.info("admin {admin}: {what}", admin=request.requester, what=what)

    # -- s4.1 Add User ---------------------------------------------------------------------------------

    def add_user(self, request: CommandRequest) -> Stage:
        form = self._form(
            "Adding a User",
            "Fill out this form to add a user.",
            [
                Field("accountjid", "jid-single", "The Jabber ID for the account to be added", required=True),
                Field("password", "text-private", "The password for this account", required=True),
                Field("password-verify", "text-private", "Retype password", required=True),
            ],
        )
        return Stage(form, self._add_user)

    async def _add_user(self, request: CommandRequest) -> Completed:
        form = self._submitted(request)
        account = self._account(self._text(form, "accountjid"))
        password = self._text(form, "password")
        if not password:
            raise bad_payload("password is required")
        if self._text(form, "password-verify") != password:
            raise bad_payload("the passwords do not match")
        if await self.ctx.server.accounts.exists(account):
            raise CommandError("conflict", f"{account} exists already")
        try:
            done = await self.control.adduser(str(account), password)
        except (ControlError, AccountError) as e:
            raise CommandError("not-acceptable", str(e)) from None
        self._log(request, done)
        return Completed([Note(done)])

    # -- s4.2 Delete User ------------------------------------------------------------------------------

    def delete_user(self, request: CommandRequest) -> Stage:
        form = self._form(
            "Deleting a User",
            "Fill out this form to delete a user.",
            [Field("accountjids", "jid-multi", "The Jabber ID(s) to delete", required=True)],
        )
        return Stage(form, self._delete_user)

    async def _delete_user(self, request: CommandRequest) -> Completed:
        accounts = [self._account(text, "accountjids") for text in self._jids(self._submitted(request))]
        return await self._each(request, accounts, lambda jid: self.control.deluser(str(jid)))

    # -- s4.5 End User Session -------------------------------------------------------------------------

    def end_user_session(self, request: CommandRequest) -> Stage:
        form = self._form(
            "Ending a User Session",
            "Fill out this form to end a user's session.",
            [Field("accountjids", "jid-multi", "The Jabber ID(s) for which to end sessions", required=True)],
        )
        return Stage(form, self._end_user_session)

    async def _end_user_session(self, request: CommandRequest) -> Completed:
        targets = []
        for text in self._jids(self._submitted(request)):
            try:
                jid = parse_jid(text)
            except JIDError as e:
                raise bad_payload(f"{text!r} is not a valid JID: {e}") from None
            if jid.local is None:
                raise bad_payload(f"{text!r} is not a user's address")
            self._here(jid)
            targets.append(jid)
        return await self._each(
            request, targets, lambda jid: self.control.kick(str(jid), "session ended by an administrator")
        )

    async def _each(
        self, request: CommandRequest, jids: list[JID], operation: Callable[[JID], Any]
    ) -> Completed:
        """Run ``operation`` for every JID; a note for each outcome, an error note if none succeeded."""
        notes, failures = [], 0
        for jid in jids:
            try:
                done = await operation(jid)
            except (ControlError, AccountError) as e:
                failures += 1
                notes.append(Note(str(e), "warn"))
                continue
            self._log(request, done)
            notes.append(Note(done))
        if failures == len(jids):
            notes = [Note(n.text, "error") for n in notes]
        return Completed(notes)

    # -- s4.7 Change User Password ---------------------------------------------------------------------

    def change_user_password(self, request: CommandRequest) -> Stage:
        form = self._form(
            "Changing a User Password",
            "Fill out this form to change a user's password.",
            [
                Field("accountjid", "jid-single", "The Jabber ID for this account", required=True),
                Field("password", "text-private", "The password for this account", required=True),
            ],
        )
        return Stage(form, self._change_user_password)

    async def _change_user_password(self, request: CommandRequest) -> Completed:
        form = self._submitted(request)
        account = self._account(self._text(form, "accountjid"))
        password = self._text(form, "password")
        if not password:
            raise bad_payload("password is required")
        if not await self.ctx.server.accounts.exists(account):
            raise CommandError("item-not-found", f"{account} does not exist")
        try:
            done = await self.control.passwd(str(account), password)
        except (ControlError, AccountError) as e:
            raise CommandError("not-acceptable", str(e)) from None
        self._log(request, done)
        return Completed([Note(done)])

    # -- s4.13, s4.15 numbers; s4.18, s4.20 lists ------------------------------------------------------

    async def _registered(self) -> list[str]:
        return sorted(await self.control.users(self.ctx.domain))

    async def _online(self) -> list[str]:
        sessions = await self.control.sessions(self.ctx.domain)
        return sorted({str(parse_jid(s["jid"]).bare) for s in sessions})

    async def registered_users_num(self, request: CommandRequest) -> Completed:
        count = len(await self._registered())
        return Completed(form=self._result([Field("registeredusersnum", values=[str(count)])]))

    async def online_users_num(self, request: CommandRequest) -> Completed:
        count = len(await self._online())
        return Completed(form=self._result([Field("onlineusersnum", values=[str(count)])]))

    def _max_items_form(self, what: str) -> etree._Element:
        return self._form(
            f"Requesting List of {what.title()} Users",
            f"Fill out this form to request the {what} users of this service.",
            [
                Field(
                    "max_items",
                    "list-single",
                    "Maximum number of items to show",
                    values=["100"],
                    options=[("None" if c == "none" else c, c) for c in MAX_ITEMS_CHOICES],
                )
            ],
        )

    def _listed(self, request: CommandRequest, jids: list[str], var: str, what: str) -> Completed:
        limit = self.ctx.option("max_list_items")
        text = self._text(self._submitted(request), "max_items") or "none"
        if text != "none":
            try:
                wanted = int(text)
            except ValueError:
                raise bad_payload(f"max_items must be a number or none, not {text!r}") from None
            if wanted < 1:
                raise bad_payload("max_items must be at least 1")
            limit = min(limit, wanted)
        notes = []
        if len(jids) > limit:
            notes.append(Note(f"showing {limit} of {len(jids)} {what} users", "warn"))
        return Completed(notes, self._result([Field(var, "jid-multi", values=jids[:limit])]))

    def registered_users_list(self, request: CommandRequest) -> Stage:
        async def submitted(request: CommandRequest) -> Completed:
            return self._listed(request, await self._registered(), "registereduserjids", "registered")

        return Stage(self._max_items_form("registered"), submitted)

    def online_users_list(self, request: CommandRequest) -> Stage:
        async def submitted(request: CommandRequest) -> Completed:
            return self._listed(request, await self._online(), "onlineuserjids", "online")

        return Stage(self._max_items_form("online"), submitted)

    # -- s4.23 Send Announcement to Online Users -------------------------------------------------------

    def announce(self, request: CommandRequest) -> Stage:
        form = self._form(
            "Making an Announcement",
            "Fill out this form to make an announcement to all active users of this service.",
            [Field("announcement", "text-multi", "Announcement", required=True)],
        )
        return Stage(form, self._announce)

    async def _announce(self, request: CommandRequest) -> Completed:
        lines = self._submitted(request).multi("announcement") or []
        text = "\n".join(lines)
        if not text.strip():
            raise bad_payload("announcement is required")
        try:
            done = await self.control.announce(text, domain=self.ctx.domain)
        except ControlError as e:
            raise bad_payload(str(e)) from None
        self._log(request, done)
        return Completed([Note(done)])
