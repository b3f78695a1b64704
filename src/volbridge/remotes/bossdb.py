"""BossDB, or any server that speaks its REST dialect (a volbridge relay too), as a Volume.

``bossdb://collection/experiment/channel`` uses the host of intern's settings, read as intern
reads them (``~/.intern/intern.cfg``'s [Volume Service], else its [Default]; without the file, the
``INTERN_PROTOCOL``, ``INTERN_HOST`` and ``INTERN_TOKEN`` variables), else https://api.bossdb.io with
the anonymous token ``public``. ``bossdb://https://host:port/collection/experiment/channel`` names
the server; intern's configured token is sent there only when it is the configured host, so a token
never leaks to another server (pass ``token=`` for that).

Metadata comes from the channel, experiment, coordinate frame and downsample endpoints: bounds with
the frame's offsets, the voxel size of every level (in nm), dtype and image/annotation type.
Cutouts are split on BossDB's 512x512x16 cuboid grid into blocks well under the server's request
limit, fetched in parallel with retries, and assembled in one preallocated array (intern's
reassembly is serial). Writes send every block, zeros included (intern skips all-zero uploads).
"""

from __future__ import annotations

import configparser
import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from urllib.parse import quote

import numpy as np

from ..codecs import cutout
from ..engine import Volume
from ..engine.parallel import run_bounded
from ..errors import (
    AuthError,
    BoundsError,
    ChunkDecodeError,
    InvalidArgumentError,
    MetadataError,
    ReadOnlyError,
    URLError,
)
from ..formats.base import ScaleMeta, VolumeMeta
from ..geometry import Box, ChunkGrid
from .http_client import HTTPClient

DEFAULT_PROTOCOL, DEFAULT_HOST = "https", "api.bossdb.io"
#: BossDB's storage cuboid (x, y, z).
CUBOID = (512, 512, 16)
#: One request covers at most this block (x, y, z), aligned to the cuboids: 16 Mi voxels keeps
#: even uint64 far under the 520 MiB limit and leaves many requests to run in parallel.
BLOCK = (512, 512, 64)
#: Requests in flight per cutout: latency, not CPU, bounds a server.
CONCURRENCY = 16
UNIT_NM = {"nanometers": 1.0, "micrometers": 1e3, "millimeters": 1e6, "centimeters": 1e7}


def intern_settings() -> dict:
    """intern's own settings, as intern reads them for cutouts: its config file's [Volume
    Service] section, else its [Default]; without a config file, the INTERN_PROTOCOL, _HOST and
    _TOKEN variables (all three, or none). (The variables had overridden the file, and the
    service sections were not read: the same config sent intern and volbridge to two servers.)"""
    keys = ("protocol", "host", "token")
    path = os.path.expanduser(os.environ.get("INTERN_CONFIG", "~/.intern/intern.cfg"))
    cfg = configparser.ConfigParser()
    try:
        found = cfg.read(path)
    except configparser.Error as e:
        raise URLError(f"cannot parse intern's config {path}: {e}") from e
    if not found:
        env = {k: os.environ.get(f"INTERN_{k.upper()}") for k in keys}
        return env if all(env.values()) else {k: None for k in keys}
    for name in ("Volume Service", "Default"):
        if cfg.has_section(name):
            section = dict(cfg[name])
            return {k: section.get(k) for k in keys}
    # (intern refuses such a file too, rather than going to api.bossdb.io as 'public')
    raise URLError(f"intern's config {path} has neither a [Volume Service] nor a [Default] section")


def _server(rest: str, token: str | None) -> tuple[str, str, str]:
    """(base URL ``proto://host/v1``, token, the path after the host) of ``[http(s)://host/]path``.
    intern's configured token goes only to intern's configured host."""
    settings = intern_settings()
    conf_proto = settings.get("protocol") or DEFAULT_PROTOCOL
    conf_host = settings.get("host") or DEFAULT_HOST
    if rest.lower().startswith(("http://", "https://")):
        proto, _, rest = rest.partition("://")
        proto = proto.lower()
        host, _, path = rest.partition("/")
        same = host == conf_host and proto == conf_proto
    else:
        proto, host, path, same = conf_proto, conf_host, rest, True
    if not host:
        raise URLError(f"no host in {rest!r}")
    if token is None:
        token = (settings.get("token") if same else None) or "public"
    return f"{proto}://{host}/v1", token, path


