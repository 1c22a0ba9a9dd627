"""XEP-0227 portable import/export (PIE) of user data: what ``xmppdctl export`` and ``xmppdctl import`` do.

The file is one XML document (XEP-0227 s4)::

    <server-data xmlns='urn:xmpp:pie:0'>
      <host jid='capulet.lit'>
        <user name='juliet'>
          <scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>
            <iter-count>4096</iter-count><salt>...</salt><server-key>...</server-key><stored-key>...</stored-key>
          </scram-credentials>
          <query xmlns='jabber:iq:roster' ver='3'><item jid='romeo@montague.lit' subscription='both'/></query>
          <presence xmlns='jabber:client' from='nurse@capulet.lit' type='subscribe'/>
          <vCard xmlns='vcard-temp'>...</vCard>
          <query xmlns='jabber:iq:private'>...</query>
          <offline-messages><message xmlns='jabber:client' ...>...</message></offline-messages>
        </user>
      </host>
    </server-data>

What maps to what (every function here works on the storage interface of xmppd.storage.base, so any
backend can be exported from or imported into):

* account: keyval ``accounts`` ``{"scram": {"SHA-1": {...}, "SHA-256": {...}}}``. Export writes one
  ``<scram-credentials/>`` per hash (XEP-0227 1.1), never a password (xmppd has none). Import stores
  ``<scram-credentials/>`` for SCRAM-SHA-1 and SCRAM-SHA-256 as they are, derives the hashes they lack from
  a ``password`` attribute (PBKDF2 with the server's iteration count), and reads ejabberd's
  ``password='scram:StoredKey,ServerKey,Salt,IterationCount'`` (base64, SHA-1) as SHA-1 credentials.
  A user with none of these is refused.
* roster: keyval ``roster`` (plugins/roster.py) <-> ``<query xmlns='jabber:iq:roster' ver>`` items with
  subscription, ``ask='subscribe'``, ``approved='true'``, name and groups; inbound subscription requests
  not answered yet (the document's ``pending``) <-> ``<presence xmlns='jabber:client' type='subscribe'/>``
  children of ``<user/>``, as Prosody and ejabberd write them.
* vCard: keyval ``vcard``, the serialised ``<vCard xmlns='vcard-temp'/>`` <-> that element.
* private XML: keyval ``private`` ``{"{ns}name": "<xml/>"}`` <-> children of
  ``<query xmlns='jabber:iq:private'/>``.
* offline messages: archive ``offline`` (item value the namespace-neutral stanza text with its XEP-0203
  delay, ``when`` the time it was stored, ``with_`` the sender) <-> ``<offline-messages/>`` holding
  ``<message xmlns='jabber:client'/>``, oldest first. Import takes ``when`` from the delay stamp and adds
  a delay from the host (stamped with the import time) to a message that has none. Export also writes
  messages still kept in the old keyval ``offline`` list.

Import reads the file twice. The first pass parses and checks everything and writes nothing, so a file
that is not well-formed, unsafe or unreadable imports nothing at all. The second pass writes, one user at
a time: a user is written only when every record of it is good, otherwise it is skipped and each bad record
is reported with its file and line. Elements xmppd does not import (privacy lists, PEP, MAM, ...) are
ignored with a warning (XEP-0227 s4: ignore and notify). An account that exists already is refused unless
``replace`` is given; then the existing account and all of its data are deleted first. The account record is
written last, so an interrupted import leaves no half-made account, and running it again redoes that user.

The XML is parsed incrementally (a user at a time in memory) with no DTD (a DOCTYPE is refused before the
parser sees it, so no entity is ever declared or expanded), no network, libxml2's size limits
(``huge_tree`` off) and a limit on the file size and on the elements of one user. XInclude (XEP-0227 s5) is
followed for ``<xi:include href/>`` elements under ``<server-data/>`` and ``<host/>`` whose relative href
stays inside the directory of the main file (ejabberd writes one file per host).
"""

from __future__ import annotations

import binascii
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lxml import etree

from xmppd.jid import JIDError, parse_jid, prep_local
from xmppd.sasl.scram import (
    DEFAULT_ITERATIONS,
    HASHES,
    ScramCredentials,
    derive_credentials,
    normalize_password,
)
from xmppd.storage.base import ArchiveQuery
from xmppd.xml.delay import NS_DELAY, add_delay, parse_datetime
from xmppd.xml.stanza import parse_stanza
from xmppd.xml.writer import qualify, serialize

__all__ = [
    "ExportReport",
    "ImportRefused",
    "ImportReport",
    "Problem",
    "export_file",
    "export_user",
    "export_users",
    "import_file",
]

NS_PIE = "urn:xmpp:pie:0"
NS_PIE_OLD = "http://www.xmpp.org/extensions/xep-0227.html#ns"  # before XEP-0227 1.0; ejabberd still reads it
PIE_NAMESPACES = (NS_PIE, NS_PIE_OLD)
NS_SCRAM = "urn:xmpp:pie:0#scram"
NS_XINCLUDE = "http://www.w3.org/2001/XInclude"
NS_CLIENT = "jabber:client"
NS_ROSTER = "jabber:iq:roster"
NS_PRIVATE = "jabber:iq:private"
NS_VCARD = "vcard-temp"

