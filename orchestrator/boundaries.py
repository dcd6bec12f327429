"""Where names and URLs meet the outside world: one function each that checks, quotes or redacts.

- ``check_name``: a study name (a file name, an MLflow experiment, a path component, a shell word)
  uses letters, digits, ``.``, ``_`` and ``-``, starts with a letter or digit, at most 100 characters.
- ``inside``: a path built from a name stays inside its base folder.
- ``no_control``: a value that goes into a script line holds no newline or other control character.
- ``redact``: a URL without its secrets (the password of its user info, password-like query
  parameters), for every URL that is printed, logged, tagged or written.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"
SECRET_PARAMS = {"password", "passwd", "pwd", "secret", "token", "key", "api_key", "access_token", "sslpassword"}
HIDDEN = "***"


def check_name(value: str, what: str) -> str:
    """``value`` if it is a usable name, else UserError naming ``what`` (the file or flag it came from)."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise UserError(f"{what}: {value!r} is not a usable study name ({NAME_RULE})")
    return value


def inside(base: Path, path: Path) -> Path:
    """``path``, resolved, if it lies inside ``base``; else UserError."""
    resolved, root = path.resolve(), base.resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"{path}: outside {base}")
    return path


def no_control(value: str, what: str) -> str:
    """``value`` if it holds no control character (a newline would start a new script line)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UserError(f"{what}: {value!r} holds a control character (a newline, tab or escape)")
    return value


def redact(url: str) -> str:
    """``url`` with the password of its user info and any password-like query parameter replaced by
    ``***``, whatever its scheme. A URL without secrets comes back unchanged (SQLite paths included)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN  # unparseable: print nothing of it
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{HIDDEN}@{host}" if ":" in userinfo else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = urlencode([(k, HIDDEN if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (an error message that quotes a connection string)."""
    return URL.sub(lambda m: redact(m.group(0)), text)


def has_secret(url: str) -> bool:
    return redact(url) != url
