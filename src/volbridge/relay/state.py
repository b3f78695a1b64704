"""The running relay: its sources, cache tiers, access rules and counters."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..errors import VolbridgeError
from ..kv import DiskCache, KVStore, MemoryCache
from ..kv.cache_tier import CacheTier
from ..remotes import open_volume
from .config import RelayConfig, SourceConfig
from .errors import RelayError
from .source import RelaySource, open_sources

log = logging.getLogger("volbridge.relay")


def _cache_factory(cfg: RelayConfig) -> Callable[[KVStore], KVStore]:
    def build(router: KVStore) -> KVStore:
        store = router
        if cfg.disk_dir and cfg.disk_bytes > 0:
            store = DiskCache(store, cfg.disk_dir, cfg.disk_bytes, cache_absent=True)
        if cfg.memory_bytes > 0:
            store = MemoryCache(store, cfg.memory_bytes, cache_absent=True)
        return store

    return build


def _opener(src: SourceConfig) -> Callable:
    def open_it():
        try:
            return open_volume(src.url, "r+" if src.writable else "r", token=src.token)
        except VolbridgeError as e:
            raise VolbridgeError(f"source {src.name}: {e}") from e

    return open_it


def _check_shared_frames(sources: dict[str, RelaySource]) -> None:
    """The channels of one experiment share its coordinate frame in the BossDB dialect, and so
    its voxel size (the first channel's). A channel at another (a segmentation at half the
    image's resolution) is served at its own scales, but a client that places channels by the
    frame's voxel size (neuroglancer) draws it at the wrong scale: say so. (BossDB itself would
    give such a channel a base_resolution above 0, which this relay does not map yet.)"""
    first: dict[str, RelaySource] = {}
    for name, src in sorted(sources.items()):
        other = first.setdefault(name.rsplit("/", 1)[0], src)
        a, b = other.meta.scales[0].resolution, src.meta.scales[0].resolution
        if tuple(a) != tuple(b):
            log.warning("sources %s and %s are at %s and %s nm (x, y, z) but share their experiment's coordinate frame, "
                        "whose voxel size is the first's: clients that place channels by the frame draw %s at the wrong scale",
                        other.name, name, tuple(a), tuple(b), name)


class Relay:
    def __init__(self, config: RelayConfig):
        config.validate()
        self.config = config
        self._lock = threading.Lock()
        self.started = time.time()
        self.router, self.cache, self.sources = open_sources(
            ((s.name, s.url, _opener(s), s.channel or 0) for s in config.sources.values()), _cache_factory(config)
        )
        for name, src in self.sources.items():
            nch = src.meta.num_channels
            chosen = config.sources[name].channel
            if chosen is None and nch > 1 and not config.sources[name].quick_start:
                raise VolbridgeError(f"source {name} has {nch} channels; say which one it serves with channel = N")
            if not 0 <= src.channel < nch:
                raise VolbridgeError(f"source {name}: channel = {chosen}, but the source has channels 0..{nch - 1}")
        _check_shared_frames(self.sources)
        #: Versioned DVID repos created over HTTP, when the config gives them a directory.
        self.repos = None
        if config.dvid_dir:
            from .dvid_repos import RepoStore

            self.repos = RepoStore(config.dvid_dir)
        #: BossDB resources created over HTTP, when the config gives them a directory.
        self.boss = None
        if config.boss_dir:
            from .boss_resources import BossResources

            self.boss = BossResources(config.boss_dir)
            for name, chan in self.boss.channels():
                src = self.add_source(name, chan["url"], public=chan.get("public", False))
                status = chan.get("downsample_status", "NOT_DOWNSAMPLED")
                src.downsample_status = "NOT_DOWNSAMPLED" if status in ("QUEUED", "IN_PROGRESS") else status
        from .downsampling import Jobs

        self.downsampling = Jobs()
        self.requests: Counter = Counter()  # (kind, status) -> count
        self.bytes_served = 0

    def add_source(self, name: str, url: str, *, public: bool = False) -> RelaySource:
        """Serve a channel created over HTTP (writable, tokens as configured)."""
        from .source import RelaySource

        cfg = SourceConfig(name, url, public=public, writable=True)
        volume = _opener(cfg)()
        with self._lock:
            self.config.sources[name] = cfg
            self.sources[name] = src = RelaySource(name, url, volume, self.cache, self.router)
        src.downsample_status = "NOT_DOWNSAMPLED"
        src.on_status = self.save_status
        return src

    def save_status(self, src: RelaySource) -> None:
        """Keep a created channel's downsample status in its resource document."""
        if self.boss is not None and self.boss.channel(*src.name.split("/")) is not None:
            self.boss.update(tuple(src.name.split("/")), {"downsample_status": src.downsample_status})

    def remove_source(self, name: str) -> None:
        with self._lock:
            self.sources.pop(name, None)
            self.config.sources.pop(name, None)

    # -- tiers ------------------------------------------------------------------------------------
    def tiers(self) -> list[tuple[str, CacheTier]]:
        out = []
        store = self.cache
        while isinstance(store, CacheTier):
            out.append(("memory" if isinstance(store, MemoryCache) else "disk", store))
            store = store.backing
        return out

    def count(self, kind: str, status: int, nbytes: int = 0) -> None:
        with self._lock:
            self.requests[(kind, status)] += 1
            self.bytes_served += nbytes

    # -- lookup and access ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, RelaySource]:
        """The channels now (channels created or deleted over HTTP change the live dict)."""
        with self._lock:
            return dict(self.sources)

    def source(self, c: str, e: str, ch: str) -> RelaySource:
        name = f"{c}/{e}/{ch}"
        src = self.sources.get(name)
        if src is None:
            raise RelayError(404, 4000, f"no channel {name} on this relay")
        return src

    def _public(self, name: str) -> tuple[bool, bool, bool]:
        """(public read, public write, writable) of a channel or a managed DVID instance."""
        src = self.config.sources.get(name)
        if src is None:
            if name.startswith("dvid/"):
                return self.config.dvid_public, self.config.dvid_public_write, True
            return False, False, False  # deleted meanwhile: nothing is allowed
        return src.public, src.public_write, src.writable

    def allowed(self, token: str | None, action: str, name: str) -> bool:
        public, public_write, _ = self._public(name)
        if (action == "read" and public) or (action == "write" and public_write):
            return True
        t = self.config.token(token)
        return t is not None and t.may(action, name)

    def authorize(self, token: str | None, action: str, name: str) -> None:
        """401 without a valid token, 403 with one that does not grant ``action`` on ``name``."""
        if self.allowed(token, action, name):
            if action == "write" and not self._public(name)[2]:
                raise RelayError(403, 4003, f"channel {name} is read-only on this relay")
            return
        if self.config.token(token) is None:
            if token and token != "public":
                raise RelayError(401, 4001, "the token is not valid on this relay")
            raise RelayError(401, 4001, f"channel {name} needs a token (Authorization: Token <token>)")
        raise RelayError(403, 4002, f"the token does not allow {action} on {name}")

    def visible(self, token: str | None) -> list[str]:
        """Channels the token may read, in config order."""
        return [n for n in self.snapshot() if self.allowed(token, "read", n)]
