"""The DVID dialect (``shared/specs/dvid.md`` section 7), so DVID-speaking tools (and volbridge's
``dvid://`` client) read and write every volume the relay has, and keep versioned repos in it.

Two kinds of repos (see :mod:`.dvid_instances`): one per configured experiment ``c/e`` (its
channels as instances, unversioned, bounded by their sources), and, with ``[dvid] data_dir``,
repos created over HTTP (``POST /api/repos``), with instances, commits, branches and new versions
as in DVID. Raw 3-D cutouts are ZYX C-order bytes, x fastest; label types also in
``compression=lz4`` (a raw LZ4 block) or ``gzip``. Writes must be block-aligned, as DVID requires.
Extents are inclusive (``MaxPoint``), as in DVID.
"""

from __future__ import annotations

import re
import struct
import threading
import time
import zlib

import imagecodecs
import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..compression import gzip_fast
from ..geometry import Box
from .dvid_instances import ConfiguredInstance, Instance, ManagedInstance, repo_uuid
from .dvid_repos import TYPES, RepoStore
from .errors import BAD_REQUEST, TOO_LARGE, RelayError
from .requests import json_object, parse_json, read_body, string_list, token_of
from .state import Relay

__all__ = ["repo_uuid", "routes"]

TRIPLE = re.compile(r"^(-?\d{1,10})_(-?\d{1,10})_(-?\d{1,10})$")


def _relay(request: Request) -> Relay:
    return request.app.state.relay


def _configured(relay: Relay, token, every: bool = False) -> dict[str, tuple[str, str, list[str]]]:
    """{uuid: (collection, experiment, [channels])} of the config's repos the token may see (``every``: all)."""
    out: dict[str, tuple[str, str, list[str]]] = {}
    for name in relay.snapshot() if every else relay.visible(token):
        c, e, ch = name.split("/")
        out.setdefault(repo_uuid(c, e), (c, e, []))[2].append(ch)
    return out


class Node:
    """A resolved ``{uuid}``: a configured repo's only node, or a node of a managed repo."""

    def __init__(self, relay: Relay, token, spec: str):
        ref, _, branch = spec.partition(":")
        if not re.fullmatch(r"[0-9a-fA-F]{1,32}", ref):
            raise RelayError(400, BAD_REQUEST, f"{spec!r} is not a UUID or UUID prefix")
        self.relay, self.token = relay, token
        managed = relay.repos.find(spec) if relay.repos is not None else None
        configured = [u for u in _configured(relay, token, every=True) if u.startswith(ref.lower())]
        if managed and configured or len(configured) > 1:
            raise RelayError(400, BAD_REQUEST, f"UUID prefix {ref!r} is ambiguous")
        if managed:
            self.repo, self.uuid = managed
            self.root = self.repo["Root"]
            self.kind = "managed"
            names = [f"dvid/{self.root}/{n}" for n in (*self.repo["DataInstances"], "_")]
            if not any(relay.allowed(token, a, n) for a in ("read", "write") for n in names):
                # the caller's own spelling in the message: the full UUID of a repo it may not see stays hidden
                if relay.config.token(token) is None:
                    raise RelayError(401, 4001, f"node {spec!r} needs a token (Authorization: Token <token>)")
                raise RelayError(403, 4002, f"the token grants nothing in node {spec!r}")
            return
        if not configured:
            raise RelayError(404, 4000, f"no repo or node {spec!r} on this relay")
        if branch and branch != "master":
            raise RelayError(404, 4000, f"no branch {branch!r}: configured repos have only master")
        self.uuid = self.root = configured[0]
        self.kind = "configured"
        c, e, chans = _configured(relay, token, every=True)[self.uuid]
        self.c, self.e = c, e
        self.channels = [ch for ch in chans if relay.allowed(token, "read", f"{c}/{e}/{ch}")]
        if not self.channels and not any(relay.allowed(token, "write", f"{c}/{e}/{ch}") for ch in chans):
            relay.authorize(token, "read", f"{c}/{e}/{chans[0]}")  # raises 401 or 403

    def instance(self, name: str, action: str) -> Instance:
        if self.kind == "managed":
            inst: Instance = ManagedInstance(self.relay.repos, self.repo, self.uuid, name)
        else:
            if f"{self.c}/{self.e}/{name}" not in self.relay.sources:
                raise RelayError(404, 4000, f"no data instance {name!r} in repo {self.uuid}")
            inst = ConfiguredInstance(self.relay.source(self.c, self.e, name), self.uuid)
        self.relay.authorize(self.token, action, inst.access_name)
        return inst

    def repo_info(self) -> dict:
        if self.kind == "managed":
            repo = dict(self.repo)
            repo["DataInstances"] = {n: ManagedInstance(self.relay.repos, self.repo, self.uuid, n).info()
                                     for n in self.repo["DataInstances"]}
            return repo
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.relay.started))
        return {
            "Root": self.uuid, "Alias": f"{self.c}/{self.e}", "Description": f"volbridge relay experiment {self.c}/{self.e}",
            "Log": [], "Properties": {}, "DataInstances": {ch: self.instance(ch, "read").info() for ch in self.channels},
            "DAG": {"Root": self.uuid, "Nodes": {self.uuid: {
                "Branch": "", "Note": "", "Log": [], "UUID": self.uuid, "VersionID": 1, "Locked": False,
                "Parents": [], "Children": [], "Created": stamp, "Updated": stamp}}},
            "MutationID": 0, "SavedMutationID": 0, "Created": stamp, "Updated": stamp,
        }

    def managed_only(self, what: str) -> RepoStore:
        """The repo store, for a change to this node's repo (a token with write rights in it)."""
        if self.kind != "managed":
            raise RelayError(400, BAD_REQUEST, f"{what}: repo {self.root} comes from the relay's config and is not versioned")
        names = [f"dvid/{self.root}/{n}" for n in (*self.repo["DataInstances"], "_")]
        if not any(self.relay.allowed(self.token, "write", n) for n in names):
            self.relay.authorize(self.token, "write", names[-1])  # raises 401 or 403
        return self.relay.repos


