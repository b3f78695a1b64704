"""BossDB resources that the relay keeps itself (``[boss] data_dir``): collections, coordinate
frames, experiments and channels created over the BossDB dialect, and key-value metadata.

A channel's data is a raw precomputed volume (gzip on disk) under
``<data_dir>/<collection>/<experiment>/<channel>-<nonce>``, with the experiment's frame as bounds
and one scale per hierarchy level (x and y halved per level; z too when isotropic). The nonce
keeps a channel deleted and created again from ever meeting the old one's cached cuboids. The
resource documents live in one JSON file, rewritten atomically under a lock on every change.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid as uuidlib
from pathlib import Path

from ..api import create
from .errors import BAD_REQUEST, RelayError
from .json_document import JSONDocument
from .requests import string_list

NAME = re.compile(r"[\w-]{1,128}")
#: Largest frame extent per axis: 2^31 voxels (DVID's and most formats' limit).
MAX_EXTENT = 2**31
DTYPES = ("uint8", "uint16", "uint32", "uint64")
UNITS = ("nanometers", "micrometers", "millimeters", "centimeters")
UNIT_NM = {"nanometers": 1, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}
#: Storage chunk of a created channel (x, y, z): a quarter of BossDB's cuboid in x and y, so
#: small cutouts stay cheap; the relay's cache grid doubles it up to its own cuboid size.
CHUNK = (128, 128, 16)


def _int(doc: dict, key: str, where: str, default=None, minimum=None) -> int:
    value = doc.get(key, default)
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        value = int(value)
        if abs(value) > 2**50:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise RelayError(400, BAD_REQUEST, f"{where}: {key} must be an integer, got {doc.get(key)!r}") from None
    if minimum is not None and value < minimum:
        raise RelayError(400, BAD_REQUEST, f"{where}: {key} must be >= {minimum}, got {value}")
    return value


def _float(doc: dict, key: str, where: str) -> float:
    try:
        value = float(doc[key])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise RelayError(400, BAD_REQUEST, f"{where}: {key} must be a number") from None
    if not (0 < value < 1e12):
        raise RelayError(400, BAD_REQUEST, f"{where}: {key} must be a positive finite number")
    return value


class BossResources:
    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir).expanduser().absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.document = JSONDocument(self.dir / "resources.json", {"collections": {}, "coords": {}, "meta": {}})

    def doc(self) -> dict:
        return self.document.read()

    # -- lookups ----------------------------------------------------------------------------------
    def collection(self, c: str) -> dict | None:
        return self.doc()["collections"].get(c)

    def experiment(self, c: str, e: str) -> dict | None:
        col = self.collection(c)
        return None if col is None else col["experiments"].get(e)

    def channel(self, c: str, e: str, ch: str) -> dict | None:
        exp = self.experiment(c, e)
        return None if exp is None else exp["channels"].get(ch)

    def coord(self, name: str) -> dict | None:
        return self.doc()["coords"].get(name)

    def channels(self) -> list[tuple[str, dict]]:
        """(c/e/ch, channel doc) of every channel."""
        out = []
        for c, col in self.doc()["collections"].items():
            for e, exp in col["experiments"].items():
                out += [(f"{c}/{e}/{ch}", doc) for ch, doc in exp["channels"].items()]
        return out

    # -- creation ---------------------------------------------------------------------------------
    @staticmethod
    def _name(name: str, what: str) -> None:
        from .config import RESERVED

        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise RelayError(400, BAD_REQUEST, f"{what} name {name!r} must be 1 to 128 letters, digits, _ and -")
        if what == "collection" and (name in RESERVED or name == "dvid"):
            raise RelayError(400, BAD_REQUEST, f"collection name {name!r} is reserved for the relay's own routes")

    def create_collection(self, c: str, body: dict, creator: str) -> dict:
        self._name(c, "collection")
        with self.document.changing() as doc:
            if c in doc["collections"]:
                raise RelayError(400, BAD_REQUEST, f"collection {c} already exists")
            doc["collections"][c] = {"name": c, "description": str(body.get("description", "")), "creator": creator,
                                     "public": False, "experiments": {}}
            return doc["collections"][c]

    def create_coord(self, name: str, body: dict, creator: str) -> dict:
        self._name(name, "coordinate frame")
        where = f"coordinate frame {name}"
        frame = {"name": name, "description": str(body.get("description", ""))}
        for axis in "xyz":
            frame[f"{axis}_start"] = _int(body, f"{axis}_start", where, 0)
            frame[f"{axis}_stop"] = _int(body, f"{axis}_stop", where)
            if frame[f"{axis}_stop"] <= frame[f"{axis}_start"]:
                raise RelayError(400, BAD_REQUEST, f"{where}: {axis}_stop must exceed {axis}_start")
            if frame[f"{axis}_stop"] - frame[f"{axis}_start"] > MAX_EXTENT:
                raise RelayError(400, BAD_REQUEST, f"{where}: {axis} spans more than {MAX_EXTENT} voxels")
            frame[f"{axis}_voxel_size"] = _float(body, f"{axis}_voxel_size", where)
        frame["voxel_unit"] = body.get("voxel_unit", "nanometers")
        if frame["voxel_unit"] not in UNITS:
            raise RelayError(400, BAD_REQUEST, f"{where}: voxel_unit must be one of {', '.join(UNITS)}")
        frame["creator"] = creator
        with self.document.changing() as doc:
            if name in doc["coords"]:
                raise RelayError(400, BAD_REQUEST, f"coordinate frame {name} already exists")
            doc["coords"][name] = frame
        return frame

    def create_experiment(self, c: str, e: str, body: dict, creator: str) -> dict:
        self._name(e, "experiment")
        where = f"experiment {c}/{e}"
        method = body.get("hierarchy_method", "anisotropic")
        if method not in ("anisotropic", "isotropic"):
            raise RelayError(400, BAD_REQUEST, f"{where}: hierarchy_method must be anisotropic or isotropic")
        exp = {
            "name": e, "description": str(body.get("description", "")), "collection": c,
            "coord_frame": str(body.get("coord_frame", "")), "hierarchy_method": method,
            "num_hierarchy_levels": _int(body, "num_hierarchy_levels", where, 1, minimum=1),
            "num_time_samples": _int(body, "num_time_samples", where, 1, minimum=1),
            "time_step": body.get("time_step") or 0, "time_step_unit": body.get("time_step_unit") or "nanoseconds",
            "creator": creator, "public": False, "channels": {},
        }
        if exp["num_hierarchy_levels"] > 10:
            raise RelayError(400, BAD_REQUEST, f"{where}: num_hierarchy_levels must be at most 10 (resolution is one digit)")
        if exp["num_time_samples"] != 1:
            raise RelayError(400, BAD_REQUEST, f"{where}: this relay stores one time sample per channel")
        with self.document.changing() as doc:
            col = doc["collections"].get(c)
            if col is None:
                raise RelayError(404, 4000, f"no collection {c}")
            if exp["coord_frame"] not in doc["coords"]:
                raise RelayError(400, BAD_REQUEST, f"{where}: no coordinate frame {exp['coord_frame']!r}")
            if e in col["experiments"]:
                raise RelayError(400, BAD_REQUEST, f"experiment {c}/{e} already exists")
            col["experiments"][e] = exp
        return exp

    def create_channel(self, c: str, e: str, ch: str, body: dict, creator: str) -> dict:
        self._name(ch, "channel")
        where = f"channel {c}/{e}/{ch}"
        dtype = body.get("datatype", "uint8")
        kind = body.get("type", "image")
        if dtype not in DTYPES:
            raise RelayError(400, BAD_REQUEST, f"{where}: datatype must be one of {', '.join(DTYPES)}")
        if kind not in ("image", "annotation"):
            raise RelayError(400, BAD_REQUEST, f"{where}: type must be image or annotation")
        if kind == "annotation" and dtype not in ("uint32", "uint64"):
            raise RelayError(400, BAD_REQUEST, f"{where}: annotation channels are uint32 or uint64")
        exp = self.experiment(c, e)
        if exp is None:
            raise RelayError(404, 4000, f"no experiment {c}/{e}")
        frame = self.coord(exp["coord_frame"])
        path = self.dir / c / e / f"{ch}-{uuidlib.uuid4().hex[:8]}"
        unit = UNIT_NM[frame["voxel_unit"]]
        create(
            f"precomputed://{path}", bounds=([frame[f"{a}_start"] for a in "zyx"], [frame[f"{a}_stop"] for a in "zyx"]),
            dtype=dtype, chunk_shape=CHUNK[::-1], resolution=[frame[f"{a}_voxel_size"] * unit for a in "zyx"],
            compression="gzip", layer_type="segmentation" if kind == "annotation" else "image",
            num_scales=exp["num_hierarchy_levels"], factor=(2 if exp["hierarchy_method"] == "isotropic" else 1, 2, 2),
        )
        chan = {
            "name": ch, "description": str(body.get("description", "")), "experiment": e,
            "default_time_sample": _int(body, "default_time_sample", where, 0), "type": kind,
            "base_resolution": _int(body, "base_resolution", where, 0, minimum=0), "datatype": dtype, "creator": creator,
            "sources": string_list(body.get("sources"), "sources"), "related": string_list(body.get("related"), "related"),
            "downsample_status": "NOT_DOWNSAMPLED", "public": False, "storage_type": "spdb", "bucket": None, "cv_path": None,
            "url": f"precomputed://{path}",
        }
        with self.document.changing() as doc:
            chans = doc["collections"][c]["experiments"][e]["channels"]
            if ch in chans:
                shutil.rmtree(path, ignore_errors=True)
                raise RelayError(400, BAD_REQUEST, f"channel {c}/{e}/{ch} already exists")
            chans[ch] = chan
        return chan

    # -- updates and deletes ----------------------------------------------------------------------
    def update(self, path: tuple[str, ...], body: dict) -> dict:
        """PUT: description, public, and (channels) sources/related; names stay."""
        with self.document.changing() as doc:
            node = self._node(doc, path)
            if "description" in body:
                node["description"] = str(body["description"])
            if "public" in body:
                node["public"] = bool(body["public"])
            for key in ("sources", "related"):
                if key in body and len(path) == 3:
                    node[key] = string_list(body[key], key)
            if "downsample_status" in body and len(path) == 3:
                node["downsample_status"] = str(body["downsample_status"])
            return dict(node)

    @staticmethod
    def _node(doc: dict, path: tuple[str, ...]) -> dict:
        node = doc["collections"].get(path[0])
        for key, child in zip(path[1:], ("experiments", "channels")):
            node = None if node is None else node[child].get(key)
        if node is None:
            raise RelayError(404, 4000, f"no {('collection', 'experiment', 'channel')[len(path) - 1]} {'/'.join(path)}")
        return node

    def delete(self, path: tuple[str, ...]) -> str | None:
        """Remove a resource (an empty collection or experiment, or a channel and its data);
        the channel's volume URL, for the relay to forget."""
        with self.document.changing() as doc:
            node = self._node(doc, path)
            kids = node.get("experiments") or node.get("channels")
            if len(path) < 3 and kids:
                raise RelayError(400, BAD_REQUEST, f"{'/'.join(path)} is not empty; delete what it holds first")
            parent = doc["collections"] if len(path) == 1 else self._node(doc, path[:-1])[("experiments", "channels")[len(path) - 2]]
            del parent[path[-1]]
            doc["meta"] = {k: v for k, v in doc["meta"].items() if k != "/".join(path) and not k.startswith("/".join(path) + "/")}
        if len(path) == 3:
            shutil.rmtree(node["url"][len("precomputed://"):], ignore_errors=True)
            return node["url"]
        return None

    def delete_coord(self, name: str) -> None:
        with self.document.changing() as doc:
            if name not in doc["coords"]:
                raise RelayError(404, 4000, f"no coordinate frame {name}")
            users = [f"{c}/{e}" for c, col in doc["collections"].items() for e, x in col["experiments"].items() if x["coord_frame"] == name]
            if users:
                raise RelayError(400, BAD_REQUEST, f"coordinate frame {name} is used by {', '.join(users)}")
            del doc["coords"][name]

    def reserve(self, path: tuple[str, str, str], count: int, allocate) -> int:
        """Reserve ``count`` ids of a channel: ``allocate(floor)`` picks the first (above the
        data's largest id and ``floor``); the next free id is kept in the document, so a restart
        never hands the same ids out again."""
        with self.document.changing() as doc:
            chan = self._node(doc, path)
            start = allocate(int(chan.get("next_id", 0)))
            chan["next_id"] = start + count
            return start

    # -- key-value metadata -----------------------------------------------------------------------
    def meta(self, path: str) -> dict:
        return dict(self.doc()["meta"].get(path, {}))

    def set_meta(self, path: str, key: str, value: str, *, create: bool) -> None:
        with self.document.changing() as doc:
            entries = doc["meta"].setdefault(path, {})
            if create and key in entries:
                raise RelayError(400, BAD_REQUEST, f"metadata key {key!r} already exists on {path}; update it with PUT")
            if not create and key not in entries:
                raise RelayError(404, 4000, f"no metadata key {key!r} on {path}")
            entries[key] = value

    def delete_meta(self, path: str, key: str) -> None:
        with self.document.changing() as doc:
            entries = doc["meta"].get(path, {})
            if key not in entries:
                raise RelayError(404, 4000, f"no metadata key {key!r} on {path}")
            del entries[key]

