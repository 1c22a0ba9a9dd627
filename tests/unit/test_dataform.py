"""Data forms (XEP-0004): building and reading."""

from __future__ import annotations

import pytest
from lxml import etree

from xmppd.xml.dataform import NS_DATA, Field, FormError, build_form, parse_form
from xmppd.xml.stanza import parse_stanza


def form(fields: str, type_: str = "submit") -> etree._Element:
    return parse_stanza(f"<x xmlns='{NS_DATA}' type='{type_}'>{fields}</x>")


def test_a_built_form_reads_back() -> None:
    built = build_form(
        "urn:example:form",
        [
            Field("name", label="Name", values=["Room"], required=True),
            Field("public", "boolean", "Public", ["1"]),
            Field("roles", "list-multi", "Roles", ["a", "b"], options=[("A", "a"), ("B", "b")]),
        ],
        title="T",
        instructions="I",
    )
    assert built.findtext(f"{{{NS_DATA}}}title") == "T"
    field = built.find(f"{{{NS_DATA}}}field[@var='name']")
    assert field.get("type") == "text-single" and field.find(f"{{{NS_DATA}}}required") is not None
    assert len(built.findall(f"{{{NS_DATA}}}field[@var='roles']/{{{NS_DATA}}}option")) == 2
    read = parse_form(built)
    assert read.type == "form" and read.form_type == "urn:example:form"
    assert read.text("name") == "Room" and read.boolean("public") is True
    assert read.multi("roles") == ["a", "b"] and "FORM_TYPE" not in read


def test_a_result_form_leaves_out_what_only_forms_carry() -> None:
    built = build_form("urn:x", [Field("a", label="A", values=["1"], options=[("o", "o")])], type_="result")
    field = built.find(f"{{{NS_DATA}}}field[@var='a']")
    assert field.get("type") is None and field.get("label") is None
    assert field.find(f"{{{NS_DATA}}}option") is None


def test_typed_values() -> None:
    read = parse_form(
        form(
            "<field var='t'><value>true</value></field><field var='f'><value>0</value></field>"
            "<field var='n'><value>12</value></field><field var='e'><value/></field>"
        )
    )
    assert read.boolean("t") is True and read.boolean("f") is False
    assert read.boolean("missing", True) is True
    assert read.integer("n") == 12 and read.integer("e", 7) == 7
    assert read.text("e") == ""


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ("<field var='b'><value>yes</value></field>", lambda f: f.boolean("b")),
        ("<field var='n'><value>x</value></field>", lambda f: f.integer("n")),
        ("<field var='n'><value>-1</value></field>", lambda f: f.integer("n")),
        ("<field var='s'><value>a</value><value>b</value></field>", lambda f: f.text("s")),
    ],
)
def test_wrongly_typed_values_are_form_errors(fields, check) -> None:
    with pytest.raises(FormError):
        check(parse_form(form(fields)))


@pytest.mark.parametrize(
    "xml",
    [
        f"<x xmlns='{NS_DATA}' type='bogus'/>",
        f"<x xmlns='{NS_DATA}'/>",
        f"<x xmlns='{NS_DATA}' type='submit'><field><value>1</value></field></x>",
        f"<x xmlns='{NS_DATA}' type='submit'><field var='a'/><field var='a'/></x>",
        f"<x xmlns='{NS_DATA}' type='submit'>" + "".join(f"<field var='f{i}'/>" for i in range(201)) + "</x>",
        f"<x xmlns='{NS_DATA}' type='submit'><field var='a'>" + "<value>v</value>" * 1001 + "</field></x>",
    ],
)
def test_malformed_forms_are_refused(xml: str) -> None:
    with pytest.raises(FormError):
        parse_form(parse_stanza(xml))
