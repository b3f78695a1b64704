"""``volbridge view``: a relay for the volumes plus the neuroglancer client, served locally.

The ``neuroglancer`` package serves its own build of the client, so nothing is fetched from the
internet; each volume becomes a layer whose source is the relay's precomputed-over-HTTP view of
it, whatever its real format.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..errors import StoreError, UnsupportedError
from .config import RelayConfig
from .serve import RelayServer


#: The voxel types of neuroglancer's precomputed source (float64 and int64 volumes never
#: loaded: no dimensions, no screenshot; tensorstore refuses them too).
NEUROGLANCER_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32")


@dataclass
class ViewSession:
    relay: RelayServer
    viewer: object
    link: str

    def wait(self) -> None:
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.relay.stop()


def layer_sources(relay: RelayServer) -> list[tuple[str, str, str]]:
    """(layer name, layer type, neuroglancer source) of every channel."""
    out = []
    for name, src in relay.relay.sources.items():
        out.append((name.rsplit("/", 1)[-1], src.meta.layer_type, f"precomputed://{relay.url}/{name}"))
    return out


def start_viewer(config: RelayConfig, *, viewer_port: int = 0, bind: str = "127.0.0.1") -> ViewSession:
    try:
        import neuroglancer
    except ImportError as e:  # pragma: no cover - the extra is installed in tests
        raise UnsupportedError("volbridge view needs neuroglancer: pip install 'volbridge[view]'") from e
    relay = RelayServer(config, log_level="warning").start()
    shown = [(name, src.meta.dtype) for name, src in relay.relay.sources.items()
             if np.dtype(src.meta.dtype).name not in NEUROGLANCER_DTYPES]
    if shown:
        relay.stop()
        name, dtype = shown[0]
        raise UnsupportedError(f"{name} holds {np.dtype(dtype).name} voxels, which neuroglancer cannot show (it reads "
                               f"{', '.join(NEUROGLANCER_DTYPES)}); transfer it into a volume of one of those first")
    try:
        neuroglancer.set_server_bind_address(bind, bind_port=viewer_port)
        viewer = neuroglancer.Viewer()
        with viewer.txn() as state:
            for name, kind, source in layer_sources(relay):
                layer = neuroglancer.SegmentationLayer if kind == "segmentation" else neuroglancer.ImageLayer
                state.layers[name] = layer(source=source)
        return ViewSession(relay, viewer, viewer.get_viewer_url())
    except OSError as e:  # the viewer's port taken: name it (the relay's own start already does)
        relay.stop()
        raise StoreError(f"cannot serve the neuroglancer client on {bind}:{viewer_port}: {e.strerror or e}") from e
