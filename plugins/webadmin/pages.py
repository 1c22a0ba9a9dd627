"""The web admin's HTML: one layout and a function per page, each returning text.

Every value that comes from outside this module (JIDs, resources, client names, room names, messages) goes
through :func:`e` (``html.escape`` with quotes), so nothing a user or a remote server chose can become
markup. The stylesheet is inline and allowed by its hash in the Content-Security-Policy, which admits no
script at all.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
header{background:#243b55;color:#fff;padding:.6em 1.2em;display:flex;align-items:center;gap:1.5em}
header h1{font-size:1.15em;margin:0}
header nav a{color:#dce6f5;margin-right:1em;text-decoration:none}
header nav a.current{color:#fff;font-weight:bold;border-bottom:2px solid #fff}
header .who{margin-left:auto;font-size:.9em}
header .who form{display:inline}
main{padding:1em 1.5em;max-width:80em}
h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;background:#fff;margin:.5em 0 1em}
th,td{border:1px solid #d5dbe5;padding:.3em .6em;text-align:left;vertical-align:middle}
th{background:#e8edf4}
td form{display:inline;margin:0}
input[type=text],input[type=password],select{padding:.25em;border:1px solid #aab4c3;border-radius:3px}
button{padding:.25em .8em;border:1px solid #5b6f8b;border-radius:3px;background:#e8edf4;cursor:pointer}
button.danger{border-color:#a33;background:#fbeaea;color:#8a1c1c}
.flash{padding:.5em 1em;border-radius:4px;margin:.5em 0}
.flash.ok{background:#e3f4e4;border:1px solid #7bbf82}
.flash.error{background:#fbeaea;border:1px solid #d88}
.login{max-width:24em;margin:4em auto;background:#fff;padding:1.5em 2em}
.login{border:1px solid #d5dbe5;border-radius:6px}
.login label{display:block;margin:.8em 0 .2em}
.login input{width:100%;box-sizing:border-box}
.login button{margin-top:1em}
.muted{color:#66707f}
dl{display:grid;grid-template-columns:max-content auto;gap:.3em 1.5em}
dt{font-weight:bold}
dd{margin:0}
""".strip()
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)

#: The pages in the navigation bar: (path below the admin root, title).
NAV = (
    ("status", "Status"),
    ("users", "Users"),
    ("sessions", "Sessions"),
    ("rooms", "Rooms"),
    ("plugins", "Plugins"),
)


def e(value: Any) -> str:
    """Escape any value for HTML text and attribute values."""
    return escape("" if value is None else str(value), quote=True)


def layout(
    title: str,
    body: str,
    *,
    base: str,
    current: str | None = None,
    admin: str | None = None,
    csrf: str | None = None,
    flash: tuple[str, str] | None = None,
) -> bytes:
    """A whole page: the navigation (when signed in), a flash message, then ``body`` (already HTML)."""
    header = ""
    if admin is not None:
        links = "".join(
            f'<a href="{e(base)}/{path}"{" class=current" if path == current else ""}>{e(name)}</a>'
            for path, name in NAV
        )
        logout = action_form(base, "logout", csrf or "", {}, "Sign out")
        header = (
            f"<header><h1>xmppd admin</h1><nav>{links}</nav>"
            f'<div class="who">{e(admin)} {logout}</div></header>'
        )
    message = ""
    if flash is not None:
        kind, text = flash
        message = f'<p class="flash {e(kind)}" role="status">{e(text)}</p>'
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)} - xmppd admin</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}</style></head><body>{header}<main>{message}{body}</main></body></html>\n"
    ).encode()


def action_form(
    base: str,
    action: str,
    csrf: str,
    fields: dict[str, str],
    button: str,
    *,
    danger: bool = False,
    inputs: str = "",
) -> str:
    """A POST form to ``base/action`` carrying the CSRF token, hidden ``fields``, extra ``inputs`` (HTML)
    and one button."""
    hidden = "".join(f'<input type="hidden" name="{e(k)}" value="{e(v)}">' for k, v in fields.items())
    cls = ' class="danger"' if danger else ""
    return (
        f'<form method="post" action="{e(base)}/{e(action)}">'
        f'<input type="hidden" name="csrf" value="{e(csrf)}">{hidden}{inputs}'
        f'<button type="submit"{cls}>{e(button)}</button></form>'
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], empty: str) -> str:
    """A table; cells are HTML already (escape them before)."""
    rows = list(rows)
    if not rows:
        return f'<p class="muted">{e(empty)}</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def yes(flag: Any) -> str:
    return "yes" if flag else "no"


# -- pages -------------------------------------------------------------------------------------------------


def login(
    base: str, token: str, *, jid: str = "", error: str | None = None, refusal: str | None = None
) -> str:
    """The sign-in form; ``refusal`` says why nobody may sign in over this connection, if so."""
    problem = f'<p class="flash error" role="alert">{e(error)}</p>' if error else ""
    if refusal is not None:
        return f'<div class="login"><h1>xmppd admin</h1><p class="flash error">{e(refusal)}</p></div>'
    return (
        '<div class="login"><h1>xmppd admin</h1>'
        f"{problem}"
        f'<form method="post" action="{e(base)}/login">'
        f'<input type="hidden" name="csrf" value="{e(token)}">'
        '<label for="jid">Admin JID</label>'
        f'<input type="text" id="jid" name="jid" value="{e(jid)}" autocomplete="username" required autofocus>'
        '<label for="password">Password</label>'
        '<input type="password" id="password" name="password" autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form></div>'
    )