# Where xmppd keeps each kind of data (the stores of accounts.py and of the plugins).
ACCOUNTS, ROSTER, VCARD, PRIVATE, OFFLINE = "accounts", "roster", "vcard", "private", "offline"

SUBSCRIPTIONS = ("none", "to", "from", "both")
MECHANISMS = {f"SCRAM-{name}": name for name in HASHES}  # SCRAM-SHA-1, SCRAM-SHA-256
PRIVATE_RESERVED_PREFIXES = ("jabber:", "http://jabber.org/")  # XEP-0049 s2.3, as plugins/private.py

#: Largest file (each file, with XInclude) import reads.
MAX_FILE_BYTES = 4 * 1024**3
#: Elements one <user/> may hold; past that the user is refused (and its elements dropped as they are read).
MAX_USER_ELEMENTS = 1_000_000
#: How far XIncludes may nest (server-data -> host file -> user file is 2).
MAX_INCLUDE_DEPTH = 4
_MAX_PROLOG_BYTES = 1024 * 1024
_CHUNK = 64 * 1024
_ENCODING = re.compile(rb"""encoding\s*=\s*["']([^"']*)["']""")


def _safe_parser_options() -> dict[str, Any]:
    """lxml options for untrusted XML: no DTD loaded, no entity resolved, no network, libxml2's limits."""
    return {
        "resolve_entities": False,
        "no_network": True,
        "load_dtd": False,
        "dtd_validation": False,
        "huge_tree": False,
        "remove_comments": True,
        "remove_pis": True,
    }


#: For payloads xmppd stored itself (vCards, private XML): as safe, though the server wrote them.
_PAYLOAD_PARSER = etree.XMLParser(**_safe_parser_options())


class ImportRefused(Exception):
    """The file as a whole cannot be imported (unsafe, not well-formed, not XEP-0227, unreadable)."""


@dataclass(frozen=True)
class Problem:
    where: str  # "file.xml:12: user 'juliet' of capulet.lit"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class ImportReport:
    imported: list[str] = field(default_factory=list)  # JIDs of the users written
    rejected: list[str] = field(default_factory=list)  # JIDs (or "name of host") of the users skipped
    problems: list[Problem] = field(default_factory=list)  # why, one per bad record
    warnings: list[Problem] = field(default_factory=list)  # data ignored; the user was imported
    refused: str | None = None  # the file was refused as a whole: nothing was imported
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return self.refused is None and not self.rejected

    def summary(self) -> list[str]:
        verb = "would import" if self.dry_run else "imported"
        if self.refused is not None:
            done = f" ({len(self.imported)} users were imported before)" if self.imported else ""
            return [f"refused: {self.refused}{done}"]
        lines = [f"{verb} {len(self.imported)} users, {len(self.rejected)} rejected"]
        lines += [f"rejected: {p}" for p in self.problems]
        lines += [f"warning: {w}" for w in self.warnings]
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "imported": self.imported,
            "rejected": self.rejected,
            "problems": [{"where": p.where, "reason": p.reason} for p in self.problems],
            "warnings": [{"where": w.where, "reason": w.reason} for w in self.warnings],
            "refused": self.refused,
            "dry_run": self.dry_run,
        }


@dataclass
class ExportReport:
    path: str
    users: dict[str, int] = field(default_factory=dict)  # per domain
    problems: list[Problem] = field(default_factory=list)  # data that could not be read and was left out

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> list[str]:
        per_domain = ", ".join(f"{d} {n}" for d, n in self.users.items())
        lines = [f"exported {sum(self.users.values())} users ({per_domain}) to {self.path}"]
        return lines + [f"left out: {p}" for p in self.problems]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "users": self.users,
            "problems": [{"where": p.where, "reason": p.reason} for p in self.problems],
        }


# -- export ------------------------------------------------------------------------------------------------


def _pie(name: str) -> str:
    return f"{{{NS_PIE}}}{name}"


def _text_child(parent: etree._Element, tag: str, text: str) -> None:
    etree.SubElement(parent, tag).text = text


def _layout(el: etree._Element, level: int) -> None:
    """Indent the direct children of a structural element (never inside payloads, whose text is data)."""
    children = [c for c in el if isinstance(c.tag, str)]
    if not children:
        return
    el.text = "\n" + "  " * (level + 1)
    for child in children:
        child.tail = "\n" + "  " * (level + 1)
    children[-1].tail = "\n" + "  " * level


