"""Build object stores from URLs, with each cloud's standard environment and config files.

* ``s3://bucket/prefix``: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for S3-compatible
  servers, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_REGION``
  (or ``AWS_DEFAULT_REGION``), else the ``AWS_PROFILE`` (or default) profile of
  ``~/.aws/credentials`` and ``~/.aws/config``. With no credentials at all, requests go unsigned
  (public buckets). ``AWS_CA_BUNDLE`` adds a CA file to the trusted roots. PUTs hash their bodies
  into the signature over plain http only (over https ``UNSIGNED-PAYLOAD``, as the AWS SDKs
  sign); ``AWS_UNSIGNED_PAYLOAD`` overrides.
* ``gs://bucket/prefix``: ``GOOGLE_APPLICATION_CREDENTIALS``, ``GOOGLE_SERVICE_ACCOUNT`` (a key
  file), ``GOOGLE_SERVICE_ACCOUNT_KEY`` (the key itself), ``GOOGLE_BEARER_TOKEN``, or gcloud's
  application-default credentials file; without any, reads go unsigned (public buckets).
  ``GOOGLE_BASE_URL`` points the client at another endpoint; ``STORAGE_EMULATOR_HOST`` (the
  variable Google's own client libraries read, ``host:port`` or a URL) does too and, without
  credentials, sends writes with an empty bearer token, as emulators expect, instead of asking
  the GCE metadata server for one. Requests carry ``Accept-Encoding: gzip``, so an object stored
  with ``Content-Encoding: gzip`` comes as stored (and volbridge decodes it, as on S3) rather
  than decompressed by GCS's decompressive transcoding, whose responses lack the Content-Length
  and ETag that object_store requires.
* ``az://container/prefix`` (also ``azure://``): ``AZURE_STORAGE_ACCOUNT_NAME`` with
  ``AZURE_STORAGE_ACCOUNT_KEY`` or a SAS/token (or the other ``AZURE_*`` variables object_store
  reads: a service principal, a managed identity's ``AZURE_MSI_ENDPOINT``/``AZURE_CLIENT_ID``,
  ``AZURE_USE_AZURE_CLI``), ``AZURE_STORAGE_CONNECTION_STRING`` (the Azure tools' variable:
  AccountName, AccountKey, SharedAccessSignature, BlobEndpoint or DefaultEndpointsProtocol +
  EndpointSuffix, UseDevelopmentStorage), ``AZURE_STORAGE_USE_EMULATOR`` for Azurite. With no
  credentials at all, requests go unsigned (public containers), as on S3 and GCS: object_store
  would ask the instance metadata service of an Azure VM for a token.
* ``http://`` and ``https://``: read-only.

Endpoints (``AWS_ENDPOINT_URL``, ``GOOGLE_BASE_URL``, ``AZURE_STORAGE_ENDPOINT``, ...) must be
http(s) URLs: object_store's Rust layer panicked on a bare ``host:port``. A client object_store
cannot build from the settings (a key that is no key, a missing key file) is a URLError naming
the volume's URL.
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import threading
from urllib.parse import quote, unquote, urlparse

from obstore.store import AzureStore, GCSStore, HTTPStore, S3Store

from ..errors import URLError
from . import curl_get
from .curl_get import CurlGetter, S3Signer
from .curl_put import CurlPutter
from .object_store import ObjectStore, _short, obstore_options
from .retry import RetryPolicy

SCHEMES = ("s3", "gs", "gcs", "az", "azure", "http", "https")


def _aws_profile() -> dict:
    """Credentials and region of the active profile in ~/.aws (the files boto3 reads)."""
    profile = os.environ.get("AWS_PROFILE", "default")
    out: dict = {}
    creds = configparser.ConfigParser()
    creds.read(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", os.path.expanduser("~/.aws/credentials")))
    if creds.has_section(profile):
        sec = creds[profile]
        for ini, key in (("aws_access_key_id", "access_key_id"), ("aws_secret_access_key", "secret_access_key"),
                         ("aws_session_token", "token")):
            if sec.get(ini):
                out[key] = sec[ini]
    conf = configparser.ConfigParser()
    conf.read(os.environ.get("AWS_CONFIG_FILE", os.path.expanduser("~/.aws/config")))
    section = "default" if profile == "default" else f"profile {profile}"
    if conf.has_section(section):
        if conf[section].get("region"):
            out["region"] = conf[section]["region"]
        if conf[section].get("endpoint_url"):
            out["endpoint"] = conf[section]["endpoint_url"]
    return out


def _endpoint(name: str, value: str | None, echo: bool = True) -> str | None:
    """``value`` (from ``name``; named in an error if ``echo``) as an endpoint: an http(s) URL
    with a host, its scheme in lower case (object_store's own http check is case-sensitive)."""
    if not value:
        return None
    parsed = urlparse(value.strip())
    if parsed.scheme.lower() not in ("http", "https") or not parsed.netloc:
        shown = f"{name}={value!r}" if echo else name
        raise URLError(f"{shown} is not an endpoint URL: expected http://host:port or https://host")
    return parsed._replace(scheme=parsed.scheme.lower()).geturl()


def _is_http(url) -> bool:
    return str(url or "").strip().lower().startswith("http://")


def s3_config(env: dict | None = None) -> dict:
    env = os.environ if env is None else env
    cfg = _aws_profile()
    endpoint = next(((n, env[n]) for n in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if env.get(n)), None)
    if endpoint is None and cfg.get("endpoint"):
        endpoint = ("endpoint_url in the AWS config file", cfg["endpoint"])
    if endpoint:
        cfg["endpoint"] = _endpoint(*endpoint)
        cfg["virtual_hosted_style_request"] = False
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        cfg["access_key_id"] = env["AWS_ACCESS_KEY_ID"]
        cfg["secret_access_key"] = env["AWS_SECRET_ACCESS_KEY"]
        cfg.pop("token", None)
        if env.get("AWS_SESSION_TOKEN"):
            cfg["token"] = env["AWS_SESSION_TOKEN"]
    cfg["region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or cfg.get("region") or "us-east-1"
    if "access_key_id" not in cfg:
        cfg["skip_signature"] = True  # anonymous: public buckets
    # Over https TLS guards the body, so a PUT skips hashing it (x-amz-content-sha256:
    # UNSIGNED-PAYLOAD), as the AWS SDKs' S3 signers do: ~14 ms of client CPU per 16 MiB written.
    # Over plain http the hash is the only check the server makes on the body: kept there.
    # AWS_UNSIGNED_PAYLOAD (object_store's own variable) decides when it is set.
    choice = env.get("AWS_UNSIGNED_PAYLOAD")
    https = urlparse(cfg.get("endpoint") or "https://s3.amazonaws.com").scheme.lower() == "https"
    cfg["unsigned_payload"] = _true(choice) if choice is not None else https
    return cfg


#: Environment variables that give GCS credentials (object_store reads them itself).
_GCS_CREDENTIAL_VARS = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_SERVICE_ACCOUNT", "GOOGLE_SERVICE_ACCOUNT_PATH",
                        "GOOGLE_SERVICE_ACCOUNT_KEY", "GOOGLE_BEARER_TOKEN", "SERVICE_ACCOUNT")


#: gcloud's application-default credentials, which object_store reads when no other are given.
_GCLOUD_ADC = os.path.join("~", ".config", "gcloud", "application_default_credentials.json")


def gcs_config(env: dict | None = None) -> dict:
    """GCSStore settings beyond what object_store reads from ``GOOGLE_*`` itself (see the module doc)."""
    env = os.environ if env is None else env
    cfg: dict = {}
    base = _endpoint("GOOGLE_BASE_URL", env.get("GOOGLE_BASE_URL"))
    emulator = (env.get("STORAGE_EMULATOR_HOST") or "").strip().rstrip("/")
    if emulator and not base:
        base = _endpoint("STORAGE_EMULATOR_HOST", emulator if "://" in emulator else f"http://{emulator}")
    if base:
        cfg["base_url"] = base
    explicit = any(env.get(k) for k in _GCS_CREDENTIAL_VARS)
    if emulator and not explicit:
        # Anonymous, as Google's libraries are with an emulator. object_store signs every write,
        # and with no credentials would ask the GCE metadata server for a token: give it an
        # empty one (which also keeps gcloud's own credentials away from the emulator).
        cfg["skip_signature"] = True
        cfg["bearer_token"] = ""
    elif not explicit and not os.path.isfile(os.path.expanduser(_GCLOUD_ADC)):
        cfg["skip_signature"] = True  # anonymous reads: public buckets
    return cfg


#: The variables that decide which Azure storage account (or emulator) a container URL means.
_AZURE_SERVICE_VARS = ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ENDPOINT",
                       "AZURE_STORAGE_USE_EMULATOR", "AZURE_ENDPOINT")
