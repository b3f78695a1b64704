"""The relay's configuration: which channels it serves from which upstreams, who may do what,
and how big its caches are. Read from a TOML file, or built from URLs for a quick start.

```toml
[server]
host = "127.0.0.1"
port = 8080
max_cutout_bytes = "520 MiB"      # BossDB's uncompressed limit per request (413 above it)
max_scan_bytes = "8 GiB"          # bounding boxes, sparse volumes: whole-scale scans (413 above)

[cache]
memory_bytes = "1 GiB"            # 0 turns the tier off
disk_dir = "~/.cache/volbridge-relay"
disk_bytes = "20 GiB"

[sources."lab/em/image"]          # collection/experiment/channel
url = "precomputed://s3://bucket/em"
public = true                     # anyone may read
writable = false                  # open the upstream for writing
public_write = false              # anyone may write (with writable; trusted networks only)
token = "..."                     # the upstream's own token (bossdb://); never sent downstream
channel = 0                       # which channel of a multi-channel source

[boss]                            # collections, frames, experiments, channels created over HTTP
data_dir = "/data/relay-boss"     # (a token's write patterns say where it may create: "lab/*")

[dvid]                            # versioned DVID repos created over HTTP (POST /api/repos)
data_dir = "/data/relay-dvid"     # token patterns name their instances dvid/<repo root uuid>/<instance>
public = false
public_write = false

[[tokens]]
token = "s3cret"
read = ["lab/*"]                  # glob patterns over collection/experiment/channel
write = ["lab/em/seg"]
```
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: BossDB's name segments.
NAME = re.compile(r"^[\w-]+$")
#: First path segments the relay's own routes use; a collection may not shadow them.
RESERVED = {"v1", "latest", "api", "metrics", "openapi.json", "ping", "docs", "favicon.ico"}
MIB = 2**20
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "t": 10**12, "tb": 10**12}


def parse_bytes(value: Any, what: str) -> int:
    """``1073741824``, ``"1 GiB"``, ``"500MB"`` -> bytes."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be a byte count, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
        if m is None or m.group(2).lower() not in _UNITS:
            raise InvalidArgumentError(f"{what} must be a byte count like 1073741824 or \"1 GiB\", got {value!r}")
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n < 0:
        raise InvalidArgumentError(f"{what} must be >= 0, got {value!r}")
    return n


@dataclass
class SourceConfig:
    name: str  # collection/experiment/channel
    url: str
    public: bool = False
    writable: bool = False
    #: Anyone may write, without a token (the quick start's --writable; for trusted networks).
    public_write: bool = False
    token: str | None = None
    channel: int | None = None
    description: str = ""
    #: Made by the quick start (``serve URL``, ``view URL``): a multi-channel volume's BossDB
    #: channel is its channel 0 (its precomputed face serves every channel), not an error the
    #: user has no config to answer (a review found ``view`` refusing every RGB volume).
    quick_start: bool = False

    @property
    def parts(self) -> tuple[str, str, str]:
        c, e, ch = self.name.split("/")
        return c, e, ch


@dataclass
class TokenConfig:
    token: str
    read: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)

    def may(self, action: str, name: str) -> bool:
        patterns = self.write if action == "write" else self.read + self.write
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)