async def export_user(
    storage: Any, host: str, user: str, problems: list[Problem] | None = None
) -> etree._Element:
    """The ``<user/>`` element of one account and its data. Stored data that cannot be read is left out and
    reported in ``problems``."""
    problems = problems if problems is not None else []
    where = f"{user}@{host}"
    el = etree.Element(_pie("user"), nsmap={None: NS_PIE})
    el.set("name", user)

    account = await storage.get(host, ACCOUNTS, user) or {}
    for hash_name, creds in sorted((account.get("scram") or {}).items()):
        try:
            c = ScramCredentials.from_dict(creds)
        except ValueError as e:
            problems.append(Problem(where, f"SCRAM-{hash_name} credentials: {e}"))
            continue
        sc = etree.SubElement(el, f"{{{NS_SCRAM}}}scram-credentials", nsmap={None: NS_SCRAM})
        sc.set("mechanism", f"SCRAM-{c.hash_name}")
        d = c.to_dict()
        _text_child(sc, f"{{{NS_SCRAM}}}iter-count", str(c.iterations))
        _text_child(sc, f"{{{NS_SCRAM}}}salt", str(d["salt"]))
        _text_child(sc, f"{{{NS_SCRAM}}}server-key", str(d["server_key"]))
        _text_child(sc, f"{{{NS_SCRAM}}}stored-key", str(d["stored_key"]))
        _layout(sc, 3)

    roster = await storage.get(host, ROSTER, user)
    if roster:
        query = etree.SubElement(el, f"{{{NS_ROSTER}}}query", nsmap={None: NS_ROSTER})
        query.set("ver", str(roster.get("ver", 0)))
        for contact, item in (roster.get("items") or {}).items():
            it = etree.SubElement(query, f"{{{NS_ROSTER}}}item")
            it.set("jid", contact)
            if item.get("name"):
                it.set("name", item["name"])
            it.set("subscription", item.get("subscription", "none"))
            if item.get("ask"):
                it.set("ask", "subscribe")
            if item.get("approved"):
                it.set("approved", "true")
            for group in item.get("groups", []):
                _text_child(it, f"{{{NS_ROSTER}}}group", group)
        _layout(query, 3)
        for contact, text in (roster.get("pending") or {}).items():
            try:
                el.append(qualify(parse_stanza(text)))
            except ValueError as e:
                problems.append(Problem(where, f"subscription request from {contact}: {e}"))

    vcard = await storage.get(host, VCARD, user)
    if vcard:
        try:
            el.append(etree.fromstring(vcard.encode("utf-8"), _PAYLOAD_PARSER))
        except etree.XMLSyntaxError as e:
            problems.append(Problem(where, f"vCard: {e}"))

    private = await storage.get(host, PRIVATE, user)
    if private:
        query = etree.SubElement(el, f"{{{NS_PRIVATE}}}query", nsmap={None: NS_PRIVATE})
        for key, text in private.items():
            try:
                query.append(etree.fromstring(text.encode("utf-8"), _PAYLOAD_PARSER))
            except etree.XMLSyntaxError as e:
                problems.append(Problem(where, f"private XML {key}: {e}"))
        _layout(query, 3)

    messages = []
    for text in await storage.get(host, OFFLINE, user) or []:  # kept before archives existed, older
        messages.append(text)
    messages.extend(item.value for item in await _archive_items(storage, host, OFFLINE, user))
    if messages:
        offline = etree.SubElement(el, _pie("offline-messages"))
        for text in messages:
            try:
                offline.append(qualify(parse_stanza(text)))
            except ValueError as e:
                problems.append(Problem(where, f"offline message: {e}"))
        _layout(offline, 3)
    _layout(el, 2)
    return el


async def _archive_items(storage: Any, host: str, store: str, user: str) -> list[Any]:
    """Every item of a user's archive, oldest first (none from a backend without archives)."""
    if not hasattr(storage, "archive_query"):
        return []
    items: list[Any] = []
    after = None
    while True:
        page = await storage.archive_query(host, store, user, ArchiveQuery(after=after, limit=1000))
        items.extend(page.items)
        if page.complete or not page.items:
            return items
        after = page.items[-1].id


async def export_users(storage: Any, domains: Iterable[str]) -> etree._Element:
    """The whole ``<server-data/>`` of the accounts of ``domains``, as one tree (see export_file for a
    file written a user at a time)."""
    root = etree.Element(_pie("server-data"), nsmap={None: NS_PIE})
    for domain in domains:
        host = etree.SubElement(root, _pie("host"))
        host.set("jid", domain)
        for user in await storage.users(domain, ACCOUNTS):
            host.append(await export_user(storage, domain, user))
        _layout(host, 1)
    _layout(root, 0)
    return root


