"""Requests to a server remote (BossDB, DVID, a relay), with the kv layer's retry policy.

One pooled, thread-safe urllib3 client per volume. Transient failures (connection refused or reset,
timeouts, truncated bodies, 5xx, 429) are retried with backoff and jitter; what remains after the
last attempt raises a StoreError (StoreTimeoutError for timeouts and 504) naming the URL. A 401/403
is an AuthError, a 404 a URLError naming what was looked for, any other 4xx an
InvalidArgumentError carrying the server's own message. Nothing turns into an empty answer.
"""

from __future__ import annotations

import json as _json
from urllib.parse import urljoin, urlsplit

from ..errors import (
    AuthError,
    InvalidArgumentError,
    MetadataError,
    StoreError,
    StoreTimeoutError,
    URLError,
)
from ..kv.retry import RetryPolicy


def server_message(data: bytes) -> str:
    """The ``message`` of a JSON error body (BossDB's shape), else the body's start as text."""
    try:
        return str(_json.loads(data).get("message", ""))
    except (ValueError, AttributeError):  # not JSON, or JSON without a message
        return data[:200].decode("utf-8", "replace").strip()


#: Redirects one request follows (requests' own limit is 30; a loop fails sooner).
MAX_REDIRECTS = 10


def _keeps_credentials(old: str, new: str) -> bool:
    """Whether a redirect from ``old`` to ``new`` may carry the token: the same host and port,
    or http to https on the default ports (requests' rule, which intern follows)."""
    a, b = urlsplit(old), urlsplit(new)
    if a.hostname != b.hostname:
        return False
    if a.scheme == "http" and b.scheme == "https" and a.port in (None, 80) and b.port in (None, 443):
        return True
    return a.scheme == b.scheme and (a.port or {"http": 80, "https": 443}.get(a.scheme)) == (
        b.port or {"http": 80, "https": 443}.get(b.scheme))


class HTTPClient:
    def __init__(self, base: str, headers: dict | None = None, *, concurrency: int = 16, policy: RetryPolicy | None = None):
        import urllib3

        self.base = base.rstrip("/")
        self.policy = policy or RetryPolicy()
        self.headers = {"User-Agent": "volbridge", **(headers or {})}
        self.http = urllib3.PoolManager(
            num_pools=4, maxsize=concurrency * 2, retries=False,
            timeout=urllib3.Timeout(connect=self.policy.connect_timeout, read=self.policy.timeout),
        )
        self.requests = 0
        self.retries = 0

    def request(self, method: str, path: str, *, body: bytes | None = None, headers: dict | None = None,
                ok=(200,), what: str = "") -> bytes:
        return self._send(method, path, body, headers, ok, what)[1]

    def status(self, method: str, path: str, *, ok=(200,), what: str = "") -> int:
        """The status of a request whose answer is its status (``HEAD``), one of ``ok``."""
        return self._send(method, path, None, None, ok, what)[0]

    def _send(self, method: str, path: str, body, headers, ok, what: str) -> tuple[int, bytes]:
        import urllib3

        url = f"{self.base}/{path}"
        hdrs = {**self.headers, **(headers or {})}
        last: Exception | None = None
        for attempt in range(1, self.policy.max_attempts + 1):
            if attempt > 1:
                self.retries += 1
                self.policy.sleep(attempt - 1)
            self.requests += 1
            try:
                r = self._follow(method, url, body, hdrs)
            except urllib3.exceptions.TimeoutError as e:
                last = StoreTimeoutError(f"{method} {url} timed out after {attempt} attempt(s): {e}")
                continue
            except urllib3.exceptions.HTTPError as e:  # refused, reset, truncated body
                last = StoreError(f"{method} {url} failed after {attempt} attempt(s): {e}")
                continue
            if r.status in ok:
                return r.status, r.data
            message = server_message(r.data) or r.reason or ""
            if r.status == 429 or r.status >= 500:
                kind = StoreTimeoutError if r.status == 504 else StoreError
                last = kind(f"{method} {url}: HTTP {r.status} after {attempt} attempt(s): {message}")
                continue
            if r.status in (401, 403):
                raise AuthError(f"{url}: HTTP {r.status}: {message or 'not authorised'} (check the token)")
            if r.status == 404:
                raise URLError(f"{what or url} not found on {self.base}: {message}")
            raise InvalidArgumentError(f"{method} {url}: HTTP {r.status}: {message}")
        assert last is not None
        raise last

    def _follow(self, method: str, url: str, body, hdrs: dict):
        """One request, its redirects followed as intern's (requests') are: up to
        :data:`MAX_REDIRECTS`; a 303, and a 301/302 of a POST, become a GET without the body; the
        token goes along to the same host (and from http to https on the default ports) and to no
        other. Too many is an error at once, not retried."""
        for _ in range(MAX_REDIRECTS + 1):
            r = self.http.request(method, url, body=body, headers=hdrs, preload_content=True, decode_content=True,
                                  redirect=False)
            target = r.headers.get("Location") if r.status in (301, 302, 303, 307, 308) else None
            if not target:
                return r
            new = urljoin(url, target)
            if r.status == 303 or (r.status in (301, 302) and method == "POST"):
                method, body = "GET", None
            if not _keeps_credentials(url, new):
                hdrs = {k: v for k, v in hdrs.items() if k.lower() not in ("authorization", "cookie")}
            url = new
        raise URLError(f"{url}: more than {MAX_REDIRECTS} redirects (a loop?)")

    def json(self, path: str, what: str = "", *, method: str = "GET", body=None, ok=(200,)):
        data = self.request(method, path, headers={"Accept": "application/json"},
                            body=None if body is None else _json.dumps(body).encode(), ok=ok, what=what)
        try:
            return _json.loads(data)
        except ValueError as e:
            raise MetadataError(f"{self.base}/{path} did not return JSON: {e}") from e
