"""Multi-User Chat (XEP-0045): group chat rooms on ``conference.<domain>``, as Prosody's and ejabberd's
MUC services offer them.

One plugin instance per host serves the domains in its ``services`` option (by default
``conference.<host>``) in-process: stanzas to those domains, from local clients and federated servers
alike, reach the service through ``ctx.add_route``. The modules:

* ``service``: a service domain: routing to rooms, room creation and its limits, storage, disco;
* ``room``: a room: entering, leaving, nicknames, messages, invitations, iqs to occupants (s7);
* ``admin``: roles, affiliations, configuration, destruction and nickname registration (s7.10, s8-s10);
* ``config``: the room configuration and room information forms (s10.2, s15.5);
* ``occupant``: occupants and the ``muc#user`` presence that describes them;
* ``history``: discussion history and its limits on entering (s7.2.15, s7.2.16).

Persistent rooms (configuration, affiliations, registered nicknames, subject, and their last
``max_history`` messages in an archive store) are kept in storage and come back after a restart.
"""

from __future__ import annotations

from typing import Any

from xmppd.plugins.muc.service import Service

from xmppd.jid import JIDError, prep_domain
from xmppd.plugin import Context, Option, Plugin

__all__ = ["MUC", "Service"]


def service_domain(template: str, host: str) -> str:
    """A service domain from its ``services`` entry: ``{domain}`` replaced by the host's name."""
    return prep_domain(template.replace("{domain}", host))


class MUC(Plugin):
    name = "muc"
    requires = ("disco",)
    options = {
        "services": Option(
            list, ["conference.{domain}"], "MUC service domains; {domain} is the host", item_type=str
        ),
        "name": Option(str, "Chatrooms", "the services' name in service discovery"),
        "room_creation": Option(
            str,
            "local",
            "who may create rooms: anyone, local (this server's users), admins",
            choices=("anyone", "local", "admins"),
        ),
        "max_rooms_per_user": Option(int, 10, "rooms one user may own per service", min=0),
        "max_rooms": Option(int, 1000, "rooms per service", min=1),
        "max_occupants": Option(int, 500, "the largest maximum of occupants an owner may set", min=1),
        "default_max_occupants": Option(int, 100, "a new room's maximum of occupants", min=1),
        "max_history": Option(int, 50, "the most messages of history a room may keep", min=0, max=1000),
        "default_history": Option(int, 20, "messages of history a new room keeps", min=0),
        "lock_new_rooms": Option(bool, True, "new rooms stay locked until the owner configures them"),
        "lock_timeout": Option(
            float, 300.0, "seconds a new room may stay locked before it is destroyed (0: no limit)", min=0
        ),
        "public_rooms": Option(bool, True, "new rooms are listed in disco#items"),
        "persistent_rooms": Option(bool, False, "new rooms are persistent"),
        "moderated_rooms": Option(bool, False, "new rooms are moderated"),
        "members_only_rooms": Option(bool, False, "new rooms are members-only"),
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        for default, maximum in (
            ("default_max_occupants", "max_occupants"),
            ("default_history", "max_history"),
        ):
            if options[default] > options[maximum]:
                raise ValueError(f"{default} ({options[default]}) exceeds {maximum} ({options[maximum]})")
        for template in options["services"]:
            try:
                service_domain(template, "example.org")
            except JIDError as e:
                raise ValueError(f"services: {template!r} is not a domain ({e})") from None

    def setup(self, ctx: Context) -> None:
        self.services: dict[str, Service] = {}
        for template in ctx.option("services"):
            domain = service_domain(template, ctx.domain)
            service = Service(ctx, domain)
            ctx.add_route(domain, service.receive)
            ctx.add_item(domain, ctx.option("name"))
            self.services[domain] = service
            service.start()
        ctx.hook("session-ended", self.session_ended)
        ctx.hook("server-stopping", lambda _: self.teardown())

    def session_ended(self, event: Any) -> None:
        if event.session.jid is not None:
            for service in self.services.values():
                service.session_gone(event.session.jid)

    def teardown(self) -> None:
        for service in self.services.values():
            service.shutdown()