async def export_file(storage: Any, domains: Iterable[str], path: Path) -> ExportReport:
    """Write the accounts of ``domains`` and their data to ``path``, which must not exist yet. The file is
    written beside it under a temporary name with mode 0600 (it holds credentials, XEP-0227 s6) and
    renamed into place once complete."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists already; export writes a new file")
    report = ExportReport(str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            with etree.xmlfile(f, encoding="UTF-8") as xf:
                xf.write_declaration()
                with xf.element(_pie("server-data"), nsmap={None: NS_PIE}):
                    for domain in domains:
                        xf.write("\n  ")
                        with xf.element(_pie("host"), jid=domain):
                            users = await storage.users(domain, ACCOUNTS)
                            for user in users:
                                xf.write("\n    ")
                                xf.write(await export_user(storage, domain, user, report.problems))
                            xf.write("\n  ")
                        report.users[domain] = len(users)
                    xf.write("\n")
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return report


# -- reading the file ----------------------------------------------------------------------------------


#: The children of <user/> that import reads (beside <offline-messages/>; <xi:include/> to refuse it).
_USER_CHILDREN = {
    f"{{{NS_SCRAM}}}scram-credentials",
    f"{{{NS_ROSTER}}}query",
    f"{{{NS_CLIENT}}}presence",
    f"{{{NS_VCARD}}}vCard",
    f"{{{NS_PRIVATE}}}query",
    f"{{{NS_XINCLUDE}}}include",
}


def _imported(el: etree._Element) -> bool:
    return el.tag in _USER_CHILDREN or _is_pie(el, "offline-messages")


def _is_pie(el: etree._Element, name: str) -> bool:
    q = etree.QName(el)
    return q.localname == name and q.namespace in PIE_NAMESPACES


def _describe(el: etree._Element) -> str:
    q = etree.QName(el)
    return f"<{q.localname} xmlns='{q.namespace}'>" if q.namespace else f"<{q.localname}>"


def _check_prolog(head: bytes, name: str) -> int | None:
    """Check what precedes the root element: UTF-8, no DOCTYPE (so no entity can be declared, and with
    none declared libxml2 refuses any entity reference but the predefined ones). Returns the offset of the
    root element, or None if ``head`` ends before it; raises ImportRefused."""
    if head.startswith((b"\xfe\xff", b"\xff\xfe", b"\x00\x00\xfe\xff")) or b"\x00" in head[:4]:
        raise ImportRefused(f"{name}: the file is not UTF-8")
    pos = 3 if head.startswith(b"\xef\xbb\xbf") else 0
    while True:
        while pos < len(head) and head[pos] in b" \t\r\n":
            pos += 1
        if pos >= len(head):
            return None
        if head.startswith(b"<?", pos):
            end = head.find(b"?>", pos)
            if end < 0:
                return None
            match = _ENCODING.search(head[pos : end + 2]) if head.startswith(b"<?xml", pos) else None
            if match and match.group(1).lower() not in (b"utf-8", b"utf8"):
                encoding = match.group(1).decode("ascii", "replace")
                raise ImportRefused(f"{name}: the file is not UTF-8 (encoding {encoding})")
            pos = end + 2
        elif head.startswith(b"<!--", pos):
            end = head.find(b"-->", pos + 4)
            if end < 0:
                return None
            pos = end + 3
        elif head.startswith(b"<!", pos):
            raise ImportRefused(f"{name}: a DOCTYPE (DTD, entity declarations) is not accepted")
        else:
            return pos  # the root element, or text libxml2 will call not well-formed


def _syntax_error(e: etree.XMLSyntaxError) -> str:
    """libxml2's first complaint, with its line (the exception's own text can be a later, vaguer one)."""
    for entry in e.error_log:
        if entry.level >= etree.ErrorLevels.ERROR:
            return f"line {entry.line}: {entry.message}"
    return str(e)


@dataclass
class _Host:
    domain: str | None  # None when the host cannot be imported into
    error: str | None
    label: str  # for messages


@dataclass
class _UserEvent:
    el: etree._Element
    where: str  # file:line
    host: _Host
    oversized: int | None  # the element limit, when the user went past it


@dataclass
class _Warning:
    where: str
    reason: str


class _Reader:
    """Streams a XEP-0227 file (and what it XIncludes): yields a _UserEvent per completed <user/> and a
    _Warning per ignored element, keeping one user at a time in memory; raises ImportRefused."""

    def __init__(self, path: Path, domains: Iterable[str], max_bytes: int, max_user_elements: int) -> None:
        self.path = Path(path)
        self.base = self.path.resolve().parent
        self.domains = set(domains)
        self.max_bytes = max_bytes
        self.max_user_elements = max_user_elements
        self.open: list[Path] = []

    def events(self) -> Iterator[_UserEvent | _Warning]:
        yield from self._file(self.path.resolve(), "server-data", None)

    def _name(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.base))
        except ValueError:
            return str(path)

    def _host(self, el: etree._Element) -> _Host:
        jid = el.get("jid")
        if not jid:
            return _Host(None, "<host> without a jid", "(no jid)")
        try:
            parsed = parse_jid(jid)
        except JIDError as e:
            return _Host(None, f"host jid {jid!r} is malformed: {e}", jid)
        if parsed.local is not None or parsed.resource is not None:
            return _Host(None, f"host jid {jid!r} is not a domain", jid)
        if parsed.domain not in self.domains:
            served = ", ".join(sorted(self.domains))
            return _Host(None, f"host {parsed.domain} is not served here (domains: {served})", parsed.domain)
        return _Host(parsed.domain, None, parsed.domain)

    def _file(self, path: Path, expect: str, host: _Host | None) -> Iterator[_UserEvent | _Warning]:
        name = self._name(path)
        try:
            size = path.stat().st_size
            f = open(path, "rb")  # noqa: SIM115 - closed below, across yields
        except OSError as e:
            raise ImportRefused(f"{name}: cannot read: {e.strerror or e}") from None
        if size > self.max_bytes:
            f.close()
            raise ImportRefused(f"{name}: {size} bytes, more than the {self.max_bytes} accepted")
        self.open.append(path)
        try:
            parser = etree.XMLPullParser(events=("start", "end"), **_safe_parser_options())
            etree.clear_error_log()  # libxml2's log is per thread: _syntax_error reads this file's errors
            head = b""
            while True:
                chunk = f.read(_CHUNK)
                head += chunk
                if _check_prolog(head, name) is not None or not chunk:
                    break
                if len(head) > _MAX_PROLOG_BYTES:
                    raise ImportRefused(f"{name}: no root element in the first {_MAX_PROLOG_BYTES} bytes")
            state = _State(self, name, expect, host)
            data, read = head, len(head)
            while True:
                try:
                    parser.feed(data)
                    events = list(parser.read_events())
                except etree.XMLSyntaxError as e:
                    raise ImportRefused(f"{name}: not well-formed XML: {_syntax_error(e)}") from None
                for event, el in events:
                    yield from state.event(event, el)
                data = f.read(_CHUNK)
                read += len(data)
                if read > self.max_bytes:
                    raise ImportRefused(f"{name}: more than the {self.max_bytes} bytes accepted")
                if not data:
                    break
            try:
                parser.close()
                events = list(parser.read_events())
            except etree.XMLSyntaxError as e:
                raise ImportRefused(f"{name}: not well-formed XML: {_syntax_error(e)}") from None
            for event, el in events:
                yield from state.event(event, el)
            if not state.seen_root:
                raise ImportRefused(f"{name}: no root element")
        finally:
            f.close()
            self.open.pop()

    def include(self, el: etree._Element, name: str, expect: str, host: _Host | None) -> Iterator[Any]:
        where = f"{name}:{el.sourceline}"
        if el.get("parse", "xml") != "xml" or el.get("xpointer") is not None:
            raise ImportRefused(f"{where}: only <xi:include href/> of whole XML files is supported")
        href = el.get("href") or ""
        parts = urlsplit(href)
        if not href or parts.scheme or parts.netloc or parts.query or parts.fragment or href.startswith("/"):
            raise ImportRefused(f"{where}: <xi:include> href {href!r} is not a relative file name")
        current = self.open[-1].parent
        target = (current / unquote(parts.path)).resolve()
        if not target.is_relative_to(self.base):
            raise ImportRefused(f"{where}: <xi:include> href {href!r} leads out of {self.base}")
        if len(self.open) > MAX_INCLUDE_DEPTH or target in self.open:
            raise ImportRefused(f"{where}: <xi:include> nested too deep (or in a loop)")
        yield from self._file(target, expect, host)


class _State:
    """The position in one file's element tree while it streams by."""

    def __init__(self, reader: _Reader, name: str, expect: str, host: _Host | None) -> None:
        self.reader = reader
        self.name = name
        self.expect = expect
        self.roles: list[str] = []
        self.host = host
        self.user_elements = 0
        self.seen_root = False

    def event(self, event: str, el: etree._Element) -> Iterator[Any]:
        if event == "start":
            self._start(el)
            return
        role = self.roles.pop()
        if role == "user":
            yield _UserEvent(
                el,
                f"{self.name}:{el.sourceline}",
                self._current_host(),
                self.reader.max_user_elements if self.user_elements > self.reader.max_user_elements else None,
            )
            self._drop(el)
        elif role == "include":
            expect = "host" if self.roles[-1] == "server-data" else "user"
            yield from self.reader.include(el, self.name, expect, self.host)
            self._drop(el)
        elif role == "other":
            yield _Warning(
                f"{self.name}:{el.sourceline}", f"ignored {_describe(el)}: xmppd does not import it"
            )
            self._drop(el)
        elif role == "host":
            self._drop(el)
            if self.expect != "host":
                self.host = None
        elif role == "inside" and self.user_elements > self.reader.max_user_elements:
            el.clear()  # an oversized user is refused anyway: do not keep what it holds
        elif role == "skip":
            self._drop(el)  # inside something ignored: kept only until its end
        elif role == "ignored":
            el.clear(keep_tail=True)  # the element stays, empty, for the user's warning

    def _current_host(self) -> _Host:
        return self.host if self.host is not None else _Host(None, "<user> outside a <host>", "?")

    def _start(self, el: etree._Element) -> None:
        if not self.roles:
            self.seen_root = True
            if not _is_pie(el, self.expect):
                raise ImportRefused(
                    f"{self.name}:{el.sourceline}: the root element is {_describe(el)}, expected "
                    f"<{self.expect} xmlns='{NS_PIE}'>"
                )
            role = self.expect
        else:
            parent = self.roles[-1]
            if parent in ("server-data", "host"):
                child = "host" if parent == "server-data" else "user"
                if _is_pie(el, child):
                    role = child
                elif el.tag == f"{{{NS_XINCLUDE}}}include":
                    role = "include"
                else:
                    role = "other"
            elif parent == "inside" or (parent == "user" and _imported(el)):
                role = "inside"
                self.user_elements += 1
            elif parent == "user":
                role = "ignored"  # not counted: a huge MAM archive or PEP store does not refuse the user
            else:
                role = "skip"
        if role == "host":
            self.host = self.reader._host(el)
        elif role == "user":
            self.user_elements = 0
        self.roles.append(role)

    @staticmethod
    def _drop(el: etree._Element) -> None:
        """Free a finished element and its finished elder siblings (the iterparse idiom)."""
        el.clear(keep_tail=False)
        parent = el.getparent()
        if parent is not None:
            while el.getprevious() is not None:
                del parent[0]


