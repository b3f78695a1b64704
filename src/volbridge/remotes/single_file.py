"""Shared plumbing of single-file remotes (HDF5, TIFF): URL parsing and (z, y, x) <-> engine order."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlparse

from ..errors import URLError


def parse_file_url(url: str, known: tuple[str, ...] = ("resolution",)) -> tuple[str, str, dict[str, str]]:
    """``scheme:///path/file?key=v#/inner`` -> (path, inner, options); an option not among
    ``known`` is refused (a misspelt ``?serie=1`` read another image than the one asked for)."""
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise URLError(f"{url!r}: single-file volumes are local paths (scheme:///absolute/path)")
    path = unquote(parsed.path)
    if not path:
        raise URLError(f"{url!r} names no file")
    options = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise URLError(f"{url!r}: unknown option(s) {', '.join(unknown)}; this volume takes {', '.join(known)}")
    return path, unquote(parsed.fragment), options


def triple(text: str | None, what: str, url: str, kind=float) -> tuple | None:
    """A (z, y, x) option such as ``resolution=40,4,4``, returned as (x, y, z)."""
    if text is None:
        return None
    try:
        vals = tuple(kind(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise URLError(f"{url!r}: {what} must be three comma-separated numbers (z,y,x), got {text!r}")
    return vals[::-1]