@dataclass
class RelayConfig:
    sources: dict[str, SourceConfig]
    tokens: list[TokenConfig] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8080
    max_cutout_bytes: int = 520 * MIB
    #: Bytes a request may scan (bounding boxes, sparse volumes, the first id reservation).
    max_scan_bytes: int = 8 << 30
    memory_bytes: int = 1 << 30
    disk_dir: str | None = None
    disk_bytes: int = 20 << 30
    #: Where the DVID dialect keeps the versioned repos created over HTTP (None: no such repos).
    dvid_dir: str | None = None
    dvid_public: bool = False
    dvid_public_write: bool = False
    #: Where the BossDB dialect keeps collections, frames, experiments and channels created over HTTP.
    boss_dir: str | None = None

    def may_manage(self, value: str | None, path: tuple[str, ...]) -> bool:
        """Whether the token may create, change or delete the resource at ``path`` (c[, e[, ch]]);
        ``()`` for coordinate frames, which any token with some write right may manage."""
        t = self.token(value)
        if t is None or not t.write:
            return False
        if not path:
            return True
        name = "/".join((*path, "_", "_")[:3])
        return t.may("write", name)

    def token(self, value: str | None) -> TokenConfig | None:
        if not value:
            return None
        for t in self.tokens:
            if t.token == value:
                return t
        return None

    @classmethod
    def from_urls(cls, urls: list[str], *, writable: bool = False, **server: Any) -> RelayConfig:
        """Quick start: every URL public, named ``volbridge/<basename>/<basename>``."""
        sources: dict[str, SourceConfig] = {}
        for url in urls:
            leaf = url.split("#")[0].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            leaf = re.sub(r"\.(zarr|n5|h5|hdf5|hdf|tiff?)$", "", leaf, flags=re.IGNORECASE)
            base = re.sub(r"[^\w-]+", "_", leaf).strip("_") or "volume"
            name, n = f"volbridge/{base}/{base}", 1
            while name in sources:
                n += 1
                name = f"volbridge/{base}_{n}/{base}_{n}"
            sources[name] = SourceConfig(name, url, public=True, writable=writable, public_write=writable, quick_start=True)
        return cls(sources=sources, **server)

    @classmethod
    def load(cls, path: str | os.PathLike) -> RelayConfig:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as e:
            raise InvalidArgumentError(f"cannot read relay config {path}: {e.strerror or e}") from e
        except tomllib.TOMLDecodeError as e:
            raise InvalidArgumentError(f"relay config {path} is not valid TOML: {e}") from e
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: dict, where: str = "relay config") -> RelayConfig:
        unknown = set(doc) - {"server", "cache", "sources", "tokens", "dvid", "boss"}
        if unknown:
            raise InvalidArgumentError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")
        server = dict(doc.get("server", {}))
        cache = dict(doc.get("cache", {}))
        kw: dict[str, Any] = {}
        if "host" in server:
            kw["host"] = str(server.pop("host"))
        if "port" in server:
            kw["port"] = int(server.pop("port"))
        if "max_cutout_bytes" in server:
            kw["max_cutout_bytes"] = parse_bytes(server.pop("max_cutout_bytes"), "server.max_cutout_bytes")
        if "max_scan_bytes" in server:
            kw["max_scan_bytes"] = parse_bytes(server.pop("max_scan_bytes"), "server.max_scan_bytes")
        if server:
            raise InvalidArgumentError(f"{where}: unknown [server] key(s) {', '.join(sorted(server))}")
        if "memory_bytes" in cache:
            kw["memory_bytes"] = parse_bytes(cache.pop("memory_bytes"), "cache.memory_bytes")
        if "disk_dir" in cache:
            kw["disk_dir"] = os.path.expanduser(str(cache.pop("disk_dir")))
        if "disk_bytes" in cache:
            kw["disk_bytes"] = parse_bytes(cache.pop("disk_bytes"), "cache.disk_bytes")
        if cache:
            raise InvalidArgumentError(f"{where}: unknown [cache] key(s) {', '.join(sorted(cache))}")
        dvid = dict(doc.get("dvid", {}))
        if "data_dir" in dvid:
            kw["dvid_dir"] = os.path.expanduser(str(dvid.pop("data_dir")))
        kw["dvid_public"] = bool(dvid.pop("public", False))
        kw["dvid_public_write"] = bool(dvid.pop("public_write", False))
        if dvid:
            raise InvalidArgumentError(f"{where}: unknown [dvid] key(s) {', '.join(sorted(dvid))}")
        boss = dict(doc.get("boss", {}))
        if "data_dir" in boss:
            kw["boss_dir"] = os.path.expanduser(str(boss.pop("data_dir")))
        if boss:
            raise InvalidArgumentError(f"{where}: unknown [boss] key(s) {', '.join(sorted(boss))}")
        sources = {}
        for name, entry in (doc.get("sources") or {}).items():
            if not isinstance(entry, dict) or "url" not in entry:
                raise InvalidArgumentError(f"{where}: source {name!r} needs a url")
            extra = set(entry) - {"url", "public", "writable", "public_write", "token", "channel", "description"}
            if extra:
                raise InvalidArgumentError(f"{where}: source {name!r} has unknown key(s) {', '.join(sorted(extra))}")
            sources[name] = SourceConfig(
                name, str(entry["url"]), bool(entry.get("public", False)), bool(entry.get("writable", False)),
                bool(entry.get("public_write", False)), entry.get("token"), entry.get("channel"),
                str(entry.get("description", "")),
            )
        tokens = []
        for i, t in enumerate(doc.get("tokens") or []):
            if not isinstance(t, dict) or not t.get("token"):
                raise InvalidArgumentError(f"{where}: tokens[{i}] needs a non-empty token")
            if t["token"] == "public":
                raise InvalidArgumentError(f"{where}: 'public' is intern's anonymous token and cannot be configured")
            tokens.append(TokenConfig(str(t["token"]), list(t.get("read", [])), list(t.get("write", []))))
        cfg = cls(sources=sources, tokens=tokens, **kw)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "relay config") -> None:
        if not self.sources and not self.dvid_dir and not self.boss_dir:
            raise InvalidArgumentError(f"{where}: no sources configured (and no [dvid] or [boss] data_dir)")
        for name in self.sources:
            parts = name.split("/")
            if len(parts) != 3 or not all(NAME.match(p) for p in parts):
                raise InvalidArgumentError(
                    f"{where}: source name {name!r} must be collection/experiment/channel, each of letters, digits, _ and -"
                )
            if parts[0] in RESERVED:
                raise InvalidArgumentError(f"{where}: collection name {parts[0]!r} is reserved for the relay's own routes")