def node(request: Request) -> Node:
    return Node(_relay(request), token_of(request), request.path_params["uuid"])


def instance(request: Request, action: str) -> Instance:
    return node(request).instance(request.path_params["data"], action)


# -- server and repos -------------------------------------------------------------------------------
async def server_info(request: Request):
    relay = _relay(request)
    return JSONResponse({"DVID Version": "volbridge relay", "Storage backend": "volbridge sources",
                         "Server uptime": f"{time.time() - relay.started:.0f}s"})


async def server_types(request: Request):
    return JSONResponse({n: f"github.com/janelia-flyem/dvid/datatype/{n}" for n in TYPES})


async def repos_info(request: Request):
    relay, token = _relay(request), token_of(request)
    out = {u: Node(relay, token, u).repo_info() for u in _configured(relay, token)}
    if relay.repos is not None:
        for root, repo in relay.repos.repos().items():
            names = [f"dvid/{root}/{n}" for n in (*repo["DataInstances"], "_")]
            if any(relay.allowed(token, a, n) for a in ("read", "write") for n in names):
                out[root] = Node(relay, token, root).repo_info()
    return JSONResponse(out)


async def create_repo(request: Request):
    relay = _relay(request)
    if relay.repos is None:
        raise RelayError(400, BAD_REQUEST, "this relay keeps no DVID repos of its own (no [dvid] data_dir in its config)")
    relay.authorize(token_of(request), "write", "dvid/new/_")
    doc = await json_object(request)
    alias = str(doc.get("alias") or doc.get("Alias") or "")
    root = await run_in_threadpool(relay.repos.create_repo, alias, str(doc.get("description") or doc.get("Description") or ""))
    return JSONResponse({"root": root})


async def repo(request: Request):
    n = node(request)
    if request.method == "HEAD":
        return Response(status_code=200)
    return JSONResponse(n.repo_info())


