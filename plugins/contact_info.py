"""Contact addresses for XMPP services (XEP-0157), in the domain's disco#info as a XEP-0128 form."""

from __future__ import annotations

from lxml import etree

from xmppd.plugin import Context, Option, Plugin
from xmppd.xml.dataform import Field, build_form

FORM_TYPE = "http://jabber.org/network/serverinfo"
FIELDS = ("abuse", "admin", "feedback", "sales", "security", "status", "support")


class ContactInfo(Plugin):
    """Publishes the configured addresses (``mailto:``, ``xmpp:``, ``https:`` URIs), s2 of XEP-0157."""

    name = "contact_info"
    requires = ("disco",)
    options = {
        f"{field}_addresses": Option(list, [], f"URIs for {field} contact", item_type=str) for field in FIELDS
    }

    def setup(self, ctx: Context) -> None:
        fields = {f: ctx.option(f"{f}_addresses") for f in FIELDS}
        if any(fields.values()):
            ctx.add_extension(self.form(fields))

    @staticmethod
    def form(fields: dict[str, list[str]]) -> etree._Element:
        return build_form(
            FORM_TYPE,
            [Field(f"{name}-addresses", values=uris) for name, uris in fields.items() if uris],
            type_="result",
        )
