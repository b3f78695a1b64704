"""N5 datasets and multiscale groups, against tensorstore's n5 driver as the oracle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorstore as ts

import volbridge as vb
from volbridge.errors import ChunkDecodeError, MetadataError, UnsupportedError

COMPRESSIONS = [{"type": "raw"}, {"type": "gzip"}, {"type": "gzip", "useZlib": True}, {"type": "bzip2"},
                {"type": "xz"}, {"type": "zstd"}, {"type": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1}]


def ts_n5(path, **kw):
    return ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)}, **kw}).result()


@pytest.mark.parametrize("compression", COMPRESSIONS, ids=lambda c: "-".join(str(v) for v in c.values()))
@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint64", "float32"])
def test_tensorstore_writes_volbridge_reads(tmp_path, compression, dtype):
    shape = (33, 20, 7)  # x, y, z: N5 lists dimensions fastest first
    meta = {"dimensions": list(shape), "blockSize": [16, 8, 4], "dataType": dtype, "compression": compression}
    try:
        t = ts_n5(tmp_path / "a", create=True, metadata=meta)
    except ValueError as e:
        pytest.fail(f"tensorstore refused {compression}: {e}")
    rng = np.random.default_rng(1)
    d = np.dtype(dtype)
    x = (rng.standard_normal(shape) * 100).astype(d) if d.kind == "f" else rng.integers(0, np.iinfo(d).max, shape, dtype=d)
    t[:, :, 2:] = x[:, :, 2:]  # z blocks 0 stay absent: fill value 0
    x[:, :, :2] = 0
    np.testing.assert_array_equal(vb.array(str(tmp_path / "a"), axis_order="xyz")[...], x)
    np.testing.assert_array_equal(vb.array(f"n5://{tmp_path}/a")[...], x.T)


@pytest.mark.parametrize("compression", [None, "gzip", "zstd", "blosc"])
def test_volbridge_writes_tensorstore_reads(tmp_path, compression):
    v = vb.create(f"n5://{tmp_path}/b", shape=(9, 30, 41), chunk_shape=(4, 16, 16), dtype="uint32", compression=compression)
    data = np.random.default_rng(2).integers(0, 2**32 - 1, (9, 30, 41), dtype=np.uint32)
    v[...] = data
    v[1:8, 3:29, 5:37] = data[:7, :26, :32]
    data[1:8, 3:29, 5:37] = data[:7, :26, :32]
    np.testing.assert_array_equal(ts_n5(tmp_path / "b").read().result(), data.T)
    # edge blocks are stored at their true size, not padded
    block = (tmp_path / "b" / "2" / "1" / "2").read_bytes()
    assert block[:4] == b"\x00\x00\x00\x03" and np.frombuffer(block[4:16], ">u4").tolist() == [9, 14, 1]


def test_multichannel_and_multiscale(tmp_path):
    v = vb.create(f"n5://{tmp_path}/m", shape=(8, 32, 32), chunk_shape=(4, 16, 16), dtype="uint8",
                  num_channels=2, num_scales=3, resolution=(40, 8, 8))
    data = np.random.default_rng(3).integers(0, 255, (2, 8, 32, 32), dtype=np.uint8)
    v[...] = data
    arr = vb.array(str(tmp_path / "m"))
    np.testing.assert_array_equal(arr[...], data)
    assert [s.resolution for s in arr.scales] == [(40, 8, 8), (40, 16, 16), (40, 32, 32)]
    assert arr.mip(2).shape == (2, 8, 8, 8)
    assert json.loads((tmp_path / "m" / "s1" / "attributes.json").read_text())["downsamplingFactors"] == [2, 2, 1]
    for i in range(3):  # each scale is a plain N5 dataset tensorstore opens
        assert ts_n5(tmp_path / "m" / f"s{i}").shape[:3] == tuple(reversed(arr.mip(i).shape[1:]))


def test_bad_n5(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "attributes.json").write_text('{"dimensions": [4, 4], "blockSize": [2, 2], "dataType": "uint8", "compression": {"type": "raw"}}')
    with pytest.raises(UnsupportedError, match="2 dimensions"):
        vb.array(str(tmp_path / "x"))
    (tmp_path / "x" / "attributes.json").write_text('{"dimensions": [4, 4, 4], "blockSize": [2, 2, 2], "dataType": "uint8", "compression": {"type": "lz77"}}')
    with pytest.raises(UnsupportedError, match="'lz77'"):
        vb.array(str(tmp_path / "x"))
    (tmp_path / "x" / "attributes.json").write_text('{"dimensions": [4, 4, 4], "blockSize": [2, 0, 2], "dataType": "uint8"}')
    with pytest.raises(MetadataError, match="blockSize"):
        vb.array(str(tmp_path / "x"))
    (tmp_path / "x" / "attributes.json").write_text("{oops")
    with pytest.raises(MetadataError, match="not valid JSON"):
        vb.array(f"n5://{tmp_path}/x")
    v = vb.create(f"n5://{tmp_path}/c", shape=(4, 4, 4), chunk_shape=(2, 2, 2), compression="gzip")
    v[...] = np.ones((4, 4, 4), np.uint8)
    block = tmp_path / "c" / "1" / "0" / "1"
    block.write_bytes(block.read_bytes()[:-5])
    with pytest.raises(ChunkDecodeError, match="1/0/1"):
        vb.array(str(tmp_path / "c"))[...]
    block.write_bytes(b"\x00\x00\x00\x07garbage")
    with pytest.raises(ChunkDecodeError, match="header"):
        vb.array(str(tmp_path / "c"))[...]
