"""Signals services send once a change is committed, for other parts to react at once."""

from blinker import Namespace
from flask import current_app

# Sent, with the app as sender, once a change to what an account or token may do is
# committed (deactivation, role change, logout, revocation): this process's open live
# streams re-check at once instead of at their next periodic check.
access_changed = Namespace().signal("access-changed")


def announce_access_change() -> None:
    access_changed.send(current_app._get_current_object())
