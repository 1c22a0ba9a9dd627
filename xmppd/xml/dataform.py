"""Data forms (XEP-0004) over lxml: build a form, read a submitted one.

Used wherever a protocol carries a ``<x xmlns='jabber:x:data'/>``: MUC room configuration and registration
(XEP-0045 s10.2, s7.10), service information forms in disco (XEP-0128, XEP-0157), and later ad-hoc
commands. A submitted form is read into ``{var: [values]}``; the typed accessors raise ``FormError``, which
callers answer with the stanza error their protocol names (usually ``not-acceptable`` or ``bad-request``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lxml import etree

from xmppd.xml.stanza import add_child

NS_DATA = "jabber:x:data"
FORM = f"{{{NS_DATA}}}x"
FORM_TYPES = ("form", "submit", "cancel", "result")
#: Bounds on what a submitted form may carry, so a hostile form costs little to read.
MAX_FIELDS = 200
MAX_VALUES = 1000


class FormError(ValueError):
    """A form that is not well-formed (XEP-0004 s3) or a value of the wrong type."""


@dataclass
class Field:
    """One ``<field/>`` of a form we send (XEP-0004 s3.2)."""

    var: str
    type: str = "text-single"
    label: str | None = None
    values: Sequence[str] = ()
    options: Sequence[tuple[str, str]] = ()  # (label, value), for list-single / list-multi
    required: bool = False
    desc: str | None = None


def build_form(
    form_type: str | None,
    fields: Iterable[Field],
    *,
    type_: str = "form",
    title: str | None = None,
    instructions: str | None = None,
) -> etree._Element:
    """A ``<x xmlns='jabber:x:data'/>`` of ``type_``; ``form_type`` becomes the hidden FORM_TYPE field
    (XEP-0068) when given."""
    form = etree.Element(FORM, nsmap={None: NS_DATA}, type=type_)
    if title:
        add_child(form, NS_DATA, "title", title)
    if instructions:
        add_child(form, NS_DATA, "instructions", instructions)
    if form_type is not None:
        fields = [Field("FORM_TYPE", "hidden", values=[form_type]), *fields]
    for f in fields:
        el = add_child(form, NS_DATA, "field")
        el.set("var", f.var)
        if f.type != "text-single" or type_ == "form":
            el.set("type", f.type)
        if f.label and type_ == "form":
            el.set("label", f.label)
        if f.desc and type_ == "form":
            add_child(el, NS_DATA, "desc", f.desc)
        if f.required and type_ == "form":
            add_child(el, NS_DATA, "required")
        for value in f.values:
            add_child(el, NS_DATA, "value", value)
        if type_ == "form":
            for label, value in f.options:
                option = add_child(el, NS_DATA, "option")
                if label:
                    option.set("label", label)
                add_child(option, NS_DATA, "value", value)
    return form


def find_form(parent: etree._Element) -> etree._Element | None:
    """The first data form among ``parent``'s children, or None."""
    return parent.find(FORM)


@dataclass
class SubmittedForm:
    """A form read from the wire: its type, FORM_TYPE and values by field."""

    type: str
    form_type: str | None
    values: dict[str, list[str]] = field(default_factory=dict)

    def __contains__(self, var: str) -> bool:
        return var in self.values

    def text(self, var: str, default: str | None = None) -> str | None:
        """A single-valued field's value (text-single, text-private, list-single, jid-single)."""
        values = self.values.get(var)
        if not values:
            return default
        if len(values) > 1:
            raise FormError(f"{var} takes one value")
        return values[0]

    def boolean(self, var: str, default: bool | None = None) -> bool | None:
        """A boolean field (XEP-0004 s3.3: "0"/"false" or "1"/"true")."""
        value = self.text(var)
        if value is None:
            return default
        if value in ("1", "true"):
            return True
        if value in ("0", "false"):
            return False
        raise FormError(f"{var} must be a boolean, not {value!r}")

    def integer(self, var: str, default: int | None = None, *, minimum: int = 0) -> int | None:
        value = self.text(var)
        if value is None or value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            raise FormError(f"{var} must be a number, not {value!r}") from None
        if number < minimum:
            raise FormError(f"{var} must be at least {minimum}")
        return number

    def multi(self, var: str) -> list[str] | None:
        """A multi-valued field's values (list-multi, jid-multi, text-multi), or None when absent."""
        return self.values.get(var)


def parse_form(form: etree._Element) -> SubmittedForm:
    """Read a data form (XEP-0004 s3). FormError if it is not well-formed or exceeds the bounds."""
    type_ = form.get("type")
    if type_ not in FORM_TYPES:
        raise FormError(f"form type must be one of {', '.join(FORM_TYPES)}")
    values: dict[str, list[str]] = {}
    count = 0
    for el in form.iterchildren(f"{{{NS_DATA}}}field"):
        var = el.get("var")
        if not var:
            if type_ in ("submit", "result"):
                raise FormError("every field of a submitted form needs a var")
            continue
        if var in values:
            raise FormError(f"field {var} appears twice")
        if len(values) >= MAX_FIELDS:
            raise FormError("too many fields")
        field_values = [v.text or "" for v in el.iterchildren(f"{{{NS_DATA}}}value")]
        count += len(field_values)
        if count > MAX_VALUES:
            raise FormError("too many values")
        values[var] = field_values
    form_type = values.pop("FORM_TYPE", [None])
    return SubmittedForm(type_, form_type[0] if form_type else None, values)
