"""wokkel 18.0.0 on current Twisted: every module xmppd relies on imports and works through the shim."""

import importlib

import pytest

from xmppd._compat import wokkel as compat

MODULES = ["component", "data_form", "delay", "disco", "muc", "pubsub", "generic", "subprotocols", "xmppim"]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports(name):
    module = importlib.import_module(f"wokkel.{name}")
    assert module.__name__ == f"wokkel.{name}"


def test_data_form_round_trip():
    form = compat.data_form.Form("submit", formNamespace="http://jabber.org/protocol/muc#roomconfig")
    form.addField(compat.data_form.Field(var="muc#roomconfig_roomname", value="Lounge"))
    parsed = compat.data_form.Form.fromElement(form.toElement())
    assert parsed.formNamespace == "http://jabber.org/protocol/muc#roomconfig"
    assert parsed.getValues()["muc#roomconfig_roomname"] == "Lounge"


def test_muc_constants_from_constantly():
    # wokkel.muc builds its status codes on twisted.python.constants, provided by `constantly`.
    assert compat.muc.STATUS_CODE.SELF_PRESENCE.value == 110
