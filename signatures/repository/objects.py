"""A model repository on object storage: ``s3://BUCKET/PREFIX`` (or another
fsspec URL), the same layout as a directory (``<model>/<version>/{artifact,
module_info.json}``), read and written through fsspec (s3fs for ``s3://``).

Reading a version for serving (`ObjectRepository.load`) downloads it into a
local cache, itself a directory repository (``<cache>/<model>/<version>/``):

- ``module_info.json`` is read only when the object's size is at most
  `MAX_INFO_BYTES`, and parsed only then; its model and version must be the
  ones asked for, and it must record the artifact's sha256;
- the artifact's size, from the object's metadata, must be at most the
  reader's ``max_artifact_bytes`` before a byte of it is read; it is streamed
  into a hidden temporary directory of the cache, hashed as it comes, and must
  end at exactly that size with exactly the recorded sha256;
- only then is the temporary directory renamed into place, in one step, so a
  partial or mismatched download is never seen: not by this process, not by
  another leaf sharing the cache, not after a crash (temporary directories
  are removed on the next download of the version).

A version found in the cache is served from it (its hash checked again, as
a directory repository does), so a restarted leaf serves what it had while
the store is down. What cannot be delivered raises `FetchError`, whose
``kind`` (`FETCH_KINDS`) the leaf counts and logs.

Publishing writes the artifact first and ``module_info.json`` last: a version
exists once its ``module_info.json`` does, so a crash between the two leaves
no version (the next export of it overwrites the stray artifact). On ``s3://``
``module_info.json`` is written only if absent (``If-None-Match``), so two
exporters racing for one version cannot both win; the artifact they may both
have written is caught by its hash when a leaf downloads it.

Credentials and endpoint come from the client library's usual places: for
``s3://`` botocore's (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_PROFILE`` / instance roles, ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` for an S3-API server other than AWS), and fsspec's
``FSSPEC_<PROTOCOL>_<OPTION>`` variables for any protocol.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable

from _trim.errors import NotFound, StoreError
from signatures.repository.module_info import (
    INFO_NAME,
    NAME_RE,
    ModelRepository,
    ModuleInfo,
    check_name,
    version_sort_key,
)
from signatures.runtime.files import fsync_dir

MIB = 1 << 20
MAX_INFO_BYTES = 1 * MIB           # a module_info.json larger than this is refused unread
MAX_ARTIFACT_BYTES = 16 * 1024 * MIB
CHUNK = 4 * MIB                    # bytes per read while downloading
FETCH_KINDS = ("unreachable", "not_found", "too_large", "interrupted", "hash_mismatch", "invalid",
               "cache")
# s3fs retries a failed call itself (5 times by default); a leaf retries the
# whole version with its own backoff, so one call gives up sooner.
S3_CALL_RETRIES = 2


class FetchError(StoreError):
    """A version the repository could not deliver; ``kind`` is one of `FETCH_KINDS`."""

    def __init__(self, kind: str, message: str):
        assert kind in FETCH_KINDS, kind
        super().__init__(message)
        self.kind = kind


def fetch_kind(exc: BaseException) -> str:
    """The `FETCH_KINDS` entry for any error reading a version (a directory's too)."""
    if isinstance(exc, FetchError):
        return exc.kind
    if isinstance(exc, (NotFound, FileNotFoundError)):
        return "not_found"
    if isinstance(exc, ValueError):
        return "hash_mismatch" if "does not match the artifact_sha256" in str(exc) else "invalid"
    return "unreachable"


def is_url(address: str) -> bool:
    """Whether a repository address names an object store rather than a directory."""
    scheme, sep, _ = str(address).partition("://")
    return bool(sep) and scheme not in ("", "file", "local")


def default_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "trimmer", "models")