#: Variables that give object_store an Azure credential (or a way to get one): any of them set,
#: requests are signed.
_AZURE_CREDENTIAL_VARS = (
    "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_MASTER_KEY", "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_TOKEN", "AZURE_STORAGE_CLIENT_ID", "AZURE_CLIENT_ID",
    "AZURE_STORAGE_CLIENT_SECRET", "AZURE_CLIENT_SECRET", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USE_AZURE_CLI",
    "AZURE_MSI_ENDPOINT", "AZURE_IDENTITY_ENDPOINT", "AZURE_OBJECT_ID", "AZURE_MSI_RESOURCE_ID", "AZURE_CREDENTIAL_TYPE",
    "AZURE_SKIP_SIGNATURE", "AZURE_FABRIC_TOKEN_SERVICE_URL", "AZURE_FABRIC_WORKLOAD_HOST", "AZURE_FABRIC_SESSION_TOKEN",
    "AZURE_FABRIC_CLUSTER_IDENTIFIER")
#: AZURE_STORAGE_CONNECTION_STRING's settings, by their (case-insensitive) names: AzureStore's.
_CONNECTION_KEYS = {"accountname": "account_name", "accountkey": "account_key", "sharedaccesssignature": "sas_key",
                    "blobendpoint": "endpoint"}


