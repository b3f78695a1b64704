"""DVID data instances as volumes: ``dvid://http://host:port/<uuid>/<instance>``.

The UUID may be a unique prefix, or ``<uuid>:<branch>`` for the leaf of a branch. Metadata comes
from the instance's ``info``: type, value dtype, block size, voxel size (in nm) and the extents,
whose ``MaxPoint`` is inclusive. A labelmap (or labelarray) with ``MaxDownresLevel`` N has
mips 1..N, read with DVID's ``?scale=``: each half the one before on every axis, its box scale
0's divided so (outward); DVID computes them itself, so they are read-only. Reads are 3-D raw cutouts (ZYX bytes, x fastest; label types
fetched lz4-compressed), split into blocks fetched in parallel. DVID accepts only block-aligned
writes, so a write is widened to whole blocks: the blocks it covers partly are read first and
merged (DVID has no conditional writes, so two clients writing the same block at once can still
overwrite each other, as with any DVID client).
"""

from __future__ import annotations

import json
import math
import re

import imagecodecs
import numpy as np

from ..engine import Volume
from ..engine.parallel import run_bounded
from ..errors import ChunkDecodeError, InvalidArgumentError, MetadataError, ReadOnlyError, UnsupportedError, URLError
from ..formats.base import ScaleMeta, VolumeMeta
from ..geometry import Box, ChunkGrid
from .http_client import HTTPClient

LABEL_TYPES = ("labelblk", "labelarray", "labelmap")
#: The types whose reads take ``?scale=N`` (up to their ``MaxDownresLevel``).
SCALED_TYPES = ("labelarray", "labelmap")
UNIT_NM = {"nanometers": 1.0, "nanometer": 1.0, "nm": 1.0, "micrometers": 1e3, "microns": 1e3, "um": 1e3,
           "millimeters": 1e6, "mm": 1e6}
#: Voxels of one request (x, y, z) at least; each instance rounds it up to whole blocks of its
#: own (writes must be block-aligned: a review found 128^3 and 48^3 instances unwritable).
REQUEST = (256, 256, 64)
CONCURRENCY = 16


def parse_url(url: str) -> tuple[str, str, str]:
    """(server ``http://host:port``, uuid spec, instance)."""
    # schemes are case-insensitive (the registry routes DVID:// here)
    m = re.fullmatch(r"(?i:dvid://(https?)://)([^/]+)/([0-9a-fA-F]+(?::[\w.-]+)?)/([^/]+)/?", url)
    if m is None:
        raise URLError(f"{url!r} must be dvid://http(s)://host:port/<uuid>[:branch]/<instance>")
    return f"{m.group(1).lower()}://{m.group(2)}", m.group(3), m.group(4)


