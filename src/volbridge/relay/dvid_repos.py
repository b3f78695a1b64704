"""Versioned DVID repos that the relay keeps itself (``[dvid] data_dir``), created over HTTP.

A repo is a DAG of version nodes. Its instances are raw precomputed volumes, one per instance,
whose chunks are DVID's blocks, stored under ``<data_dir>/<root uuid>/<instance>/`` through a
:class:`~volbridge.kv.versioned.VersionedStore`, so each node sees its own writes over its
ancestors'. Nodes are committed (locked) before they can have children, as in DVID; writes go to
uncommitted nodes only. The repos' metadata (DAG, notes, logs, instances, extents) is one JSON
file, rewritten atomically under a lock on every change.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid as uuidlib
from collections import Counter
from pathlib import Path

import numpy as np

from ..engine.chunked import ChunkedVolume
from ..errors import InvalidArgumentError
from ..formats.precomputed import PrecomputedDataset
from ..geometry import Box
from ..kv import FileStore
from ..kv.versioned import VersionedStore
from .errors import BAD_REQUEST, RelayError
from .json_document import JSONDocument

TYPES = {"uint8blk": "uint8", "uint16blk": "uint16", "uint32blk": "uint32", "uint64blk": "uint64",
         "float32blk": "float32", "labelblk": "uint64", "labelarray": "uint64", "labelmap": "uint64"}
LABELS = ("labelblk", "labelarray", "labelmap")
#: An instance's volume spans this many voxels each way from 0: DVID data is unbounded, its
#: extents grow with what is written (and are kept apart, in the repo metadata).
REACH = 2**30
DATANAME = re.compile(r"[\w-][\w.-]{0,127}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _triple(value, what: str, default, *, integer: bool = False) -> list:
    if value in (None, ""):
        return list(default)
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        out = [float(p) for p in parts]
    except (TypeError, ValueError, OverflowError):
        raise RelayError(400, BAD_REQUEST, f"{what} must be three numbers like \"64,64,64\", got {value!r}") from None
    if len(out) != 3 or not all(0 < v < 1e9 for v in out) or (integer and not all(v.is_integer() for v in out)):
        kind = "positive integers" if integer else "positive numbers"
        raise RelayError(400, BAD_REQUEST, f"{what} must be three {kind}, got {value!r}")
    return [int(v) if v.is_integer() else v for v in out]


class RepoStore:
    def __init__(self, data_dir: str | os.PathLike):
        self.dir = Path(data_dir).expanduser().absolute()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.document = JSONDocument(self.dir / "repos.json", {})
        self._lock = self.document.lock
        self._volumes: dict[tuple[str, str], ChunkedVolume] = {}
        #: Writes in flight per node: a commit waits for them, so a committed node never changes.
        self._writers: Counter = Counter()
        self._idle = threading.Condition(self._lock)

    def repos(self) -> dict:
        return self.document.read()

    # -- lookups ----------------------------------------------------------------------------------
    @staticmethod
    def _leaf(repo: dict, branch: str) -> str:
        """The newest node of ``branch`` (master: the root's line)."""
        nodes = repo["DAG"]["Nodes"]
        on = [u for u, n in nodes.items() if n["Branch"] == ("" if branch == "master" else branch)]
        if not on:
            raise RelayError(404, 4000, f"no branch {branch!r} in repo {repo['Root']}")
        return max(on, key=lambda u: nodes[u]["VersionID"])

    def find(self, spec: str) -> tuple[dict, str] | None:
        """(repo, node uuid) of a node uuid, a unique prefix, or ``prefix:branch``; None if unknown."""
        ref, _, branch = spec.partition(":")
        ref = ref.lower()
        doc = self.repos()
        hits = [(r, u) for r in doc.values() for u in r["DAG"]["Nodes"] if u.startswith(ref)]
        if not hits:
            return None
        if len({u for _, u in hits}) > 1:
            raise RelayError(400, BAD_REQUEST, f"UUID prefix {ref!r} is ambiguous ({len(hits)} nodes)")
        repo, node = hits[0]
        if branch:
            node = self._leaf(repo, branch)
        return repo, node

    def ancestry(self, repo: dict, node: str) -> list[str]:
        out = [node]
        nodes = repo["DAG"]["Nodes"]
        while nodes[out[-1]]["Parents"]:
            out.append(nodes[out[-1]]["Parents"][0])
        return out

    def branch_versions(self, repo: dict, branch: str) -> list[str]:
        return self.ancestry(repo, self._leaf(repo, branch))

    # -- changes ----------------------------------------------------------------------------------
    def create_repo(self, alias: str, description: str) -> str:
        root = uuidlib.uuid4().hex
        stamp = _now()
        with self.document.changing() as doc:
            doc[root] = {
                "Root": root, "Alias": alias, "Description": description, "Log": [], "Properties": {},
                "DataInstances": {}, "MutationID": 0, "SavedMutationID": 0, "Created": stamp, "Updated": stamp,
                "DAG": {"Root": root, "Nodes": {root: self._node(root, "", [], 1)}},
            }
        return root

    @staticmethod
    def _node(u: str, branch: str, parents: list[str], version: int, note: str = "") -> dict:
        stamp = _now()
        return {"Branch": branch, "Note": note, "Log": [], "UUID": u, "VersionID": version, "Locked": False,
                "Parents": parents, "Children": [], "Created": stamp, "Updated": stamp}

    def _mutate(self, node: str):
        """The (doc, repo, node dict) of ``node`` under the lock, for a change."""
        found = self.find(node)
        if found is None:
            raise RelayError(404, 4000, f"no node {node!r}")
        return found[0]["Root"], found[1]

    def commit(self, node: str, note: str, log: list) -> str:
        root, node = self._mutate(node)
        with self._idle:
            self._idle.wait_for(lambda: self._writers[node] == 0)
            return self._commit_locked(root, node, note, log)

    def _commit_locked(self, root: str, node: str, note: str, log: list) -> str:
        with self.document.changing() as doc:
            n = doc[root]["DAG"]["Nodes"][node]
            if n["Locked"]:
                raise RelayError(400, BAD_REQUEST, f"node {node} is already committed")
            n.update(Locked=True, Note=note or n["Note"], Log=n["Log"] + list(log), Updated=_now())
        return node

    def child(self, node: str, branch: str | None, note: str) -> str:
        """A new node under ``node`` (which must be committed): on ``branch``, or on its parent's."""
        root, node = self._mutate(node)
        with self.document.changing() as doc:
            repo = doc[root]
            nodes = repo["DAG"]["Nodes"]
            parent = nodes[node]
            if not parent["Locked"]:
                raise RelayError(400, BAD_REQUEST, f"node {node} is not committed: commit it before making a child version")
            if branch is None:
                branch = parent["Branch"]
                if any(nodes[c]["Branch"] == branch for c in parent["Children"]):
                    raise RelayError(400, BAD_REQUEST, f"node {node} already has a child on its branch; name a new branch")
            elif branch in ("", "master"):
                raise RelayError(400, BAD_REQUEST, "master is the root's line; name a new branch")
            elif any(n["Branch"] == branch for n in nodes.values()):
                raise RelayError(400, BAD_REQUEST, f"branch {branch!r} already exists in repo {root}")
            u = uuidlib.uuid4().hex
            nodes[u] = self._node(u, branch, [node], max(n["VersionID"] for n in nodes.values()) + 1, note)
            parent["Children"].append(u)
            repo["Updated"] = _now()
        return u

    def add_log(self, node: str, lines: list) -> None:
        root, node = self._mutate(node)
        with self.document.changing() as doc:
            n = doc[root]["DAG"]["Nodes"][node]
            n["Log"] = n["Log"] + [str(x) for x in lines]

    def create_instance(self, node: str, spec: dict) -> None:
        root, node = self._mutate(node)
        typename = spec.get("typename")
        name = spec.get("dataname")
        if not isinstance(typename, str) or typename not in TYPES:  # (a list was a 500: unhashable)
            raise RelayError(400, BAD_REQUEST, f"typename {typename!r} is not one the relay stores ({', '.join(TYPES)})")
        if not isinstance(name, str) or not DATANAME.fullmatch(name):
            raise RelayError(400, BAD_REQUEST, f"dataname {name!r} must be 1 to 128 letters, digits, _, - and . (not first)")
        default_block = (64, 64, 64) if typename in ("labelarray", "labelmap") else (32, 32, 32)
        block = [int(v) for v in _triple(spec.get("BlockSize"), "BlockSize", default_block, integer=True)]
        if any(b > 1024 for b in block):
            raise RelayError(400, BAD_REQUEST, f"BlockSize {block} is over 1024 a side")
        voxel = _triple(spec.get("VoxelSize"), "VoxelSize", (8, 8, 8))
        if name in self.repos()[root]["DataInstances"]:
            raise RelayError(400, BAD_REQUEST, f"data instance {name!r} already exists in repo {root}")
        info = {
            "@type": "neuroglancer_multiscale_volume", "type": "segmentation" if typename in LABELS else "image",
            "data_type": TYPES[typename], "num_channels": 1,
            "scales": [{"key": "blocks", "size": [2 * REACH] * 3, "voxel_offset": [-REACH] * 3, "resolution": voxel,
                        "chunk_sizes": [block], "encoding": "raw", "volbridge": {"compression": "gzip"}}],
        }
        # the volume first, then the registration: a failure leaves no half-made instance listed
        base = FileStore(str(self.dir / root / name))
        VersionedStore(base, [root]).put("info", json.dumps(info).encode())
        with self.document.changing() as doc:
            repo = doc[root]
            if name in repo["DataInstances"]:
                raise RelayError(400, BAD_REQUEST, f"data instance {name!r} already exists in repo {root}")
            repo["DataInstances"][name] = {"TypeName": typename, "BlockSize": block, "VoxelSize": voxel,
                                           "Versioned": str(spec.get("versioned", "true")).lower() != "false",
                                           "MinPoint": None, "MaxPoint": None, "Created": _now()}

    # -- data -------------------------------------------------------------------------------------
    def instance(self, repo: dict, name: str) -> dict:
        inst = repo["DataInstances"].get(name)
        if inst is None:
            raise RelayError(404, 4000, f"no data instance {name!r} in repo {repo['Root']}")
        return inst

    def volume(self, repo: dict, node: str, name: str) -> ChunkedVolume:
        """The instance as it is at ``node`` (writable if the node is not committed)."""
        self.instance(repo, name)
        locked = repo["DAG"]["Nodes"][node]["Locked"]
        key = (node, name)
        with self._lock:
            vol = self._volumes.get(key)
            if vol is None or ("write" in vol.capabilities) == locked:
                base = FileStore(str(self.dir / repo["Root"] / name))
                store = VersionedStore(base, self.ancestry(repo, node), writable=not locked)
                vol = ChunkedVolume(store, PrecomputedDataset(store), url=f"dvid:{repo['Root']}/{node}/{name}", writable=not locked)
                self._volumes[key] = vol
            return vol

    def grow_extents(self, root: str, name: str, box: Box) -> None:
        with self.document.changing() as doc:
            inst = doc[root]["DataInstances"][name]
            lo, hi = box.start, tuple(v - 1 for v in box.stop)
            inst["MinPoint"] = list(lo) if inst["MinPoint"] is None else [min(a, b) for a, b in zip(inst["MinPoint"], lo)]
            inst["MaxPoint"] = list(hi) if inst["MaxPoint"] is None else [max(a, b) for a, b in zip(inst["MaxPoint"], hi)]

    def set_extents(self, root: str, name: str, lo, hi) -> None:
        """DVID's ``POST /extents``: MinPoint and MaxPoint (inclusive), as given."""
        if not all(isinstance(p, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in p) for p in (lo, hi)):
            raise RelayError(400, BAD_REQUEST, "extents need MinPoint and MaxPoint, each [x, y, z] integers")
        if len(lo) != 3 or len(hi) != 3 or any(a > b for a, b in zip(lo, hi)):
            raise RelayError(400, BAD_REQUEST, f"extents MinPoint {lo} and MaxPoint {hi} must be 3 integers each, MinPoint <= MaxPoint")
        if any(abs(v) > REACH for v in (*lo, *hi)):  # (1e20 was taken, and shown by info)
            raise RelayError(400, BAD_REQUEST, f"extents {lo}..{hi} reach past the relay's +-{REACH} voxels")
        with self.document.changing() as doc:
            inst = doc[root]["DataInstances"][name]
            inst["MinPoint"], inst["MaxPoint"] = lo, hi

    def write(self, repo: dict, node: str, name: str, box: Box, xyz: np.ndarray) -> None:
        if any(abs(v) > REACH for v in (*box.start, *box.stop)):
            raise InvalidArgumentError(f"the write reaches beyond +-{REACH} voxels")
        with self._lock:  # checked now, not when the request began: a commit may have come between
            repo = self.document.read()[repo["Root"]]
            if repo["DAG"]["Nodes"][node]["Locked"]:
                raise RelayError(400, BAD_REQUEST, f"node {node} is committed (locked); write to an uncommitted child version")
            self._writers[node] += 1
        try:
            vol = self.volume(repo, node, name)
            vol.write(box, xyz[..., None] if xyz.ndim == 3 else xyz, 0)
        finally:
            with self._idle:
                self._writers[node] -= 1
                self._idle.notify_all()
        # Extents grow to hold the non-zero voxels written: the zeros that pad a write out to whole
        # blocks (DVID takes block-aligned writes only) do not move the bounds a client set.
        nz = np.nonzero(xyz)
        if nz[0].size:
            lo = tuple(int(a.min()) + s for a, s in zip(nz, box.start))
            hi = tuple(int(a.max()) + 1 + s for a, s in zip(nz, box.start))
            self.grow_extents(repo["Root"], name, Box(lo, hi))
