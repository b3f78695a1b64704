"""OME-Zarr multiscale images (NGFF 0.4 on zarr v2, 0.5 on zarr v3) as one volume.

The group's ``multiscales[0]`` becomes the volume: each dataset is a scale (``mip(n)``), its
``scale`` transform (times the multiscale-level one) gives the resolution, converted to nm from
the axes' units, and its ``translation`` divided by the scale gives the voxel offset, so a
pyramid whose levels are offset for centring keeps its voxels in register. Axes are
``[t] [c] z y x``; a time axis must have length 1. Facts from ``shared/specs/formats.md`` section 4.
"""

from __future__ import annotations

import json

from ..errors import MetadataError, UnsupportedError
from ..geometry import Box
from ..kv import KVStore, MemoryStore
from . import zarr
from .base import ChunkedDataset, VolumeMeta, clear_for_overwrite, read_doc, read_docs, unit_nm



def _group_attrs(store: KVStore, docs: dict | None = None) -> tuple[dict, int] | None:
    """(the ``ome``-level attributes, zarr format) of an OME-Zarr group, or None."""
    raw = read_doc(store, zarr.V3_META, docs)
    if raw is not None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if isinstance(doc, dict) and doc.get("node_type") == "group":
            ome = (doc.get("attributes") or {}).get("ome")
            if isinstance(ome, dict) and "multiscales" in ome:
                return ome, 3
        return None
    raw = read_doc(store, ".zattrs", docs)
    if raw is not None:
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        if isinstance(doc, dict) and "multiscales" in doc:
            return doc, 2
    return None


def _transforms(items, where: str, n: int) -> tuple[list[float], list[float]]:
    scale, translation = [1.0] * n, [0.0] * n
    for t in items or []:
        kind = t.get("type")
        if kind == "scale":
            scale = [float(v) for v in t.get("scale", [])]
        elif kind == "translation":
            translation = [float(v) for v in t.get("translation", [])]
        elif kind == "identity":
            continue
        else:
            raise UnsupportedError(f"{where}: coordinate transformation {kind!r} is not supported (scale, translation)")
        if len(scale) != n or len(translation) != n:
            raise MetadataError(f"{where}: transformations must have one value per axis ({n})")
    return scale, translation