def azure_config(env: dict | None = None) -> dict:
    """AzureStore settings beyond what object_store reads from ``AZURE_*`` itself (see the
    module doc): the connection string's, and anonymous access without credentials."""
    env = os.environ if env is None else env
    cfg: dict = {}
    for name in ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"):  # (a bare host:port made object_store fail)
        if env.get(name):
            cfg["endpoint"] = _endpoint(name, env[name])
            break
    text = env.get("AZURE_STORAGE_CONNECTION_STRING")
    if text:
        parts: dict[str, str] = {}
        for i, item in enumerate(filter(None, (p.strip() for p in text.split(";")))):
            key, eq, value = item.partition("=")
            if not eq:  # (nothing of it is echoed: it may be a key)
                raise URLError(f"AZURE_STORAGE_CONNECTION_STRING: its setting {i + 1} is not Name=value")
            parts[key.strip().lower()] = value.strip()
        if _true(parts.get("usedevelopmentstorage")):
            cfg["use_emulator"] = True
        for key, setting in _CONNECTION_KEYS.items():
            if parts.get(key) and setting != "endpoint":
                cfg[setting] = parts[key]
        if parts.get("blobendpoint"):  # (the connection string's settings win over the other variables')
            cfg["endpoint"] = _endpoint("BlobEndpoint of AZURE_STORAGE_CONNECTION_STRING", parts["blobendpoint"], echo=False)
        elif parts.get("endpointsuffix") and cfg.get("account_name"):
            protocol = parts.get("defaultendpointsprotocol", "https").lower()
            cfg["endpoint"] = _endpoint("AZURE_STORAGE_CONNECTION_STRING's protocol and suffix",
                                        f"{protocol}://{cfg['account_name']}.blob.{parts['endpointsuffix']}", echo=False)
        if not parts.keys() & {"usedevelopmentstorage", *_CONNECTION_KEYS}:
            raise URLError("AZURE_STORAGE_CONNECTION_STRING names no AccountName, AccountKey, SharedAccessSignature, "
                           "BlobEndpoint or UseDevelopmentStorage")
    signed = any(env.get(k) for k in _AZURE_CREDENTIAL_VARS) or "account_key" in cfg or "sas_key" in cfg
    if not signed and not cfg.get("use_emulator") and not _true(env.get("AZURE_STORAGE_USE_EMULATOR")):
        cfg["skip_signature"] = True  # anonymous: public containers
    return cfg