# -- one user ------------------------------------------------------------------------------------------


@dataclass
class _User:
    host: str
    name: str
    where: str
    scram: dict[str, dict[str, Any]] = field(default_factory=dict)
    password: str | None = None
    roster: dict[str, Any] | None = None
    vcard: str | None = None
    private: dict[str, str] | None = None
    offline: list[tuple[str, float, str | None]] = field(default_factory=list)

    @property
    def jid(self) -> str:
        return f"{self.name}@{self.host}"


def _strip_layout(el: etree._Element) -> etree._Element:
    """Drop the whitespace that only lays out element-only content (the indentation of the file); text of
    elements without children (a body of spaces) and text mixed with elements stay as they are."""
    for node in el.iter():
        if len(node):
            if node.text is not None and not node.text.strip():
                node.text = None
            for child in node:
                if child.tail is not None and not child.tail.strip():
                    child.tail = None
    el.tail = None
    return el


def _payload_text(el: etree._Element) -> str:
    """A payload as xmppd stores it (plugins/vcard.py serialize_payload): its own namespaces only."""
    from copy import deepcopy

    copy = _strip_layout(deepcopy(el))
    etree.cleanup_namespaces(copy)
    return etree.tostring(copy, encoding="unicode", with_tail=False)


def _neutral(src: etree._Element, ns: str, parent: etree._Element | None = None) -> etree._Element:
    """A copy of a stanza qualified by ``ns`` in xmppd's namespace-neutral form (the inverse of
    xmppd.xml.writer.qualify): the stanza and its ``ns`` descendants lose the namespace."""
    from copy import deepcopy

    prefix = f"{{{ns}}}"
    tag = src.tag[len(prefix) :]
    new = (
        etree.Element(tag, dict(src.attrib))
        if parent is None
        else etree.SubElement(parent, tag, dict(src.attrib))
    )
    new.text = src.text
    for child in src:
        if not isinstance(child.tag, str):
            continue
        if child.tag.startswith(prefix):
            sub = _neutral(child, ns, new)
        else:
            sub = deepcopy(child)
            new.append(sub)
        sub.tail = child.tail
    return new


