"""Library exceptions.

Every error volbridge raises on purpose derives from :class:`VolbridgeError` and carries a message
that says what was wrong and what was expected, so the command line can print it without a
traceback. The subclasses let callers catch one kind of failure (say, a missing key) precisely.
"""

from __future__ import annotations


class VolbridgeError(Exception):
    """Base class of every error volbridge raises on purpose."""


class URLError(VolbridgeError, ValueError):
    """A URL or path that volbridge cannot parse or cannot open."""


class MetadataError(VolbridgeError, ValueError):
    """Volume metadata (an `info`, `.zarray`, ...) that is missing, malformed or inconsistent."""


class UnsupportedError(VolbridgeError, NotImplementedError):
    """A feature the data uses (an encoding, a layout) that volbridge does not handle."""


class StoreError(VolbridgeError, OSError):
    """An I/O failure in a key-value store. The message names the key and the store."""


class VersionChangedError(StoreError):
    """An object changed between the requests of one consistent read (a shard's index and its
    chunks); reading again sees the new version."""


class StoreTimeoutError(StoreError, TimeoutError):
    """A store or server that did not answer in time (after the retries)."""


class AuthError(VolbridgeError, PermissionError):
    """A server refused the credentials (missing, wrong, or without the rights asked for)."""


class ChunkDecodeError(VolbridgeError, ValueError):
    """Stored bytes that cannot be decoded into the chunk they should hold (corrupt, truncated)."""


class ChunkEncodeError(VolbridgeError, ValueError):
    """Voxels that the chunk's codec cannot encode (the message names the key)."""


class BoundsError(VolbridgeError, IndexError):
    """A write (or a required region) outside the volume's bounds."""


class DTypeError(VolbridgeError, TypeError):
    """Data whose dtype does not match the volume's."""


class ShapeError(VolbridgeError, ValueError):
    """Data whose shape does not match the region it is written to."""


class InvalidIndexError(VolbridgeError, IndexError):
    """An index (or a scale number) that does not select anything valid."""


class InvalidArgumentError(VolbridgeError, ValueError):
    """An argument outside its allowed values (an axis order, a mode)."""


class ReadOnlyError(VolbridgeError, PermissionError):
    """A write through a handle opened read-only."""