def _ca_file(path: str | None) -> tuple[tuple, str] | None:
    """(identity, PEM text) of the certificates in ``path`` (``AWS_CA_BUNDLE``), which are added to
    obstore's trusted roots, so that a private CA (a self-hosted MinIO, say) is trusted by writes as
    by reads. The identity (path, size, mtime) keys the shared client; the text is read once."""
    if not path:
        return None
    path = os.path.expanduser(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise URLError(f"AWS_CA_BUNDLE={path!r} cannot be read: {e}") from e
    identity = (path, st.st_size, st.st_mtime_ns)
    return identity, _ca_text(identity)


@functools.lru_cache(maxsize=8)
def _ca_text(identity: tuple) -> str:
    path = identity[0]
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise URLError(f"AWS_CA_BUNDLE={path!r} cannot be read as PEM certificates: {e}") from e
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise URLError(f"AWS_CA_BUNDLE={path!r} holds no PEM certificate")
    return text


def _true(v: str | None) -> bool:
    return (v or "").strip().lower() in ("1", "true", "yes", "on")


#: One obstore client per endpoint, bucket, credentials and options: building one costs 6-7 ms
#: (root certificates) and a handle of its own would start with a cold connection pool.
_clients: dict[str, object] = {}
_clients_lock = threading.Lock()


def _shared(kind, key_parts: tuple, build, url: str | None = None):
    """The one client of these settings; ``url`` (the volume's): named by the URLError a client
    that cannot be built from them raises."""
    key = json.dumps([kind, *key_parts], sort_keys=True, default=str)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            try:
                client = build()
            except (KeyboardInterrupt, SystemExit):
                raise
            except URLError:
                raise
            except BaseException as e:  # obstore's errors, and pyo3's PanicException (a BaseException)
                raise URLError(f"{url or kind}: cannot set up the {kind} client from these settings: {_short(e)}") from e
            _clients[key] = client
        return client


def open_object_store(url: str, retry: RetryPolicy | None = None) -> ObjectStore:
    retry = retry or RetryPolicy()
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    opts = obstore_options(retry)
    if scheme in ("http", "https"):
        if parsed.query or parsed.fragment or url.endswith(("?", "#")):
            # object names are appended to the path: a query or fragment would be dropped or misplaced
            raise URLError(f"{url!r} has a query or fragment ('?...', '#...'), which a volume URL cannot keep: object "
                           "names are appended to its path; write '?' and '#' that are part of the path as %3F and %23")
        if not parsed.netloc:
            raise URLError(f"{url!r} names no host")
        opts["client_options"]["allow_http"] = True
        base = f"{scheme}://{parsed.netloc}"
        client = _shared("http", (base, repr(retry)), lambda: HTTPStore.from_url(base, **opts), url)
        getter = _shared("http-curl", (base, repr(retry)), lambda: CurlGetter(base, "/", None, retry)) if curl_get.available() else None
        # obstore percent-encodes the path it is given: give it the decoded one (my%20data -> 'my data')
        return ObjectStore(client, url, prefix=unquote(parsed.path), retry=retry, read_only=True, getter=getter)
    # An object's name may hold any character: what follows the bucket is the prefix as written,
    # '?' and '#' included (urlparse would cut them off, and s3://b/run#1/em write to run/).
    bucket, _, path = url.split("://", 1)[1].partition("/")
    prefix = path.strip("/")
    if "?" in bucket or "#" in bucket:
        raise URLError(f"{url!r}: {bucket!r} is not a bucket name")
    if not bucket:
        raise URLError(f"{url!r} names no bucket: expected {scheme}://bucket/path")
    kw = dict(opts)
    getter = putter = None
    if scheme == "s3":
        cfg = s3_config()
        if _is_http(cfg.get("endpoint")) or _true(os.environ.get("AWS_ALLOW_HTTP")):
            kw["client_options"]["allow_http"] = True
        ca = _ca_file(os.environ.get("AWS_CA_BUNDLE"))  # libcurl's requests trust it (_s3_curl): obstore's too
        # the shared client is keyed by the bundle's identity (path, size, mtime), not its PEM text
        key = (bucket, cfg, repr(retry), kw["client_options"], ca and ca[0])
        if ca is not None:
            kw["client_options"] = dict(kw["client_options"], root_certificate=ca[1])
        store = _shared("s3", key, lambda: S3Store(bucket, **cfg, **kw), url)
        service = cfg.get("endpoint") or "aws"
        getter, putter = _s3_curl(bucket, cfg, retry) or (None, None)
    elif scheme in ("gs", "gcs"):
        cfg = gcs_config()
        if _is_http(cfg.get("base_url")):
            kw["client_options"]["allow_http"] = True
        kw["client_options"]["default_headers"] = {"Accept-Encoding": "gzip"}
        env = {k: v for k, v in os.environ.items() if k.startswith("GOOGLE_")}
        store = _shared("gs", (bucket, cfg, env, repr(retry), kw["client_options"]), lambda: GCSStore(bucket, **cfg, **kw), url)
        service = cfg.get("base_url") or "google"
        getter = _gcs_getter(bucket, cfg, retry)
    elif scheme in ("az", "azure"):
        env = os.environ
        cfg = azure_config()
        if (_true(env.get("AZURE_STORAGE_USE_EMULATOR")) or cfg.get("use_emulator") or _true(env.get("AZURE_ALLOW_HTTP"))
                or any(_is_http(v) for v in (env.get("AZURE_STORAGE_ENDPOINT"), env.get("AZURE_ENDPOINT"), cfg.get("endpoint")))):
            kw["client_options"]["allow_http"] = True
        if not (cfg.get("account_name") or cfg.get("use_emulator") or any(
                env.get(k) for k in ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_USE_EMULATOR"))):
            raise URLError(f"{url!r}: no Azure storage account: set AZURE_STORAGE_ACCOUNT_NAME (with a key, SAS or token "
                           "for private containers) or AZURE_STORAGE_CONNECTION_STRING")
        azenv = {k: v for k, v in env.items() if k.startswith("AZURE_")}
        store = _shared("az", (bucket, azenv, repr(retry), kw["client_options"]), lambda: AzureStore(bucket, **cfg, **kw), url)
        # which account: the caches key their entries by it (a connection string's account was
        # left out, and two accounts' containers of one name shared a disk cache, a review found)
        named = {**{k: azenv[k] for k in azenv if k in _AZURE_SERVICE_VARS},
                 **{f"connection string {k}": str(cfg[k]) for k in ("account_name", "endpoint", "use_emulator") if k in cfg}}
        service = " ".join(f"{k}={v}" for k, v in sorted(named.items())) or "azure"
    else:
        raise URLError(f"unsupported object store scheme {scheme!r} in {url!r}")
    canonical = f"{_CANONICAL_SCHEME[scheme]}://{bucket}/{prefix}"
    return ObjectStore(store, url, prefix=prefix, retry=retry, service=service, getter=getter, putter=putter,
                       canonical_url=canonical)


#: One spelling of each object-store scheme, for identities.
_CANONICAL_SCHEME = {"s3": "s3", "gs": "gs", "gcs": "gs", "az": "az", "azure": "az"}


#: The AWS_* variables whose meaning _s3_curl reproduces (through s3_config or as obstore
#: does). Any other (AWS_ENDPOINT, AWS_REQUEST_PAYER, server-side encryption, ...) changes what
#: obstore's requests look like, so every request then stays on obstore.
_AWS_VARS_KNOWN = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
                   "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ALLOW_HTTP", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
                   "AWS_EC2_METADATA_DISABLED", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE",
                   "AWS_PAGER", "AWS_SDK_LOAD_CONFIG", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_CA_BUNDLE",
                   "AWS_UNSIGNED_PAYLOAD"}


def _s3_curl(bucket: str, cfg: dict, retry: RetryPolicy) -> tuple[CurlGetter, CurlPutter] | None:
    """libcurl GETs and whole-object PUTs for this bucket where volbridge can make the very
    requests obstore would: static or no credentials, and no option beyond those s3_config
    reads. None leaves every request to obstore."""
    if not curl_get.available() or any(k.startswith("AWS_") and k not in _AWS_VARS_KNOWN for k in os.environ):
        return None
    if cfg.get("skip_signature"):
        signer = None
    elif cfg.get("access_key_id") and cfg.get("secret_access_key"):
        signer = S3Signer(cfg["access_key_id"], cfg["secret_access_key"], cfg["region"], cfg.get("token"))
    else:
        return None
    endpoint = cfg.get("endpoint")
    if endpoint:  # path style, as obstore is told for a custom endpoint
        base, path = endpoint, f"/{quote(bucket)}/"
    elif _true(os.environ.get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST")):
        if "." in bucket:
            return None  # a dotted name does not match AWS's certificate; obstore knows the rules
        base, path = f"https://{bucket}.s3.{cfg['region']}.amazonaws.com", "/"
    else:  # object_store's default for AWS
        base, path = f"https://s3.{cfg['region']}.amazonaws.com", f"/{quote(bucket)}/"
    parsed = urlparse(base)
    if parsed.scheme not in ("http", "https") or parsed.path.strip("/") or parsed.query:
        return None  # an endpoint with a path of its own
    ca = os.environ.get("AWS_CA_BUNDLE") or None  # the AWS tools' own CA file for S3
    key = (bucket, cfg, repr(retry), ca)
    return (_shared("s3-curl", key, lambda: CurlGetter(base, path, signer, retry, ca_file=ca)),
            _shared("s3-curl-put", key, lambda: CurlPutter(base, path, signer, retry, ca_file=ca,
                                                           unsigned_payload=cfg["unsigned_payload"])))


def _gcs_getter(bucket: str, cfg: dict, retry: RetryPolicy) -> CurlGetter | None:
    """libcurl GETs of a bucket read anonymously (public data, or an emulator): the XML API's
    ``GET /bucket/key`` that object_store sends, with ``Accept-Encoding: gzip`` so GCS hands over
    gzip objects as stored (volbridge decodes them). Signed access stays on obstore."""
    if not curl_get.available() or not cfg.get("skip_signature") or cfg.get("bearer_token"):
        return None
    base = cfg.get("base_url") or "https://storage.googleapis.com"
    parsed = urlparse(base)
    if parsed.scheme not in ("http", "https") or parsed.path.strip("/") or parsed.query:
        return None
    return _shared("gs-curl", (bucket, cfg, repr(retry)),
                   lambda: CurlGetter(base, f"/{quote(bucket)}/", None, retry, headers=("Accept-Encoding: gzip",)))
