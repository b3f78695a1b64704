"""BossDB's downsample service on the relay: ``POST /downsample/c/e/ch/`` builds the channel's
pyramid in the background with volbridge's downsample service (through the cache tiers, so no
stale coarse cuboid is served afterwards); ``GET`` reports QUEUED, IN_PROGRESS, DOWNSAMPLED or
FAILED; ``DELETE`` cancels a job that has not finished."""

from __future__ import annotations

import logging
import threading

from ..array import VolumeArray
from ..services.downsample import downsample
from .errors import BAD_REQUEST, RelayError
from .source import RelaySource, RelayVolume

log = logging.getLogger("volbridge.relay")


class Cancelled(Exception):
    pass


class Jobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}

    def start(self, src: RelaySource, on_done=None) -> None:
        if src.scale_count() < 2:
            raise RelayError(400, BAD_REQUEST, f"{src.name} has one resolution level: there is nothing to downsample")
        if not src.writable:
            raise RelayError(403, 4003, f"{src.name} is read-only on this relay; its pyramid cannot be rebuilt")
        with self._lock:
            if src.downsample_status in ("QUEUED", "IN_PROGRESS"):
                raise RelayError(409, 1002, f"{src.name} is already being downsampled")
            cancel = self._cancel[id(src)] = threading.Event()
            src.downsample_status = "QUEUED"
        if on_done is not None:
            on_done(src)

        def progress(m: int, done: int, total: int) -> None:
            if cancel.is_set():
                raise Cancelled()

        def run() -> None:
            src.downsample_status = "IN_PROGRESS"
            writes = src.writes.get(0, 0)
            try:
                downsample(VolumeArray(RelayVolume(src), mode="r+"), progress=progress)
                # a write to scale 0 while the job ran may not be in the pyramid it built
                src.downsample_status = "DOWNSAMPLED" if src.writes.get(0, 0) == writes else "NOT_DOWNSAMPLED"
            except Cancelled:
                src.downsample_status = "NOT_DOWNSAMPLED"
            except Exception:  # noqa: BLE001 - reported as FAILED, logged with its traceback
                log.exception("downsample of %s failed", src.name)
                src.downsample_status = "FAILED"
            finally:
                with self._lock:
                    self._cancel.pop(id(src), None)
                if on_done is not None:
                    on_done(src)

        threading.Thread(target=run, name=f"downsample-{src.name}", daemon=True).start()

    def cancel(self, src: RelaySource) -> None:
        with self._lock:
            ev = self._cancel.get(id(src))
        if ev is None:
            raise RelayError(400, BAD_REQUEST, f"no downsample of {src.name} is queued or in progress")
        ev.set()
