"""HDF5 (read/write) and TIFF (read-only) volumes, against h5py and tifffile."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import tifffile

import volbridge as vb
from volbridge.errors import MetadataError, ReadOnlyError, StoreError, URLError

from test_concurrency import CHUNK, SHAPE, check_serial_replay, run_writers, writer_boxes


def test_hdf5_written_by_h5py_with_channels_and_resolution(tmp_path):
    data = np.random.default_rng(0).integers(0, 2**31, (2, 6, 10, 12), dtype=np.int32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        d = f.create_dataset("volumes/raw", data=data, chunks=(2, 3, 5, 6), compression="gzip")
        d.attrs["resolution"] = [40.0, 4.0, 4.0]  # z, y, x as CREMI writes it
        f.create_dataset("other", data=np.zeros(3))
    vol = vb.array(f"h5://{tmp_path}/a.h5#/volumes/raw")
    assert vol.shape == data.shape and vol.resolution == (40.0, 4.0, 4.0) and vol.chunk_shape == (3, 5, 6)
    np.testing.assert_array_equal(vol[...], data)
    np.testing.assert_array_equal(vol[1, -2:3, 4, 10:20][2:, :2], data[1, 0:3, 4, 10:12])
    np.testing.assert_array_equal(vb.array(f"{tmp_path}/a.h5#/volumes/raw", axis_order="xyz")[...], data.transpose(3, 2, 1, 0))
    with pytest.raises(URLError, match="name the dataset"):
        vb.array(f"{tmp_path}/a.h5")  # two datasets: which one?
    with pytest.raises(MetadataError, match="no dataset '/nope'"):
        vb.array(f"h5://{tmp_path}/a.h5#/nope")
    with pytest.raises(ReadOnlyError):
        vol[0, 0, 0, 0] = np.int32(1)


def test_hdf5_create_write_and_resolution_from_url(tmp_path):
    url = f"h5://{tmp_path}/b.h5#/raw"
    v = vb.create(url, shape=(5, 7, 9), chunk_shape=(2, 4, 4), dtype="float32", compression="gzip")
    data = np.random.default_rng(1).standard_normal((5, 7, 9)).astype(np.float32)
    v[...] = data
    v[1:4, 2:6, 0:3] = np.zeros((3, 4, 3), np.float32)
    data[1:4, 2:6, 0:3] = 0
    with h5py.File(tmp_path / "b.h5") as f:
        np.testing.assert_array_equal(f["raw"][...], data)
        assert f["raw"].compression == "gzip" and f["raw"].chunks == (2, 4, 4)
    assert vb.array(f"h5://{tmp_path}/b.h5?resolution=30,5,5#/raw").resolution == (30.0, 5.0, 5.0)
    with pytest.raises(MetadataError, match="already exists"):
        vb.create(url, shape=(1, 1, 1))
    with pytest.raises(StoreError, match="does not exist"):
        vb.array(f"h5://{tmp_path}/missing.h5#/raw")


def test_four_processes_write_one_hdf5_dataset(tmp_path):
    url = f"h5://{tmp_path}/c.h5#/vol"
    vb.create(url, shape=SHAPE, chunk_shape=CHUNK, dtype="uint16")
    boxes = writer_boxes(21, 4)
    run_writers(url, boxes, "uint16")
    check_serial_replay(url, boxes)


def test_tiff_multipage_and_stack(tmp_path):
    data = np.random.default_rng(2).integers(0, 65535, (7, 11, 13), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", data)
    vol = vb.array(f"tiff://{tmp_path}/m.tif?resolution=40,8,8")
    assert vol.shape == (7, 11, 13) and vol.resolution == (40.0, 8.0, 8.0)
    np.testing.assert_array_equal(vol[...], data)
    np.testing.assert_array_equal(vol[2:4, -3:5, 10:20][:, 3:, :3], data[2:4, 0:5, 10:13])
    (tmp_path / "st").mkdir()
    rgb = np.random.default_rng(3).integers(0, 255, (4, 6, 8, 3), dtype=np.uint8)
    for z in range(4):
        tifffile.imwrite(tmp_path / "st" / f"{z:03d}.tif", rgb[z], photometric="rgb")
    stack = vb.array(f"tiff://{tmp_path}/st/*.tif")
    assert stack.shape == (3, 4, 6, 8)  # RGB pages become channels
    np.testing.assert_array_equal(stack[...], rgb.transpose(3, 0, 1, 2))
    with pytest.raises(ReadOnlyError):
        vb.array(f"tiff://{tmp_path}/m.tif", mode="r+")
    with pytest.raises(URLError, match="no TIFF file matches"):
        vb.array(f"tiff://{tmp_path}/none/*.tif")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(StoreError, match="bad.tif"):
        vb.array(f"tiff://{tmp_path}/bad.tif")


def test_tiff_axes_follow_tifffile(tmp_path):
    """(review) An ImageJ hyperstack's channels were folded into z (alternating), planar RGB
    pages read with x as channels, files of other dtypes cast silently (300 read as 44), and
    unpadded slice names read out of z order. tifffile's own reading is the oracle."""
    rng = np.random.default_rng(4)
    zcyx = rng.integers(0, 65535, (5, 2, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "zc.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    czyx = rng.integers(0, 255, (3, 4, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "cz.ome.tif", czyx, ome=True, metadata={"axes": "CZYX"})
    planar = rng.integers(0, 255, (4, 3, 20, 30), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    for name, written, want in (("zc.tif", zcyx, zcyx.transpose(1, 0, 2, 3)), ("cz.ome.tif", czyx, czyx),
                                ("planar.tif", planar, planar.transpose(1, 0, 2, 3))):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / name), written)  # tifffile reads back what it wrote
        vol = vb.array(f"tiff://{tmp_path}/{name}")
        assert vol.shape == want.shape, name
        np.testing.assert_array_equal(vol[...], want)
        np.testing.assert_array_equal(vol[:, 1:3, -2:7, 5:9], np.pad(want[:, 1:3, 0:7, 5:9], ((0, 0), (0, 0), (2, 0), (0, 0))))
    tifffile.imwrite(tmp_path / "t.tif", zcyx[:4].reshape(2, 2, 2, 20, 30), imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(vb.errors.UnsupportedError, match="T=2"):
        vb.array(f"tiff://{tmp_path}/t.tif")
    (tmp_path / "mixed").mkdir()
    for i, (value, dtype) in enumerate(((1.75, np.float32), (300, np.uint16))):
        tifffile.imwrite(tmp_path / "mixed" / f"{i}.tif", np.full((4, 4), value, dtype))
    with pytest.raises(URLError, match="differ in page shape, channels or dtype.*float32.*uint16"):
        vb.array(f"tiff://{tmp_path}/mixed/*.tif")
    (tmp_path / "unpadded").mkdir()
    for z in range(12):
        tifffile.imwrite(tmp_path / "unpadded" / f"s_{z}.tif", np.full((4, 4), z, np.uint8))
    stack = vb.array(f"tiff://{tmp_path}/unpadded/s_*.tif")
    assert stack[:, 0, 0].tolist() == list(range(12))
    from volbridge.remotes.tiff import _natural  # a name with a non-ASCII digit sorts, not raises

    assert sorted(["s1²2.tif", "s10.tif", "s2.tif"], key=_natural) == ["s1²2.tif", "s2.tif", "s10.tif"]


def test_a_big_endian_hdf5_dataset_reads_writes_and_copies_as_native(tmp_path):
    """(review) '>u2' was the volume's dtype: every uint16 write and transfer was refused."""


    data = np.random.default_rng(5).integers(0, 65535, (6, 10, 12), dtype=np.uint16)
    with h5py.File(tmp_path / "be.h5", "w") as f:
        f.create_dataset("raw", data=data.astype(">u2"), chunks=(3, 5, 6))
    vol = vb.array(f"h5://{tmp_path}/be.h5#/raw", mode="r+")
    assert vol.dtype == np.dtype("uint16")
    np.testing.assert_array_equal(vol[...], data)
    vol[1:3, 2:5, 3:7] = np.full((2, 3, 4), 4242, np.uint16)
    data[1:3, 2:5, 3:7] = 4242
    with h5py.File(tmp_path / "be.h5", "r") as f:
        assert f["raw"].dtype == np.dtype(">u2")  # stored as it was
        np.testing.assert_array_equal(f["raw"][...], data)
    from volbridge.services import transfer

    transfer(f"h5://{tmp_path}/be.h5#/raw", f"zarr3://{tmp_path}/copy")
    np.testing.assert_array_equal(vb.array(f"zarr3://{tmp_path}/copy")[...], data)


def test_an_hdf5_file_open_in_h5py_in_this_process_still_opens(tmp_path):
    """(review) A notebook that looked at the file with h5py.File(path, 'r') made every
    volbridge read fail: 'file locking flag values don't match'."""


    data = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("raw", data=data)
    with h5py.File(tmp_path / "a.h5", "r"):
        np.testing.assert_array_equal(vb.array(f"h5://{tmp_path}/a.h5#/raw")[...], data)


def test_a_tiff_written_a_slice_at_a_time_reads_every_slice(tmp_path):
    """(review) A file of one series per page (TiffWriter in a loop, imwrite(append=True)) read
    as its first slice only, with no error."""
    data = np.random.default_rng(6).integers(0, 255, (5, 12, 16), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "loop.tif") as w:
        for plane in data:
            w.write(plane)
    for plane in data:
        tifffile.imwrite(tmp_path / "appended.tif", plane, append=True)
    for name in ("loop.tif", "appended.tif"):
        assert len(tifffile.TiffFile(tmp_path / name).series) == 5
        np.testing.assert_array_equal(vb.array(f"tiff://{tmp_path}/{name}")[...], data)
    tifffile.imwrite(tmp_path / "odd.tif", data[0])
    tifffile.imwrite(tmp_path / "odd.tif", data[1, :6], append=True)  # a second series of other pages: refused
    with pytest.raises(URLError, match="series of .*odd.tif differ"):
        vb.array(f"tiff://{tmp_path}/odd.tif")


def test_an_hdf5_datasets_fill_value_is_read_outside_its_bounds(tmp_path):
    """(review) h5py gives a dataset's fill value for unwritten chunks inside, volbridge gave 0
    outside and reported fill_value 0: one read mixed both."""
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("raw", shape=(4, 5, 6), dtype="uint16", chunks=(2, 2, 2), fillvalue=7)
        f.create_dataset("nan", shape=(2, 2, 2), dtype="float32", fillvalue=np.nan)
    a = vb.array(f"h5://{tmp_path / 'f.h5'}#/raw")
    assert a.fill_value == 7
    np.testing.assert_array_equal(a[-1:1, 0, -2:2], np.full((2, 4), 7))
    b = vb.array(f"h5://{tmp_path / 'f.h5'}#/nan")
    assert np.isnan(b[-1:3, 0, 0]).all()


def test_tiff_planes_follow_the_files_mapping_and_names_are_names(tmp_path):
    """(review) An OME-TIFF whose IFD mapping stores planes out of order was read in file order
    (z scrambled); two images in one file were stacked into z (the first is read now, as
    tifffile.imread does, with a warning); 'scan[1].tif' was taken as a pattern and another file
    read in its place."""
    planes = [np.full((8, 10), 10 * (z + 1), np.uint8) for z in range(4)]
    order = [0, 2, 1, 3]  # IFD i stores plane order[i]
    tds = "".join(f'<TiffData IFD="{i}" FirstZ="{z}" FirstC="0" FirstT="0" PlaneCount="1"/>' for i, z in enumerate(order))
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0" Name="x"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" SizeX="10" SizeY="8" '
           f'SizeZ="4" SizeC="1" SizeT="1"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>{tds}</Pixels></Image></OME>')
    with tifffile.TiffWriter(tmp_path / "map.ome.tif") as tw:
        for i, z in enumerate(order):
            tw.write(planes[z], description=xml if i == 0 else None, metadata=None, contiguous=False)
    np.testing.assert_array_equal(vb.array(f"tiff://{tmp_path / 'map.ome.tif'}")[...], tifffile.imread(tmp_path / "map.ome.tif"))
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tw:  # two positions
        tw.write(np.full((5, 8, 10), 1, np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
        tw.write(np.full((5, 8, 10), 2, np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    with pytest.warns(UserWarning, match="2 images"):
        two = vb.array(f"tiff://{tmp_path / 'two.ome.tif'}")
    assert two.shape == (5, 8, 10) and (two[...] == 1).all()
    with tifffile.TiffWriter(tmp_path / "slabs.tif") as tw:  # (review) slabs appended: one volume, as before
        for v in (1, 2):
            tw.write(np.full((5, 8, 10), v, np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    slabs = vb.array(f"tiff://{tmp_path / 'slabs.tif'}")
    assert slabs.shape == (10, 8, 10) and (slabs[:5] == 1).all() and (slabs[5:] == 2).all()
    tifffile.imwrite(tmp_path / "scan[1].tif", np.full((2, 4, 4), 77, np.uint8))
    tifffile.imwrite(tmp_path / "scan1.tif", np.full((2, 4, 4), 11, np.uint8))
    assert (vb.array(str(tmp_path / "scan[1].tif"))[...] == 77).all()
    assert (vb.array(f"tiff://{tmp_path}/scan*.tif")[...] != 0).all()  # a pattern is still a pattern


def test_hdf5_files_hold_several_volumes_and_refuse_what_they_cannot_store(tmp_path):
    """(review) A transfer into a new dataset of an existing file opened it as if it existed
    (raw and labels in one file, as CREMI ships); create took no lock (a create beside another
    process's writes corrupted the file) and kept it per path as written (a symlink had another);
    zstd was stored as gzip and jpeg as raw; a .tif path made a precomputed directory."""
    from volbridge.services import transfer

    src = vb.create(f"precomputed://{tmp_path / 'src'}", shape=(4, 16, 16), dtype="uint8", resolution=(40, 4, 4))
    src[...] = 9
    transfer(src, f"h5://{tmp_path / 'f.h5'}#/volumes/raw")
    transfer(src, f"h5://{tmp_path / 'f.h5'}#/volumes/labels")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert set(f["volumes"]) == {"raw", "labels"} and (f["volumes/labels"][...] == 9).all()
    from volbridge.remotes.hdf5 import _file_lock

    (tmp_path / "link.h5").symlink_to(tmp_path / "f.h5")
    with _file_lock(str(tmp_path / "link.h5"), True):
        assert (tmp_path / "f.h5.volbridge-lock").exists() and not (tmp_path / "link.h5.volbridge-lock").exists()
    for kw, what in (({"compression": "zstd"}, "compression"), ({"encoding": "jpeg"}, "jpeg")):
        with pytest.raises(vb.errors.UnsupportedError, match=what):
            vb.create(f"h5://{tmp_path / 'g.h5'}#/x", shape=(2, 4, 4), dtype="uint8", **kw)
    for url in (str(tmp_path / "new.tif"), f"tiff://{tmp_path / 'new2.tif'}"):
        with pytest.raises(vb.errors.UnsupportedError, match="read-only"):
            vb.create(url, shape=(2, 4, 4), dtype="uint8")
    assert not (tmp_path / "new.tif").exists()


def test_hdf5_voxel_sizes_in_the_usual_attributes(tmp_path):
    """(review) Fiji's and ilastik's element_size_um was ignored (1 nm), a scalar resolution
    was a TypeError, a dangling link a KeyError."""
    with h5py.File(tmp_path / "r.h5", "w") as f:
        f.create_dataset("um", data=np.zeros((2, 3, 4), np.uint8)).attrs["element_size_um"] = [1.5, 0.25, 0.25]
        f.create_dataset("iso", data=np.zeros((2, 3, 4), np.uint8)).attrs["resolution"] = 4.0
        f.create_dataset("bad", data=np.zeros((2, 3, 4), np.uint8)).attrs["resolution"] = [1, 2]
        f["gone"] = h5py.SoftLink("/nowhere")
    assert vb.array(f"h5://{tmp_path / 'r.h5'}#/um").resolution == (1500, 250, 250)
    assert vb.array(f"h5://{tmp_path / 'r.h5'}#/iso").resolution == (4, 4, 4)
    with pytest.raises(MetadataError, match="voxel size"):
        vb.array(f"h5://{tmp_path / 'r.h5'}#/bad")
    with pytest.raises(MetadataError, match="no dataset"):
        vb.array(f"h5://{tmp_path / 'r.h5'}#/gone")


def test_tiff_voxel_sizes_come_from_ome_and_imagej_metadata(tmp_path):
    """Voxel sizes were 1 nm whatever the file said: Fiji's calibration and OME's PhysicalSize
    are read now (nm, as Fiji shows them), the URL's ?resolution= still wins, and a plain TIFF's
    72 dpi is not taken for a voxel size."""
    data = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    for unit in ("um", "micron", "\\u00B5m"):  # (tifffile writes no non-ASCII ImageJ text)
        tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                         metadata={"spacing": 2.0, "unit": unit, "axes": "ZYX"})
        assert vb.array(f"tiff://{tmp_path}/ij.tif").resolution == pytest.approx((2000.0, 500.0, 250.0)), unit
    assert vb.array(f"tiff://{tmp_path}/ij.tif?resolution=30,4,4").resolution == (30.0, 4.0, 4.0)
    tifffile.imwrite(tmp_path / "nm.tif", data, imagej=True, resolution=(1 / 4, 1 / 4), metadata={"unit": "nm", "axes": "ZYX"})
    assert vb.array(f"tiff://{tmp_path}/nm.tif").resolution == pytest.approx((1.0, 4.0, 4.0))  # no spacing: 1 unit, as Fiji
    tifffile.imwrite(tmp_path / "px.tif", data, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "pixel", "axes": "ZYX"})
    tifffile.imwrite(tmp_path / "dpi.tif", data, photometric="minisblack", resolution=(72, 72), resolutionunit="INCH")
    for name in ("px.tif", "dpi.tif"):
        assert vb.array(f"tiff://{tmp_path}/{name}").resolution == (1.0, 1.0, 1.0)
    tifffile.imwrite(tmp_path / "o.ome.tif", data, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 30, "PhysicalSizeZUnit": "nm"})
    assert vb.array(f"tiff://{tmp_path}/o.ome.tif").resolution == pytest.approx((30.0, 500.0, 250.0))
    tifffile.imwrite(tmp_path / "xy.ome.tif", data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 8, "PhysicalSizeXUnit": "nm",
                                                                       "PhysicalSizeY": 8, "PhysicalSizeYUnit": "nm"})
    assert vb.array(f"tiff://{tmp_path}/xy.ome.tif").resolution == pytest.approx((1.0, 8.0, 8.0))
    tifffile.imwrite(tmp_path / "odd.ome.tif", data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 1, "PhysicalSizeXUnit": "pc",
                                                                        "PhysicalSizeY": 1})
    with pytest.warns(UserWarning, match="PhysicalSizeX in 'pc'"):  # (review) opened uncalibrated, as Fiji does
        assert vb.array(f"tiff://{tmp_path}/odd.ome.tif").resolution == (1.0, 1.0, 1.0)
    assert vb.array(f"tiff://{tmp_path}/odd.ome.tif?resolution=1,2,3").resolution == (1.0, 2.0, 3.0)
    # (review) what Fiji opens opened no more: a negative ImageJ spacing (ImageJ takes its size),
    # a zero one, a zero OME size, OME 'pixel' units
    tifffile.imwrite(tmp_path / "neg.tif", data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"spacing": -0.5, "unit": "um", "axes": "ZYX"})
    assert vb.array(f"tiff://{tmp_path}/neg.tif").resolution == pytest.approx((500.0, 250.0, 250.0))
    tifffile.imwrite(tmp_path / "zero.tif", data, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"spacing": 0, "unit": "um", "axes": "ZYX"})
    with pytest.warns(UserWarning, match="spacing 0"):
        assert vb.array(f"tiff://{tmp_path}/zero.tif").resolution == pytest.approx((1000.0, 250.0, 250.0))
    tifffile.imwrite(tmp_path / "z0.ome.tif", data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                                                                       "PhysicalSizeZ": 0})
    with pytest.warns(UserWarning, match="PhysicalSizeZ '0'"):
        assert vb.array(f"tiff://{tmp_path}/z0.ome.tif").resolution == pytest.approx((1000.0, 500.0, 500.0))
    tifffile.imwrite(tmp_path / "pix.ome.tif", data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 1, "PhysicalSizeXUnit": "pixel",
                                                                        "PhysicalSizeY": 1, "PhysicalSizeYUnit": "pixel"})
    assert vb.array(f"tiff://{tmp_path}/pix.ome.tif").resolution == (1.0, 1.0, 1.0)
    # (review) an OME Image with no planes in this file: tifffile's series 0 is the next Image
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
           'UUID="urn:uuid:11111111-1111-1111-1111-111111111111">'
           '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint8" SizeX="8" SizeY="8" SizeZ="2" SizeC="1" '
           'SizeT="1" PhysicalSizeX="5" PhysicalSizeY="5" PhysicalSizeZ="50"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
           '<TiffData IFD="0" PlaneCount="2"><UUID FileName="other.ome.tif">urn:uuid:22222222-2222-2222-2222-222222222222</UUID>'
           '</TiffData></Pixels></Image><Image ID="Image:1"><Pixels ID="Pixels:1" DimensionOrder="XYZCT" Type="uint8" SizeX="8" '
           'SizeY="8" SizeZ="2" SizeC="1" SizeT="1" PhysicalSizeX="0.1" PhysicalSizeY="0.1" PhysicalSizeZ="0.3">'
           '<Channel ID="Channel:1:0" SamplesPerPixel="1"/><TiffData IFD="0" PlaneCount="2"/></Pixels></Image></OME>')
    with tifffile.TiffWriter(tmp_path / "skip.ome.tif") as tw:
        for i in range(2):
            tw.write(np.full((8, 8), i, np.uint8), description=xml if i == 0 else None, metadata=None, contiguous=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (tifffile's own about the missing file)
        assert vb.array(f"tiff://{tmp_path}/skip.ome.tif").resolution == pytest.approx((300.0, 100.0, 100.0))
    (tmp_path / "st").mkdir()  # a stack of files: the first file's calibration
    for z in range(3):
        tifffile.imwrite(tmp_path / "st" / f"{z}.tif", data[z], imagej=True, resolution=(1 / 0.1, 1 / 0.1), metadata={"unit": "um"})
    assert vb.array(f"tiff://{tmp_path}/st/*.tif").resolution == pytest.approx((1000.0, 100.0, 100.0))


def test_tiff_series_option_reads_one_image(tmp_path):
    """?series=N reads image N of an OME-TIFF of several positions (with its own voxel size), or
    one slab of a file written a slab at a time; tifffile's own reading is the oracle."""
    first, second = np.full((5, 8, 10), 1, np.uint8), np.arange(3 * 6 * 7, dtype=np.uint8).reshape(3, 6, 7)
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tw:
        tw.write(first, photometric="minisblack", metadata={"axes": "ZYX", "PhysicalSizeX": 4, "PhysicalSizeXUnit": "nm",
                                                            "PhysicalSizeY": 4, "PhysicalSizeYUnit": "nm"})
        tw.write(second, photometric="minisblack", metadata={"axes": "ZYX", "PhysicalSizeX": 8, "PhysicalSizeXUnit": "nm",
                                                             "PhysicalSizeY": 8, "PhysicalSizeYUnit": "nm",
                                                             "PhysicalSizeZ": 40, "PhysicalSizeZUnit": "nm"})
    one = vb.array(f"tiff://{tmp_path}/two.ome.tif?series=1")
    np.testing.assert_array_equal(one[...], tifffile.imread(tmp_path / "two.ome.tif", series=1))
    assert one.resolution == pytest.approx((40.0, 8.0, 8.0))
    zero = vb.array(f"tiff://{tmp_path}/two.ome.tif?series=0")
    assert zero.shape == (5, 8, 10) and zero.resolution == pytest.approx((1.0, 4.0, 4.0))
    with tifffile.TiffWriter(tmp_path / "slabs.tif") as tw:
        for v in (1, 2, 3):
            tw.write(np.full((2, 4, 4), v, np.uint8), photometric="minisblack", metadata={"axes": "ZYX"})
    slab = vb.array(f"tiff://{tmp_path}/slabs.tif?series=2")
    assert slab.shape == (2, 4, 4) and (slab[...] == 3).all()
    with pytest.raises(URLError, match="holds 3 series"):
        vb.array(f"tiff://{tmp_path}/slabs.tif?series=3")
    for bad in ("-1", "x", "1.0", ""):
        with pytest.raises(URLError, match="series must be"):
            vb.array(f"tiff://{tmp_path}/slabs.tif?series={bad}")
    with pytest.raises(URLError, match="unknown option.*serie; this volume takes resolution, series"):
        vb.array(f"tiff://{tmp_path}/slabs.tif?serie=2")  # (it read all three slabs)
    with pytest.raises(URLError, match="unknown option"):
        vb.array(f"h5://{tmp_path}/x.h5?res=4,4,4#/raw")
