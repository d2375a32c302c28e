"""The one URL redactor: credentials in URLs never reach logs, messages or backups.

Two uses, one rule set. A URL whose path may itself be the secret (a Slack or webhook URL) is
shown as its origin only (`redact_url(url)`); a git remote keeps its path, which names the
repository, but loses user, password and query (`redact_url(url, keep_path=True)`). Free text
(git's error messages) gets every URL in it redacted the second way (`redact_text`).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

HIDDEN = "***"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_url(url: str, *, keep_path: bool = False) -> str:
    """`https://user:token@host:8443/x?k=v` -> `https://host:8443`, or with `keep_path`
    `https://***@host:8443/x?***`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not parseable as a URL (a bad port...): show nothing of it
        return HIDDEN
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    origin = f"{parts.scheme}://{host}{port}" if parts.scheme else host
    if not keep_path:
        return origin
    user = f"{HIDDEN}@" if "@" in parts.netloc else ""
    query = f"?{HIDDEN}" if parts.query else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}{query}"


def redact_text(text: str) -> str:
    """Every URL in `text` with its credentials hidden (paths kept)."""
    return _URL.sub(lambda m: redact_url(m.group(0), keep_path=True), text)
