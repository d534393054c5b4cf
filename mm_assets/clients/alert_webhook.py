"""Post an alert to a Slack-compatible incoming webhook (`{"text": ...}` as JSON).

The webhook URL is a secret (Slack's carries a token): it never appears in a message,
exception or log line. One bounded POST per alert; no Dagster import here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

DEFAULT_TIMEOUT_SECONDS = 5.0
MAX_TEXT_CHARS = 3000  # Slack shows about this much of a message


class AlertNotSent(Exception):
    """The webhook did not take the alert. The message never holds the URL."""


def post_alert(url: str, text: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
    body = json.dumps({"text": text[:MAX_TEXT_CHARS]}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1024)
    except urllib.error.HTTPError as exc:
        raise AlertNotSent(f"the alert webhook answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AlertNotSent(
            f"the alert webhook could not be reached ({type(reason).__name__})"
        ) from None