def status(info: dict[str, Any], version: str, accounts: dict[str, int]) -> str:
    listeners = "".join(
        f"<dt>{e(kind)}</dt><dd>{e(', '.join(addresses) or 'none')}</dd>"
        for kind, addresses in sorted(info["listeners"].items())
    )
    domains = table(
        ("Domain", "Accounts"), ((e(d), e(accounts.get(d, 0))) for d in info["domains"]), "No domains."
    )
    return (
        "<h2>Server</h2><dl>"
        f"<dt>Version</dt><dd>xmppd {e(version)}</dd>"
        f"<dt>Uptime</dt><dd>{e(duration(info['uptime']))}</dd>"
        f"<dt>Online sessions</dt><dd>{e(info['sessions'])}</dd>"
        f"</dl><h2>Domains</h2>{domains}<h2>Listeners</h2><dl>{listeners}</dl>"
    )


def users(
    base: str,
    csrf: str,
    domains: Sequence[str],
    domain: str,
    query: str,
    found: Sequence[str],
    total: int,
    online: dict[str, int],
    limit: int,
) -> str:
    options = "".join(
        f'<option value="{e(d)}"{" selected" if d == domain else ""}>{e(d)}</option>' for d in domains
    )
    add = action_form(
        base,
        "users/add",
        csrf,
        {},
        "Add user",
        inputs=(
            '<input type="text" name="jid" placeholder="user@domain" aria-label="New account JID" required> '
            '<input type="password" name="password" placeholder="password" aria-label="Password" '
            'autocomplete="new-password" required> '
        ),
    )
    search = (
        f'<form method="get" action="{e(base)}/users">'
        f'<select name="domain" aria-label="Domain">{options}</select> '
        f'<input type="text" name="q" value="{e(query)}" placeholder="filter" aria-label="Filter"> '
        '<button type="submit">Show</button></form>'
    )
    rows = []
    for jid in found[:limit]:
        reset = action_form(
            base,
            "users/password",
            csrf,
            {"jid": jid},
            "Set password",
            inputs=(
                f'<input type="password" name="password" placeholder="new password" required '
                f'autocomplete="new-password" aria-label="New password for {e(jid)}"> '
            ),
        )
        delete = action_form(base, "users/delete", csrf, {"jid": jid}, "Delete", danger=True)
        rows.append((e(jid), e(online.get(jid, 0)), reset, delete))
    more = ""
    if len(found) > limit:
        more = f'<p class="muted">{e(len(found) - limit)} more match; narrow the filter.</p>'
    return (
        f"<h2>Add an account</h2>{add}"
        f"<h2>Accounts of {e(domain)}</h2>{search}"
        f'<p class="muted">{e(len(found))} of {e(total)} accounts match.</p>'
        + table(("JID", "Sessions", "Password", ""), rows, "No accounts.")
        + more
    )


def sessions(base: str, csrf: str, rows: Sequence[dict[str, Any]], limit: int) -> str:
    cells = [
        (
            e(s["jid"]),
            e(s["transport"]),
            e(s["ip"]),
            e(s["client"] or ""),
            e(s["priority"]),
            e(duration(s["connected"])),
            action_form(base, "sessions/kick", csrf, {"jid": s["jid"]}, "Kick", danger=True),
        )
        for s in rows[:limit]
    ]
    more = f'<p class="muted">{e(len(rows) - limit)} more not shown.</p>' if len(rows) > limit else ""
    return (
        f"<h2>Online sessions ({e(len(rows))})</h2>"
        + table(
            ("JID", "Transport", "IP address", "Client", "Priority", "Connected", ""),
            cells,
            "Nobody is online.",
        )
        + more
    )


def rooms(base: str, csrf: str, services: Sequence[tuple[str, Sequence[dict[str, Any]]]], limit: int) -> str:
    if not services:
        return '<h2>Rooms</h2><p class="muted">No MUC service is loaded.</p>'
    parts = []
    for service, found in services:
        cells = [
            (
                e(r["jid"]),
                e(r["name"]),
                e(r["occupants"]),
                yes(r["persistent"]),
                yes(r["public"]),
                yes(r["members_only"]),
                yes(r["password"]),
                action_form(
                    base,
                    "rooms/destroy",
                    csrf,
                    {"service": service, "room": r["room"]},
                    "Destroy",
                    danger=True,
                ),
            )
            for r in found[:limit]
        ]
        more = f'<p class="muted">{e(len(found) - limit)} more not shown.</p>' if len(found) > limit else ""
        parts.append(
            f"<h2>{e(service)} ({e(len(found))} rooms)</h2>"
            + table(
                ("Room", "Name", "Occupants", "Persistent", "Public", "Members only", "Password", ""),
                cells,
                "No rooms.",
            )
            + more
        )
    return "".join(parts)


def plugins(base: str, csrf: str, domains: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    cells = []
    for row in rows:
        name = row["name"]
        per_domain = []
        for domain in domains:
            fields = {"name": name, "domain": domain}
            enabled = "enabled" if domain in row["enabled"] else "not enabled"
            if domain in row["loaded"]:
                button = action_form(base, "plugins/unload", csrf, fields, "Unload", danger=True)
                per_domain.append(f"loaded, {enabled} {button}")
            else:
                button = action_form(base, "plugins/load", csrf, fields, "Load")
                per_domain.append(f"not loaded, {enabled} {button}")
        cells.append((e(name), e(row["origin"]), *per_domain))
    return (
        "<h2>Plugins</h2>"
        '<p class="muted">Enabled: named in the configuration. Loaded: running now. Loading or unloading '
        "here lasts until the next restart or configuration reload.</p>"
        + table(("Plugin", "From", *domains), cells, "No plugins installed.")
    )


def message(text: str) -> str:
    return f"<p>{e(text)}</p>"