class DVIDVolume(Volume):
    format_name = "dvid"

    def __init__(self, url: str, writable: bool = False, token: str | None = None):
        self.url = url
        server, spec, self.instance = parse_url(url)
        self._token = self.token = token
        headers = {"Authorization": f"Token {token}"} if token else {}
        self.client = HTTPClient(f"{server}/api", headers, concurrency=CONCURRENCY)
        self.uuid = self._resolve(spec)
        self.capabilities = frozenset({"write", "versions"} if writable else {"versions"})
        self.info = self.client.json(f"node/{self.uuid}/{self.instance}/info", f"data instance {self.instance!r} at {self.uuid}")
        self.meta, self.block = self._meta(self.info)
        self.request = tuple(b * max(1, -(-r // b)) for r, b in zip(REQUEST, self.block))
        self.typename = self.info["Base"]["TypeName"]

    def _resolve(self, spec: str) -> str:
        ref, _, branch = spec.partition(":")
        if branch:
            versions = self.client.json(f"repo/{ref}/branch-versions/{branch}", f"branch {branch!r} of repo {ref}")
            if not versions:
                raise URLError(f"branch {branch!r} of repo {ref} has no versions")
            return str(versions[0])  # the leaf first
        return ref

    def _meta(self, info: dict) -> tuple[VolumeMeta, tuple[int, int, int]]:
        where = f"{self.url} info"
        try:
            base, ext = info["Base"], info["Extended"]
            dtype = np.dtype(ext["Values"][0]["DataType"])
            block = tuple(int(v) for v in ext.get("BlockSize") or (32, 32, 32))
            extents = info.get("Extents") or {}
            lo = extents.get("MinPoint") or ext.get("MinPoint")
            hi = extents.get("MaxPoint") or ext.get("MaxPoint")
            units = ext.get("VoxelUnits") or ["nanometers"] * 3
            unit = UNIT_NM.get(units[0] if isinstance(units, list) else units)
            res = tuple(float(v) * (unit or 1.0) for v in (ext.get("VoxelSize") or (8, 8, 8)))
            levels = int(ext.get("MaxDownresLevel") or 0) if base.get("TypeName") in SCALED_TYPES else 0
            if not 0 <= levels <= 20:
                raise ValueError(f"MaxDownresLevel {levels}")
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise MetadataError(f"{where} is not a DVID instance description: {e!r}") from e
        if lo is None or hi is None:
            raise MetadataError(f"{where} has no extents (MinPoint/MaxPoint): nothing has been written yet")
        bounds = Box(tuple(int(v) for v in lo), tuple(int(v) + 1 for v in hi))  # MaxPoint is inclusive
        label = base.get("TypeName") in LABEL_TYPES
        scales = []
        for n in range(levels + 1):
            f = 2**n
            level = bounds.reduced((f, f, f))
            voxel = tuple(int(v * f) if float(v * f).is_integer() else v * f for v in res)
            scales.append(ScaleMeta(str(n), level, voxel, block, "dvid"))  # type: ignore[arg-type]
        return VolumeMeta(dtype=dtype, num_channels=1, layer_type="segmentation" if label else "image",
                          scales=tuple(scales), fill_value=0), block  # type: ignore[return-value]

    def metadata_json(self) -> dict:
        return self.info

    # -- raw cutouts ------------------------------------------------------------------------------
    def _path(self, b: Box) -> str:
        size = "_".join(str(n) for n in b.shape)
        off = "_".join(str(v) for v in b.start)
        return f"node/{self.uuid}/{self.instance}/raw/0_1_2/{size}/{off}"

    def _get(self, b: Box, scale: int = 0) -> np.ndarray:
        """(z, y, x) voxels of ``b`` at ``scale`` from the server."""
        dtype = self.meta.dtype
        nbytes = b.size * dtype.itemsize
        label = self.typename in LABEL_TYPES
        query = [q for q, wanted in (("compression=lz4", label), (f"scale={scale}", scale)) if wanted]
        body = self.client.request("GET", self._path(b) + ("?" + "&".join(query) if query else ""))
        if label:
            try:
                body = imagecodecs.lz4_decode(body, header=False, out=nbytes)
            except Exception as e:  # noqa: BLE001 - the codec's own error type
                raise ChunkDecodeError(f"{self.client.base}/{self._path(b)}: corrupt lz4 block: {e}") from e
        if len(body) != nbytes:
            raise ChunkDecodeError(f"{self.client.base}/{self._path(b)}: {len(body)} bytes, expected {nbytes} (truncated?)")
        return np.frombuffer(body, dtype).reshape(b.shape[::-1])

    def _blocks(self, box: Box, grid_bounds: Box) -> list[Box]:
        grid = ChunkGrid(grid_bounds, self.request, (0, 0, 0))
        return [c.box for c in grid.cells(box)]

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        out = np.zeros((*box.shape, 1), dtype=self.meta.dtype, order="F")
        region = box.intersect(self.meta.scales[scale].bounds)
        if region.empty:
            return out

        def task(b: Box) -> None:
            out[b.slices(box.start) + (0,)] = self._get(b, scale).T

        run_bounded(task, self._blocks(region, region), 3 * math.prod(self.request) * self.meta.dtype.itemsize, CONCURRENCY)
        return out

    def write(self, box: Box, data: np.ndarray, scale: int = 0, channels: slice | None = None) -> None:
        if "write" not in self.capabilities:
            raise ReadOnlyError(f"{self.url} is open read-only; open it with mode='r+' to write")
        if scale:
            raise UnsupportedError(f"{self.url}: DVID computes scale {scale} from scale 0 itself; write scale 0")
        self.check_write(box, data, scale, channels)
        bs = self.block
        start = tuple(a // b * b for a, b in zip(box.start, bs))
        stop = tuple(-(-z // b) * b for z, b in zip(box.stop, bs))
        wide = Box(start, stop)  # whole DVID blocks; every request below is aligned to them

        def task(b: Box) -> None:
            part = box.intersect(b)
            if part == b:
                zyx = np.ascontiguousarray(data[b.slices(box.start) + (0,)].T)
            else:  # a partly covered block: read it, merge, write it whole
                merged = self._get(b).copy()
                merged.T[part.slices(b.start)] = data[part.slices(box.start) + (0,)]
                zyx = merged
            self.client.request("POST", self._path(b), body=zyx.tobytes(), headers={"Content-Type": "application/octet-stream"})

        run_bounded(task, self._blocks(box, wide), 3 * math.prod(self.request) * self.meta.dtype.itemsize, CONCURRENCY)


    # -- labels ---------------------------------------------------------------------------------
    def labels_at(self, points) -> np.ndarray:
        """The voxel values at ``points`` (N x 3, x, y, z), as DVID's ``/labels`` returns them."""
        pts = [[int(v) for v in p] for p in points]
        data = self.client.request("GET", f"node/{self.uuid}/{self.instance}/labels", body=json.dumps(pts).encode(),
                                   headers={"Content-Type": "application/json"})
        return np.array(json.loads(data), dtype=self.meta.dtype)

    def sparse_volume(self, label: int) -> np.ndarray:
        """``label``'s voxels as runs along x: an (N, 4) int32 array of x, y, z, length (DVID's
        ``sparsevol`` rles). Empty when the label is absent."""
        path = f"node/{self.uuid}/{self.instance}/sparsevol/{int(label)}"
        # DVID's HEAD says whether the label is there (200) or not (204); any other answer raises
        if self.client.status("HEAD", path, ok=(200, 204), what=f"sparsevol of {label}") == 204:
            return np.zeros((0, 4), np.int32)
        body = self.client.request("GET", path + "?format=rles", what=f"sparsevol of {label}")
        if len(body) < 12 or body[1] != 3:
            raise ChunkDecodeError(f"{self.url}: sparsevol of {label} is not a 3-D rles stream")
        n = int.from_bytes(body[8:12], "little")
        if len(body) != 12 + 16 * n:
            raise ChunkDecodeError(f"{self.url}: sparsevol of {label} has {len(body)} bytes for {n} spans (truncated?)")
        return np.frombuffer(body, "<i4", offset=12).reshape(n, 4).astype(np.int32)

    # -- versions -------------------------------------------------------------------------------
    def _node(self, op: str, body: dict) -> dict:
        return self.client.json(f"node/{self.uuid}/{op}", f"node {self.uuid}", method="POST", body=body)

    def commit(self, note: str = "", log: list[str] | None = None) -> str:
        """Lock this version (DVID: a version must be committed before it can have children)."""
        return str(self._node("commit", {"note": note, "log": list(log or [])})["committed"])

    def branch(self, name: str, note: str = "") -> str:
        """A new version on a new branch under this (committed) one; its UUID."""
        return str(self._node("branch", {"branch": name, "note": note})["child"])

    def newversion(self, note: str = "") -> str:
        """A new version on this one's branch, under this (committed) one; its UUID."""
        return str(self._node("newversion", {"note": note})["child"])

    def log(self) -> list[str]:
        return list(self.client.json(f"node/{self.uuid}/log", f"node {self.uuid}").get("log", []))

    def add_log(self, lines: list[str]) -> None:
        self.client.request("POST", f"node/{self.uuid}/log", body=json.dumps({"log": list(lines)}).encode(),
                            headers={"Content-Type": "application/json"})

    def locked(self) -> bool:
        return bool(self.client.json(f"node/{self.uuid}/commit", f"node {self.uuid}").get("Locked"))

    def at(self, uuid: str, *, writable: bool | None = None) -> "DVIDVolume":
        """The same instance at another version (a UUID, a unique prefix, or ``prefix:branch``)."""
        server = self.client.base[: -len("/api")]
        w = ("write" in self.capabilities) if writable is None else writable
        return DVIDVolume(f"dvid://{server}/{uuid}/{self.instance}", w, self._token)


# -- repos and instances ----------------------------------------------------------------------------
def _server_client(server: str, token: str | None) -> HTTPClient:
    if not re.fullmatch(r"https?://[^/]+", server.rstrip("/")):
        raise URLError(f"{server!r} must be a DVID server's http(s)://host:port")
    return HTTPClient(f"{server.rstrip('/')}/api", {"Authorization": f"Token {token}"} if token else {})


def create_repo(server: str, alias: str, description: str = "", *, token: str | None = None) -> str:
    """A new repo on ``server``; the UUID of its root version."""
    return str(_server_client(server, token).json("repos", "repos", method="POST",
                                                  body={"alias": alias, "description": description})["root"])


def create_instance(server: str, uuid: str, name: str, typename: str = "uint8blk", *,
                    bounds: tuple | None = None, block_size: tuple | None = None, voxel_size: tuple | None = None,
                    axis_order: str = "zyx", token: str | None = None) -> str:
    """A new data instance in the repo of version ``uuid``; its ``dvid://`` URL.

    Tuples follow ``axis_order`` like every volbridge tuple (z, y, x by default). ``bounds``
    (start, stop corners, half-open) become the instance's extents (DVID's MinPoint/MaxPoint), and
    so the bounds of the volume a ``dvid://`` URL opens; DVID itself is unbounded.
    """
    if axis_order not in ("zyx", "xyz"):
        raise InvalidArgumentError(f"axis_order must be 'zyx' or 'xyz', got {axis_order!r}")
    xyz = (lambda t: tuple(t)[::-1]) if axis_order == "zyx" else tuple
    client = _server_client(server, token)
    spec = {"typename": typename, "dataname": name, "versioned": "true"}
    if block_size is not None:
        spec["BlockSize"] = ",".join(str(int(v)) for v in xyz(block_size))
    if voxel_size is not None:
        spec["VoxelSize"] = ",".join(str(v) for v in xyz(voxel_size))
    client.json(f"repo/{uuid}/instance", f"repo {uuid}", method="POST", body=spec)
    if bounds is not None:
        lo, hi = xyz(bounds[0]), xyz(bounds[1])
        client.request("POST", f"node/{uuid}/{name}/extents", headers={"Content-Type": "application/json"},
                       body=json.dumps({"MinPoint": [int(v) for v in lo], "MaxPoint": [int(v) - 1 for v in hi]}).encode())
    return f"dvid://{server.rstrip('/')}/{uuid}/{name}"


def open_dvid(url: str, writable: bool, token: str | None = None) -> DVIDVolume:
    return DVIDVolume(url, writable, token)
