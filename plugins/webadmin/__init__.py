"""A web admin at ``/admin`` on the HTTP site, like ejabberd's: server status, accounts (list, add, delete,
set a password), online sessions (kick), MUC rooms (list, destroy) and plugins (load, unload per domain).

Who may use it: the accounts in ``[server] admins``, signing in with their XMPP password (checked against
the stored SCRAM keys, PBKDF2 in a worker thread). Nothing but the sign-in page is served without a
session. Passwords only travel over HTTPS, loopback, or a proxy ``[http] consider_secure`` vouches for.

Nothing is exposed unless the operator wants it: the HTTP listener is bound to loopback by default, and
nobody can sign in while ``[server] admins`` is empty.

The modules:

* ``resource``: routing, sign-in, the pages and their actions (all through xmppd.control.Commands);
* ``sessions``: server-side sessions, CSRF tokens;
* ``pages``: the HTML, every value escaped.

One instance runs per domain it is enabled on; they mount the same path, and the first one loaded serves
it (signing out everyone if it unloads while another takes over).
"""

from __future__ import annotations

from typing import Any

from xmppd.plugins.register import RateLimiter
from xmppd.plugins.webadmin.sessions import SessionStore

from xmppd.plugin import Context, Option, Plugin

__all__ = ["WebAdmin"]

SWEEP_INTERVAL = 60.0


class WebAdmin(Plugin):
    name = "webadmin"
    options = {
        "path": Option(str, "/admin", "where the web admin is served on the HTTP site"),
        "idle_timeout": Option(
            float, 1800.0, "seconds without a request after which a signed-in session ends", min=10
        ),
        "max_age": Option(float, 43200.0, "seconds after signing in after which a session ends", min=10),
        "max_sessions": Option(int, 100, "signed-in sessions at once (the least recently used goes)", min=1),
        "login_attempts": Option(
            int, 5, "failed sign-ins allowed from one IP address per login_window", min=1
        ),
        "login_window": Option(float, 300.0, "the sign-in rate limit's window, in seconds", min=1),
        "max_rows": Option(int, 500, "rows shown per list (accounts, sessions, rooms)", min=10),
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if options["idle_timeout"] > options["max_age"]:
            raise ValueError("idle_timeout must not exceed max_age")

    def setup(self, ctx: Context) -> None:
        from xmppd.plugins.webadmin.resource import AdminResource

        self.sessions = SessionStore(
            ctx.clock,
            idle_timeout=ctx.option("idle_timeout"),
            max_age=ctx.option("max_age"),
            limit=ctx.option("max_sessions"),
        )
        self.limiter = RateLimiter(ctx.option("login_attempts"), ctx.option("login_window"), ctx.clock)
        self.resource = AdminResource(self)
        ctx.add_http_resource(ctx.option("path"), self.resource)
        ctx.every(SWEEP_INTERVAL, self.sessions.sweep)
