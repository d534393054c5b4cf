"""Client for MediaMath's S2S processing-log API (S2S-LOG).

    GET {base}/logs?filename=...&start_date=...&end_date=...&offset=...

HTTP Basic auth with the SFTP credentials, JSON answers, paginated with `offset`. The document
gives neither the JSON shape nor the page size, so the parser is tolerant (a list, or an object
holding a list; the usual names for file, status, message and time fields) and every record
keeps its raw JSON. Outcomes follow the documented messages: `OK` is accepted; `File is empty`,
`File is invalid`, `File is not in GZIP format`, `Invalid headers` and `Integration {x} is not
authorized to write into namespaces {y}` are rejections; no record yet is pending.

No Dagster import. The password is only handed to `requests` as auth: it never appears in a
message, an exception or a repr.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import requests

from mm_assets.clients.redaction import redact
from mm_assets.clients.retry import Backoff, RetriesExhausted, retry

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://s2s-api.datasvc.mediamath.com"
LOGS_PATH = "/logs"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"  # S2S-LOG: start_date / end_date
# Bounds per question asked (invariant 5). A server that ignores `offset` would page forever;
# one file's records never need this many pages. Breaching a bound is transient: the files stay
# pending and a later poll asks again.
MAX_PAGES = 100
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_CALL_SECONDS = 120.0
_READ_CHUNK = 64 * 1024
# How much of an error body a message may quote (after redaction).
_EXCERPT_CHARS = 200

# S2S-LOG: the documented messages.
MESSAGE_OK = "OK"
MESSAGE_EMPTY = "File is empty"
MESSAGE_INVALID = "File is invalid"
MESSAGE_NOT_GZIP = "File is not in GZIP format"
MESSAGE_INVALID_HEADERS = "Invalid headers"
MESSAGE_NOT_AUTHORIZED_TEMPLATE = (
    "Integration {integration} is not authorized to write into namespaces {namespaces}"
)
REJECTION_MESSAGES = (MESSAGE_EMPTY, MESSAGE_INVALID, MESSAGE_NOT_GZIP, MESSAGE_INVALID_HEADERS)
_NOT_AUTHORIZED_RE = re.compile(
    r"integration\s+.+\s+is\s+not\s+authori[sz]ed\s+to\s+write\s+into\s+namespaces?\b",
    re.IGNORECASE | re.DOTALL,
)
# Undocumented messages are classified by their words: failure words reject, progress words
# wait. Anything else also waits (and shows its message) so the deadline, not a guess, decides.
_FAILURE_WORDS_RE = re.compile(
    r"\b(error|fail(ed|ure)?|invalid|reject(ed)?|not authori[sz]ed|unauthori[sz]ed|denied|"
    r"corrupt|malformed|too large|exceed(s|ed)?)\b",
    re.IGNORECASE,
)
_OK_STATUS_WORDS = frozenset(
    {
        "ok",
        "success",
        "succeeded",
        "successful",
        "completed",
        "complete",
        "done",
        "processed",
        "accepted",
    }
)
_PENDING_WORDS_RE = re.compile(
    r"\b(pending|queued|processing|in progress|received|running|waiting|started)\b", re.IGNORECASE
)

# Likely field names, compared after lower-casing and dropping `_`, `-` and spaces.
_LIST_KEYS = (
    "logs",
    "log",
    "data",
    "results",
    "result",
    "records",
    "items",
    "jobs",
    "entries",
    "files",
    "rows",
)
_FILENAME_KEYS = (
    "filename",
    "file",
    "filenm",
    "fname",
    "name",
    "fileidentifier",
    "object",
    "key",
    "path",
    "filepath",
)
_MESSAGE_KEYS = (
    "message",
    "msg",
    "statusmessage",
    "resultmessage",
    "error",
    "errormessage",
    "detail",
    "details",
    "description",
    "reason",
)
_STATUS_KEYS = ("status", "state", "result", "jobstatus", "outcome", "code")
_TIME_KEYS = (
    "timestamp",
    "processedat",
    "dateprocessed",
    "processeddate",
    "processedtime",
    "completedat",
    "finishedat",
    "enddate",
    "updatedat",
    "date",
    "time",
    "createdat",
    "datecreated",
    "receivedat",
    "startdate",
)
_TOTAL_KEYS = ("total", "totalcount", "count", "totalrecords")
# An Authorization value (`Basic xxx`, `Bearer xxx`) quoted anywhere in a server's text.
_AUTH_VALUE_RE = re.compile(r"(?i)\b((?:basic|bearer|digest)\s+)[A-Za-z0-9+/=._~-]+")


class Outcome(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    PENDING = "pending"


class ProcessingLogError(Exception):
    """The processing log could not be read (base class)."""


class ProcessingLogCredentialsError(ProcessingLogError):
    """401/403: the credentials were refused. Never retried: every retry would fail alike."""


class ProcessingLogUnavailable(ProcessingLogError):
    """Connection errors, timeouts, 429 or 5xx beyond the retry budget, an answer that is
    not JSON, or a breached bound (time per call, answer size, pages). The files stay pending;
    a later poll tries again."""


class _Transient(Exception):
    """One request failed in a way a retry may cure (internal); `retry_after` from the server."""

    def __init__(self, problem: str, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.retry_after = retry_after


class _BoundBreached(Exception):
    """An answer passed the call's time or size bound (internal)."""


