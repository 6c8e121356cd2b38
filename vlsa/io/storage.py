"""Local paths and ``s3://`` URIs behind one small API.

Credentials come from the environment or the instance role, never from config files. An S3-compatible
endpoint (a MinIO, or moto in tests) is selected with the standard ``AWS_ENDPOINT_URL`` /
``AWS_ENDPOINT_URL_S3`` variables, which boto3 reads itself; the same value is passed to pyarrow.

A process makes one boto3 client and one pyarrow ``S3FileSystem`` per S3 setting (endpoint, region,
key id) and reuses them for every image, label and checkpoint read: creating a client costs
milliseconds and a credential lookup, which per sample would dominate small reads. Both retry
throttling and connection errors (standard mode) before an error reaches the caller.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from functools import lru_cache
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

S3_ATTEMPTS = 8
"""Attempts of one S3 call (throttling, 5xx and connection errors are retried with backoff)."""
_CLIENT_LOCK = threading.Lock()


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` -> (``bucket``, ``key/prefix``)."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def endpoint_url() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _setting() -> tuple:
    """What selects an S3 client in this process: a forked child, a changed endpoint or changed keys
    (short-lived credentials are rotated) get a new one. Secrets enter only as a digest."""
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or ""
    secret = "\0".join(os.environ.get(k, "") for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                                        "AWS_SHARED_CREDENTIALS_FILE"))
    return (os.getpid(), endpoint_url() or "", region, os.environ.get("AWS_ACCESS_KEY_ID", ""),
            os.environ.get("AWS_PROFILE", ""), hashlib.sha256(secret.encode()).hexdigest())


def s3_client():
    """This process's boto3 S3 client for the current setting (thread-safe; created once)."""
    with _CLIENT_LOCK:  # boto3 client creation is not thread-safe; the client itself is
        return _boto3_client(*_setting())


@lru_cache(maxsize=8)
def _boto3_client(pid: int, endpoint: str, region: str, key_id: str, profile: str, secret_digest: str):
    """Keys set in the environment are passed on explicitly: boto3's default session caches the first
    keys it finds, and the environment at call time must decide, as it does for pyarrow."""
    import boto3
    from botocore.config import Config as BotoConfig

    retries = BotoConfig(retries={"max_attempts": S3_ATTEMPTS, "mode": "standard"}, max_pool_connections=32)
    keys = {
        "aws_access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": os.environ.get("AWS_SESSION_TOKEN"),
    }
    keys = keys if keys["aws_access_key_id"] and keys["aws_secret_access_key"] else {}
    return boto3.client("s3", endpoint_url=endpoint or None, config=retries, **keys)


@lru_cache(maxsize=8)
def _arrow_s3(pid: int, endpoint: str, region: str, key_id: str, profile: str, secret_digest: str):
    from pyarrow import fs

    kwargs = {"retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=S3_ATTEMPTS)}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc or endpoint, scheme=parsed.scheme or "https")
    if region:
        kwargs["region"] = region
    return fs.S3FileSystem(**kwargs)


def pyarrow_filesystem(uri: str):
    """(filesystem, path) for pyarrow / Ray Data readers and writers; the S3 filesystem is this process's one."""
    if not is_s3(uri):
        return None, str(Path(uri).expanduser())
    with _CLIENT_LOCK:
        filesystem = _arrow_s3(*_setting())
    bucket, key = split_s3(uri)
    return filesystem, f"{bucket}/{key}".rstrip("/")


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base).expanduser().joinpath(*parts))


class ReadRefused(ValueError):
    """A read refused before its bytes were read: ``reason`` is ``not_a_file`` or ``too_many_bytes``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The whole file or object. With ``max_bytes`` its type and size are checked first (``stat`` locally,
    the object's length on S3), so a huge file costs no memory and a FIFO or device never blocks the read."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        response = s3_client().get_object(Bucket=bucket, Key=key)
        if max_bytes is None:
            return response["Body"].read()
        # The length arrives with the headers (one request, as a head_object would cost): the body is
        # closed unread when it is too large.
        with response["Body"] as body:
            check_size(uri, response["ContentLength"], max_bytes)
            return _bounded(uri, body, max_bytes)
    path = Path(uri).expanduser()
    return path.read_bytes() if max_bytes is None else _read_local(path, max_bytes)


def check_size(where: str, size: int, max_bytes: int) -> None:
    """Refuse a file larger than ``max_bytes``."""
    if size > max_bytes:
        raise ReadRefused("too_many_bytes", f"{where}: {size} bytes > limit {max_bytes}")


def _read_local(path: Path, max_bytes: int) -> bytes:
    _check_regular(path, os.stat(path).st_mode)
    # O_NONBLOCK: a file swapped for a FIFO after the stat must not block the open; fstat re-checks it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        _check_regular(path, info.st_mode)
        check_size(str(path), info.st_size, max_bytes)
        return _bounded(str(path), handle, max_bytes)


def _check_regular(path: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = {stat.S_IFIFO: "named pipe", stat.S_IFDIR: "folder", stat.S_IFSOCK: "socket"}.get(
            stat.S_IFMT(mode), "device or special file"
        )
        raise ReadRefused("not_a_file", f"{path} is a {kind}, not a regular file")


def _bounded(where: str, handle, max_bytes: int) -> bytes:
    # A file that grew after its size was checked is still cut off one byte past the limit.
    data = handle.read(max_bytes + 1)
    check_size(where, len(data), max_bytes)
    return data


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: readers never see a half-written local file."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, prefix=f".{path.name}.") as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)


def exists(uri: str) -> bool:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        response = s3_client().list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return any(obj["Key"] == key or obj["Key"].startswith(key.rstrip("/") + "/") for obj in response.get("Contents", []))
    return Path(uri).expanduser().exists()


def list_files(uri: str) -> Iterator[str]:
    """Every file below a folder or prefix, as full URIs / paths, sorted."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        prefix = key.rstrip("/") + "/" if key else ""
        paginator = s3_client().get_paginator("list_objects_v2")
        keys = [obj["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for obj in page.get("Contents", [])]
        yield from (f"s3://{bucket}/{k}" for k in sorted(keys))
        return
    root = Path(uri).expanduser()
    if root.is_dir():
        yield from (str(p) for p in sorted(root.rglob("*")) if p.is_file())


def upload_dir(local_dir: str | Path, uri: str, threads: int = 8) -> None:
    """Copy a local folder to a folder or ``s3://`` prefix, ``threads`` files at a time (one client)."""
    from concurrent.futures import ThreadPoolExecutor

    local_dir = Path(local_dir)
    paths = sorted(p for p in local_dir.rglob("*") if p.is_file())

    def copy(path: Path) -> None:
        rel = path.relative_to(local_dir).as_posix()
        if is_s3(uri):
            bucket, key = split_s3(join(uri, rel))
            s3_client().upload_file(str(path), bucket, key)
        else:
            target = Path(join(uri, rel))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths)))) as pool:
        list(pool.map(copy, paths))