def parse_url(url: str, token: str | None = None) -> tuple[str, str, tuple[str, str, str]]:
    """(base URL ``proto://host/v1``, token, (collection, experiment, channel))."""
    if not url[:9].lower() == "bossdb://":  # schemes are case-insensitive (the registry routes BOSSDB:// here)
        raise URLError(f"{url!r} is not a bossdb:// URL")
    base, token, path = _server(url[len("bossdb://"):], token)
    parts = [p for p in path.split("/") if p]
    if len(parts) != 3:
        raise URLError(f"{url!r} must be bossdb://[http(s)://host/]collection/experiment/channel")
    return base, token, (parts[0], parts[1], parts[2])


def _field(obj: dict, name: str, where: str):
    if name not in obj:
        raise MetadataError(f"{where} has no {name!r}")
    return obj[name]


#: The access-mode of this context's cutout reads: "cache", or "raw" to bypass the server's
#: cache (a relay serving access-mode=raw passes it on to a relay upstream: a review found the
#: chained relay's cache answering).
ACCESS_MODE: ContextVar[str] = ContextVar("bossdb_access_mode", default="cache")


@contextmanager
def access_mode(mode: str):
    token = ACCESS_MODE.set(mode)
    try:
        yield
    finally:
        ACCESS_MODE.reset(token)


