"""Random creates, writes and reads on precomputed volumes, checked against a numpy model.

Covers random bounds (negative offsets), chunk shapes, channels, dtypes, every lossless
encoding, several scales, both axis orders, file and memory stores, aligned and unaligned
writes, reads sticking out of the bounds, integer indices, and reopening the volume.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid

import numpy as np
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import volbridge as vb
from volbridge.geometry import Box

from volume_model import VolumeModel, to_user, user_index

DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"]


@st.composite
def volume_spec(draw):
    enc = draw(st.sampled_from(["raw", "raw+gzip", "raw+zstd", "compressed_segmentation", "png", "gzip", "zstd", "blosclz"]))
    if enc == "compressed_segmentation":
        dtype = draw(st.sampled_from(["uint32", "uint64"]))
    elif enc == "png":
        dtype = draw(st.sampled_from(["uint8", "uint16"]))
    else:
        dtype = draw(st.sampled_from(DTYPES))
    layer = "segmentation" if enc == "compressed_segmentation" and draw(st.booleans()) else "image"
    nc = 1 if layer == "segmentation" else draw(st.integers(1, 3))
    if enc == "png":
        nc = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(1, 40)) for _ in range(3))
    offset = tuple(draw(st.integers(-60, 60)) for _ in range(3))
    chunk = tuple(draw(st.integers(1, 17)) for _ in range(3))
    block = tuple(draw(st.integers(1, 9)) for _ in range(3))
    return dict(
        enc=enc, dtype=dtype, layer=layer, nc=nc, shape=shape, offset=offset, chunk=chunk, block=block,
        num_scales=draw(st.integers(1, 3)), axis_order=draw(st.sampled_from(["zyx", "xyz"])),
        store=draw(st.sampled_from(["file", "mem"])),
    )


def random_values(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype) * 1000
    info = np.iinfo(dtype)
    # A few distinct labels for segmentation-like compressibility, sometimes full range.
    if rng.random() < 0.5:
        return rng.choice(np.array([info.min, 0, 1, 7, info.max], dtype=dtype), size=shape)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@st.composite
def zarr_spec(draw, formats=("zarr2", "zarr3")):
    """Zarr (and N5) arrays: no offset, one scale, chunk-level compressors instead of encodings."""
    dtype = draw(st.sampled_from(DTYPES))
    return dict(
        format=draw(st.sampled_from(formats)), enc=draw(st.sampled_from([None, "zstd", "gzip", "blosc"])),
        dtype=dtype, layer="image", nc=draw(st.integers(1, 3)), shape=tuple(draw(st.integers(1, 40)) for _ in range(3)),
        offset=(0, 0, 0), chunk=tuple(draw(st.integers(1, 17)) for _ in range(3)), num_scales=1,
        axis_order=draw(st.sampled_from(["zyx", "xyz"])), store=draw(st.sampled_from(["file", "mem"])),
    )


@st.composite
def ome_spec(draw):
    """OME-Zarr pyramids: offsets (as translations) and several scales."""
    spec = draw(zarr_spec(formats=("ome-zarr",)))
    spec["offset"] = tuple(draw(st.integers(-60, 60)) for _ in range(3))
    spec["num_scales"] = draw(st.integers(1, 3))
    return spec


@st.composite
def sharded_spec(draw):
    """Sharded volumes: zarr v3 ``sharding_indexed`` shards of 1-3 inner chunks per axis, and
    precomputed shards of ``2**b`` chunks per axis (identity hash, offsets, several scales)."""
    if draw(st.booleans()):
        spec = draw(zarr_spec(formats=("zarr3",)))
        spec["shard"] = tuple(c * draw(st.integers(1, 3)) for c in spec["chunk"])
    else:
        spec = draw(volume_spec().filter(lambda s: not s["enc"].startswith("raw+")))
        b = draw(st.integers(0, 2))
        spec["shard"] = tuple(c * 2**b for c in spec["chunk"])
    return spec


class PrecomputedMachine(RuleBasedStateMachine):
    #: Set by subclasses to run every volume under another store (e.g. "s3://bucket").
    base_url: str | None = None
    #: The volumes this machine creates.
    SPEC = volume_spec()

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="vb-sm-")

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    @initialize(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def create(self, data, seed):
        spec = data.draw(self.SPEC, label="spec")
        self.rng = np.random.default_rng(seed)
        self.spec = spec
        if self.base_url:
            base = f"{self.base_url}/{uuid.uuid4().hex}"
        else:
            base = f"{self.tmp}/vol" if spec["store"] == "file" else f"mem://{uuid.uuid4().hex}"
        ao = spec["axis_order"]
        o = (lambda t: t[::-1]) if ao == "zyx" else (lambda t: t)
        start, shape = spec["offset"], spec["shape"]
        stop = tuple(a + s for a, s in zip(start, shape))
        shard = o(spec["shard"]) if spec.get("shard") else None
        if spec.get("format") == "h5":  # a dataset inside a local file
            self.url = f"h5://{self.tmp}/vol.h5#/group/data"
            self.vol = vb.create(self.url, shape=o(shape), dtype=spec["dtype"], chunk_shape=o(spec["chunk"]),
                                 num_channels=spec["nc"], axis_order=ao)
        elif spec.get("format") == "ome-zarr":
            self.url = f"ome-zarr://{base}"
            self.vol = vb.create(self.url, bounds=(o(start), o(stop)), dtype=spec["dtype"], chunk_shape=o(spec["chunk"]),
                                 compression=spec["enc"], num_channels=spec["nc"], num_scales=spec["num_scales"],
                                 resolution=o((4, 4, 40)), axis_order=ao)
        elif "format" in spec:  # zarr, n5
            self.url = f"{spec['format']}://{base}"
            self.vol = vb.create(self.url, shape=o(shape), dtype=spec["dtype"], chunk_shape=o(spec["chunk"]),
                                 compression=spec["enc"], num_channels=spec["nc"], axis_order=ao, shard_shape=shard)
        else:
            self.url = "precomputed://" + base
            enc, compression = spec["enc"], None
            if enc.startswith("raw+"):
                enc, compression = "raw", enc[4:]
            self.vol = vb.create(
                self.url, bounds=(o(start), o(stop)), dtype=spec["dtype"], chunk_shape=o(spec["chunk"]),
                resolution=o((4, 4, 40)), encoding=enc, compression=compression, layer_type=spec["layer"],
                num_channels=spec["nc"], num_scales=spec["num_scales"], axis_order=ao,
                compressed_segmentation_block_size=o(spec["block"]), shard_shape=shard,
            )
        self.scale_boxes = [Box.of(o(s.bounds[0]), o(s.bounds[1])) for s in self.vol.scales]
        self.model = VolumeModel(self.scale_boxes, np.dtype(spec["dtype"]), spec["nc"])

    def _box(self, data, scale, inside: bool) -> Box:
        b = self.scale_boxes[scale]
        start, stop = [], []
        for lo, hi in zip(b.start, b.stop):
            if inside:
                a = data.draw(st.integers(lo, hi - 1))
                z = data.draw(st.integers(a + 1, hi))
            else:
                a = data.draw(st.integers(lo - 20, hi + 5))
                z = data.draw(st.integers(a, hi + 20))
            start.append(a)
            stop.append(z)
        return Box(tuple(start), tuple(stop))

    @property
    def has_c(self):
        return self.vol.has_channel_axis

    @rule(data=st.data())
    def write_box(self, data):
        scale = data.draw(st.integers(0, len(self.scale_boxes) - 1))
        box = self._box(data, scale, inside=True)
        values = random_values(self.rng, (*box.shape, self.spec["nc"]), self.spec["dtype"])
        ao = self.spec["axis_order"]
        self.vol.mip(scale)[user_index(box, ao, has_channel_axis=self.has_c)] = to_user(values, ao, self.has_c)
        self.model.write(scale, box, values)

    @precondition(lambda self: self.spec["nc"] > 1)
    @rule(data=st.data())
    def write_one_channel(self, data):
        scale = data.draw(st.integers(0, len(self.scale_boxes) - 1))
        box = self._box(data, scale, inside=True)
        c = data.draw(st.integers(0, self.spec["nc"] - 1))
        values = random_values(self.rng, box.shape, self.spec["dtype"])
        ao = self.spec["axis_order"]
        self.vol.mip(scale)[user_index(box, ao, channel=c)] = values.T if ao == "zyx" else values
        self.model.write(scale, box, values, c)

    @rule(data=st.data())
    def write_aligned_chunks(self, data):
        # Whole chunks (the fast path that skips the read), clipped at the bounds.
        scale = data.draw(st.integers(0, len(self.scale_boxes) - 1))
        b = self.scale_boxes[scale]
        chunk = self.vol.mip(scale).chunk_shape
        chunk = chunk[::-1] if self.spec["axis_order"] == "zyx" else chunk
        start, stop = [], []
        for lo, hi, c in zip(b.start, b.stop, chunk):
            n = -(-(hi - lo) // c)
            i = data.draw(st.integers(0, n - 1))
            j = data.draw(st.integers(i + 1, n))
            start.append(lo + i * c)
            stop.append(min(hi, lo + j * c))
        box = Box(tuple(start), tuple(stop))
        values = random_values(self.rng, (*box.shape, self.spec["nc"]), self.spec["dtype"])
        ao = self.spec["axis_order"]
        self.vol.mip(scale)[user_index(box, ao, has_channel_axis=self.has_c)] = to_user(values, ao, self.has_c)
        self.model.write(scale, box, values)

    @rule(data=st.data())
    def read_box(self, data):
        scale = data.draw(st.integers(0, len(self.scale_boxes) - 1))
        box = self._box(data, scale, inside=False)
        ao = self.spec["axis_order"]
        got = self.vol.mip(scale)[user_index(box, ao, has_channel_axis=self.has_c)]
        want = to_user(self.model.read(scale, box), ao, self.has_c)
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        if ao == "zyx":
            assert got.flags.c_contiguous
        else:
            assert got.flags.f_contiguous

    @rule(data=st.data())
    def read_with_integer(self, data):
        scale = data.draw(st.integers(0, len(self.scale_boxes) - 1))
        b = self.scale_boxes[scale]
        axis = data.draw(st.integers(0, 2))
        pos = data.draw(st.integers(b.start[axis] - 3, b.stop[axis] + 2))
        box = Box(
            tuple(pos if i == axis else b.start[i] for i in range(3)),
            tuple(pos + 1 if i == axis else b.stop[i] for i in range(3)),
        )
        ao = self.spec["axis_order"]
        idx = list(user_index(box, ao, has_channel_axis=self.has_c))
        user_axis = (2 - axis) + (1 if self.has_c else 0) if ao == "zyx" else axis
        idx[user_axis] = pos
        got = self.vol.mip(scale)[tuple(idx)]
        want = to_user(self.model.read(scale, box), ao, self.has_c)
        want = np.take(want, 0, axis=user_axis)
        np.testing.assert_array_equal(got, want)

    @rule()
    def reopen(self):
        self.vol = vb.array(self.url, axis_order=self.spec["axis_order"], mode="r+")

    @invariant()
    def metadata_is_stable(self):
        if hasattr(self, "vol"):
            assert self.vol.dtype == np.dtype(self.spec["dtype"])
            assert len(self.vol.scales) == self.spec["num_scales"]


TestPrecomputedStateMachine = PrecomputedMachine.TestCase
TestPrecomputedStateMachine.settings = settings(stateful_step_count=12)


class ZarrMachine(PrecomputedMachine):
    SPEC = zarr_spec()


TestZarrStateMachine = ZarrMachine.TestCase
TestZarrStateMachine.settings = settings(stateful_step_count=12)


class N5Machine(PrecomputedMachine):
    SPEC = zarr_spec(formats=("n5",))


TestN5StateMachine = N5Machine.TestCase
TestN5StateMachine.settings = settings(stateful_step_count=12)


class OmeZarrMachine(PrecomputedMachine):
    SPEC = ome_spec()


TestOmeZarrStateMachine = OmeZarrMachine.TestCase
TestOmeZarrStateMachine.settings = settings(stateful_step_count=10, max_examples=60)


class ShardedMachine(PrecomputedMachine):
    SPEC = sharded_spec()


TestShardedStateMachine = ShardedMachine.TestCase
TestShardedStateMachine.settings = settings(stateful_step_count=12, max_examples=80)


class HDF5Machine(PrecomputedMachine):
    SPEC = zarr_spec(formats=("h5",))


TestHDF5StateMachine = HDF5Machine.TestCase
TestHDF5StateMachine.settings = settings(stateful_step_count=10, max_examples=40)


class _ThroughRelay(PrecomputedMachine):
    """Machines whose volume is reached through a relay (started per example, stopped after)."""

    TOKEN = "sm-token"

    def start_relay(self, doc: dict):
        from volbridge.relay import RelayConfig
        from volbridge.relay.serve import RelayServer

        doc = {"server": {"host": "127.0.0.1", "port": 0}, **doc}
        self.relay = RelayServer(RelayConfig.from_dict(doc), log_level="warning", access_log=False).start()
        return self.relay

    def open(self):
        return vb.array(self.url, axis_order=self.spec["axis_order"], mode="r+", token=self.TOKEN)

    @rule()
    def reopen(self):
        self.vol = self.open()

    def teardown(self):
        if hasattr(self, "relay"):
            self.relay.stop()
        super().teardown()


class BossRelayMachine(_ThroughRelay):
    """The same rules through the BossDB dialect: volbridge's bossdb:// client, a relay (with its
    cache tiers) in between, the precomputed volume behind it. One channel (a BossDB channel has
    one), every encoding, dtype, offset and scale count of the precomputed machine."""

    SPEC = volume_spec().map(lambda s: {**s, "nc": 1, "store": "file"})

    @initialize(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def create(self, data, seed):
        super().create(data, seed)
        self.start_relay({
            "sources": {"sm/vol/ch": {"url": self.url, "writable": True}},
            "tokens": [{"token": self.TOKEN, "write": ["sm/*"]}],
            "cache": {"memory_bytes": 2**20},
        })
        self.url = self.remote_url(self.relay.url)
        self.vol = self.open()
        assert [Box.of(*map(lambda t: t[::-1] if self.spec["axis_order"] == "zyx" else t, s.bounds)) for s in self.vol.scales] == self.scale_boxes

    def remote_url(self, relay_url: str) -> str:
        return f"bossdb://{relay_url}/sm/vol/ch"


TestBossRelayStateMachine = BossRelayMachine.TestCase
TestBossRelayStateMachine.settings = settings(stateful_step_count=10, max_examples=40)


class DVIDRelayMachine(BossRelayMachine):
    """The same rules through the DVID dialect: volbridge's dvid:// client (whose writes are widened
    to whole DVID blocks and read-modify-written), a relay, the precomputed volume behind it. One
    scale: a DVID instance is one."""

    SPEC = volume_spec().map(lambda s: {
        **s, "nc": 1, "store": "file", "num_scales": 1,
        "dtype": {"int8": "uint8", "int16": "uint16", "int32": "uint32", "int64": "uint64", "float64": "float32"}.get(s["dtype"], s["dtype"]),
    })

    def remote_url(self, relay_url: str) -> str:
        from volbridge.relay.dvid import repo_uuid

        return f"dvid://{relay_url}/{repo_uuid('sm', 'vol')[:10]}/ch"


TestDVIDRelayStateMachine = DVIDRelayMachine.TestCase
TestDVIDRelayStateMachine.settings = settings(stateful_step_count=10, max_examples=30)


class VersionedDVIDMachine(_ThroughRelay):
    """The rules on an instance of a versioned repo that the relay keeps itself, plus a rule that
    commits the version and moves on to a new one (a branch or the next version): the new version
    reads exactly as its parent did, and takes the later writes. Labels and images, offsets."""

    SPEC = volume_spec().map(lambda s: {
        **s, "nc": 1, "num_scales": 1, "enc": "raw",
        "dtype": "uint64" if s["layer"] == "segmentation" else {"int8": "uint8", "int16": "uint16", "int32": "uint32",
                                                               "int64": "uint64", "float64": "float32"}.get(s["dtype"], s["dtype"]),
    })
    TYPES = {"uint8": "uint8blk", "uint16": "uint16blk", "uint32": "uint32blk", "uint64": "uint64blk", "float32": "float32blk"}

    @initialize(data=st.data(), seed=st.integers(0, 2**32 - 1))
    def create(self, data, seed):
        from volbridge.remotes import dvid

        spec = data.draw(self.SPEC, label="spec")
        self.spec, self.rng = spec, np.random.default_rng(seed)
        self.start_relay({"dvid": {"data_dir": f"{self.tmp}/dvid"}, "tokens": [{"token": self.TOKEN, "write": ["dvid/*"]}]})
        kind = "labelmap" if spec["layer"] == "segmentation" else self.TYPES[spec["dtype"]]
        start, shape = spec["offset"], spec["shape"]
        stop = tuple(a + n for a, n in zip(start, shape))
        root = dvid.create_repo(self.relay.url, "sm", token=self.TOKEN)
        block = tuple(data.draw(st.sampled_from([4, 8, 16]), label="block") for _ in range(3))
        self.url = dvid.create_instance(self.relay.url, root, "vol", kind, bounds=(start, stop), block_size=block,
                                        axis_order="xyz", token=self.TOKEN)
        self.vol = self.open()
        self.scale_boxes = [Box(tuple(start), stop)]
        self.model = VolumeModel(self.scale_boxes, np.dtype(spec["dtype"]), 1)

    @rule(on_branch=st.booleans())
    def commit_and_move_on(self, on_branch):
        node = self.vol.volume
        node.commit("state machine")
        child = node.branch(f"b{uuid.uuid4().hex[:8]}") if on_branch else node.newversion()
        self.url = self.url.rsplit("/", 2)[0] + f"/{child}/vol"
        self.vol = self.open()


TestVersionedDVIDStateMachine = VersionedDVIDMachine.TestCase
TestVersionedDVIDStateMachine.settings = settings(stateful_step_count=10, max_examples=30)
