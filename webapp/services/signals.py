"""Signals services send once a change is committed, for other parts to react at once."""

from typing import cast

from blinker import Namespace
from flask import Flask, current_app
from werkzeug.local import LocalProxy

# Sent, with the app as sender, once a change to what an account or token may do is
# committed (deactivation, role change, logout, revocation): this process's open live
# streams re-check at once instead of at their next periodic check.
access_changed = Namespace().signal("access-changed")


def announce_access_change() -> None:
    # Flask types current_app as the app itself; it is the proxy, which unwraps to the app.
    access_changed.send(cast("LocalProxy[Flask]", current_app)._get_current_object())