async def create_instance(request: Request):
    n = node(request)
    repos = n.managed_only("instance")
    doc = await json_object(request)
    await run_in_threadpool(repos.create_instance, n.uuid, doc)
    return JSONResponse({"result": f"Added {doc.get('dataname')} [{doc.get('typename')}] to node {n.uuid}"})


async def branch_versions(request: Request):
    n = node(request)
    branch = request.path_params["branch"]
    if n.kind == "managed":
        return JSONResponse(n.relay.repos.branch_versions(n.repo, branch))
    if branch != "master":
        raise RelayError(404, 4000, f"no branch {branch!r}")
    return JSONResponse([n.uuid])


async def commit(request: Request):
    n = node(request)
    if request.method == "GET":
        locked = n.kind == "managed" and n.repo["DAG"]["Nodes"][n.uuid]["Locked"]
        return JSONResponse({"Locked": locked})
    repos = n.managed_only("commit")
    doc = await json_object(request)
    done = await run_in_threadpool(repos.commit, n.uuid, _note(doc), string_list(doc.get("log"), "log"))
    return JSONResponse({"committed": done})


async def branch(request: Request):
    n = node(request)
    repos = n.managed_only("branch")
    doc = await json_object(request)
    name = doc.get("branch")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise RelayError(400, BAD_REQUEST, "a branch needs a name: {\"branch\": \"name\"}")
    child = await run_in_threadpool(repos.child, n.uuid, name, _note(doc))
    return JSONResponse({"child": child})


async def newversion(request: Request):
    n = node(request)
    repos = n.managed_only("newversion")
    doc = await json_object(request)
    child = await run_in_threadpool(repos.child, n.uuid, None, _note(doc))
    return JSONResponse({"child": child})


async def log(request: Request):
    n = node(request)
    if request.method == "GET":
        entries = n.repo["DAG"]["Nodes"][n.uuid]["Log"] if n.kind == "managed" else []
        return JSONResponse({"log": entries})
    repos = n.managed_only("log")
    doc = await json_object(request)
    await run_in_threadpool(repos.add_log, n.uuid, string_list(doc.get("log"), "log"))
    return Response(status_code=200)


async def unsupported(request: Request):
    """DVID endpoints the relay does not serve: said so, naming the request (a review found
    'l is not supported' for DELETE of instance l, and a maxlabel answered by another face's
    'no channel')."""
    node(request)
    raise RelayError(400, BAD_REQUEST, f"{request.method} {request.url.path} is not supported by this relay's DVID dialect")


# -- instances --------------------------------------------------------------------------------------
async def info(request: Request):
    inst = instance(request, "read")
    return JSONResponse(inst.info())


def _triple(text: str, what: str) -> tuple[int, int, int]:
    m = TRIPLE.match(text)
    if m is None:
        raise RelayError(400, BAD_REQUEST, f"{what} {text!r} must be x_y_z integers")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _raw_box(request: Request, inst: Instance) -> Box:
    p = request.path_params
    if p["dims"] not in ("0_1_2", "xyz"):
        raise RelayError(400, BAD_REQUEST, f"dims {p['dims']!r}: this relay serves 3-D raw cutouts (0_1_2) only")
    size = _triple(p["size"], "size")
    offset = _triple(p["offset"], "offset")
    if any(n <= 0 for n in size):
        raise RelayError(400, BAD_REQUEST, f"size {p['size']!r} must be positive")
    box = Box(offset, tuple(o + n for o, n in zip(offset, size)))
    nbytes = box.size * inst.dtype.itemsize
    limit = _relay(request).config.max_cutout_bytes
    if nbytes > limit:
        raise RelayError(413, TOO_LARGE, f"the cutout is {nbytes} bytes; this relay serves at most {limit} per request")
    return box


#: Query parameters DVID clients send that change nothing a relay answers: who asks (u, app),
#: throttling, mutation bookkeeping, and supervoxels (no agglomeration here: they are the labels).
_HARMLESS = {"u", "app", "throttle", "mutate", "supervoxels"}


