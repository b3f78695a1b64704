"""The ``volbridge`` command line: thin commands over the public API.

Every command does its work through ``volbridge.array`` / ``volbridge.create`` and
``VolumeArray``, exactly as a Python user would, so the command line never knows more than the
library's public face. Tuples are z, y, x by default (``--axis-order xyz`` flips them), the same
rule as everywhere else in volbridge.

``main`` runs the commands outside click's standalone mode so that every failure a user can cause
(a bad argument, a missing volume, an unreadable chunk) ends as one ``error: <message>`` line on
stderr and exit status 1, never a traceback. Tracebacks are left for genuine bugs.
"""

from __future__ import annotations

import contextlib

import json
import shlex
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .api import array
from .array import VolumeArray
from .environment import number
from .errors import UnsupportedError, VolbridgeError

try:  # recent typer vendors click as ``typer._click``; its exceptions are not the click package's
    from typer import _click as click
except ImportError:  # pragma: no cover - typer that runs on the click package
    import click

_NoArgsIsHelpError = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _BadValue(typer.BadParameter):
    """An argument that parses but cannot work; its message already says what to do instead."""


app = typer.Typer(
    name="volbridge",
    help="One numpy-like array over every connectomics volume format and server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class AxisOrder(str, Enum):
    zyx = "zyx"
    xyz = "xyz"


class DemoSize(str, Enum):
    tiny = "tiny"
    small = "small"
    medium = "medium"


class ImageEncoding(str, Enum):
    raw = "raw"
    jpeg = "jpeg"


AXIS_ORDER_OPTION = typer.Option(AxisOrder.zyx, "--axis-order", help="Order of every tuple given and shown.")
OUTPUT_FORMATS = {".npy": "npy", ".tif": "tif", ".tiff": "tif", ".png": "png"}


# -- helpers ----------------------------------------------------------------------------------------
def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)  # a pipe or a file: keep table rows on one line
    return console


def _open(url: str, mip: int = 0, axis_order: str = "zyx") -> VolumeArray:
    arr = array(url, axis_order=axis_order)
    n = len(arr.scales)
    if not 0 <= mip < n:
        raise _BadValue(f"scale {mip} does not exist: {url} has scales 0..{n - 1}", param_hint="'--mip'")
    return arr.mip(mip) if mip else arr


def _axes(axis_order: str) -> str:
    return ", ".join(axis_order)


def _dims(t: Sequence) -> str:
    return " × ".join(_num(v) for v in t)


def _num(v) -> str:
    return str(int(v)) if float(v).is_integer() else f"{float(v):g}"


def _ranges(lo: Sequence[int], hi: Sequence[int]) -> str:
    return ", ".join(f"{a}:{b}" for a, b in zip(lo, hi))


def _human_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"