def download_dir(uri: str, local_dir: str | Path) -> Path:
    """Copy every file below an ``s3://`` prefix into ``local_dir`` (kept relative)."""
    bucket, key = split_s3(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    local_dir = Path(local_dir)
    client = s3_client()
    found = False
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found = True
            target = local_dir / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))
    if not found:
        raise FileNotFoundError(f"nothing stored under {uri}")
    return local_dir


def local_copy(uri: str, cache_dir: str | Path) -> Path:
    """A local folder holding ``uri``: the path itself if local, else a cached download of the prefix.

    The download lands in a temporary folder and is renamed into place, so a crash mid-download
    never leaves a cache entry that looks complete.
    """
    if not is_s3(uri):
        return Path(uri).expanduser()
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = Path(cache_dir).expanduser() / "s3" / digest
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{digest}."))
    download_dir(uri, tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same download first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def node_copy(uri: str, scratch: str | Path) -> tuple[Path, int]:
    """A copy of file ``uri`` on this node's disk under ``scratch``: (its path, bytes this call downloaded).

    The processes of a node share one copy: the first takes an exclusive lock on ``<copy>.lock``,
    downloads to a temporary file and renames it into place; the others wait on the lock and then
    find the copy (0 bytes downloaded). The copy's name includes the object's size and modification
    time, so an object rewritten under the same URI is fetched again, never served stale. A local
    ``uri`` is its own copy.
    """
    if not is_s3(uri):
        return Path(uri).expanduser(), 0
    filesystem, path = pyarrow_filesystem(uri)
    info = filesystem.get_file_info(path)
    if info.size is None:
        raise FileNotFoundError(f"nothing stored at {uri}")
    version = f"{uri}\x00{info.size}\x00{info.mtime_ns}"
    digest = hashlib.sha256(version.encode()).hexdigest()[:20]
    target = Path(scratch).expanduser() / digest[:2] / f"{digest}-{path.rsplit('/', 1)[-1]}"
    if target.is_file():
        return target, 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if target.is_file():
            return target, 0
        return target, _download(filesystem, path, target)


def _download(filesystem, path: str, target: Path, chunk: int = 8 << 20) -> int:
    """Stream ``path`` into ``target`` through a temporary file; returns the bytes read."""
    done = 0
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, prefix=f".{target.name}.") as tmp:
        try:
            with filesystem.open_input_stream(path) as source:
                while block := source.read(chunk):
                    tmp.write(block)
                    done += len(block)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, target)
    return done


_RETRYABLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                    "InternalError", "ServiceUnavailable", "503", "500"}
_RETRYABLE_ARROW = ("NETWORK_CONNECTION", "SLOW_DOWN", "THROTTLING", "INTERNAL_FAILURE", "SERVICE_UNAVAILABLE",
                    "REQUEST_TIMEOUT", "Connection reset", "Timeout")


def transient(err: BaseException) -> bool:
    """Whether a retry may cure ``err``: dropped connections, timeouts, throttling, 5xx answers.

    A missing object, a refused credential or a full local disk is not transient.
    """
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    from botocore import exceptions as boto

    if isinstance(err, (boto.ConnectionError, boto.HTTPClientError)):
        return True
    if isinstance(err, boto.ClientError):
        response = err.response or {}
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return status >= 500 or response.get("Error", {}).get("Code") in _RETRYABLE_CODES
    # pyarrow reports S3 failures as OSError("... AWS Error NETWORK_CONNECTION ...")
    return isinstance(err, OSError) and "AWS Error" in str(err) and any(m in str(err) for m in _RETRYABLE_ARROW)


def retry(fn, attempts: int = 4, delay: float = 0.5):
    """``fn()``, called again after a transient error (backoff ``delay`` x 1, 2, 4 ... seconds)."""
    import time

    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:
            if attempt == attempts or not transient(err):
                raise
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
