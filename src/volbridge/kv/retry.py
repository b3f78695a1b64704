"""Retry policy for network stores: exponential backoff with full jitter, limits the user sets.

Transient failures (5xx, 429, timeouts, dropped connections, short bodies) are retried; a
failure after the last attempt raises, naming the URL. Nothing is ever turned into an absent key.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from ..environment import number
from ..errors import InvalidArgumentError


#: The jitter's own generator: drawing from the random module's would move the stream of a
#: program that seeds it for its own use (and hypothesis, which watches it during a test, warns).
_jitter = random.Random()


def retryable_status(status: int) -> bool:
    """Whether an HTTP status may pass on a retry: server errors but 501 and 505 (not
    implemented, for good), timeouts and throttling."""
    return (status >= 500 and status not in (501, 505)) or status in (408, 429)


#: What to do about the TLS failures no retry fixes, for the errors that name them.
UNTRUSTED_CERTIFICATE = "a private CA's certificate goes in AWS_CA_BUNDLE or SSL_CERT_FILE"
MISNAMED_CERTIFICATE = ("it names other hosts: check the endpoint's host name (a bucket name with dots "
                        "needs path-style addressing)")
EXPIRED_CERTIFICATE = "it is outside its dates of validity: check the server's certificate and this machine's clock"
NOT_TLS = "the server does not speak TLS there (https:// to a plain-http port?)"
OLD_TLS = "the server offers no TLS version or cipher suite this client accepts"


def certificate_advice(reason: str) -> str:
    """What to do about a server certificate refused for ``reason`` (rustls' name for it, or
    OpenSSL's words)."""
    r = reason.lower()
    if "name" in r:  # NotValidForName; "no alternative certificate subject name matches"
        return MISNAMED_CERTIFICATE
    if "expired" in r or "notvalidyet" in r or "not yet valid" in r:
        return EXPIRED_CERTIFICATE
    return UNTRUSTED_CERTIFICATE


def gave_up(error: BaseException) -> BaseException:
    """``error``, marked as raised after the policy's last attempt: the store did not answer, or
    answered only with failures that may pass (a caller that would ask again in another way,
    such as format detection, must not: it would only wait that long again)."""
    error.after_retries = True  # type: ignore[attr-defined]
    return error


def after_retries(error: BaseException) -> bool:
    """Whether ``error`` was raised after the last attempt (:func:`gave_up`)."""
    return getattr(error, "after_retries", False)


@dataclass(frozen=True)
class RetryPolicy:
    """Defaults come from ``VOLBRIDGE_MAX_ATTEMPTS`` and ``VOLBRIDGE_TIMEOUT`` when set."""

    #: Attempts per request, the first included.
    max_attempts: int = field(default_factory=lambda: number("VOLBRIDGE_MAX_ATTEMPTS", 8, least=1))
    #: First backoff; each further one doubles, up to ``max_delay``; the sleep is uniform in [0, backoff].
    base_delay: float = 0.05
    max_delay: float = 5.0
    #: Per-request timeout, seconds (connect and total).
    timeout: float = field(default_factory=lambda: number("VOLBRIDGE_TIMEOUT", 60.0, float, above=0))
    connect_timeout: float = 10.0
    #: Rounds of a conditional read-modify-write that may lose a race before giving up.
    max_conflicts: int = 200

    def __post_init__(self):
        # 0 attempts would never ask; libcurl takes a timeout of 0 as none, obstore as instant failure
        if not (isinstance(self.max_attempts, int) and self.max_attempts >= 1):
            raise InvalidArgumentError(f"max_attempts={self.max_attempts!r}: expected a whole number of at least 1")
        for name in ("timeout", "connect_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidArgumentError(f"{name}={getattr(self, name)!r}: expected seconds greater than 0")

    def backoff(self, attempt: int) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        return _jitter.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))

    def sleep(self, attempt: int) -> None:
        time.sleep(self.backoff(attempt))