def _only(request: Request, allowed: set[str], what: str, inst: Instance | None = None) -> int:
    """Refuse query parameters the relay does not apply (roi=, minz=, ...): DVID answers them,
    and a relay answering as if they were not there returned other data with a 200 (a review
    found scale=1 serving scale 0, and a sparsevol ignoring its z range). Returns the ``scale``
    asked for, one ``inst`` serves (its MaxDownresLevel; any but 0 is refused without one)."""
    q = request.query_params
    text = q.get("scale", "0")
    top = inst.max_downres if inst is not None else 0
    if not re.fullmatch(r"[0-9]{1,2}", text) or int(text) > top:
        held = f"scales 0..{top}" if top else "scale 0 only"
        why = f"{inst.name} has {held}" if inst is not None else "the relay writes scale 0 (DVID computes the others)"
        raise RelayError(400, BAD_REQUEST, f"{what}: scale={text!r}: {why}"
                         + ("" if top else " (a source's other scales: through the BossDB and precomputed faces)"))
    extra = sorted(set(q) - allowed - _HARMLESS - {"scale"})
    if extra:
        raise RelayError(400, BAD_REQUEST, f"{what}: the relay does not apply {', '.join(extra)}; ask without it")
    return int(text)


def _compression(request: Request, inst: Instance) -> str | None:
    comp = request.query_params.get("compression")
    if comp in (None, "", "none", "uncompressed"):
        return None
    if comp not in ("lz4", "gzip"):
        raise RelayError(400, BAD_REQUEST, f"compression {comp!r}: the relay sends lz4 or gzip")
    if not inst.is_label:
        raise RelayError(400, BAD_REQUEST, f"compression= applies to label types, not {inst.typename}")
    return comp


async def raw_get(request: Request):
    inst = instance(request, "read")
    fmt = request.path_params.get("format", "octet-stream")
    if fmt not in ("octet-stream", "raw"):
        raise RelayError(400, BAD_REQUEST, f"format {fmt!r}: the relay sends octet-stream 3-D cutouts")
    scale = _only(request, {"compression"}, "raw", inst)
    box = _raw_box(request, inst)
    comp = _compression(request, inst)

    def work() -> bytes:
        data = np.ascontiguousarray(inst.read(box, scale).T).tobytes()
        if comp == "lz4":
            return imagecodecs.lz4_encode(data, header=False)
        if comp == "gzip":
            return gzip_fast(data)
        return data

    return Response(await run_in_threadpool(work), media_type="application/octet-stream")