def _scram_password(password: str) -> dict[str, Any] | None:
    """ejabberd's ``scram:StoredKey,ServerKey,Salt,IterationCount`` password attribute (SHA-1), or None."""
    if not password.startswith("scram:"):
        return None
    parts = password[len("scram:") :].split(",")
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    d = {"hash_name": "SHA-1", "stored_key": parts[0], "server_key": parts[1], "salt": parts[2]}
    d["iterations"] = int(parts[3])
    try:
        return ScramCredentials.from_dict(d).to_dict()
    except ValueError:
        return None


class _UserParser:
    """Turns one <user/> element into a _User, collecting every bad record and every ignored element."""

    def __init__(self, event: _UserEvent, now: float) -> None:
        self.event = event
        self.now = now
        self.mechanisms: set[str] = set()  # of the <scram-credentials/> seen
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.file = event.where.rsplit(":", 1)[0]
        self.label = f"user {event.el.get('name')!r} of {event.host.label}"

    def at(self, el: etree._Element) -> str:
        return f"{self.file}:{el.sourceline}: {self.label}"

    def bad(self, el: etree._Element, reason: str) -> None:
        self.problems.append(Problem(self.at(el), reason))

    def warn(self, el: etree._Element, reason: str) -> None:
        self.warnings.append(Problem(self.at(el), reason))

    def parse(self) -> _User | None:
        el, host = self.event.el, self.event.host
        if host.domain is None:
            self.bad(el, host.error or "no host")
            return None
        if self.event.oversized is not None:
            self.bad(el, f"more than {self.event.oversized} elements")
            return None
        name = el.get("name")
        try:
            local = prep_local(name or "")
        except ValueError as e:  # JIDError among others
            self.bad(el, f"user name {name!r} is not a valid localpart: {e}")
            local = ""
        user = _User(host.domain, local, self.event.where)
        self._password(el, user)
        seen: dict[str, etree._Element] = {}
        for child in el:
            if not isinstance(child.tag, str):
                continue
            q = etree.QName(child)
            key = child.tag
            if q.namespace == NS_SCRAM and q.localname == "scram-credentials":
                self._scram(child, user)
                continue
            if q.namespace == NS_CLIENT and q.localname == "presence":
                self._presence(child, user)
                continue
            handler = {
                f"{{{NS_ROSTER}}}query": self._roster,
                f"{{{NS_VCARD}}}vCard": self._vcard,
                f"{{{NS_PRIVATE}}}query": self._private,
            }.get(key)
            if handler is None and q.localname == "offline-messages" and q.namespace in PIE_NAMESPACES:
                handler, key = self._offline, "offline-messages"
            if handler is None:
                if key == f"{{{NS_XINCLUDE}}}include":
                    self.bad(child, "<xi:include> inside a <user> is not supported")
                else:
                    self.warn(child, f"ignored {_describe(child)}: xmppd does not import it")
                continue
            if key in seen:
                self.bad(child, f"a second {_describe(child)} (the first is at line {seen[key].sourceline})")
                continue
            seen[key] = child
            handler(child, user)
        if not user.scram and user.password is None and not self.mechanisms:
            self.bad(el, "no credentials: neither a password nor SCRAM-SHA-1 or SCRAM-SHA-256 credentials")
        elif user.password is None and "SHA-256" not in user.scram and not self.problems:
            self.warn(
                el,
                "only SCRAM-SHA-1 credentials: this user can log in with SCRAM-SHA-1 only (not SCRAM-SHA-256 "
                "or PLAIN) until the password is changed",
            )
        return None if self.problems else user

    def _password(self, el: etree._Element, user: _User) -> None:
        password = el.get("password")
        if not password:  # absent, or empty as ejabberd writes it when it has no plaintext
            return
        scram = _scram_password(password)
        if scram is not None:
            user.scram["SHA-1"] = scram
            return
        try:
            normalize_password(password)
        except ValueError as e:
            self.bad(el, f"the password cannot be used (PRECIS OpaqueString): {e}")
            return
        user.password = password

    def _scram(self, el: etree._Element, user: _User) -> None:
        mechanism = el.get("mechanism") or ""
        hash_name = MECHANISMS.get(mechanism)
        if hash_name is None:
            self.warn(
                el, f"ignored SCRAM credentials for {mechanism!r}: xmppd supports {', '.join(MECHANISMS)}"
            )
            return
        if hash_name in self.mechanisms:
            self.bad(el, f"{mechanism} credentials given twice")
            return
        self.mechanisms.add(hash_name)
        fields = {}
        for child in el:
            if isinstance(child.tag, str) and etree.QName(child).namespace == NS_SCRAM:
                fields[etree.QName(child).localname] = "".join((child.text or "").split())
        try:
            iterations = int(fields["iter-count"])
            d = {
                "hash_name": hash_name,
                "iterations": iterations,
                "salt": fields["salt"],
                "server_key": fields["server-key"],
                "stored_key": fields["stored-key"],
            }
            user.scram[hash_name] = ScramCredentials.from_dict(d).to_dict()
        except KeyError as e:
            self.bad(el, f"{mechanism} credentials without <{e.args[0]}>")
        except (ValueError, binascii.Error) as e:
            self.bad(el, f"{mechanism} credentials are malformed: {e}")

    def _roster(self, el: etree._Element, user: _User) -> None:
        doc = user.roster if user.roster is not None else {"ver": 0, "items": {}, "pending": {}}
        user.roster = doc
        ver = el.get("ver", el.get("version"))
        if ver is not None and ver.isdigit():
            doc["ver"] = int(ver)
        for item in el:
            if not isinstance(item.tag, str):
                continue
            if item.tag != f"{{{NS_ROSTER}}}item":
                self.warn(item, f"ignored {_describe(item)} in the roster")
                continue
            jid = item.get("jid") or ""
            try:
                contact = str(parse_jid(jid))
            except JIDError as e:
                self.bad(item, f"roster item jid {jid!r} is malformed: {e}")
                continue
            if contact in doc["items"]:
                self.bad(item, f"roster item {contact} is listed twice")
                continue
            subscription = item.get("subscription", "none")
            if subscription not in SUBSCRIPTIONS:
                self.bad(
                    item,
                    f"roster item {contact}: subscription {subscription!r} is not one of {SUBSCRIPTIONS}",
                )
                continue
            ask = item.get("ask")
            if ask not in (None, "subscribe"):
                self.bad(item, f"roster item {contact}: ask {ask!r} is not 'subscribe'")
                continue
            approved = item.get("approved", "false")
            if approved not in ("true", "1", "false", "0"):
                self.bad(item, f"roster item {contact}: approved {approved!r} is not a boolean")
                continue
            groups: list[str] = []
            bad_group = False
            for group in item:
                if not isinstance(group.tag, str):
                    continue
                if group.tag != f"{{{NS_ROSTER}}}group":
                    self.warn(group, f"ignored {_describe(group)} in roster item {contact}")
                    continue
                if not group.text:
                    self.bad(group, f"roster item {contact} has an empty group")
                    bad_group = True
                elif group.text not in groups:
                    groups.append(group.text)
            if bad_group:
                continue
            doc["items"][contact] = {
                "name": item.get("name") or None,
                "groups": groups,
                "subscription": subscription,
                "ask": ask == "subscribe",
                "approved": approved in ("true", "1"),
            }
        if ver is None or not ver.isdigit():
            doc["ver"] = max(doc["ver"], 1 if doc["items"] else 0)

    def _presence(self, el: etree._Element, user: _User) -> None:
        """An inbound subscription request not answered yet (Prosody, ejabberd: a child of <user/>)."""
        if el.get("type") != "subscribe":
            self.warn(el, f"ignored <presence type={el.get('type')!r}>: only subscription requests are kept")
            return
        sender = el.get("from") or ""
        try:
            contact = str(parse_jid(sender).bare)
        except JIDError as e:
            self.bad(el, f"subscription request from {sender!r}: malformed JID: {e}")
            return
        stanza = _strip_layout(_neutral(el, NS_CLIENT))
        stanza.set("from", contact)
        if stanza.get("to") is None:
            stanza.set("to", f"{user.name}@{user.host}")
        try:
            text = serialize(parse_stanza(serialize(stanza))).decode("utf-8")
        except ValueError as e:
            self.bad(el, f"subscription request from {contact}: {e}")
            return
        if user.roster is None:
            user.roster = {"ver": 0, "items": {}, "pending": {}}
        user.roster["pending"].setdefault(contact, text)

    def _vcard(self, el: etree._Element, user: _User) -> None:
        user.vcard = _payload_text(el)

    def _private(self, el: etree._Element, user: _User) -> None:
        doc: dict[str, str] = {}
        for child in el:
            if not isinstance(child.tag, str):
                continue
            q = etree.QName(child)
            ns = q.namespace
            if not ns or ns == NS_VCARD or ns.startswith(PRIVATE_RESERVED_PREFIXES):
                self.bad(child, f"private XML {_describe(child)} is in a reserved namespace (XEP-0049 s2.3)")
                continue
            if q.text in doc:
                self.bad(child, f"private XML {_describe(child)} is given twice")
                continue
            doc[q.text] = _payload_text(child)
        user.private = doc

    def _offline(self, el: etree._Element, user: _User) -> None:
        for message in el:
            if not isinstance(message.tag, str):
                continue
            q = etree.QName(message)
            if q.localname != "message" or q.namespace not in (NS_CLIENT, *PIE_NAMESPACES):
                self.bad(
                    message, f"{_describe(message)} in <offline-messages> is not a jabber:client <message>"
                )
                continue
            stanza = _strip_layout(_neutral(message, q.namespace))
            sender = stanza.get("from")
            if sender is not None:
                try:
                    parse_jid(sender)
                except JIDError as e:
                    self.bad(message, f"offline message from {sender!r}: malformed JID: {e}")
                    continue
            delays = stanza.findall(f"{{{NS_DELAY}}}delay")
            delay = next((d for d in delays if d.get("from") == user.host), delays[0] if delays else None)
            if delay is None:
                when = self.now
                add_delay(stanza, user.host, when, "Offline Storage")
            else:
                try:
                    when = parse_datetime(delay.get("stamp") or "")
                except ValueError:
                    self.bad(
                        message,
                        f"offline message: delay stamp {delay.get('stamp')!r} is not a XEP-0082 DateTime",
                    )
                    continue
            try:
                text = serialize(parse_stanza(serialize(stanza))).decode("utf-8")
            except ValueError as e:
                self.bad(message, f"offline message: {e}")
                continue
            user.offline.append((text, when, sender))