class OmeZarrDataset(ChunkedDataset):
    format_name = "ome-zarr"

    def __init__(self, store: KVStore, docs: dict | None = None):
        self.store = store
        found = _group_attrs(store, docs)
        if found is None:
            raise MetadataError(f"no OME-Zarr multiscales group at {store.url}")
        self.attrs, self.zarr_format = found
        where = f"{store.url} (multiscales)"
        ms = self.attrs["multiscales"]
        if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
            raise MetadataError(f"{where}: 'multiscales' must be a non-empty list of objects")
        m = ms[0]
        axes = [a if isinstance(a, dict) else {"name": a} for a in m.get("axes", [{"name": n} for n in "zyx"])]
        names = [a.get("name") for a in axes]
        if len(axes) < 3 or any(a.get("type", "space") != "space" for a in axes[-3:]):
            raise UnsupportedError(f"{where}: the last three axes must be spatial (z, y, x); got {names}")
        channel_axis = next((i for i, a in enumerate(axes[:-3]) if a.get("type") == "channel" or a.get("name") == "c"), None)
        units = [a.get("unit") for a in axes[-3:]][::-1]  # x, y, z
        for u in units:
            if unit_nm(u) is None:
                raise UnsupportedError(f"{where}: spatial unit {u!r} is not a length unit volbridge knows")
        top_scale, top_trans = _transforms(m.get("coordinateTransformations"), where, len(axes))
        datasets = m.get("datasets")
        if not isinstance(datasets, list) or not datasets:
            raise MetadataError(f"{where}: 'datasets' must be a non-empty list")
        self.layouts = []
        self._docs = self._prefetch([ds.get("path") for ds in datasets if isinstance(ds, dict)])
        for i, ds in enumerate(datasets):
            path = ds.get("path")
            if not isinstance(path, str) or not path:
                raise MetadataError(f"{where}: datasets[{i}] has no 'path'")
            scale, trans = _transforms(ds.get("coordinateTransformations"), f"{where} datasets[{i}]", len(axes))
            scale = [s * t for s, t in zip(scale, top_scale)]
            trans = [tr * t + tt for tr, t, tt in zip(trans, top_scale, top_trans)]
            arr = self._array(path)
            if len(arr.shape) != len(axes):
                raise MetadataError(f"{where}: dataset {path!r} has {len(arr.shape)} dimensions for {len(axes)} axes")
            res = tuple(s * unit_nm(u) for s, u in zip(scale[-3:][::-1], units))
            offset = tuple(round(t / s) if s else 0 for t, s in zip(trans[-3:][::-1], scale[-3:][::-1]))
            self.layouts.append(zarr.ZarrLayout(arr, res, offset, channel_axis=channel_axis, key_prefix=path))
        self._docs = None  # read at this open only: later reads ask the store
        first = self.layouts[0]
        layer = "segmentation" if "image-label" in self.attrs else "image"
        self.meta = VolumeMeta(first.dtype, first.num_channels, layer, tuple(l.meta for l in self.layouts), first.fill_value)

    def _prefetch(self, paths: list) -> dict | None:
        """The scales' array documents, asked for at once (:func:`read_docs`)."""
        name = zarr.V3_META if self.zarr_format == 3 else zarr.V2_META
        return read_docs(self.store, [f"{p}/{name}" for p in paths if isinstance(p, str) and p])

    def _array(self, path: str) -> zarr.ZarrArray:
        raw = read_doc(self.store, f"{path}/{zarr.V3_META}", self._docs)
        if raw is not None:
            return zarr.parse_v3(raw, f"{self.store.url}/{path}/{zarr.V3_META}")
        raw = read_doc(self.store, f"{path}/{zarr.V2_META}", self._docs)
        if raw is None:
            raise MetadataError(f"{self.store.url}: multiscales dataset {path!r} has no zarr array")
        return zarr.parse_v2(raw, f"{self.store.url}/{path}/{zarr.V2_META}")

    def layout(self, scale: int):
        return self.layouts[scale]

    def metadata_json(self) -> dict:
        return self.attrs

    def add_scale(self, factor) -> None:
        """Append a dataset ``factor`` (x, y, z) coarser than the last: the last array's metadata
        (codecs, shards, chunks, fill) with ``ceil`` shape, its scale transform times ``factor``
        and a translation placing voxel 0 at ``floor(start / factor)``, as precomputed does (the
        translation names that voxel's centre, as the file's readers take it)."""
        f = [int(v) for v in factor]
        if len(f) != 3 or any(v < 1 for v in f):
            raise MetadataError(f"a downsampling factor is 3 integers >= 1, got {tuple(factor)}")
        m = self.attrs["multiscales"][0]
        n_axes = len(self.layouts[0].arr.shape)
        last_ds = m["datasets"][-1]
        last = self.layouts[-1]
        scale, last_trans = _transforms(last_ds.get("coordinateTransformations"), "last dataset", n_axes)
        top_scale, top_trans = _transforms(m.get("coordinateTransformations"), "multiscale", n_axes)
        spatial = [1] * (n_axes - 3) + f[::-1]  # array order: [t] [c] z y x
        new_scale = [s * k for s, k in zip(scale, spatial)]
        reduced = last.meta.bounds.reduced(f)  # x, y, z voxels
        start, stop = list(reduced.start), list(reduced.stop)
        start_arr = [0] * (n_axes - 3) + start[::-1]
        scale0, _ = _transforms(m["datasets"][0].get("coordinateTransformations"), "first dataset", n_axes)
        # the final translation (dataset * top + top) must place voxel 0's centre: its corner,
        # start * final scale, plus half the way from a level-0 voxel's centre to its own
        new_trans = [(a * s * ts + (s - s0) * ts / 2 - tt) / ts if ts else 0.0
                     for a, s, s0, tt, ts in zip(start_arr, new_scale, scale0, top_trans, top_scale)]
        new_trans[: n_axes - 3] = last_trans[: n_axes - 3]  # t, c: where the levels below have them
        path = str(len(m["datasets"]))
        while any(d.get("path") == path for d in m["datasets"]):
            path += "_"
        doc = dict(last.arr.doc)
        doc["shape"] = list(last.arr.shape[:-3]) + [b - a for a, b in zip(start, stop)][::-1]
        meta_key = zarr.V3_META if last.arr.zarr_format == 3 else zarr.V2_META
        self.store.put(f"{path}/{meta_key}", json.dumps(doc, indent=2).encode())
        entry = {"path": path, "coordinateTransformations": [
            {"type": "scale", "scale": new_scale}, {"type": "translation", "translation": new_trans}]}
        seen = [d.get("path") for d in m["datasets"]]
        key = zarr.V3_META if self.zarr_format == 3 else ".zattrs"

        def merge(old: bytes | None) -> bytes:
            # into the stored document, not this handle's copy: what was written since it was
            # opened (omero, provenance, an instance id) stays (a review found them erased)
            try:
                stored = json.loads(old) if old else None
            except ValueError as e:
                raise MetadataError(f"{self.store.url}/{key} is not JSON: {e}") from e
            ome = (stored or {}).get("attributes", {}).get("ome") if self.zarr_format == 3 else stored
            multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
            if not isinstance(multiscales, list) or not multiscales or [
                    d.get("path") for d in multiscales[0].get("datasets", [])] != seen:
                raise MetadataError(f"{self.store.url}/{key} changed since it was opened (its levels differ); "
                                    "open the volume again to add a level")
            multiscales[0]["datasets"].append(entry)
            return json.dumps(stored, indent=2).encode()

        self.store.update(key, merge)
        self.__init__(self.store)  # type: ignore[misc]

    @property
    def attributes_location(self) -> tuple[str, str | None]:  # type: ignore[override]
        return (zarr.V3_META, "attributes") if self.zarr_format == 3 else (".zattrs", None)

    @classmethod
    def create(cls, store: KVStore, *, bounds: Box, dtype, chunk_shape, resolution=(1, 1, 1), num_channels: int = 1,
               num_scales: int = 1, factor=(2, 2, 1), compression: str | None = "zstd", overwrite: bool = False,
               layer_type: str = "image", ome_version: str = "0.5", shard_shape=None, checksum: bool = False,
               **ignored) -> OmeZarrDataset:
        """An OME-Zarr pyramid; every tuple (x, y, z); resolution in nm.

        ``ome_version="0.5"`` (the default) writes NGFF 0.5 on zarr v3: the group's ``zarr.json``
        holds ``attributes.ome``. ``"0.4"`` writes NGFF 0.4 on zarr v2 (``.zgroup``, ``.zattrs``
        with a per-multiscale ``version``, nested ``/`` chunk keys), for readers that predate 0.5.
        """
        if ome_version not in ("0.4", "0.5"):
            raise UnsupportedError(f"OME-Zarr version {ome_version!r}: volbridge writes '0.4' (zarr v2) or '0.5' (zarr v3)")
        existing = _group_attrs(store) is not None
        if existing and not overwrite:
            raise MetadataError(f"an OME-Zarr image already exists at {store.url} (pass overwrite=True)")
        axes = ([{"name": "c", "type": "channel"}] if num_channels > 1 else []) + [
            {"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
        lead = [1.0] if num_channels > 1 else []

        def scale_array(at: KVStore, shape) -> None:
            zarr.ZarrDataset.create(at, bounds=Box((0, 0, 0), tuple(shape)), dtype=dtype, chunk_shape=chunk_shape,
                                    num_channels=num_channels, zarr_format=2 if ome_version == "0.4" else 3,
                                    compression=compression, overwrite=overwrite,
                                    dimension_names=[a["name"] for a in axes], shard_shape=shard_shape, checksum=checksum)

        if existing:  # the arguments checked first (on a scratch store), then every scale of the old pyramid goes
            scale_array(MemoryStore(), [b - a for a, b in zip(bounds.start, bounds.stop)])
            clear_for_overwrite(store)
        datasets = []
        for level in range(num_scales):
            f = [fi**level for fi in factor]
            reduced = bounds.reduced(f)
            start, stop = list(reduced.start), list(reduced.stop)
            res = [r * fi for r, fi in zip(resolution, f)]
            scale_array(store.child(str(level)), [b - a for a, b in zip(start, stop)])
            # z, y, x; voxel centres (neuroglancer's and ome-zarr-py's reading): a coarser voxel's
            # centre lies (r - r0) / 2 past its corner (a review found levels placed by corners
            # shifted (2^k - 1) / 2 fine voxels in neuroglancer and napari)
            origin_nm = [float(a * r + (r - r0) / 2) for a, r, r0 in zip(start[::-1], res[::-1], list(resolution)[::-1])]
            datasets.append({"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": lead + [float(r) for r in res[::-1]]},
                {"type": "translation", "translation": [0.0] * len(lead) + origin_nm}]})
        multiscale = {"name": "image", "axes": axes, "datasets": datasets}
        label = {"image-label": {"version": ome_version}} if layer_type == "segmentation" else {}
        # The group metadata goes last, so a half-written pyramid is never found; the other
        # version's group files go first, or a reader would still find the old image (zarr.json wins).
        if ome_version == "0.4":
            store.delete(zarr.V3_META)
            store.put(".zgroup", json.dumps({"zarr_format": 2}).encode())
            attrs = {"multiscales": [{"version": "0.4", **multiscale}], **label}
            store.put(".zattrs", json.dumps(attrs, indent=2).encode())
        else:
            store.delete(".zgroup")
            store.delete(".zattrs")
            ome = {"version": "0.5", "multiscales": [multiscale], **label}
            doc = {"zarr_format": 3, "node_type": "group", "attributes": {"ome": ome}}
            store.put(zarr.V3_META, json.dumps(doc, indent=2).encode())
        return cls(store)


def detect(store: KVStore) -> bool:
    return _group_attrs(store) is not None