async def raw_post(request: Request):
    inst = instance(request, "write")
    _only(request, {"compression"}, "raw")
    box = _raw_box(request, inst)
    comp = _compression(request, inst)
    if any(o % b or n % b for o, n, b in zip(box.start, box.shape, inst.block)):
        raise RelayError(400, BAD_REQUEST, f"DVID writes must be block-aligned: offset and size must be multiples of the block size {inst.block}")
    nbytes = box.size * inst.dtype.itemsize
    body = await read_body(request, nbytes + nbytes // 8 + 65536)

    def work() -> None:
        raw = body
        try:
            if comp == "lz4":
                raw = imagecodecs.lz4_decode(body, header=False, out=nbytes)
            elif comp == "gzip":
                raw = _gunzip_bounded(body, nbytes)
        except Exception as e:  # noqa: BLE001 - a codec library's own error type
            raise RelayError(400, BAD_REQUEST, f"the body is not a valid {comp} stream: {e}") from e
        if len(raw) != nbytes:
            raise RelayError(400, BAD_REQUEST, f"the body has {len(raw)} bytes; {box.shape[::-1]} (z, y, x) of {inst.dtype} needs {nbytes}")
        inst.write(box, np.frombuffer(raw, inst.dtype).reshape(box.shape[::-1]).T)

    await run_in_threadpool(work)
    return Response(status_code=200)


#: Gzip members a POST body may hold (a review found 2.4 MB of empty members holding a core 18 s).
MAX_GZIP_MEMBERS = 64


def _gunzip_bounded(body: bytes, nbytes: int) -> bytes:
    """A gzip body of one member or several (valid gzip; Go's reader, DVID's, takes them: a
    review found them refused), inflated at most one byte past the ``nbytes`` expected (no gzip
    bombs). A truncated stream, or bytes after the last member that are no gzip, raise."""
    out, rest, members = bytearray(), body, 0
    while rest and len(out) <= nbytes:
        members += 1
        if members > MAX_GZIP_MEMBERS:  # each member copies what follows it: bounded, not quadratic
            raise ValueError(f"more than {MAX_GZIP_MEMBERS} gzip members")
        d = zlib.decompressobj(31)
        out += d.decompress(rest, nbytes + 1 - len(out))
        if not d.eof:
            if len(out) > nbytes:
                break  # more than the cutout holds: the size check says so
            raise ValueError("the gzip stream ends early")
        rest = d.unused_data
    return bytes(out)


async def extents(request: Request):
    n = node(request)
    repos = n.managed_only("extents")
    inst = n.instance(request.path_params["data"], "write")
    doc = await json_object(request)
    await run_in_threadpool(repos.set_extents, inst.repo_root, inst.name, doc.get("MinPoint"), doc.get("MaxPoint"))
    return Response(status_code=200)


def _voxel(inst: Instance, p: tuple[int, int, int], scale: int = 0) -> int:
    return int(inst.read(Box(p, (p[0] + 1, p[1] + 1, p[2] + 1)), scale)[0, 0, 0])


def _note(doc: dict) -> str:
    """A commit's or branch's note: a string (null and absent are none; a review found them kept
    as 'None' and a dict's Python text)."""
    note = doc.get("note")
    if note is None:
        return ""
    if not isinstance(note, str):
        raise RelayError(400, BAD_REQUEST, f"note must be a string, got {type(note).__name__}")
    return note


def _label_instance(request: Request) -> Instance:
    inst = instance(request, "read")
    if not inst.is_label:  # (a float32blk voxel of 2.75 answered {"Label": 2})
        raise RelayError(400, BAD_REQUEST, f"label lookups are for label types, not {inst.typename}")
    return inst


async def label_at(request: Request):
    inst = _label_instance(request)
    scale = _only(request, {"supervoxels"}, "label", inst)
    point = _triple(request.path_params["point"], "point")
    return JSONResponse({"Label": await run_in_threadpool(_voxel, inst, point, scale)})


async def labels_at(request: Request):
    inst = _label_instance(request)
    scale = _only(request, {"supervoxels"}, "labels", inst)
    points = parse_json(await read_body(request, 1 << 20))
    # integers only: int() truncated 2.5 and overflowed on 1e400 (a 500)
    if not isinstance(points, list) or not all(
            isinstance(p, list) and len(p) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 2**40 for v in p)
            for p in points):
        raise RelayError(400, BAD_REQUEST, "the body must be a JSON list of [x, y, z] integer points")
    pts = [tuple(p) for p in points]
    return JSONResponse(await run_in_threadpool(lambda: [_voxel(inst, p, scale) for p in pts]))


def sparsevol_spans(inst: Instance, label: int, scale: int = 0) -> list[tuple[int, int, int, int]]:
    """(x, y, z, length) runs along x of ``label`` at ``scale``, sorted by z, y, x and merged."""
    spans: list[tuple[int, int, int, int]] = []
    lock = threading.Lock()

    def fn(box: Box, vox: np.ndarray) -> None:
        mask = (vox == label).T  # (z, y, x): rows along x, and np.nonzero walks them in order
        if not mask.any():
            return
        d = np.diff(np.pad(mask, ((0, 0), (0, 0), (1, 1))).astype(np.int8), axis=2)
        sz, sy, sx = np.nonzero(d == 1)  # run starts
        ex = np.nonzero(d == -1)[2]  # one past each run's end, same order
        x0, y0, z0 = box.start
        out = list(zip((sx + x0).tolist(), (sy + y0).tolist(), (sz + z0).tolist(), (ex - sx).tolist()))
        with lock:
            spans.extend(out)

    inst.scan(fn, scale)
    spans.sort(key=lambda s: (s[2], s[1], s[0]))
    merged: list[tuple[int, int, int, int]] = []
    for s in spans:
        if merged and merged[-1][1:3] == s[1:3] and merged[-1][0] + merged[-1][3] == s[0]:
            p = merged[-1]
            merged[-1] = (p[0], p[1], p[2], p[3] + s[3])
        else:
            merged.append(s)
    return merged