# -- import --------------------------------------------------------------------------------------------


async def import_file(
    storage: Any,
    path: Path,
    domains: Iterable[str],
    *,
    replace: bool = False,
    dry_run: bool = False,
    iterations: int = DEFAULT_ITERATIONS,
    max_bytes: int = MAX_FILE_BYTES,
    max_user_elements: int = MAX_USER_ELEMENTS,
    now: float | None = None,
) -> ImportReport:
    """Import a XEP-0227 file into ``storage`` for the served ``domains``; see the module docstring.

    ``replace``: an existing account is replaced with the imported one (the old account and all of its data
    are deleted first) instead of refused. ``dry_run``: check everything, write nothing."""
    domains = list(domains)
    options = {"iterations": iterations, "max_bytes": max_bytes, "max_user_elements": max_user_elements}
    stamp = time.time() if now is None else now
    checked = ImportReport(dry_run=True)
    try:
        await _import(storage, Path(path), domains, replace, False, stamp, checked, options)
    except ImportRefused as e:
        return ImportReport(refused=str(e), dry_run=dry_run)  # nothing was written
    if dry_run:
        return checked
    report = ImportReport()
    try:
        await _import(storage, Path(path), domains, replace, True, stamp, report, options)
    except ImportRefused as e:  # the file changed between the passes
        report.refused = str(e)
    return report


