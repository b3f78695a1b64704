"""Provenance: every output of a service gets a record beside it (service, volbridge version,
parameters, source URL, box, scale, start and end times, host, user), readable back with
:func:`read`.

Where it goes is the format's (``attributes_location`` of its dataset): precomputed, CloudVolume's
``provenance`` file beside ``info`` (records appended to its ``processing`` list, so CloudVolume
shows them); zarr and OME-Zarr, the attributes (``volbridge_provenance``) of ``.zattrs`` or
``zarr.json``; N5, ``attributes.json``. Appended with the store's atomic read-modify-write, so
concurrent services lose no record. Remotes without such a place (HDF5, TIFF, BossDB, DVID) get none.
"""

from __future__ import annotations

import datetime
import getpass
import json
import socket
from typing import Any

from ..errors import MetadataError

KEY = "volbridge_provenance"


def record(service: str, parameters: dict, source: str | None, *, box=None, scale: int | None = None,
           started: float, ended: float) -> dict:
    from .. import __version__

    def stamp(t: float) -> str:
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = None
    return {
        "method": {"service": service, "volbridge": __version__, "parameters": parameters},
        "source": source, "box": None if box is None else {"start": list(box[0]), "stop": list(box[1]), "order": "zyx"},
        "scale": scale, "started": stamp(started), "ended": stamp(ended), "host": socket.gethostname(), "by": user,
        "date": stamp(ended),
    }


def _location(volume) -> tuple[Any, str, str | None] | None:
    dataset = getattr(volume, "dataset", None)
    store = getattr(volume, "store", None)
    if dataset is None or store is None:
        return None
    key, inner = dataset.attributes_location
    return store, key, inner


def append(volume, rec: dict) -> bool:
    """Add ``rec`` to ``volume``'s provenance; False where the volume has no place for it."""
    found = _location(volume)
    if found is None:
        return False
    append_at(*found, rec)
    return True


def append_beside(output: str, rec: dict) -> None:
    """Add ``rec`` to the CloudVolume-style ``provenance`` file of an output directory (a path or
    store URL) holding objects rather than a volume: meshes, skeletons."""
    from ..kv import open_store

    append_at(open_store(output), "provenance", None, rec)


def _ours(rec: Any) -> bool:
    """A record volbridge wrote: other tools' entries share CloudVolume's ``processing`` list
    (CloudVolume's own have a ``method`` too, a string), are kept in the file, and left out."""
    return isinstance(rec, dict) and isinstance(rec.get("method"), dict) and "service" in rec["method"]


def read_beside(output: str) -> list[dict]:
    """The records :func:`append_beside` left in an output directory, oldest first."""
    from ..kv import open_store

    raw = open_store(output).get("provenance")
    return [] if raw is None else [r for r in json.loads(raw).get("processing", []) if _ours(r)]


def append_at(store, key: str, inner: str | None, rec: dict) -> None:
    """Add ``rec`` to the JSON document ``key`` of ``store`` (``inner``: under that member),
    atomically; a ``provenance`` key holds CloudVolume's layout."""
    cloudvolume = key == "provenance"

    def merge(old: bytes | None) -> bytes:
        try:
            doc = json.loads(old) if old else {}
        except ValueError as e:
            raise MetadataError(f"{store.url}/{key} is not JSON; provenance not added: {e}") from e
        if cloudvolume:
            doc.setdefault("description", "")
            doc.setdefault("owners", [])
            doc.setdefault("sources", [])
            doc.setdefault("processing", []).append(rec)
            if rec.get("source") and rec["source"] not in doc["sources"]:
                doc["sources"].append(rec["source"])
        else:
            attrs = doc.setdefault(inner, {}) if inner else doc
            attrs.setdefault(KEY, []).append(rec)
        return json.dumps(doc, indent=2).encode()

    store.update(key, merge)


def read(source: Any) -> list[dict]:
    """The provenance records of a volume (URL or VolumeArray), oldest first."""
    from ..api import array

    volume = (array(source) if isinstance(source, str) else source).volume
    found = _location(volume)
    if found is None:
        return []
    store, key, inner = found
    raw = store.get(key)
    if raw is None:
        return []
    doc = json.loads(raw)
    if key == "provenance":
        return [r for r in doc.get("processing", []) if _ours(r)]
    attrs = doc.get(inner, {}) if inner else doc
    return [r for r in attrs.get(KEY, []) if _ours(r)]
