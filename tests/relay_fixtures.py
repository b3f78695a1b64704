"""Relays for the tests: in a thread (fast, inspectable) or as a `volbridge serve` process
(killable, measurable), plus the volumes they serve."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import ServerProcess, _unique

import volbridge as vb
from volbridge.relay import RelayConfig
from volbridge.relay.serve import RelayServer

#: Source volumes: sizes not multiples of the chunks, three scales, a negative offset on one.
IMAGE_SHAPE = (40, 300, 520)  # z, y, x
SEG_SHAPE = (20, 200, 260)


def make_image(path: Path, seed: int = 0) -> list[np.ndarray]:
    """Random uint8 at each of 3 scales (independent data: the relay is tested, not downsampling)."""
    rng = np.random.default_rng(seed)
    a = vb.create(f"precomputed://{path}", shape=IMAGE_SHAPE, dtype="uint8", chunk_shape=(16, 64, 64),
                  resolution=(40, 4, 4), num_scales=3, overwrite=True)
    levels = []
    for m in range(3):
        arr = a.mip(m)
        data = rng.integers(0, 256, arr.shape, dtype=np.uint8)
        arr[...] = data
        levels.append(data)
    return levels


def make_segmentation(path: Path, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # blocky labels, a few large ids, zeros in between
    coarse = rng.integers(0, 6, (3, 5, 6)).astype(np.uint64)
    coarse[coarse > 0] += np.uint64(2**40)
    data = np.kron(coarse, np.ones((8, 40, 44), np.uint64))[: SEG_SHAPE[0], : SEG_SHAPE[1], : SEG_SHAPE[2]]
    data = np.ascontiguousarray(data)
    a = vb.create(f"precomputed://{path}", shape=SEG_SHAPE, dtype="uint64", chunk_shape=(8, 64, 64),
                  resolution=(40, 8, 8), layer_type="segmentation", num_scales=2, overwrite=True)
    a[...] = data
    return data


@dataclass
class RunningRelay:
    url: str  # http://127.0.0.1:PORT
    stop: Callable[[], None]
    server: RelayServer | None = None  # in-thread relays only
    process: ServerProcess | None = None  # process relays only

    def get(self, path: str, token: str | None = None, accept: str | None = None) -> tuple[int, bytes, dict]:
        return http("GET", self.url + path, token=token, headers={"Accept": accept} if accept else None)

    def metrics(self) -> dict[str, float]:
        _, body, _ = self.get("/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out


def http(method: str, url: str, *, token: str | None = None, body: bytes | None = None,
         headers: dict | None = None, timeout: float = 60) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def error_body(body: bytes) -> dict:
    """The dialect's JSON error body, checked for its three fields."""
    doc = json.loads(body)
    assert set(doc) == {"status", "code", "message"}, doc
    assert isinstance(doc["message"], str) and doc["message"]
    return doc


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_toml(doc: dict, path: Path) -> Path:
    """The relay config dicts of these tests as TOML (tables, arrays of tables, scalars)."""
    lines = []
    for section in ("server", "cache"):
        if section in doc:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in doc[section].items()]
    for name, entry in doc.get("sources", {}).items():
        lines.append(f'[sources."{name}"]')
        lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    for tok in doc.get("tokens", []):
        lines.append("[[tokens]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in tok.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def start_relay(tmp_path: Path) -> Iterator[Callable[..., RunningRelay]]:
    """``start_relay(config_dict, process=False, env=None)``: a relay on a free 127.0.0.1 port."""
    running: list[RunningRelay] = []

    def start(doc: dict, *, process: bool = False, env: dict | None = None) -> RunningRelay:
        doc = {**doc, "server": {"host": "127.0.0.1", "port": 0, **doc.get("server", {})}}
        if not process:
            server = RelayServer(RelayConfig.from_dict(doc), log_level="warning").start()
            relay = RunningRelay(server.url, server.stop, server=server)
        else:
            import os

            name = _unique("relay")
            cfg = write_toml(doc, tmp_path / f"{name}.toml")
            proc = ServerProcess(
                name, [sys.executable, "-m", "volbridge", "serve", "--config", str(cfg)],
                cwd=tmp_path, log_path=tmp_path / f"{name}.log", env={**os.environ, **(env or {})},
            )
            found: list[str] = []

            def ready() -> bool:
                m = re.search(r"listening on (http://\S+)", proc.log_text())
                if m and not found:
                    found.append(m.group(1))
                return bool(found) and http("GET", found[0] + "/ping/")[0] == 200

            proc.wait_ready(ready, what="volbridge serve")
            relay = RunningRelay(found[0], proc.stop, process=proc)
        running.append(relay)
        return relay

    yield start
    for r in running:
        r.stop()


@pytest.fixture(scope="module")
def relay_volumes(tmp_path_factory) -> dict:
    """An image and a segmentation on disk, with their numpy models."""
    root = tmp_path_factory.mktemp("relay_src")
    return {
        "image": make_image(root / "image"),
        "image_path": root / "image",
        "seg": make_segmentation(root / "seg"),
        "seg_path": root / "seg",
        "root": root,
    }


def wait_until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
