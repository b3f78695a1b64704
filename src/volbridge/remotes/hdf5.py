"""HDF5 datasets as volumes: ``h5:///data/x.h5#/volumes/raw`` (via h5py).

Datasets are (z, y, x) or (c, z, y, x) in C order, so the engine's (x, y, z, c) Fortran-order
buffer transposed *is* the dataset's layout: reads land in the output with h5py's ``read_direct``
(no intermediate array). The file is opened per call under an flock on ``<file>.volbridge-lock``
(shared to read, exclusive to write), so writers in threads or processes serialise and readers
never see a half-written hyperslab. Resolution: the dataset's ``resolution`` attribute (z, y, x,
nm, as CREMI writes it), else ``?resolution=z,y,x`` in the URL, else 1.
"""

from __future__ import annotations

import fcntl
import math
import os
from contextlib import contextmanager

import numpy as np

from ..engine import Volume
from ..errors import MetadataError, StoreError, UnsupportedError, URLError
from ..formats.base import ScaleMeta, VolumeMeta
from ..geometry import Box
from .single_file import parse_file_url, triple


def _h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - the extra is installed in tests
        raise UnsupportedError("HDF5 volumes need h5py: pip install 'volbridge[hdf5]'") from e
    return h5py


class HDF5Volume(Volume):
    format_name = "hdf5"

    def __init__(self, url: str, path: str, dataset: str, writable: bool, resolution=None):
        self.url, self.path, self.dataset, self.writable = url, path, dataset, writable
        self.capabilities = frozenset({"write"} if writable else ())
        with self._open("r") as f:
            if not dataset:
                names = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, _h5py().Dataset) else None)
                if len(names) != 1:
                    raise URLError(f"{url!r}: name the dataset after '#' (datasets here: {', '.join(names[:10]) or 'none'})")
                self.dataset = dataset = "/" + names[0]
            try:
                d = f[dataset] if dataset in f else None
            except KeyError:  # a dangling link
                d = None
            if not isinstance(d, _h5py().Dataset):
                raise MetadataError(f"{url!r}: no dataset {dataset!r} in {path}")
            if d.ndim not in (3, 4):
                raise UnsupportedError(f"{url!r}: dataset of {d.ndim} dimensions; volbridge reads (z, y, x) or (c, z, y, x)")
            if d.dtype.kind not in "biuf":
                raise UnsupportedError(f"{url!r}: dtype {d.dtype} is not numeric")
            res = resolution or _attr_resolution(d.attrs, url)
            self.channels = d.shape[0] if d.ndim == 4 else 1
            self.ndim = d.ndim
            bounds = Box((0, 0, 0), tuple(d.shape[-3:][::-1]))
            chunks = tuple(min(64, s) for s in bounds.shape) if d.chunks is None else tuple(d.chunks[-3:][::-1])
            # native byte order: h5py converts on read and write, and '>u2' would refuse every
            # uint16 write and transfer (as the zarr and N5 readers already do)
            # the dataset's own fill value (what h5py gives for unwritten chunks) outside the bounds too
            fill = d.fillvalue.item() if d.fillvalue is not None else 0
            self.meta = VolumeMeta(np.dtype(d.dtype).newbyteorder("="), self.channels, "segmentation" if d.attrs.get("layer_type") == "segmentation" else "image",
                                   (ScaleMeta(dataset, bounds, res, chunks, "hdf5"),), fill)

    @contextmanager
    def _open(self, mode: str):
        h5py = _h5py()
        with _file_lock(self.path, mode != "r"), _h5_file(h5py, self.path, mode, self.url) as f:
            yield f

    def _dataset(self, f):
        """The dataset in the open file, or a StoreError: one removed or replaced while this
        handle lives (a raw KeyError reached a relay's clients as a 500, a review found)."""
        try:
            d = f[self.dataset]
        except KeyError as e:
            raise StoreError(f"{self.url}: the dataset {self.dataset!r} is no longer in {self.path}") from e
        if np.dtype(d.dtype).newbyteorder("=") != self.meta.dtype or d.shape[-3:] != tuple(self.meta.scales[0].bounds.shape[::-1]):
            raise StoreError(f"{self.url}: the dataset {self.dataset!r} changed since it was opened "
                             f"({d.dtype} {d.shape}); open it again")
        return d

    def metadata_json(self) -> dict:
        with self._open("r") as f:
            d = self._dataset(f)
            return {"path": self.path, "dataset": self.dataset, "shape": list(d.shape), "dtype": str(d.dtype),
                    "chunks": list(d.chunks) if d.chunks else None, "compression": d.compression,
                    "attrs": {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.attrs.items()}}

    def instance_id(self, stamp: bool) -> str | None:
        from ..engine.identity import INSTANCE_KEY, new_instance_id

        with self._open("r") as f:
            have = self._dataset(f).attrs.get(INSTANCE_KEY)
        if isinstance(have, str) and have:
            return have
        if stamp and self.writable:
            with self._open("r+") as f:  # under the write lock: a stamp made meanwhile is kept
                attrs = self._dataset(f).attrs
                if not isinstance(attrs.get(INSTANCE_KEY), str):
                    attrs[INSTANCE_KEY] = new_instance_id()
                return str(attrs[INSTANCE_KEY])
        st = os.stat(self.path)  # the file's version stands in (any write to it changes it)
        return f"version:{st.st_mtime_ns}:{st.st_size}"

    def _sel(self, box: Box):
        (x0, y0, z0), (x1, y1, z1) = box.start, box.stop
        sp = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
        return sp if self.ndim == 3 else (slice(None), *sp)

    def read(self, box: Box, scale: int = 0) -> np.ndarray:
        out = np.full((*box.shape, self.channels), self.meta.fill_value, dtype=self.meta.dtype, order="F")
        inter = box.intersect(self.meta.scales[0].bounds)
        if inter.empty:
            return out
        dest = (out[..., 0] if self.ndim == 3 else out).T  # C-ordered view in the dataset's order
        dest_sel = self._sel(inter.translate([-a for a in box.start]))
        with self._open("r") as f:
            try:
                self._dataset(f).read_direct(dest, source_sel=self._sel(inter), dest_sel=dest_sel)
            except OSError as e:
                raise StoreError(f"{self.url}: reading {inter} failed: {e}") from e
        return out

    def write(self, box: Box, data: np.ndarray, scale: int = 0, channels: slice | None = None) -> None:
        if not self.writable:
            from ..errors import ReadOnlyError

            raise ReadOnlyError(f"{self.url} is open read-only; open it with mode='r+' to write")
        self.check_write(box, data, scale, channels)
        sel = self._sel(box)
        if self.ndim == 4 and channels is not None:
            sel = (channels, *sel[1:])
        with self._open("r+") as f:
            self._dataset(f)[sel] = (data[..., 0] if self.ndim == 3 else data).T

    @classmethod
    def create(cls, url: str, *, bounds: Box, dtype, chunk_shape, resolution=(1, 1, 1), num_channels: int = 1,
               compression: str | None = "gzip", overwrite: bool = False, num_scales: int = 1, layer_type="image", **ignored):
        path, dataset, _ = parse_file_url(url)
        if not dataset:
            raise URLError(f"{url!r}: name the dataset to create after '#', e.g. h5:///x.h5#/raw")
        if any(bounds.start):
            raise UnsupportedError("an HDF5 dataset starts at 0: give shape=, or bounds starting at (0, 0, 0)")
        if num_scales != 1:
            raise UnsupportedError("an HDF5 dataset has one scale")
        shape = tuple(bounds.stop[::-1])
        chunks = tuple(min(c, s) for c, s in zip(chunk_shape[::-1], shape))  # HDF5 chunks fit the dataset
        if num_channels > 1:
            shape, chunks = (num_channels, *shape), (num_channels, *chunks)
        comp = {"gzip": "gzip", None: None, "lzf": "lzf"}
        if compression not in comp:  # (zstd was stored as gzip: the other creators refuse what they cannot honour)
            raise UnsupportedError(f"HDF5 compression {compression!r}: volbridge writes gzip, lzf or None")
        if ignored.get("encoding") not in (None, "raw"):
            raise UnsupportedError(f"an HDF5 dataset stores raw elements, not {ignored['encoding']!r} chunks")
        h5py = _h5py()
        # under the file's lock: a create beside another process's writes had corrupted the file
        with _file_lock(path, True), _h5_file(h5py, path, "a", url) as f:
            if dataset in f:
                if not overwrite:
                    raise MetadataError(f"dataset {dataset!r} already exists in {path} (pass overwrite=True)")
                del f[dataset]
            d = f.create_dataset(dataset, shape=shape, dtype=np.dtype(dtype), chunks=chunks, compression=comp[compression])
            d.attrs["resolution"] = list(resolution)[::-1]
            d.attrs["layer_type"] = layer_type
        return cls(url, path, dataset, True)


