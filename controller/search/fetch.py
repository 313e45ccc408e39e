"""Fetching http(s) artifacts into a local cache, verified by sha256 while they stream.

A ModelVersion's artifact URI may be `https://…` (or `http://…`, e.g. an in-cluster
object-store gateway or a presigned URL). The worker downloads it once into
`<cache>/<sha256>/<name>`, hashing as it writes; only a file whose sha256 matches
is renamed into place, so a cut connection or a wrong file never leaves anything
that looks valid. A verified cached copy is reused without any network. A
faiss-index manifest names its companion files (vectors, index) by plain file name
with their own sha256; they are fetched from beside the manifest's URL into the
same directory.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlparse

from controller.errors import StructuredError

DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_TIMEOUT = 30.0
CHUNK = 1 << 20


class FetchError(StructuredError):
    """A download that failed; `code` is one of the worker's documented error codes."""

    reason = "ArtifactError"
    exit_code = 1

    def __init__(self, message: str, *, code: str, uri: str) -> None:
        super().__init__(message, code=code, stage="artifact", context={"uri": uri})
        self.uri = uri


def default_cache() -> Path:
    """`$CADML_ARTIFACT_CACHE`, else `$CADML_HOME/artifacts`, else ~/.cache/cadml/artifacts."""
    if os.environ.get("CADML_ARTIFACT_CACHE"):
        return Path(os.environ["CADML_ARTIFACT_CACHE"])
    if os.environ.get("CADML_HOME"):
        return Path(os.environ["CADML_HOME"]) / "artifacts"
    return Path.home() / ".cache" / "cadml" / "artifacts"


def is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}")


def plain_name(name: str) -> str:
    """A file name from a URL path or a manifest: letters, digits and `._+-` only, so no
    directories, nothing hidden, no scheme (`file:`), no encoded separator (`%2F`)."""
    if not _PLAIN_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a plain file name")
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class Fetcher:
    def __init__(self, cache: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.cache = cache or default_cache()
        self.max_bytes = max_bytes
        self.timeout = timeout

    def fetch(self, uri: str, sha256: str, *, into: Path | None = None,
              name: str | None = None) -> Path:
        """The local, verified copy of `uri` (downloaded unless already cached)."""
        try:
            name = plain_name(name or unquote(Path(urlparse(uri).path).name))
        except ValueError:
            raise FetchError(f"{uri}: the URL does not end in a file name", code="artifact_uri",
                             uri=uri) from None
        folder = into or self.cache / sha256
        target = folder / name
        if target.is_file() and sha256_file(target) == sha256:
            return target
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        tmp = Path(tmp_name)
        try:
            h, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, self._open(uri) as resp:
                for chunk in iter(lambda: resp.read(CHUNK), b""):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise FetchError(f"{uri}: larger than the {self.max_bytes} byte limit",
                                         code="artifact_too_large", uri=uri)
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha256:  # the digest that did not match is never echoed
                raise FetchError(f"{uri}: the download does not match sha256 {sha256}",
                                 code="checksum_mismatch", uri=uri)
            os.replace(tmp, target)
            return target
        finally:
            tmp.unlink(missing_ok=True)

    def companion(self, manifest_uri: str, name: str, sha256: str, folder: Path) -> Path:
        """A file a manifest names, fetched from beside the manifest into its folder."""
        try:
            name = plain_name(name)
        except ValueError:
            raise FetchError(f"manifest {manifest_uri} names {name!r}, not a plain file name",
                             code="artifact_corrupt", uri=manifest_uri) from None
        uri = urljoin(manifest_uri, name)
        if urlparse(uri)[:2] != urlparse(manifest_uri)[:2]:  # same scheme and host, always
            raise FetchError(f"manifest {manifest_uri} names {name!r}, which leaves its server",
                             code="artifact_corrupt", uri=manifest_uri)
        return self.fetch(uri, sha256, into=folder, name=name)

    def _open(self, uri: str) -> Any:
        try:
            return urllib.request.urlopen(uri, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            code = "artifact_missing" if exc.code in (404, 410) else "artifact_fetch_failed"
            raise FetchError(f"{uri}: HTTP {exc.code} {exc.reason}", code=code, uri=uri) from None
        except (urllib.error.URLError, OSError) as exc:
            raise FetchError(f"{uri}: {getattr(exc, 'reason', exc)}",
                             code="artifact_fetch_failed", uri=uri) from None