async def sparsevol(request: Request):
    inst = instance(request, "read")
    if not inst.is_label:
        raise RelayError(400, BAD_REQUEST, f"sparsevol is for label types, not {inst.typename}")
    try:
        text = request.path_params["label"]
        if not re.fullmatch(r"[0-9]{1,20}", text):  # (int() takes '1_0' as 10, and other digits)
            raise ValueError
        label = int(text)
        if not 0 < label < 2**64:
            raise ValueError
    except ValueError:
        raise RelayError(400, BAD_REQUEST, f"label {request.path_params['label']!r} must be a positive 64-bit integer") from None
    scale = _only(request, {"format"}, "sparsevol", inst)
    fmt = request.query_params.get("format", "rles")
    if fmt not in ("rles", "srles"):
        raise RelayError(400, BAD_REQUEST, f"format {fmt!r}: the relay sends rles or srles")
    ext = inst.extents(scale)
    nbytes = 0 if ext is None else ext.size * inst.dtype.itemsize
    limit = _relay(request).config.max_scan_bytes
    if nbytes > limit:
        raise RelayError(413, TOO_LARGE, f"a sparse volume of {inst.name} scans {nbytes} bytes; the relay scans at most {limit}")
    spans = await run_in_threadpool(sparsevol_spans, inst, label, scale)
    if request.method == "HEAD":
        return Response(status_code=200 if spans else 204)
    if not spans:
        raise RelayError(404, 4000, f"label {label} is not in {inst.name}")
    body = np.asarray(spans, dtype="<i4").tobytes()
    if fmt == "rles":
        body = struct.pack("<BBBBII", 0, 3, 0, 0, 0, len(spans)) + body
    return Response(body, media_type="application/octet-stream")


def routes() -> list[Route]:
    node_ = "/api/node/{uuid}/{data}"
    raw = node_ + "/raw/{dims}/{size}/{offset}"
    return [
        Route("/api/server/info", server_info),
        Route("/api/server/types", server_types),
        Route("/api/repos/info", repos_info),
        Route("/api/repos", create_repo, methods=["POST"]),
        Route("/api/repo/{uuid}", repo, methods=["HEAD"]),
        Route("/api/repo/{uuid}/info", repo, methods=["GET"]),
        Route("/api/repo/{uuid}/instance", create_instance, methods=["POST"]),
        Route("/api/repo/{uuid}/branch-versions/{branch}", branch_versions),
        Route("/api/repo/{uuid}/{op:str}", unsupported, methods=["POST", "DELETE"]),
        Route("/api/node/{uuid}/commit", commit, methods=["GET", "POST"]),
        Route("/api/node/{uuid}/status", commit, methods=["GET"]),
        Route("/api/node/{uuid}/branch", branch, methods=["POST"]),
        Route("/api/node/{uuid}/newversion", newversion, methods=["POST"]),
        Route("/api/node/{uuid}/log", log, methods=["GET", "POST"]),
        Route("/api/node/{uuid}/{op:str}", unsupported, methods=["POST"]),
        Route(node_ + "/info", info),
        Route(node_ + "/extents", extents, methods=["POST"]),
        Route(raw, raw_get, methods=["GET"]),
        Route(raw + "/{format}", raw_get, methods=["GET"]),
        Route(raw, raw_post, methods=["POST"]),
        Route(node_ + "/label/{point}", label_at),
        Route(node_ + "/labels", labels_at, methods=["GET", "POST"]),
        Route(node_ + "/sparsevol/{label}", sparsevol, methods=["GET", "HEAD"]),
        Route("/api/node/{uuid}/{data}/{op:path}", unsupported, methods=["GET", "POST", "DELETE", "HEAD"]),
        Route("/api/repo/{uuid}/{data}/{op:path}", unsupported, methods=["GET", "POST", "DELETE"]),
    ]
