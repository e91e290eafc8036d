"""Credentials never reach a message: `mask_credentials` hides the password of every URL in a text
(`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`, `?password=secret` ->
`?password=***`), so an error about a storage URL can name the URL.

Example:
    >>> mask_credentials("cannot open postgresql://me:hunter2@db/optuna")
    'cannot open postgresql://me:***@db/optuna'
"""
from __future__ import annotations

import re

# scheme://user:password@ (the last @ of the token: a password may hold an unescaped @)
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):\S*@")
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|secret)=)[^&;\s'\"]*", re.I)


def mask_credentials(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _QUERY.sub(r"\g<head>***", _USERINFO.sub(r"\g<head>:***@", text))