def _alive(pid: str) -> bool:
    """Whether the process that named a temporary directory still runs (and may
    be downloading into it: leaves on one host can share a cache)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class ObjectRepository(ModelRepository):
    """The repository at ``address`` (an fsspec URL); versions read for serving
    are downloaded into ``cache`` (a directory; default `default_cache`).
    ``on_download`` is told the size of each artifact downloaded."""

    remote = True

    def __init__(self, address: str, *, cache: str | None = None,
                 max_artifact_bytes: int = MAX_ARTIFACT_BYTES,
                 on_download: Callable[[int], None] | None = None, storage_options=None):
        from fsspec.core import url_to_fs
        self.root = str(address).rstrip("/")
        options = {"skip_instance_cache": True, "use_listings_cache": False,
                   **(storage_options or {})}
        try:
            self.fs, self.base = url_to_fs(self.root, **options)
        except (ImportError, ValueError) as exc:
            raise FetchError("invalid", f"model repository {self.root}: {exc} (its protocol "
                             "needs its fsspec package: s3fs for s3://, the [s3] extra)") from exc
        if "s3" in getattr(self.fs, "protocol", ()):
            self.fs.retries = S3_CALL_RETRIES
        self.base = self.base.rstrip("/")
        self.cache = ModelRepository(cache or default_cache())
        self.max_artifact_bytes = max_artifact_bytes
        self.on_download = on_download

    # -- names ---------------------------------------------------------------------------

    def _path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def _url(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def version_dir(self, model: str, version: str) -> str:
        check_name("model name", model)
        check_name("model version", version)
        return self._url(model, version)

    def _call(self, what: str, fn, *args, **kwargs):
        """``fn(*args)``; FetchError naming ``what`` when the store fails it."""
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError as exc:
            raise FetchError("not_found", f"{what}: not in model repository {self.root}") from exc
        except PermissionError as exc:
            raise FetchError("unreachable", f"{what}: model repository {self.root} denied "
                             f"access ({exc}): check the credentials (for s3://, the AWS_* "
                             "variables or the role)") from exc
        except Exception as exc:   # botocore/aiohttp errors share no base but Exception
            raise FetchError("unreachable", f"{what}: model repository {self.root} did not "
                             f"answer: {type(exc).__name__}: {exc}") from exc

    # -- reading -------------------------------------------------------------------------

    def models(self) -> list[str]:
        try:
            entries = self._call(self.root, self.fs.ls, self.base, detail=True)
        except FetchError as exc:
            if exc.kind == "not_found":
                return []
            raise
        names = (e["name"].rstrip("/").rpartition("/")[2] for e in entries
                 if e.get("type") == "directory")
        return sorted(n for n in names if NAME_RE.match(n))

    def versions(self, model: str) -> list[str]:
        if not NAME_RE.match(model):
            return []
        found = self._call(self._url(model), self.fs.glob, self._path(model, "*", INFO_NAME))
        names = (p.rstrip("/").split("/")[-2] for p in found)
        return sorted((v for v in names if NAME_RE.match(v)), key=version_sort_key)

    def _size(self, what: str, path: str) -> int:
        details = self._call(what, self.fs.info, path)
        size = details.get("size")
        if not isinstance(size, int) or size < 0:
            raise FetchError("invalid", f"{what}: the store gives no size for it")
        return size

    def has(self, model: str, version: str) -> bool:
        try:
            self._size(self._url(model, version, INFO_NAME), self._path(model, version, INFO_NAME))
        except FetchError as exc:
            if exc.kind == "not_found":
                return False
            raise
        return True

    def _read_bounded(self, what: str, path: str, limit: int) -> bytes:
        size = self._size(what, path)
        if size > limit:
            raise FetchError("too_large", f"{what}: {size} bytes, over the {limit} this "
                             "reader accepts: refused unread")
        data = self._call(what, self.fs.cat_file, path, start=0, end=limit + 1)
        if len(data) > limit:
            raise FetchError("too_large", f"{what}: over {limit} bytes: refused")
        return data

    def info(self, model: str, version: str) -> ModuleInfo:
        """The signature alone, read with its size bounded; NotFound when absent."""
        url = self._url(model, version, INFO_NAME)
        check_name("model name", model)
        check_name("model version", version)
        try:
            data = self._read_bounded(url, self._path(model, version, INFO_NAME), MAX_INFO_BYTES)
        except FetchError as exc:
            if exc.kind == "not_found":
                raise NotFound(f"{model}@{version}: not in model repository {self.root}") from exc
            raise
        try:
            info = ModuleInfo.from_dict(json.loads(data), where=url)
        except ValueError as exc:   # JSON or the signature's own checks
            raise FetchError("invalid", str(exc)) from exc
        if (info.model, info.version) != (model, version):
            raise FetchError("invalid", f"{url} describes {info.key}, not {model}@{version}")
        return info

    def read_artifact(self, model: str, version: str) -> bytes:
        info = self.info(model, version)
        return self._read_bounded(self._url(model, version, info.artifact.file),
                                  self._path(model, version, info.artifact.file),
                                  self.max_artifact_bytes)

    def artifact_sha256(self, model: str, version: str) -> str:
        return self.info(model, version).artifact_sha256   # versions are immutable

    def load(self, model: str, version: str, verify: bool = True) -> tuple[str, ModuleInfo]:
        """(path to the artifact in the local cache, ModuleInfo): from the cache
        when it holds the version whole, else downloaded and verified first."""
        check_name("model name", model)
        check_name("model version", version)
        if self.cache.has(model, version):
            try:
                return self.cache.load(model, version, verify=verify)
            except ValueError:   # a cached copy damaged since: fetched again
                shutil.rmtree(self.cache.version_dir(model, version), ignore_errors=True)
        info = self.info(model, version)
        if not info.artifact_sha256:
            raise FetchError("invalid", f"{self._url(model, version, INFO_NAME)} records no "
                             "artifact_sha256: a download could not be verified (re-export it)")
        try:
            self._download(info)
        except OSError as exc:   # the local disk: full, read-only, not ours
            raise FetchError("cache", f"{info.key}: cannot write into the cache "
                             f"{self.cache.root}: {exc.filename or ''} "
                             f"{exc.strerror or exc}") from exc
        return self.cache.load(model, version, verify=False)   # hashed while downloading

    def _download(self, info: ModuleInfo) -> None:
        model, version, file = info.model, info.version, info.artifact.file
        url, src = self._url(model, version, file), self._path(model, version, file)
        size = self._size(url, src)
        if size > self.max_artifact_bytes:
            raise FetchError("too_large", f"{url}: {size} bytes, over the limit of "
                             f"{self.max_artifact_bytes} (repo_max_artifact_bytes): refused unread")
        parent = os.path.dirname(self.cache.version_dir(model, version))
        os.makedirs(parent, exist_ok=True)
        for stale in os.listdir(parent):   # what a killed download left
            if stale.startswith(f".tmp-{version}-") and not _alive(stale.split("-")[2]):
                shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
        tmp = os.path.join(parent, f".tmp-{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.makedirs(tmp)
        try:
            got, sha = self._stream(url, src, os.path.join(tmp, file), size)
            if got != size:
                raise FetchError("interrupted", f"{url}: {got} bytes arrived where its metadata "
                                 f"says {size} (cut short, or replaced meanwhile): refused")
            if sha != info.artifact_sha256:
                raise FetchError("hash_mismatch", f"{url}: its sha256 {sha[:12]}... is not the "
                                 f"{info.artifact_sha256[:12]}... its module_info.json records "
                                 "(replaced or corrupted in the store): refused")
            info.write(tmp)
            fsync_dir(tmp)
            try:
                os.rename(tmp, self.cache.version_dir(model, version))
            except OSError:   # another process sharing the cache put it there first
                if not self.cache.has(model, version):
                    raise
            fsync_dir(parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.on_download is not None:
            self.on_download(size)

    def _stream(self, url: str, src: str, dest: str, size: int) -> tuple[int, str]:
        """(bytes written to ``dest``, their sha256); never more than ``size`` + 1.
        A failure of the store is a FetchError; one of the local disk, an OSError."""
        h = hashlib.sha256()
        got = 0

        def broke(exc: Exception) -> FetchError:
            if isinstance(exc, FileNotFoundError):
                return FetchError("not_found", f"{url}: gone from the store while downloading")
            return FetchError("interrupted", f"{url}: the download broke after {got} of {size} "
                              f"bytes: {type(exc).__name__}: {exc}")
        with open(dest, "wb") as out:
            try:
                f = self.fs.open(src, "rb", block_size=CHUNK, cache_type="none")
            except Exception as exc:
                raise broke(exc) from exc
            with f:
                while got <= size:
                    try:
                        chunk = f.read(min(CHUNK, size + 1 - got))
                    except Exception as exc:
                        raise broke(exc) from exc
                    if not chunk:
                        break
                    got += len(chunk)
                    h.update(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return got, h.hexdigest()

    # -- writing (signatures/repository/publish.py) -----------------------------------------

    def write_version(self, data: bytes, info: ModuleInfo) -> str:
        """Put a checked version: the artifact, then ``module_info.json`` only if absent."""
        model, version = info.model, info.version
        url = self._url(model, version, INFO_NAME)
        self._call(self._url(model, version, info.artifact.file), self.fs.pipe_file,
                   self._path(model, version, info.artifact.file), data)
        extra = {"mode": "create"} if "s3" in getattr(self.fs, "protocol", ()) else {}
        try:
            self._call(url, self.fs.pipe_file, self._path(model, version, INFO_NAME),
                       info.to_json(), **extra)
        except FetchError as exc:
            if isinstance(exc.__cause__, FileExistsError) or "PreconditionFailed" in str(exc):
                raise FetchError("invalid", f"{info.key}: another export wrote it first; "
                                 "export again to compare") from exc
            raise
        return self.version_dir(model, version)

    def __repr__(self) -> str:
        return f"ObjectRepository({self.root!r}, cache={self.cache.root!r})"


__all__ = ["CHUNK", "FETCH_KINDS", "MAX_ARTIFACT_BYTES", "MAX_INFO_BYTES", "FetchError",
           "ObjectRepository", "default_cache", "fetch_kind", "is_url"]
