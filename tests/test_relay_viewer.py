"""Neuroglancer (the client the `neuroglancer` package serves locally) in headless Chromium shows an
image and a segmentation layer that `volbridge view` serves through the relay: the screenshots are
the data (not blank), and the relay's access log shows neuroglancer's chunk requests.

The screenshot comes from neuroglancer's own `async_screenshot`: the client answers only once
every visible chunk is loaded and drawn. Chromium is told to resolve nothing but 127.0.0.1 and to
skip its background calls, so nothing leaves the machine."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import pytest

import volbridge as vb

neuroglancer = pytest.importorskip("neuroglancer")

CHROMIUM = "/usr/lib/chromium/chromium"  # the real binary; /usr/bin/chromium is a shell wrapper
CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-dev-shm-usage", "--no-default-browser-check",
    "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # software WebGL2
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # nothing else resolves
    "--disable-features=AutofillServerCommunication,NetworkTimeServiceQuerying,"
    "AimEligibilityService,OptimizationHints,MediaRouter,Translate,PreconnectToSearch",
    "--dns-prefetch-disable", "--disable-domain-reliability", "--no-pings",
    "--disable-client-side-phishing-detection", "--disable-default-apps", "--disable-breakpad",
    "--metrics-recording-only", "--allow-browser-signin=false",
    "--google-base-url=http://127.0.0.1:9/", "--gaia-url=http://127.0.0.1:9/",
    "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--remote-debugging-port=0",  # keeps headless chromium on the page
    "--window-size=800,600",
]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """A 16-voxel grey checkerboard (zarr v3, so the relay's precomputed view is not the source's
    own format) and 9 labels on a 3x3 grid (precomputed, compressed_segmentation)."""
    root = tmp_path_factory.mktemp("viewer")
    z, y, x = np.meshgrid(np.arange(64), np.arange(128), np.arange(128), indexing="ij")
    img = np.where((x // 16 + y // 16) % 2, 230, 30).astype(np.uint8)
    seg = (1 + x // 43 + 3 * (y // 43)).astype(np.uint64)
    a = vb.create(f"ome-zarr://{root / 'img.zarr'}", shape=img.shape, dtype="uint8", chunk_shape=(32, 64, 64), resolution=(8, 8, 8))
    a[...] = img
    s = vb.create(f"precomputed://{root / 'seg'}", shape=seg.shape, dtype="uint64", chunk_shape=(32, 64, 64),
                  resolution=(8, 8, 8), layer_type="segmentation", encoding="compressed_segmentation")
    s[...] = seg
    return [f"ome-zarr://{root / 'img.zarr'}", f"precomputed://{root / 'seg'}"]


@pytest.fixture(scope="module")
def session(volumes):
    if not os.access(CHROMIUM, os.X_OK):
        if os.environ.get("VOLBRIDGE_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing; CI installs Debian's chromium for this test")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from volbridge.relay import RelayConfig
    from volbridge.relay.view import start_viewer

    access: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            access.append(record.getMessage())

    view = start_viewer(RelayConfig.from_urls(volumes, host="127.0.0.1", port=0))
    handler = Collect()
    logging.getLogger("uvicorn.access").addHandler(handler)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    view.relay.server.config.access_log = True
    udd = tempfile.mkdtemp(prefix="ng-chrome-")
    err = open(os.path.join(udd, "stderr.txt"), "w")
    proc = subprocess.Popen([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={udd}", view.link],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    view.access = access
    try:
        yield view
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        err.close()
        shutil.rmtree(udd, ignore_errors=True)
        logging.getLogger("uvicorn.access").removeHandler(handler)
        neuroglancer.stop()
        view.relay.stop()


def view_key(state):
    """What the test sets; the client adds UI fields of its own, so whole-state equality is flaky."""
    return (tuple(float(x) for x in state.position), float(state.cross_section_scale or 0),
            tuple((l.name, l.visible, tuple(src.url for src in l.source),
                   getattr(l.layer, "selected_alpha", None)) for l in state.layers))


def screenshot(viewer, size=(400, 400), timeout=60.0):
    """(H x W x 4 pixels, PNG) once the browser shows the current state with every chunk drawn."""
    with viewer.config_state.txn() as s:
        s.show_ui_controls = False
        s.show_panel_borders = False
        s.viewer_size = list(size)
    want = view_key(viewer.state)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, box = threading.Event(), []
        viewer.async_screenshot(lambda r, box=box, done=done: (box.append(r), done.set()))  # a late reply fills its own box
        if not done.wait(min(5.0, max(0.0, deadline - time.monotonic()))):
            continue  # ask again with a new request id
        shot = box[0].screenshot
        if (shot.width, shot.height) == tuple(size) and view_key(box[0].viewer_state) == want:
            return shot.image_pixels, shot.image
        time.sleep(0.1)
    raise TimeoutError(f"no up-to-date screenshot from the browser within {timeout}s")


def show_only(viewer, names, seg_name):
    with viewer.txn() as s:
        for layer in s.layers:
            layer.visible = layer.name in names
        s.layers[seg_name].selected_alpha = 1.0 if names == {seg_name} else 0.5


def centre(px, half=100):  # a 200 x 200 crop, inside the 256 x 256 data square
    h, w = px.shape[:2]
    return px[h // 2 - half: h // 2 + half, w // 2 - half: w // 2 + half, :3].astype(int)


def test_neuroglancer_shows_relayed_image_and_segmentation(session, tmp_path):
    viewer = session.viewer
    names = [layer.name for layer in viewer.state.layers]
    img_name, seg_name = names
    with viewer.txn() as s:
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm", scales=[8, 8, 8])
        s.position = [64, 64, 32]
        s.cross_section_scale = 0.5  # 128 voxels -> 256 px
        s.layout = "xy"
        s.show_axis_lines = False
        s.show_scale_bar = False
        s.layers[seg_name].segments = list(range(1, 10))

    show_only(viewer, {img_name}, seg_name)
    img = centre(screenshot(viewer)[0])
    grey = img.mean(axis=2)
    dark, bright = (np.abs(grey - 30) < 15).mean(), (np.abs(grey - 230) < 15).mean()
    assert dark > 0.3 and bright > 0.3, (dark, bright)  # the checkerboard, not a blank panel
    assert np.all(img.max(axis=2) - img.min(axis=2) < 10)  # grey: the image alone

    show_only(viewer, {seg_name}, seg_name)
    seg = centre(screenshot(viewer)[0])
    colours, counts = np.unique(seg.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours[counts > 0.02 * counts.sum()]) >= 9  # 9 labels, each its own colour
    assert ((seg.max(axis=2) - seg.min(axis=2)) > 30).mean() > 0.9

    show_only(viewer, {img_name, seg_name}, seg_name)
    _, png = screenshot(viewer, size=(512, 512))
    (tmp_path / "relay-neuroglancer.png").write_bytes(png)

    log = "\n".join(session.access)
    for channel in ("img/img", "seg/seg"):  # quick-start names: volbridge/<name>/<name>
        assert f"GET /volbridge/{channel}/info" in log, log[-3000:]
        assert f"GET /volbridge/{channel}/0/" in log, log[-3000:]  # chunk keys of scale 0


def test_view_command_prints_a_working_link(volumes, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "volbridge", "view", volumes[0]], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        relay = lines[0].split("relay: ", 1)[1].strip()
        link = lines[1].split("neuroglancer: ", 1)[1].strip()
        assert link.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(link, timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        with urllib.request.urlopen(relay + "/volbridge/img/img/info", timeout=30) as r:
            assert r.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_view_refuses_voxel_types_neuroglancer_cannot_show(tmp_path, capsys):
    """(review) a float64 (or int64) volume was served to neuroglancer, which never showed it (no
    dimensions, no screenshot, tensorstore refuses the info too): a clear error at start now."""
    from volbridge.cli import run

    for dtype in ("float64", "int64"):
        vb.create(f"zarr3://{tmp_path / dtype}", shape=(4, 8, 8), dtype=dtype, chunk_shape=(4, 8, 8))
        assert run(["view", str(tmp_path / dtype)]) == 1
        err = capsys.readouterr().err
        assert f"holds {dtype} voxels, which neuroglancer cannot show" in err and "Traceback" not in err