def _parse_bbox(text: str, axis_order: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 6:
        raise _BadValue(
            f"expected 6 integers {','.join(a + '0' for a in axis_order)},{','.join(a + '1' for a in axis_order)} "
            f"(start corner, then stop corner), got {text!r}",
            param_hint="'--bbox'",
        )
    start, stop = tuple(values[:3]), tuple(values[3:])
    if any(b <= a for a, b in zip(start, stop)):
        raise _BadValue(f"every stop must be greater than its start, got start {start} stop {stop}", param_hint="'--bbox'")
    return start, stop


# -- info -------------------------------------------------------------------------------------------
@app.command()
def info(
    url: str = typer.Argument(..., help="Volume URL or path, e.g. precomputed://file:///data/em or ./em"),
    as_json: bool = typer.Option(False, "--json", help="Print the format's metadata and a volbridge summary as JSON."),
    axis_order: AxisOrder = AXIS_ORDER_OPTION,
) -> None:
    """Describe a volume: format, layer type, dtype and every scale."""
    arr = _open(url, axis_order=axis_order.value)
    order = axis_order.value
    summary = {
        "url": arr.url,
        "format": arr.format,
        "layer_type": arr.layer_type,
        "dtype": str(arr.dtype),
        "num_channels": arr.num_channels,
        "axis_order": order,
        "scales": [
            {
                "index": s.index,
                "key": s.key,
                "shape": list(s.shape),
                "bounds": {"start": list(s.bounds[0]), "stop": list(s.bounds[1])},
                "resolution": list(s.resolution),
                "chunk_shape": list(s.chunk_shape),
                "encoding": s.encoding,
            }
            for s in arr.scales
        ],
    }
    if as_json:
        typer.echo(json.dumps({"metadata": arr.metadata, "volbridge": summary}, indent=2, default=str))
        return

    console = _console()
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    for k, v in (("url", arr.url), ("format", summary["format"]), ("layer type", arr.layer_type),
                 ("dtype", str(arr.dtype)), ("channels", str(arr.num_channels))):
        head.add_row(k, Text(v))
    console.print(head)
    axes = _axes(order)
    table = Table(title=Text(f"scales ({axes}; bounds are [start:stop) in voxels)"), title_justify="left")
    for name, justify in (("mip", "right"), ("key", "left"), (f"shape ({axes})", "right"),
                          (f"bounds ({axes})", "left"), (f"resolution nm ({axes})", "right"),
                          (f"chunk ({axes})", "right"), ("encoding", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for s in arr.scales:
        table.add_row(str(s.index), Text(s.key), _dims(s.shape), Text(_ranges(*s.bounds)),
                      _dims(s.resolution), _dims(s.chunk_shape), Text(s.encoding))
    console.print(table)


# -- cutout -----------------------------------------------------------------------------------------
@app.command()
def cutout(
    url: str = typer.Argument(..., help="Volume URL or path."),
    bbox: str = typer.Option(
        ..., "--bbox",
        help="z0,y0,x0,z1,y1,x1: absolute voxel coordinates, stop exclusive; write --bbox=-5,... for negatives.",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Output file: .npy, .tif/.tiff or .png (one z slice)."),
    mip: int = typer.Option(0, "--mip", help="Scale to read; coordinates are in that scale's voxels."),
    axis_order: AxisOrder = AXIS_ORDER_OPTION,
) -> None:
    """Read a box of a volume into a .npy, .tif or .png file. Voxels outside the bounds read as the
    volume's fill value (0 but for zarr arrays that set another)."""
    order = axis_order.value
    start, stop = _parse_bbox(bbox, order)
    kind = OUTPUT_FORMATS.get(output.suffix.lower())
    if kind is None:
        raise _BadValue(
            f"cannot write {output.name!r}: the extension must be one of {', '.join(OUTPUT_FORMATS)}", param_hint="'-o'"
        )
    if not output.parent.is_dir():
        raise _BadValue(f"directory {str(output.parent)!r} does not exist", param_hint="'-o'")
    arr = _open(url, mip, order)
    zaxis = order.index("z")
    if kind == "png":
        if stop[zaxis] - start[zaxis] != 1:
            raise _BadValue(
                f"a .png holds one z slice, but the box spans z {start[zaxis]}:{stop[zaxis]} "
                f"({stop[zaxis] - start[zaxis]} slices); use .tif or .npy for a stack",
                param_hint="'--bbox'",
            )
        if arr.dtype not in (np.uint8, np.uint16) or arr.num_channels > 4:
            raise _BadValue(
                f"a .png holds uint8 or uint16 with 1-4 channels; this volume is {arr.dtype} with "
                f"{arr.num_channels} channel(s): use .npy or .tif",
                param_hint="'-o'",
            )

    spatial = tuple(slice(a, b) for a, b in zip(start, stop))
    channel_first = order == "zyx"
    index = spatial if arr.ndim == 3 else ((slice(None), *spatial) if channel_first else (*spatial, slice(None)))
    data = arr[index]
    _save(output, kind, data, data if channel_first else data.T)

    shown = "(" + ", ".join(str(n) for n in data.shape) + ")"
    axes_shown = _axes(order) if data.ndim == 3 else (("c, " + _axes(order)) if channel_first else (_axes(order) + ", c"))
    typer.echo(f"wrote {output}: {data.dtype} array of shape {shown} ({axes_shown}), {_human_bytes(data.nbytes)}, "
               f"box {_ranges(start, stop)} at mip {arr.mip_level}")
    lo, hi = arr.bounds
    if any(a < l or b > h for a, b, l, h in zip(start, stop, lo, hi)):
        typer.echo(f"note: the box reaches outside the volume's bounds {_ranges(lo, hi)} ({_axes(order)}); "
                   f"voxels there hold the fill value {arr.fill_value}")


def _save(output: Path, kind: str, data: np.ndarray, zyx: np.ndarray) -> None:
    """Write a cutout: ``.npy`` keeps the array as read; image files always hold z pages of (y, x).

    ``zyx`` is ``data`` in (c,) z, y, x order: the same buffer, transposed as a view for xyz reads.
    """
    if kind == "npy":
        with open(output, "wb") as f:  # np.save(path) appends .npy to 'x.NPY' and the file written was not the one named
            np.save(f, data)
    elif kind == "tif":
        import tifffile

        # minisblack: never take a last axis of 3 or 4 for RGB(A) samples
        tifffile.imwrite(output, zyx, photometric="minisblack", metadata={"axes": "CZYX" if zyx.ndim == 4 else "ZYX"})
    else:
        import imagecodecs

        img = np.moveaxis(zyx[:, 0], 0, -1) if zyx.ndim == 4 else zyx[0]  # (y, x, c) or (y, x)
        output.write_bytes(imagecodecs.png_encode(np.ascontiguousarray(img)))


@contextlib.contextmanager
def _progress_bar():
    """A progress bar on stderr, shown once there is work: yields ``progress(stage, done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=_console(stderr=True))
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()  # only once there is work to show: a refused argument prints just the error
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        yield progress
    finally:
        if tasks:
            bar.stop()


# -- demo -------------------------------------------------------------------------------------------
@app.command()
def demo(
    directory: Path = typer.Option(Path("volbridge-demo"), "--dir", help="Where to write the dataset."),
    size: DemoSize = typer.Option(DemoSize.small, "--size", help="tiny 32x128x128 (a second), small 128x512x512 (seconds), medium 256x1024x1024 (minutes); z, y, x."),
    image_encoding: ImageEncoding = typer.Option(ImageEncoding.raw, "--image-encoding", help="raw (exact) or jpeg (lossy, smaller)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same data."),
) -> None:
    """Build a synthetic EM image and its segmentation (precomputed, several scales) to try volbridge on."""
    from . import demo as demo_data

    with _progress_bar() as progress:
        result = demo_data.build_demo(directory, size.value, image_encoding=image_encoding.value, seed=seed,
                                      progress=progress)

    out = _console()
    out.print(Text(f"Built the {result.size} demo in {result.seconds:.1f} s: {result.num_cells} touching cells "
                   f"(seed {result.seed}), voxel {_dims(result.resolution)} nm (z, y, x), in {result.directory}"))
    for v in result.volumes:
        out.print(Text(f"{v.name}: {v.path}", style="bold"))
        for line in (
            f"{v.layer_type}, {v.dtype}, {v.encoding}; shape {_dims(v.shape)} (z, y, x), bounds {_ranges(*v.bounds)}",
            f"{len(v.scale_shapes)} scales, y × x: " + ", ".join(_dims(s[1:]) for s in v.scale_shapes),
            f"{_human_bytes(v.bytes_on_disk)} on disk in {v.num_files} files",
        ):
            out.print(Text("  " + line))
    out.print("Read back and compared:")
    for c in result.checks:
        out.print(Text(f"  {'ok  ' if c.ok else 'FAIL'} {c.what}: {c.detail}"))
    image, seg = result.volumes[0], result.volumes[1]
    (z0, y0, x0), (_, y1, x1) = image.bounds
    out.print("Next:")
    img_path, seg_path = shlex.quote(image.path), shlex.quote(seg.path)
    for line in (
        f"  volbridge info {img_path}",
        f"  volbridge cutout {seg_path} --bbox={z0},{y0},{x0},{z0 + 1},{y1},{x1} -o labels.npy",
        f"  volbridge cutout {img_path} --bbox={z0 + 10},{y0},{x0},{z0 + 11},{y1},{x1} -o slice.png",
        f"  python -c \"import volbridge as vb; print(vb.array({image.path!r})[{z0 + 10}, {y0}:{y0 + 4}, {x0}:{x0 + 4}])\"",
        "Neuroglancer-style sources:",
        f"  {image.url}",
        f"  {seg.url}",
    ):
        out.print(Text(line))


# -- services ---------------------------------------------------------------------------------------
DASK_OPTION = typer.Option(None, "--dask", help="Run on a Dask cluster: its scheduler address (tcp://host:8786).")


@contextlib.contextmanager
def _executor(address: Optional[str], local=None):
    """What a service runs on: a client of the Dask scheduler at ``address``, closed when the
    command ends (run() called in a process that goes on must not leave one reconnecting to a
    scheduler that has gone), else ``local``."""
    if address is None:
        yield local
        return
    try:
        from distributed import Client
    except ImportError as e:
        raise _BadValue("--dask needs the distributed package: pip install 'volbridge[dask]'", param_hint="'--dask'") from e
    try:
        client = Client(address, timeout=number("VOLBRIDGE_DASK_TIMEOUT", 30.0, float, above=0))
    except OSError as e:
        raise _BadValue(f"cannot reach the Dask scheduler at {address}: {e}", param_hint="'--dask'") from e
    try:
        yield client
    finally:
        client.close()


def _int_list(text: Optional[str], option: str, what: str) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise _BadValue(f"expected comma-separated {what}, got {text!r}", param_hint=f"'{option}'") from None


def _triple_option(text: Optional[str], what: str, axis_order: str, positive: bool = True) -> Optional[tuple[int, int, int]]:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or positive and any(v <= 0 for v in values):
        kind = "positive integers" if positive else "integers"
        raise _BadValue(f"expected 3 {kind} {','.join(axis_order)}, got {text!r}", param_hint=f"'{what}'")
    return values if axis_order == "zyx" else values[::-1]


@app.command()
def cp(
    source: str = typer.Argument(..., help="Source volume URL or path."),
    destination: str = typer.Argument(..., help="Destination URL or path; created from the source's metadata when absent."),
    bbox: Optional[str] = typer.Option(None, "--bbox", help="z0,y0,x0,z1,y1,x1 to copy (default: the whole scale)."),
    mip: int = typer.Option(0, "--mip", help="Source scale to copy."),
    at: Optional[str] = typer.Option(None, "--at", help="z,y,x where the box's start lands in the destination "
                                     "(default: where it is in the source)."),
    to_origin: bool = typer.Option(False, "--to-origin", help="The same as --at 0,0,0: a cutout into a plain zarr, N5 or HDF5."),
    chunk_shape: Optional[str] = typer.Option(None, "--chunk-shape", help="Chunks of a new destination, z,y,x."),
    encoding: Optional[str] = typer.Option(None, "--encoding", help="Encoding of a new destination (raw, gzip, jpeg, ...)."),
    compression: Optional[str] = typer.Option(None, "--compression", help="Compression of a new destination (gzip, zstd)."),
    checksum: bool = typer.Option(False, "--checksum",
                                  help="A CRC32C with every chunk of a new zarr v3 / OME-Zarr 0.5 destination."),
    verify: bool = typer.Option(False, "--verify", help="Read both back and compare after the copy."),
    dask: Optional[str] = DASK_OPTION,
    axis_order: AxisOrder = AXIS_ORDER_OPTION,
) -> None:
    """Copy a volume (or a box of one scale) to any destination, in its format."""
    from .services import transfer

    box = _parse_bbox(bbox, axis_order.value) if bbox else None
    if box is not None and axis_order.value == "xyz":
        box = (box[0][::-1], box[1][::-1])
    if at is not None and to_origin:
        raise typer.BadParameter("give --at or --to-origin, not both")
    corner = _triple_option(at, "--at", axis_order.value, positive=False) if at is not None else (0, 0, 0) if to_origin else None
    _open(source, mip)  # the scale must exist: a clear error before anything is created
    with _executor(dask) as executor, _progress_bar() as progress:
        out = transfer(source, destination, bbox=box, mip=mip, at=corner,
                       chunk_shape=_triple_option(chunk_shape, "--chunk-shape", axis_order.value),
                       encoding=encoding, compression=compression, checksum=checksum, verify=verify, executor=executor,
                       progress=lambda done, total: progress("copy", done, total))
    note = ", verified" if verify else ""
    axes = ("c, " if out.ndim == 4 else "") + "z, y, x"  # (the handle transfer returns reads zyx, channels first)
    typer.echo(f"copied {source} (mip {mip}) to {out.url}: shape {_dims(out.shape)} ({axes}){note}")


@app.command()
def downsample(
    url: str = typer.Argument(..., help="Volume URL or path (opened for writing)."),
    method: str = typer.Option("auto", "--method", help="auto (mean for images, mode for segmentations), mean, mode, min, max, nearest."),
    mips: Optional[str] = typer.Option(None, "--mips", help="Scales to fill, e.g. 1,2,3 (default: every scale above 0)."),
    num_mips: Optional[int] = typer.Option(None, "--num-mips", help="First extend the pyramid to this many scales above 0."),
    factor: str = typer.Option("1,2,2", "--factor", help="z,y,x factor of each added scale."),
    dask: Optional[str] = DASK_OPTION,
) -> None:
    """Fill (or extend, then fill) a volume's pyramid (BossDB: the server's own service)."""
    from .services import downsample as run_downsample

    levels = _int_list(mips, "--mips", "scale numbers")
    # locally, worker processes (this entry point is guarded)
    with _executor(dask, "processes") as executor, _progress_bar() as progress:
        run_downsample(url, mips=levels, method=method, num_mips=num_mips, factor=_triple_option(factor, "--factor", "zyx"),
                       executor=executor,
                       progress=lambda m, done, total: progress(f"mip {m}", done, total))
    n = len(array(url).scales)
    typer.echo(f"downsampled {url}: scales {', '.join(map(str, levels or range(1, n)))} of {n} ({method})")


def _label_service(run, verb: str, url: str, output: str, ids, mip: int, format: str, dask, **options) -> None:
    """The mesh and skeleton commands: labels parsed, the scale checked, the service run, a line said."""
    labels = _int_list(ids, "--ids", "labels")
    _open(url, mip)
    # locally, worker processes: zmesh and kimimaro hold the GIL (this entry point is guarded)
    with _executor(dask, "processes") as executor, _progress_bar() as progress:
        run(url, labels, mip=mip, output=output, format=format, executor=executor,
            progress=lambda done, total: progress(verb, done, total), **options)
    typer.echo(f"{verb} {url} (mip {mip}) into {output} ({format})")


@app.command()
def mesh(
    url: str = typer.Argument(..., help="Segmentation volume URL or path."),
    output: str = typer.Argument(..., help="Output directory (inside a precomputed volume, its info names it)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated labels (default: every label)."),
    mip: int = typer.Option(0, "--mip", help="Scale to mesh."),
    format: str = typer.Option("precomputed", "--format", help="precomputed (neuroglancer legacy), multires (neuroglancer multi-resolution Draco), obj or ply."),
    smoothing: int = typer.Option(40, "--smoothing", help="Taubin smoothing iterations (0: raw marching cubes)."),
    simplification: int = typer.Option(1, "--simplification", help="Keep about 1/N of the triangles (1: all)."),
    sharded: bool = typer.Option(False, "--sharded", help="multires only: store segments in shard files."),
    open_edges: bool = typer.Option(False, "--open-edges", help="Leave labels cut by the volume's faces open there "
                                    "(default: capped, every mesh closed)."),
    dask: Optional[str] = DASK_OPTION,
) -> None:
    """Mesh segmentation labels (marching cubes per chunk, welded, smoothed, simplified) in nm."""
    from .services.mesh import mesh as run_mesh

    if sharded and format != "multires":
        raise typer.BadParameter("--sharded applies to --format multires (legacy meshes have no sharded form)")
    extra = {"multires": {"sharded": True}} if sharded else {}
    _label_service(run_mesh, "meshed", url, output, ids, mip, format, dask, smoothing=smoothing,
                   simplification=simplification, close_edges=not open_edges, **extra)


@app.command()
def skeleton(
    url: str = typer.Argument(..., help="Segmentation volume URL or path."),
    output: str = typer.Argument(..., help="Output directory (inside a precomputed volume, its info names it)."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated labels (default: every label)."),
    mip: int = typer.Option(0, "--mip", help="Scale to skeletonize."),
    format: str = typer.Option("precomputed", "--format", help="precomputed (with radii) or swc."),
    dust: int = typer.Option(1000, "--dust", help="Skip objects smaller than this many voxels."),
    sharded: bool = typer.Option(False, "--sharded", help="precomputed only: store skeletons in shard files."),
    dask: Optional[str] = DASK_OPTION,
) -> None:
    """TEASAR skeletons of segmentation labels (per chunk, stitched) in nm."""
    from .services.skeleton import skeleton as run_skeleton

    _label_service(run_skeleton, "skeletonized", url, output, ids, mip, format, dask, dust_threshold=dust, sharded=sharded)


# -- serve and view ---------------------------------------------------------------------------------
def _require(extra: str, *modules: str) -> None:
    """A clear error, not a traceback, when an optional dependency is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UnsupportedError(f"this command needs {', '.join(missing)}: pip install 'volbridge[{extra}]'")


def _relay_config(urls: list[str], config: Optional[Path], host: Optional[str], port: Optional[int], writable: bool):
    from .relay import RelayConfig

    if config is not None and urls:
        raise _BadValue("give either URLs or --config, not both", param_hint="'--config'")
    if config is None and not urls:
        raise _BadValue("give volume URLs to serve, or --config relay.toml", param_hint="'URLS'")
    if config is not None and config.suffix == "" and not config.exists():
        raise _BadValue(f"{config} does not exist", param_hint="'--config'")
    cfg = RelayConfig.load(config) if config is not None else RelayConfig.from_urls(urls, writable=writable)
    if host is not None:
        cfg.host = host
    if port is not None:
        cfg.port = port
    return cfg


class LogLevel(str, Enum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


@app.command()
def serve(
    urls: list[str] = typer.Argument(None, help="Volumes to serve (each public, as volbridge/<name>/<name>); or a relay.toml."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Relay config (TOML): sources, tokens, caches."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", min=0, max=65535, help="Port (default 8080; 0 picks a free one)."),
    writable: bool = typer.Option(False, "--writable", help="Quick start only: let anyone write the volumes."),
    log_level: LogLevel = typer.Option("info", "--log-level", help="uvicorn log level (info shows every request)."),
) -> None:
    """Serve volumes in the BossDB REST dialect and as precomputed over HTTP, through cache tiers."""
    _require("relay", "starlette", "uvicorn")
    from .relay.serve import serve as run_relay

    urls = list(urls or [])
    if config is None and len(urls) == 1 and urls[0].endswith(".toml"):
        config, urls = Path(urls[0]), []
    run_relay(_relay_config(urls, config, host, port, writable), log_level=log_level.value,
              announce=lambda line: print(line, flush=True))


@app.command()
def view(
    urls: list[str] = typer.Argument(..., help="Volumes to show (images and segmentations)."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Relay port (0 picks a free one)."),
    viewer_port: int = typer.Option(0, "--viewer-port", min=0, max=65535, help="Port of the local neuroglancer client (0: free)."),
    open_browser: bool = typer.Option(False, "--open", help="Also open the link in a web browser."),
) -> None:
    """Serve volumes through a relay and open them in neuroglancer (served locally); prints the link."""
    _require("view", "starlette", "uvicorn", "neuroglancer")
    from .relay.view import start_viewer

    cfg = _relay_config(list(urls), None, "127.0.0.1", port, False)
    session = start_viewer(cfg, viewer_port=viewer_port)
    print(f"relay: {session.relay.url}", flush=True)
    print(f"neuroglancer: {session.link}", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(session.link)
    session.wait()


# -- entry point ------------------------------------------------------------------------------------
def _fail(message: str) -> int:
    typer.echo(f"error: {message}", err=True)
    return 1


def _say_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library warning as a line for a command-line user, not Python's file:line and source."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``) and return the exit status."""
    command = typer.main.get_command(app)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _say_warning
            rv = command.main(args=list(argv) if argv is not None else None, prog_name="volbridge", standalone_mode=False)
    except _NoArgsIsHelpError:
        return 0  # the help was already shown
    except click.exceptions.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None and not isinstance(e, _BadValue) else ""
        return _fail(e.format_message() + hint)
    except click.exceptions.ClickException as e:
        return _fail(e.format_message())
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except VolbridgeError as e:
        return _fail(str(e))
    except MemoryError:
        return _fail("not enough memory for this request; ask for a smaller box")
    except OSError as e:  # e.g. writing the output file: a user's problem, not a bug
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    return rv if isinstance(rv, int) else 0


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point (``volbridge``): exit with the status of :func:`run`."""
    sys.exit(run(argv))