async def _import(
    storage: Any,
    path: Path,
    domains: list[str],
    replace: bool,
    write: bool,
    now: float,
    report: ImportReport,
    options: dict[str, Any],
) -> None:
    reader = _Reader(path, domains, options["max_bytes"], options["max_user_elements"])
    seen: dict[tuple[str, str], str] = {}
    archives = hasattr(storage, "archive_append")
    for event in reader.events():
        if isinstance(event, _Warning):
            report.warnings.append(Problem(event.where, event.reason))
            continue
        parser = _UserParser(event, now)
        user = parser.parse()
        report.warnings.extend(parser.warnings)
        label = f"{event.el.get('name')}@{event.host.label}"
        if user is not None:
            key = (user.host, user.name)
            if key in seen:
                parser.bad(event.el, f"{user.jid} appears twice in the file (first at {seen[key]})")
                user = None
            else:
                seen[key] = event.where
        if user is not None and user.offline and not archives:
            parser.bad(event.el, "this storage backend keeps no archives, so it cannot take offline messages")
            user = None
        if user is not None and not replace and await storage.get(user.host, ACCOUNTS, user.name) is not None:
            parser.bad(event.el, f"{user.jid} exists already (import --replace replaces it and all its data)")
            user = None
        if user is None:
            report.problems.extend(parser.problems)
            report.rejected.append(label)
            continue
        if write:
            await _write(storage, user, options["iterations"])
        report.imported.append(user.jid)


async def _write(storage: Any, user: _User, iterations: int) -> None:
    """Write one user: everything it had is deleted first (an account being replaced, or what an
    interrupted import left), its data goes in, and the account record comes last."""
    creds = dict(user.scram)
    if user.password is not None:
        for hash_name in HASHES:
            if hash_name not in creds:
                creds[hash_name] = derive_credentials(
                    user.password, hash_name, iterations=iterations
                ).to_dict()
    host, name = user.host, user.name
    await storage.purge_user(host, name)
    if user.roster is not None:
        await storage.set(host, ROSTER, name, user.roster)
    if user.vcard is not None:
        await storage.set(host, VCARD, name, user.vcard)
    if user.private:
        await storage.set(host, PRIVATE, name, user.private)
    for text, when, sender in user.offline:
        await storage.archive_append(host, OFFLINE, name, text, when=when, with_=sender)
    await storage.set(host, ACCOUNTS, name, {"scram": creds})
