"""Make wokkel 18.0.0 importable on current Twisted, then use it like any module: ``from
xmppd._compat.wokkel import data_form`` (or import this module before any ``wokkel`` import).

wokkel's last release (2018) imports two names Twisted has since removed (measured in
shared/research/architecture.md s1.1):

* ``twisted.python.compat._PY3`` (removed in Twisted 21.2), used by data_form, disco, ping and pubsub;
* ``twisted.python.constants`` (removed in 24.11), used by muc; ``constantly``, a Twisted dependency, is the
  same API under its new name.

This module restores exactly those two names and nothing else; tests/unit/test_wokkel_compat.py imports
every wokkel module xmppd uses so that a Twisted release removing more shows up at once.
"""

from __future__ import annotations

import sys

import constantly
import twisted.python.compat as _twisted_compat

if not hasattr(_twisted_compat, "_PY3"):
    _twisted_compat._PY3 = True
sys.modules.setdefault("twisted.python.constants", constantly)

from wokkel import component, data_form, delay, disco, muc, pubsub  # noqa: E402

__all__ = ["component", "data_form", "delay", "disco", "muc", "pubsub"]