def _attr_resolution(attrs, url: str) -> tuple[float, float, float]:
    """The (x, y, z) voxel size in nm a dataset's attributes give: volbridge's ``resolution``
    (z, y, x nm; one number for all three), else ``element_size_um`` (z, y, x micrometres, as
    Fiji and ilastik write it), else 1 nm. (A scalar 'resolution' was a TypeError, and
    element_size_um was ignored: a review found.)"""
    for name, unit in (("resolution", 1.0), ("element_size_um", 1000.0)):
        value = attrs.get(name)
        if value is None:
            continue
        v = np.atleast_1d(np.asarray(value, dtype=object)).ravel()
        try:
            nums = [float(x) for x in (list(v) * 3 if len(v) == 1 else list(v))]
        except (TypeError, ValueError):
            nums = []
        if len(nums) != 3 or not all(x > 0 and math.isfinite(x) for x in nums):
            raise MetadataError(f"{url!r}: the attribute {name!r} = {value!r} is not a voxel size (z, y, x)")
        return tuple(x * unit for x in nums[::-1])  # type: ignore[return-value]
    return (1.0, 1.0, 1.0)


@contextmanager
def _file_lock(path: str, exclusive: bool):
    """The lock volbridge's processes share for one HDF5 file: a flock on ``<file>.volbridge-lock``
    beside the file its path resolves to (a symlinked path had another lock, and two writers
    corrupted the file). A reader in a directory it cannot write reads without it."""
    fd = None
    try:
        try:
            fd = os.open(os.path.realpath(path) + ".volbridge-lock", os.O_RDWR | os.O_CREAT, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as e:
            if fd is not None:
                os.close(fd)
                fd = None
            if exclusive:
                raise StoreError(f"cannot lock {path} for writing: {e}") from e
        yield
    finally:
        if fd is not None:
            os.close(fd)


@contextmanager
def _h5_file(h5py, path: str, mode: str, url: str):
    """``path`` opened by h5py, its errors volbridge's. HDF5's own file locking is off: the lock
    above serialises volbridge's processes, and HDF5's would refuse a file this process has
    open elsewhere."""
    try:
        try:
            f = h5py.File(path, mode, locking=False)
        except OSError as e:
            if "locking flag" not in str(e):
                raise
            # the file is open elsewhere in this process (h5py's default locking, a notebook
            # that looked at it): HDF5 shares that handle only with the same flags
            f = h5py.File(path, mode)
    except FileNotFoundError as e:
        raise StoreError(f"{url}: file {path} does not exist") from e
    except OSError as e:
        raise StoreError(f"{url}: cannot open {path}: {e}") from e
    with f:
        yield f


def dataset_exists(url: str) -> bool:
    """Whether the file of an h5:// URL holds its dataset (or, with none named, exists)."""
    path, dataset, _ = parse_file_url(url)
    if not os.path.exists(path):
        return False
    if not dataset:
        return True
    with _file_lock(path, False), _h5_file(_h5py(), path, "r", url) as f:
        return dataset in f


def open_hdf5(url: str, writable: bool) -> HDF5Volume:
    path, dataset, options = parse_file_url(url)
    return HDF5Volume(url, path, dataset, writable, triple(options.get("resolution"), "resolution", url))
