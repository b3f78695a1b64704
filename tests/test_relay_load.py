"""A bounded load run on loopback: 50 concurrent clients for 20 s against a relay process.
Every response must be correct (checked against the model), none may fail, and the relay's memory
must stay bounded (its cache tier is bounded in bytes; nothing else may grow with the request count)."""

from __future__ import annotations

import random
import threading
import time
from http.client import HTTPConnection

import imagecodecs
import numpy as np
import psutil

CLIENTS = 50
SECONDS = 20.0
CACHE = 32 * 2**20


def test_fifty_clients_twenty_seconds(start_relay, relay_volumes):
    relay = start_relay({
        "sources": {"pub/em/image": {"url": f"precomputed://{relay_volumes['image_path']}", "public": True}},
        "cache": {"memory_bytes": CACHE},
    }, process=True)
    proc = psutil.Process(relay.process.pid)
    host = relay.url.split("://", 1)[1]
    models = relay_volumes["image"]
    errors: list[str] = []
    counts = [0] * CLIENTS
    stop_at = time.monotonic() + SECONDS
    rss: list[int] = []

    def client(i: int) -> None:
        rng = random.Random(i)
        conn = HTTPConnection(host, timeout=60)
        while time.monotonic() < stop_at and len(errors) < 10:
            res = rng.randrange(3)
            model = models[res]
            lo = [rng.randrange(n) for n in model.shape]
            hi = [min(n, a + rng.randint(1, cap)) for a, n, cap in zip(lo, model.shape, (16, 128, 128))]
            ranges = "/".join(f"{lo[k]}:{hi[k]}" for k in (2, 1, 0))
            try:
                conn.request("GET", f"/v1/cutout/pub/em/image/{res}/{ranges}/", headers={"Accept": "application/blosc"})
                r = conn.getresponse()
                body = r.read()
            except OSError as e:
                errors.append(f"client {i}: {e!r}")
                conn = HTTPConnection(host, timeout=60)
                continue
            if r.status != 200:
                errors.append(f"client {i}: HTTP {r.status} {body[:200]!r}")
                continue
            got = np.frombuffer(imagecodecs.blosc_decode(body), np.uint8).reshape([b - a for a, b in zip(lo, hi)])
            if not np.array_equal(got, model[tuple(slice(a, b) for a, b in zip(lo, hi))]):
                errors.append(f"client {i}: wrong data for res {res} {ranges}")
            counts[i] += 1

    def sampler() -> None:
        while time.monotonic() < stop_at:
            rss.append(proc.memory_info().rss)
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)] + [threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 120)
    assert not errors, errors[:5]
    assert sum(counts) > 200 and min(counts) > 0, counts  # every client got through, many times
    stats = relay.metrics()
    assert stats['volbridge_relay_cache_bytes_cached{tier="memory"}'] <= CACHE
    # bounded: after the first quarter (imports, pools, cache filling) the RSS grows by less than
    # the cache bound plus a margin, however many requests went through
    settled = max(rss[: max(1, len(rss) // 4)])
    assert max(rss) - settled < CACHE + 96 * 2**20, [r // 2**20 for r in rss]