class BossVolume(Volume):
    format_name = "bossdb"

    def __init__(self, url: str, writable: bool = False, token: str | None = None, client: HTTPClient | None = None):
        self.url = url
        base, token, (c, e, ch) = parse_url(url, token)
        self.collection, self.experiment, self.channel = c, e, ch
        self.token = token  # (a handle pickled for a cluster worker reopens with it)
        self.client = client or HTTPClient(base, {"Authorization": f"Token {token}"}, concurrency=CONCURRENCY)
        # BossDB builds pyramids itself: the downsample service asks it to (when writable).
        self.capabilities = frozenset({"write", "native_downsample"} if writable else ())
        self.meta, self.base_resolution, self.raw = self._load_meta()

    def _load_meta(self):
        c, e, ch = (quote(p) for p in (self.collection, self.experiment, self.channel))
        where = f"channel {self.collection}/{self.experiment}/{self.channel}"
        chan = self.client.json(f"collection/{c}/experiment/{e}/channel/{ch}/", where)
        exp = self.client.json(f"collection/{c}/experiment/{e}/", f"experiment {self.collection}/{self.experiment}")
        frame_name = _field(exp, "coord_frame", "the experiment")
        frame = self.client.json(f"coord/{quote(str(frame_name))}/", f"coordinate frame {frame_name}")
        dtype = np.dtype(_field(chan, "datatype", where))
        unit = UNIT_NM.get(frame.get("voxel_unit", "nanometers"))
        if unit is None:
            raise MetadataError(f"coordinate frame {frame_name} has an unknown voxel_unit {frame.get('voxel_unit')!r}")
        start0 = [int(_field(frame, f"{a}_start", "the frame")) for a in "xyz"]
        stop0 = [int(_field(frame, f"{a}_stop", "the frame")) for a in "xyz"]
        vox0 = [float(_field(frame, f"{a}_voxel_size", "the frame")) * unit for a in "xyz"]
        base_res = int(chan.get("base_resolution", 0))
        levels = int(exp.get("num_hierarchy_levels", 1))
        try:
            ds = self.client.json(f"downsample/{c}/{e}/{ch}/", f"downsample status of {where}")
        except (URLError, AuthError, InvalidArgumentError):
            ds = None  # an older server: derive the levels as BossDB does
        if ds and isinstance(ds.get("num_hierarchy_levels"), int):
            levels = ds["num_hierarchy_levels"]  # the channel's own: the experiment's is the most of any channel's
        scales = []
        for r in range(base_res, levels):
            key = str(r)
            if ds and key in ds.get("voxel_size", {}) and key in ds.get("extent", {}):
                res = [float(v) * unit for v in ds["voxel_size"][key]]
                extent = [int(v) for v in ds["extent"][key]]
            else:
                iso = exp.get("hierarchy_method") == "isotropic"
                f = [2**r, 2**r, 2**r if iso else 1]
                res = [v * fi for v, fi in zip(vox0, f)]
                extent = [math.ceil((b - a) / fi) for a, b, fi in zip(start0, stop0, f)]
            factor = [max(1, round(rv / v0)) for rv, v0 in zip(res, vox0)]
            start = [a // fi for a, fi in zip(start0, factor)]
            if ds and key in ds.get("volbridge_start", {}):  # a volbridge relay says where the channel starts
                start = [int(v) for v in ds["volbridge_start"][key]]
            bounds = Box(tuple(start), tuple(s + n for s, n in zip(start, extent)))
            res_t = tuple(int(v) if float(v).is_integer() else v for v in res)
            scales.append(ScaleMeta(key, bounds, res_t, CUBOID, "blosc"))
        layer = "segmentation" if chan.get("type") == "annotation" else "image"
        meta = VolumeMeta(dtype=dtype, num_channels=1, layer_type=layer, scales=tuple(scales), fill_value=0)
        return meta, base_res, {"channel": chan, "experiment": exp, "coord_frame": frame, "downsample": ds}

    def metadata_json(self) -> dict:
        return self.raw

    def _blocks(self, box: Box, scale: int) -> list[Box]:
        bounds = self.meta.scales[scale].bounds
        grid = ChunkGrid(bounds, BLOCK, (0, 0, 0))
        return [c.box.intersect(box) for c in grid.cells(box)]

    def _cutout_path(self, b: Box, scale: int, times: tuple[int, int] | None = None) -> str:
        c, e, ch = (quote(p) for p in (self.collection, self.experiment, self.channel))
        rng = "/".join(f"{a}:{z}" for a, z in zip(b.start, b.stop))
        t = f"{times[0]}:{times[1]}/" if times else ""
        return f"cutout/{c}/{e}/{ch}/{self.base_resolution + scale}/{rng}/{t}"

    def _fetch(self, b: Box, scale: int, times: tuple[int, int] | None = None, mode: str = "cache") -> np.ndarray:
        """The server's C-ordered (z, y, x), or (t, z, y, x) with ``times``, voxels of ``b``."""
        path = self._cutout_path(b, scale, times)
        body = self.client.request("GET", f"{path}?access-mode={mode}", headers={"Accept": cutout.BLOSC})
        shape = ((times[1] - times[0],) if times else ()) + b.shape[::-1]
        try:
            return cutout.decode(body, cutout.BLOSC, shape, self.meta.dtype)
        except ChunkDecodeError as e:
            raise ChunkDecodeError(f"{self.client.base}/{path}: {e}") from e

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        out = np.zeros((*box.shape, 1), dtype=self.meta.dtype, order="F")
        mode = ACCESS_MODE.get()  # here: the fetches run on pool threads, which do not see the caller's context

        def task(b: Box) -> None:
            out[b.slices(box.start) + (0,)] = self._fetch(b, scale, mode=mode).T

        n = BLOCK[0] * BLOCK[1] * BLOCK[2] * self.meta.dtype.itemsize * 3
        run_bounded(task, self._blocks(box, scale), n, CONCURRENCY)
        return out

    def read_times(self, box: Box, times: tuple[int, int], scale: int = 0) -> np.ndarray:
        """BossDB's 4-D cutout: time samples ``[t0, t1)`` of ``box`` (x, y, z) as a C-ordered
        ``(t, z, y, x)`` array, split and fetched in parallel like any read (intern's chunked
        path breaks on these). Zeros outside the bounds."""
        t0, t1 = (int(v) for v in times)
        if t1 <= t0 or t0 < 0:
            raise InvalidArgumentError(f"time range {t0}:{t1} must be increasing and start at 0 or later")
        out = np.zeros((t1 - t0, *box.shape[::-1]), dtype=self.meta.dtype)
        mode = ACCESS_MODE.get()

        def task(b: Box) -> None:
            z, y, x = b.slices(box.start)[::-1]
            out[:, z, y, x] = self._fetch(b, scale, (t0, t1), mode=mode)

        n = BLOCK[0] * BLOCK[1] * BLOCK[2] * self.meta.dtype.itemsize * 3 * (t1 - t0)
        run_bounded(task, self._blocks(box, scale), n, CONCURRENCY)
        return out

    def write(self, box: Box, data: np.ndarray, scale: int = 0, channels: slice | None = None) -> None:
        if "write" not in self.capabilities:
            raise ReadOnlyError(f"{self.url} is open read-only; open it with mode='r+' to write")
        self.check_write(box, data, scale, channels)

        def task(b: Box) -> None:
            body = cutout.encode(data[b.slices(box.start) + (0,)].T, cutout.BLOSC)
            self.client.request("POST", self._cutout_path(b, scale), body=body,
                                headers={"Content-Type": cutout.BLOSC}, ok=(200, 201))

        n = BLOCK[0] * BLOCK[1] * BLOCK[2] * self.meta.dtype.itemsize * 2
        run_bounded(task, self._blocks(box, scale), n, CONCURRENCY)


    # -- the channel's server-side features -----------------------------------------------------
    def _chan_path(self) -> str:
        return "/".join(quote(p) for p in (self.collection, self.experiment, self.channel))

    def to_black(self, box: Box, scale: int = 0) -> None:
        """Zero ``box`` (x, y, z) on the server (``PUT /cutout/to_black``), block by block."""
        if "write" not in self.capabilities:
            raise ReadOnlyError(f"{self.url} is open read-only; open it with mode='r+' to write")
        region = box.intersect(self.meta.scales[scale].bounds)
        if region != box:
            raise BoundsError(f"to_black box {box} is outside the bounds {self.meta.scales[scale].bounds} of scale {scale}")
        run_bounded(lambda b: self.client.request("PUT", self._cutout_path(b, scale).replace("cutout/", "cutout/to_black/", 1)),
                    self._blocks(box, scale), 1, CONCURRENCY)

    def reserve_ids(self, count: int) -> int:
        """The first of ``count`` new ids reserved on the server (annotation channels)."""
        return int(self.client.json(f"reserve/{self._chan_path()}/{int(count)}/", f"{self.url}")["start_id"])

    def ids_in_region(self, box: Box, scale: int = 0) -> np.ndarray:
        """The non-zero ids in ``box`` (x, y, z), sorted, as uint64."""
        rng = "/".join(f"{a}:{z}" for a, z in zip(box.start, box.stop))
        ids = self.client.json(f"ids/{self._chan_path()}/{self.base_resolution + scale}/{rng}/", self.url)["ids"]
        return np.array(sorted(int(i) for i in ids), dtype=np.uint64)

    def bounding_box(self, label: int, scale: int = 0, *, tight: bool = True) -> Box:
        """``label``'s bounding box (x, y, z); ``tight=False`` widens it to whole cuboids."""
        doc = self.client.json(f"boundingbox/{self._chan_path()}/{self.base_resolution + scale}/{int(label)}/"
                               f"?type={'tight' if tight else 'loose'}", f"id {label} in {self.url}")
        return Box(*zip(*(tuple(doc[f"{a}_range"]) for a in "xyz")))  # type: ignore[arg-type]

    def downsample_status(self) -> dict:
        return self.client.json(f"downsample/{self._chan_path()}/", self.url)

    def start_downsample(self) -> None:
        """Ask the server to build the channel's pyramid (BossDB's own downsampling service)."""
        self.client.request("POST", f"downsample/{self._chan_path()}/", ok=(200, 201))

    def downsample(self, timeout: float = 3600) -> dict:
        """Run the server's downsample service and wait for it: the final status."""
        from ..services.downsample import wait_for

        self.start_downsample()
        return wait_for(self.downsample_status, timeout)

    def metadata(self) -> "BossMetadata":
        """The channel's key-value metadata, dict-like."""
        return BossMetadata(self.client, f"{self.collection}/{self.experiment}/{self.channel}")


class BossMetadata:
    """Key-value metadata of a collection, experiment or channel (``/meta/...``), URL-encoded
    (intern sends keys and values unencoded, so ``&`` or ``=`` in them break)."""

    def __init__(self, client: HTTPClient, path: str):
        self.client, self.path = client, "/".join(quote(p) for p in path.split("/"))

    def keys(self) -> list[str]:
        return list(self.client.json(f"meta/{self.path}/", self.path)["keys"])

    def __getitem__(self, key: str) -> str:
        try:
            return str(self.client.json(f"meta/{self.path}/?key={quote(key, safe='')}", f"metadata key {key!r}")["value"])
        except URLError as e:
            raise KeyError(key) from e

    def __setitem__(self, key: str, value: str) -> None:
        q = f"?key={quote(key, safe='')}&value={quote(str(value), safe='')}"
        method = "PUT" if key in self.keys() else "POST"
        self.client.request(method, f"meta/{self.path}/{q}", ok=(200, 201))

    def __delitem__(self, key: str) -> None:
        try:
            self.client.request("DELETE", f"meta/{self.path}/?key={quote(key, safe='')}", ok=(200, 204))
        except URLError as e:
            raise KeyError(key) from e

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def to_dict(self) -> dict[str, str]:
        return {k: self[k] for k in self.keys()}


class BossProject:
    """Resource management on a BossDB-dialect server: collections, coordinate frames,
    experiments and channels (create, list, delete) and their metadata.

    ``server`` is ``https://host`` (or a relay's ``http://127.0.0.1:8080``); without it, intern's
    configured host. Tuples follow ``axis_order`` like every volbridge tuple (z, y, x by default).
    """

    def __init__(self, server: str | None = None, *, token: str | None = None):
        base, token, _ = _server((server.rstrip("/") + "/") if server else "", token)
        self.base, self.token = base, token
        self.client = HTTPClient(base, {"Authorization": f"Token {token}"}, concurrency=4)

    def _post(self, path: str, body: dict) -> dict:
        return self.client.json(path, path, method="POST", body=body, ok=(200, 201))

    def _delete(self, path: str) -> None:
        self.client.request("DELETE", path, ok=(200, 204))

    def collections(self) -> list[str]:
        return list(self.client.json("collection/", "collections")["collections"])

    def experiments(self, collection: str) -> list[str]:
        return list(self.client.json(f"collection/{quote(collection)}/experiment/", f"collection {collection}")["experiments"])

    def channels(self, collection: str, experiment: str) -> list[str]:
        path = f"collection/{quote(collection)}/experiment/{quote(experiment)}/channel/"
        return list(self.client.json(path, f"experiment {collection}/{experiment}")["channels"])

    def create_collection(self, name: str, description: str = "") -> dict:
        return self._post(f"collection/{quote(name)}/", {"name": name, "description": description})

    def create_coord_frame(self, name: str, bounds, voxel_size, *, voxel_unit: str = "nanometers",
                           description: str = "", axis_order: str = "zyx") -> dict:
        if axis_order not in ("zyx", "xyz"):
            raise InvalidArgumentError(f"axis_order must be 'zyx' or 'xyz', got {axis_order!r}")
        xyz = (lambda t: tuple(t)[::-1]) if axis_order == "zyx" else tuple
        lo, hi, vox = xyz(bounds[0]), xyz(bounds[1]), xyz(voxel_size)
        body = {"name": name, "description": description, "voxel_unit": voxel_unit}
        for i, a in enumerate("xyz"):
            body.update({f"{a}_start": int(lo[i]), f"{a}_stop": int(hi[i]), f"{a}_voxel_size": vox[i]})
        return self._post(f"coord/{quote(name)}/", body)

    def create_experiment(self, collection: str, name: str, coord_frame: str, *, num_hierarchy_levels: int = 1,
                          hierarchy_method: str = "anisotropic", description: str = "") -> dict:
        return self._post(f"collection/{quote(collection)}/experiment/{quote(name)}/", {
            "name": name, "description": description, "coord_frame": coord_frame, "num_hierarchy_levels": num_hierarchy_levels,
            "hierarchy_method": hierarchy_method, "num_time_samples": 1, "time_step": 0, "time_step_unit": "nanoseconds"})

    def create_channel(self, collection: str, experiment: str, name: str, *, datatype: str = "uint8",
                       type: str = "image", description: str = "", sources: list[str] | None = None) -> str:
        """Create the channel; its ``bossdb://`` URL."""
        self._post(f"collection/{quote(collection)}/experiment/{quote(experiment)}/channel/{quote(name)}/", {
            "name": name, "description": description, "datatype": datatype, "type": type, "base_resolution": 0,
            "default_time_sample": 0, "sources": list(sources or []), "related": []})
        return f"bossdb://{self.base[: -len('/v1')]}/{collection}/{experiment}/{name}"

    def delete_channel(self, collection: str, experiment: str, name: str) -> None:
        self._delete(f"collection/{quote(collection)}/experiment/{quote(experiment)}/channel/{quote(name)}/")

    def delete_experiment(self, collection: str, name: str) -> None:
        self._delete(f"collection/{quote(collection)}/experiment/{quote(name)}/")

    def delete_collection(self, name: str) -> None:
        self._delete(f"collection/{quote(name)}/")

    def delete_coord_frame(self, name: str) -> None:
        self._delete(f"coord/{quote(name)}/")

    def metadata(self, *path: str) -> BossMetadata:
        """Key-value metadata of a collection, experiment or channel: ``metadata("lab", "em")``."""
        if not 1 <= len(path) <= 3:
            raise InvalidArgumentError("metadata(collection[, experiment[, channel]])")
        return BossMetadata(self.client, "/".join(path))


def open_bossdb(url: str, writable: bool, token: str | None = None) -> BossVolume:
    return BossVolume(url, writable, token)
