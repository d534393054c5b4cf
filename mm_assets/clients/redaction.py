"""Keeping secrets out of text (invariant 4): the one way every client redacts.

A remote system's words reach our messages and logs: an SFTP status message, an S3 error body,
a processing-log answer, a token endpoint's refusal. Any of them may echo what we sent
(a password, a session token, an Authorization header), so every client passes such text
through `redact` with the secrets it holds, and installs a `SecretRedactingFilter` on the
loggers of the libraries that log the remote's words themselves (paramiko, botocore).
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from collections.abc import Iterable, Sequence

REDACTED = "<redacted>"
# Shorter secrets are kept: replacing them would mangle ordinary words and protect nothing.
MIN_SECRET_CHARS = 4


def redact(text: str, secrets: Iterable[str | None], patterns: Sequence[re.Pattern] = ()) -> str:
    """`text` with every secret replaced by REDACTED, and the value after each pattern's
    first group (a header or field name: `(Authorization: )value`) too."""
    for pattern in patterns:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET_CHARS and secret in text:
            text = text.replace(secret, REDACTED)
    return text


class SecretRedactingFilter(logging.Filter):
    """Redacts the secrets it was given (and `patterns`) from the records of the loggers it
    is installed on. Shared by every client of a kind in the process, so bounded: the oldest
    secret goes once `max_secrets` are held (temporary credentials renew every hour)."""

    def __init__(self, patterns: Sequence[re.Pattern] = (), max_secrets: int = 64) -> None:
        super().__init__()
        self._patterns = tuple(patterns)
        self._lock = threading.Lock()
        self._secrets: collections.deque[str] = collections.deque(maxlen=max_secrets)

    def add(self, *values: str | None) -> None:
        with self._lock:
            for value in values:
                if value and value not in self._secrets:
                    self._secrets.append(value)

    def redact(self, text: str) -> str:
        with self._lock:
            known = list(self._secrets)
        return redact(text, known, self._patterns)

    def install(self, logger_names: Iterable[str]) -> None:
        """Filter the records logged to these loggers (a filter sees only its own logger's
        records, not its children's: name each logger that logs)."""
        for name in logger_names:
            target = logging.getLogger(name)
            if self not in target.filters:
                target.addFilter(self)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken log call is not ours to fix
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