@dataclass(frozen=True)
class LogRecord:
    """One processing-log record: the fields found under their likely names, and the raw JSON."""

    filename: str | None
    status: str | None
    message: str | None
    timestamp: datetime | None
    raw: Any

    @property
    def text(self) -> str:
        """The message, else the status: what MediaMath said."""
        return (self.message or self.status or "").strip()


@dataclass(frozen=True)
class FileOutcome:
    """MediaMath's verdict on one file, from its processing-log records."""

    filename: str
    status: Outcome
    message: str
    raw_records: list[Any] = field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.status is not Outcome.PENDING


# -- parsing (pure functions, tested alone) ------------------------------------------------------


def _norm(key: str) -> str:
    return re.sub(r"[\s_\-]", "", key).lower()


def _pick(record: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    normalised = {_norm(str(k)): v for k, v in record.items()}
    for name in names:
        value = normalised.get(name)
        if value is not None and value != "":
            return value
    return None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        inner = _pick(value, _MESSAGE_KEYS) or _pick(value, ("name", "value"))
        return _as_text(inner) if inner is not None else json.dumps(value, sort_keys=True)
    if isinstance(value, list):
        return "; ".join(t for t in (_as_text(v) for v in value) if t)
    return str(value)


def parse_timestamp(value: Any) -> datetime | None:
    """A record's time: Unix seconds or milliseconds, or ISO / `YYYY-MM-DD HH:MM:SS` (UTC when
    no zone is given). None when it cannot be read."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = value / 1000 if value > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return parse_timestamp(float(text))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def to_record(raw: Any) -> LogRecord:
    if not isinstance(raw, Mapping):
        # A bare string is most likely the message itself.
        return LogRecord(None, None, _as_text(raw), None, raw)
    filename = _as_text(_pick(raw, _FILENAME_KEYS))
    if filename:
        filename = filename.replace("\\", "/").rsplit("/", 1)[-1]
    return LogRecord(
        filename=filename or None,
        status=_as_text(_pick(raw, _STATUS_KEYS)),
        message=_as_text(_pick(raw, _MESSAGE_KEYS)),
        timestamp=parse_timestamp(_pick(raw, _TIME_KEYS)),
        raw=raw,
    )


def _looks_like_record(obj: Mapping[str, Any]) -> bool:
    return any(_pick(obj, keys) is not None for keys in (_MESSAGE_KEYS, _FILENAME_KEYS))


def extract_records(body: Any) -> tuple[list[Any], int | None]:
    """The raw records of one answer, and the total when the answer states one.

    Accepts a list, or an object holding the list under a likely key (or under its only list
    value), or a single record object. An empty object or `null` means no records.
    """
    if body is None:
        return [], None
    if isinstance(body, list):
        return body, None
    if not isinstance(body, Mapping):
        return [body], None
    total = _pick(body, _TOTAL_KEYS)
    total = total if isinstance(total, int) and not isinstance(total, bool) else None
    normalised = {_norm(str(k)): v for k, v in body.items()}
    for key in _LIST_KEYS:
        value = normalised.get(key)
        if isinstance(value, list):
            return value, total
        if isinstance(value, Mapping) and key in ("data", "result", "results"):
            return extract_records(value)[0], total
    lists = [v for v in body.values() if isinstance(v, list)]
    if len(lists) == 1:
        return lists[0], total
    if _looks_like_record(body):
        return [body], None
    return [], total


def classify(text: str) -> Outcome:
    """S2S-LOG: `OK` accepts, the documented error messages reject, no answer waits."""
    cleaned = text.strip().rstrip(".").strip()
    if not cleaned:
        return Outcome.PENDING
    if cleaned.upper() == MESSAGE_OK or cleaned.lower() in _OK_STATUS_WORDS:
        return Outcome.ACCEPTED
    lowered = cleaned.lower()
    if any(lowered == m.lower() for m in REJECTION_MESSAGES) or _NOT_AUTHORIZED_RE.search(cleaned):
        return Outcome.REJECTED
    if _FAILURE_WORDS_RE.search(cleaned):
        return Outcome.REJECTED
    return Outcome.PENDING


def _record_outcome(record: LogRecord) -> Outcome:
    if record.message:
        by_message = classify(record.message)
        if by_message is not Outcome.PENDING or not record.status:
            return by_message
    return classify(record.status or "")


def outcome_of(filename: str, records: list[LogRecord]) -> FileOutcome:
    """MediaMath's verdict on `filename` from its records: the latest final record wins (by its
    time when it has one, else by answer order); no final record is pending."""
    mine = [r for r in records if r.filename in (None, filename)]
    raw = [r.raw for r in mine]
    indexed = list(enumerate(mine))
    # Records without a time keep their answer order among the timed ones.
    indexed.sort(key=lambda ir: (ir[1].timestamp or datetime.min.replace(tzinfo=UTC), ir[0]))
    final = [r for _, r in indexed if _record_outcome(r) is not Outcome.PENDING]
    if final:
        latest = final[-1]
        return FileOutcome(filename, _record_outcome(latest), latest.text, raw)
    said = mine[-1].text if mine else ""
    return FileOutcome(filename, Outcome.PENDING, said, raw)


# -- the HTTP client ----------------------------------------------------------------------------


def format_date(moment: datetime) -> str:
    """S2S-LOG date parameter, in UTC (naive datetimes are taken as UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime(DATE_FORMAT)


def _retry_after_seconds(value: str | None, now: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class ProcessingLogClient:
    """Reads MediaMath's processing log (S2S-LOG) with retries, backoff and pagination.

    Retried: connection errors, timeouts, 429 and 5xx, with exponential backoff and jitter
    (`backoff` * 2**n, jittered to between half and all of it) and at least the server's
    `Retry-After`, until `max_attempts` requests are made or the next wait would pass
    `max_total_wait` seconds since the question was asked, then `ProcessingLogUnavailable`.
    Never retried: 401/403 (`ProcessingLogCredentialsError`) and other 4xx
    (`ProcessingLogError`).

    `page_size`: when known, a shorter page ends the pagination without one more request;
    otherwise pages are read until an empty one.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        username: str = "",
        password: str = "",
        *,
        timeout: float = 30.0,
        max_attempts: int = 5,
        backoff: float = 1.0,
        max_total_wait: float = 60.0,
        page_size: int | None = None,
        max_pages: int = MAX_PAGES,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        max_call_seconds: float = MAX_CALL_SECONDS,
        ca_bundle: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_total_wait = max_total_wait
        self.page_size = page_size
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self.max_call_seconds = max_call_seconds
        self._session = requests.Session()
        self._session.auth = (username, password)
        # What a hostile or buggy server could echo back: never quoted in a message.
        basic = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._secrets = tuple(v for v in (basic, password) if v)
        # S2S-LOG is HTTPS: verification stays on; a CA bundle only changes whom we trust.
        self._session.verify = ca_bundle or True
        self._session.headers["Accept"] = "application/json"
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.requests_made = 0
        self.waited_seconds = 0.0  # over the client's life, for tests and metadata
        self._waited_this_call = 0.0
        self._call_started = time.monotonic()

    def __repr__(self) -> str:
        return f"ProcessingLogClient(base_url={self.base_url!r}, username={self.username!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> ProcessingLogClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- public ---------------------------------------------------------------------------------

    def file_records(self, filename: str) -> list[LogRecord]:
        """Every record for `filename` (all pages)."""
        records = [to_record(raw) for raw in self._all_pages({"filename": filename})]
        # The server filters by name already; a record naming another file is not ours.
        return [r for r in records if r.filename in (None, filename)]

    def records_between(self, start: datetime, end: datetime | None = None) -> list[LogRecord]:
        """Every record between `start` and `end` (UTC; all pages)."""
        params = {"start_date": format_date(start)}
        if end is not None:
            params["end_date"] = format_date(end)
        return [to_record(raw) for raw in self._all_pages(params)]

    def outcome(self, filename: str) -> FileOutcome:
        """Accepted, rejected (with MediaMath's message) or pending (no final record yet)."""
        return outcome_of(filename, self.file_records(filename))

    # -- internals ------------------------------------------------------------------------------

    def _all_pages(self, params: Mapping[str, str]) -> Iterator[Any]:
        # The wait budget is per question asked, not per client lifetime.
        self._waited_this_call = 0.0
        self._call_started = time.monotonic()
        offset = 0
        previous_first: Any = object()
        for _ in range(self.max_pages):
            query = dict(params)
            if offset:
                query["offset"] = str(offset)
            page, total = extract_records(self._get_json(query))
            if not page:
                return
            if offset and page[0] == previous_first:
                # The server ignored `offset` and repeated a page: stop rather than loop.
                logger.warning("processing log repeated a page at offset %d; stopping", offset)
                return
            previous_first = page[0]
            yield from page
            offset += len(page)
            if self.page_size is not None and len(page) < self.page_size:
                return
            if total is not None and offset >= total:
                return
        raise ProcessingLogUnavailable(
            f"processing log answered more than {self.max_pages} pages for one question; "
            f"stopped (asked again later)"
        )

    def redact(self, text: str) -> str:
        """`text` without the credentials or any Authorization value (invariant 4)."""
        return redact(text, self._secrets, (_AUTH_VALUE_RE,))

    def _excerpt(self, body: bytes) -> str:
        return repr(
            self.redact(body[: _EXCERPT_CHARS * 4].decode("utf-8", "replace"))[:_EXCERPT_CHARS]
        )

    def _remaining(self) -> float:
        return self.max_call_seconds - (time.monotonic() - self._call_started)

    def _read_body(self, response: requests.Response) -> bytes:
        """The whole body, within the call's time and size bounds.

        A per-read timeout does not bound a server that trickles a byte at a time, so the
        deadline is checked between reads (read1 returns whatever has arrived).
        """
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            raise _BoundBreached(
                f"answer of {int(declared):,} bytes is over the {self.max_response_bytes:,} "
                f"byte bound"
            )
        chunks: list[bytes] = []
        size = 0
        raw = response.raw
        while True:
            if self._remaining() <= 0:
                raise _BoundBreached(f"answer not complete within {self.max_call_seconds:g} s")
            chunk = raw.read1(_READ_CHUNK) if hasattr(raw, "read1") else raw.read(_READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_response_bytes:
                raise _BoundBreached(
                    f"answer over the {self.max_response_bytes:,} byte bound; stopped reading"
                )
            chunks.append(chunk)

    def _get_json(self, params: Mapping[str, str]) -> Any:
        url = self.base_url + LOGS_PATH

        def attempt(_: int) -> Any:
            self.requests_made += 1
            if self._remaining() <= 0:
                raise _Transient(f"no answer within the {self.max_call_seconds:g} s bound")
            try:
                response = self._session.get(
                    url,
                    params=params,
                    timeout=min(self.timeout, max(self._remaining(), 0.1)),
                    stream=True,
                )
                try:
                    body = self._read_body(response)
                finally:
                    response.close()
            except requests.Timeout:
                raise _Transient(f"no answer within {self.timeout:g} s") from None
            except requests.ConnectionError as exc:
                raise _Transient(f"connection failed ({type(exc).__name__})") from None
            except _BoundBreached as exc:
                raise ProcessingLogUnavailable(
                    f"MediaMath processing log {url}: {exc} (asked again later)"
                ) from None
            status = response.status_code
            if status in (401, 403):
                raise ProcessingLogCredentialsError(
                    f"MediaMath processing log {url} refused the credentials of user "
                    f"{self.username!r} (HTTP {status}); check the SFTP username and "
                    f"password (S2S-LOG uses the SFTP credentials)"
                )
            if status == 429 or status >= 500:
                raise _Transient(
                    f"HTTP {status}",
                    _retry_after_seconds(response.headers.get("Retry-After"), time.time()),
                )
            if status >= 400:
                raise ProcessingLogError(
                    f"MediaMath processing log {url} answered HTTP {status}: {self._excerpt(body)}"
                )
            try:
                return json.loads(body)
            except ValueError:
                raise ProcessingLogUnavailable(
                    f"MediaMath processing log {url} answered HTTP {status} with a "
                    f"body that is not JSON: {self._excerpt(body)}"
                ) from None

        def before_retry(number: int, exc: Exception, delay: float) -> float:
            assert isinstance(exc, _Transient)
            delay = max(delay, exc.retry_after or 0.0)
            # Slow answers count too: the bound is on the time spent, not only on sleeping.
            spent = max(time.monotonic() - self._call_started, self._waited_this_call)
            if spent + delay > self.max_total_wait:
                raise ProcessingLogUnavailable(
                    f"MediaMath processing log {url} unavailable after {number} request(s): "
                    f"{exc}; the next retry (in {delay:.1f} s) would pass the "
                    f"{self.max_total_wait:g} s wait budget"
                )
            logger.info("processing log: %s; retry %d in %.2f s", exc, number, delay)
            self._waited_this_call += delay
            self.waited_seconds += delay
            return delay

        try:
            return retry(
                attempt,
                attempts=self.max_attempts,
                backoff=Backoff(self.backoff),
                retryable=lambda exc: isinstance(exc, _Transient),
                before_retry=before_retry,
                sleep=self._sleep,
                rng=self._rng,
            )
        except RetriesExhausted as exhausted:
            raise ProcessingLogUnavailable(
                f"MediaMath processing log {url} unavailable after {exhausted.attempts} "
                f"request(s): {exhausted.last}"
            ) from None
