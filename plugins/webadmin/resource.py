"""The web admin's twisted.web resource: sign-in, the pages, and the actions behind their buttons.

Every operation goes through :class:`xmppd.control.Commands` (what ``xmppdctl`` runs), so the web admin
and the shell behave alike; only the MUC room list and room destruction, which Commands does not offer,
talk to the ``muc`` plugin directly.

Requests: ``GET`` shows a page; ``POST`` to ``<page>/<action>`` does something and redirects (303) back to
the page, which shows the outcome once (POST-redirect-GET). Without a live session every request is
redirected to ``login``; a POST whose CSRF token is missing or wrong is refused with 403 before anything is
looked at.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lxml import etree
from twisted.internet.defer import ensureDeferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from xmppd.plugins.webadmin import pages
from xmppd.plugins.webadmin.sessions import AdminSession, LoginTokens, same

from xmppd import __version__
from xmppd.control import Commands
from xmppd.http.site import form_fields
from xmppd.jid import JIDError, parse_jid
from xmppd.sasl.scram import ScramCredentials, verify_password
from xmppd.xml.stanza import add_child

if TYPE_CHECKING:
    from xmppd.plugins.webadmin import WebAdmin

SESSION_COOKIE = b"xmppd_admin"
LOGIN_COOKIE = b"xmppd_admin_login"
MAX_FIELD = 3072  # longest JID (RFC 7622 s3.1); passwords and filters are cut there too
KICK_REASON = "kicked by an administrator"
DESTROY_REASON = "destroyed by an administrator"

Page = Callable[[Request, AdminSession, str], Awaitable[str]]
Action = Callable[[Request, AdminSession], Awaitable[tuple[str, str, str]]]


def arg(request: Request, name: str) -> str:
    """A form or query field as text ("" when absent), cut at MAX_FIELD characters."""
    key = name.encode()
    values = form_fields(request).get(key) or (request.args or {}).get(key) or [b""]
    return values[0].decode("utf-8", "replace")[:MAX_FIELD]


def client_ip(request: Request) -> str:
    return str(getattr(request.getClientAddress(), "host", "") or "")


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class AdminResource(Resource):
    """Everything below the admin path (a leaf: it routes ``request.postpath`` itself)."""

    isLeaf = True

    def __init__(self, plugin: WebAdmin) -> None:
        super().__init__()
        self.plugin = plugin
        self.server = plugin.ctx.server
        self.log = plugin.ctx.log
        self.commands = Commands(self.server)
        self.tokens = LoginTokens()
        accounts = self.server.accounts
        # Checked against when the JID is no admin's, so a wrong JID costs as long as a wrong password and
        # the time taken does not tell who the admins are.
        self._decoy = ScramCredentials(
            "SHA-256", os.urandom(16), accounts.iterations, os.urandom(32), os.urandom(32)
        )
        self.pages: dict[str, Page] = {
            "status": self.page_status,
            "users": self.page_users,
            "sessions": self.page_sessions,
            "rooms": self.page_rooms,
            "plugins": self.page_plugins,
        }
        self.actions: dict[str, Action] = {
            "users/add": self.do_adduser,
            "users/delete": self.do_deluser,
            "users/password": self.do_passwd,
            "sessions/kick": self.do_kick,
            "rooms/destroy": self.do_destroy_room,
            "plugins/load": self.do_plugin_load,
            "plugins/unload": self.do_plugin_unload,
        }

    # -- request handling ----------------------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        self._headers(request)
        if request.method not in (b"GET", b"HEAD", b"POST"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD, POST")
            return b""
        d = ensureDeferred(self.handle(request))
        d.addCallbacks(self._send, self._failed, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    @staticmethod
    def _headers(request: Request) -> None:
        # The site adds CORS headers for [http] cors_origins; no other origin may read admin pages.
        for name in (
            b"access-control-allow-origin",
            b"access-control-allow-methods",
            b"access-control-allow-headers",
            b"access-control-max-age",
        ):
            request.responseHeaders.removeHeader(name)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-security-policy", pages.CSP.encode())
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"same-origin")

    @staticmethod
    def _send(body: bytes | None, request: Request) -> None:
        if request._disconnected or request.finished:
            return
        if body:
            request.write(body)
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        self.log.failure("web admin request {path} failed", failure, path=request.path)
        if request._disconnected or request.finished:
            return
        request.setResponseCode(500)
        request.write(
            pages.layout(
                "Error",
                pages.message("Something went wrong; the server log says what."),
                base=self.base(request),
            )
        )
        request.finish()

    @staticmethod
    def base(request: Request) -> str:
        """The admin root's path as the browser sees it (``/admin``)."""
        return "/" + "/".join(quote(s.decode("utf-8", "replace")) for s in request.prepath)

    @staticmethod
    def _redirect(request: Request, location: str) -> bytes:
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("utf-8"))
        return b""

    def _refuse(self, request: Request, code: int, text: str) -> bytes:
        request.setResponseCode(code)
        base = self.base(request)
        body = pages.message(text) + f'<p><a href="{pages.e(base)}/">Back to the web admin</a></p>'
        return pages.layout("Refused", body, base=base)

    async def handle(self, request: Request) -> bytes:
        path = "/".join(s.decode("utf-8", "replace") for s in request.postpath).strip("/")
        base = self.base(request)
        if path == "login":
            return await (self.login_post(request) if request.method == b"POST" else self.login_get(request))
        sid = (request.getCookie(SESSION_COOKIE) or b"").decode("ascii", "replace")
        session = self.plugin.sessions.get(sid)
        if session is not None and session.jid not in self.admins():
            self.plugin.sessions.end(sid)  # no longer an admin ([server] admins changed)
            session = None
        if session is None:
            return self._redirect(request, f"{base}/login")
        if request.method == b"POST":
            if not same(arg(request, "csrf"), session.csrf):
                self.log.warn(
                    "web admin: POST {path} from {ip} without a valid CSRF token refused",
                    path=path,
                    ip=client_ip(request),
                )
                return self._refuse(
                    request,
                    403,
                    "The form was not sent by this page (its CSRF token is "
                    "missing or wrong); nothing was changed. Reload the page and try again.",
                )
            if path == "logout":
                self.plugin.sessions.end(sid)
                self._set_cookie(request, SESSION_COOKIE, "", base, expire=True)
                return self._redirect(request, f"{base}/login")
            action = self.actions.get(path)
            if action is None:
                return self._refuse(request, 404, "There is no such action.")
            kind, text, back = await action(request, session)
            session.flash = (kind, text)
            return self._redirect(request, f"{base}/{back}")
        page = self.pages.get(path or "status")
        if page is None:
            request.setResponseCode(404)
            return self._layout(request, session, "Not found", pages.message("There is no such page."), "")
        name = path or "status"
        title = dict(pages.NAV)[name]
        return self._layout(request, session, title, await page(request, session, base), name)

    def _layout(self, request: Request, session: AdminSession, title: str, body: str, current: str) -> bytes:
        return pages.layout(
            title,
            body,
            base=self.base(request),
            current=current,
            admin=session.jid,
            csrf=session.csrf,
            flash=session.take_flash(),
        )

    # -- signing in ----------------------------------------------------------------------------------------

    def admins(self) -> set[str]:
        """``[server] admins`` as prepared bare JIDs (entries that are not JIDs count for nobody)."""
        result = set()
        for text in self.server.config.get("server", "admins"):
            try:
                result.add(str(parse_jid(text).bare))
            except JIDError:
                continue
        return result

    def _secure(self, request: Request) -> bool:
        """Whether the browser reaches us over TLS (directly, or through a proxy ``[http] consider_secure``
        vouches for)."""
        return bool(request.isSecure()) or bool(self.server.config.get("http", "consider_secure"))

    def _why_not(self, request: Request) -> str | None:
        """Why nobody may sign in over this request, or None. Passwords travel over TLS or loopback only
        (as the core decides for SASL over BOSH and WebSocket)."""
        if not self.admins():
            return "No administrators are configured: list their accounts in [server] admins."
        if self._secure(request):
            return None
        forwarded = request.getHeader(b"x-forwarded-proto")
        if _loopback(client_ip(request)) and (forwarded is None or forwarded.strip().lower() == b"https"):
            return None
        return (
            "Signing in needs HTTPS: use an [listen] https listener, or set [http] consider_secure "
            "when a TLS-terminating proxy is in front."
        )

    def _set_cookie(self, request: Request, name: bytes, value: str, path: str, expire: bool = False) -> None:
        request.addCookie(
            name,
            value,
            path=path,
            httpOnly=True,
            sameSite="strict",
            secure=self._secure(request),
            max_age="0" if expire else None,
        )

    async def login_get(self, request: Request) -> bytes:
        base = self.base(request)
        sid = (request.getCookie(SESSION_COOKIE) or b"").decode("ascii", "replace")
        if self.plugin.sessions.get(sid) is not None:
            return self._redirect(request, f"{base}/")
        return self._login_form(request)

    def _login_form(self, request: Request, jid: str = "", error: str | None = None) -> bytes:
        base = self.base(request)
        nonce = (request.getCookie(LOGIN_COOKIE) or b"").decode("ascii", "replace")
        if not nonce or len(nonce) > 100:
            nonce = self.tokens.nonce()
            self._set_cookie(request, LOGIN_COOKIE, nonce, base)
        body = pages.login(
            base, self.tokens.token(nonce), jid=jid, error=error, refusal=self._why_not(request)
        )
        return pages.layout("Sign in", body, base=base)

    async def login_post(self, request: Request) -> bytes:
        base = self.base(request)
        ip = client_ip(request)
        nonce = (request.getCookie(LOGIN_COOKIE) or b"").decode("ascii", "replace")
        if not self.tokens.check(nonce, arg(request, "csrf")):
            self.log.warn("web admin: sign-in from {ip} without a valid CSRF token refused", ip=ip)
            request.setResponseCode(403)
            return self._login_form(request, error="The sign-in form had expired; please sign in again.")
        why = self._why_not(request)
        if why is not None:
            request.setResponseCode(403)
            return self._login_form(request)
        stamp = self.plugin.limiter.acquire(ip)
        if stamp is None:
            self.log.warn("web admin: sign-in from {ip} refused: too many failed attempts", ip=ip)
            request.setResponseCode(429)
            request.setHeader(b"retry-after", str(int(self.plugin.limiter.window)).encode())
            return self._login_form(
                request, error="Too many failed sign-ins from your address; try again later."
            )
        jid = arg(request, "jid").strip()
        admin = await self._verify(jid, arg(request, "password"))
        if admin is None:
            self.log.info("web admin: failed sign-in as {jid} from {ip}", jid=jid[:100], ip=ip)
            request.setResponseCode(403)
            return self._login_form(request, jid=jid, error="Wrong JID or password, or not an administrator.")
        self.plugin.limiter.release(ip, stamp)
        self.plugin.sessions.end((request.getCookie(SESSION_COOKIE) or b"").decode("ascii", "replace"))
        sid, _session = self.plugin.sessions.create(admin)
        self._set_cookie(request, SESSION_COOKIE, sid, base)
        self.log.info("web admin: {jid} signed in from {ip}", jid=admin, ip=ip)
        return self._redirect(request, f"{base}/")

    async def _verify(self, text: str, password: str) -> str | None:
        """The admin's bare JID if ``password`` is its password; None otherwise. PBKDF2 runs in a thread
        (Accounts.check_password), for a JID that is no admin's too."""
        accounts = self.server.accounts
        try:
            jid = parse_jid(text)
        except JIDError:
            jid = None
        if (
            jid is None
            or jid.local is None
            or jid.resource is not None
            or str(jid) not in self.admins()
            or jid.domain not in self.server.hosts
            or not await accounts.exists(jid)
        ):
            await accounts.defer_to_thread(verify_password, password, self._decoy)
            return None
        if not await accounts.check_password(jid.domain, jid.local, password):
            return None
        return str(jid)

    # -- pages ---------------------------------------------------------------------------------------------

    async def _run(self, command: str, **args: Any) -> Any:
        """A Commands result, or raise; for pages, which only read."""
        result = await self.commands.run(command, args)
        if "error" in result:
            raise RuntimeError(f"{command}: {result['error']}")
        return result["ok"]

    async def page_status(self, request: Request, session: AdminSession, base: str) -> str:
        info = await self._run("status")
        accounts = {d: len(await self._run("users", domain=d)) for d in info["domains"]}
        return pages.status(info, __version__, accounts)

    async def page_users(self, request: Request, session: AdminSession, base: str) -> str:
        domains = list(self.server.hosts)
        domain = arg(request, "domain")
        if domain not in domains:
            domain = domains[0]
        query = arg(request, "q").strip()
        everyone = sorted(await self._run("users", domain=domain))
        found = [jid for jid in everyone if query.lower() in jid.lower()] if query else everyone
        online: dict[str, int] = {}
        for s in await self._run("sessions", domain=domain):
            bare = s["jid"].split("/", 1)[0]
            online[bare] = online.get(bare, 0) + 1
        limit = self.plugin.ctx.option("max_rows")
        return pages.users(base, session.csrf, domains, domain, query, found, len(everyone), online, limit)

    async def page_sessions(self, request: Request, session: AdminSession, base: str) -> str:
        rows = await self._run("sessions")
        return pages.sessions(base, session.csrf, rows, self.plugin.ctx.option("max_rows"))

    def muc_services(self) -> dict[str, Any]:
        """Every MUC service of every host where the ``muc`` plugin is loaded: {service domain: Service}."""
        services: dict[str, Any] = {}
        for domain in self.server.hosts:
            if "muc" in self.server.plugins.loaded(domain):
                services.update(getattr(self.server.plugins.instance(domain, "muc"), "services", {}))
        return services

    async def page_rooms(self, request: Request, session: AdminSession, base: str) -> str:
        listing = []
        for domain, service in sorted(self.muc_services().items()):
            rooms = [
                {
                    "room": name,
                    "jid": str(room.jid),
                    "name": room.config.get("name", ""),
                    "occupants": len(room.occupants),
                    "persistent": room.config.get("persistent"),
                    "public": room.config.get("public"),
                    "members_only": room.config.get("membersonly"),
                    "password": room.config.get("passwordprotected"),
                }
                for name, room in sorted(service.rooms.items())
            ]
            listing.append((domain, rooms))
        return pages.rooms(base, session.csrf, listing, self.plugin.ctx.option("max_rows"))

    async def page_plugins(self, request: Request, session: AdminSession, base: str) -> str:
        rows = await self._run("plugins")
        return pages.plugins(base, session.csrf, list(self.server.hosts), rows)

    # -- actions: each returns (flash kind, flash text, page to go back to) --------------------------------

    async def _act(
        self, request: Request, session: AdminSession, back: str, command: str, target: str, **args: Any
    ) -> tuple[str, str, str]:
        result = await self.commands.run(command, args)
        ok = "ok" in result
        # A refused password's error quotes the character it refused, and where: not for the log.
        outcome = "done" if ok else "refused" if "password" in args else result["error"]
        self.log.info(
            "web admin: {admin} from {ip}: {command} {target}: {outcome}",
            admin=session.jid,
            ip=client_ip(request),
            command=command,
            target=target,
            outcome=outcome,
        )
        return ("ok", str(result["ok"]), back) if ok else ("error", str(result["error"]), back)

    def _users_page(self, jid: str) -> str:
        domain = jid.rpartition("@")[2]
        return f"users?domain={quote(domain)}" if domain in self.server.hosts else "users"

    async def do_adduser(self, request: Request, session: AdminSession) -> tuple[str, str, str]:
        jid = arg(request, "jid").strip()
        return await self._act(
            request,
            session,
            self._users_page(jid),
            "adduser",
            jid,
            jid=jid,
            password=arg(request, "password"),
        )

    async def do_deluser(self, request: Request, session: AdminSession) -> tuple[str, str, str]:
        jid = arg(request, "jid")
        return await self._act(request, session, self._users_page(jid), "deluser", jid, jid=jid)

    async def do_passwd(self, request: Request, session: AdminSession) -> tuple[str, str, str]:
        jid = arg(request, "jid")
        return await self._act(
            request, session, self._users_page(jid), "passwd", jid, jid=jid, password=arg(request, "password")
        )

    async def do_kick(self, request: Request, session: AdminSession) -> tuple[str, str, str]:
        jid = arg(request, "jid")
        return await self._act(request, session, "sessions", "kick", jid, jid=jid, reason=KICK_REASON)

    async def do_plugin_load(self, request: Request, session: AdminSession) -> tuple[str, str, str]:
        name, domain = arg(request, "name"), arg(request, "domain") or None
        return await self._act(
            request,
            session,
            "plugins",
            "plugin-load",
            f"{name} on {domain or 'all'}",
            name=name,
            domain=domain,
        )

    async def do_plugin_unload(self, request: Request, session: AdminSession) -> tuple[str, str, str]:
        name, domain = arg(request, "name"), arg(request, "domain") or None
        return await self._act(
            request,
            session,
            "plugins",
            "plugin-unload",
            f"{name} on {domain or 'all'}",
            name=name,
            domain=domain,
        )

    async def do_destroy_room(self, request: Request, session: AdminSession) -> tuple[str, str, str]:
        from xmppd.plugins.muc.admin import destroy_room
        from xmppd.plugins.muc.occupant import NS_OWNER

        service = self.muc_services().get(arg(request, "service"))
        name = arg(request, "room")
        room = service.rooms.get(name) if service is not None else None
        if room is None:
            return "error", f"there is no room {name}@{arg(request, 'service')}", "rooms"
        destroy = etree.Element(f"{{{NS_OWNER}}}destroy")
        add_child(destroy, NS_OWNER, "reason", DESTROY_REASON)
        destroy_room(room, destroy)
        self.log.info(
            "web admin: {admin} from {ip}: destroyed {room}",
            admin=session.jid,
            ip=client_ip(request),
            room=str(room.jid),
        )
        return "ok", f"destroyed {room.jid}", "rooms"
