"""Local and ``s3://`` paths behind one small interface (fsspec / s3fs underneath).

Endpoint and credentials for S3 come only from the standard AWS environment and profiles
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... , instance profiles), never from flags.

Atomicity: a local output directory is built under a hidden temporary sibling and renamed
into place, so an interrupted writer leaves nothing at the destination. Object stores have
no directory rename; there the writer puts its files under the final prefix and writes its
commit marker (a store's ``manifest.json``) last, as one PUT, and removes the prefix when it
fails. Readers treat a prefix without its marker as absent.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import posixpath
import shutil
import uuid
from typing import Any, Iterator

import fsspec

from .errors import StoreError


def is_remote(path: str) -> bool:
    """True for URLs with a scheme other than ``file`` (``s3://...``)."""
    return "://" in path and not path.startswith("file://")


def get_fs(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and in-filesystem path for a local path or URL."""
    try:
        fs, fs_path = fsspec.core.url_to_fs(path)
    except (ImportError, ValueError) as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    return fs, fs_path


def join(base: str, *parts: str) -> str:
    """Join path parts, keeping URL schemes intact."""
    if is_remote(base):
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    fs, p = get_fs(path)
    try:
        return fs.exists(p)
    except Exception as exc:  # botocore errors, permission errors
        raise StoreError(f"cannot access {path}: {exc}") from exc


def open_read(path: str, mode: str = "rb"):
    """Open a file for reading; ``*.gz`` files are decompressed transparently."""
    fs, p = get_fs(path)
    try:
        handle = fs.open(p, "rb")
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: no such file") from exc
    except Exception as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if path.endswith(".gz"):
        handle = gzip.GzipFile(fileobj=handle)
    if "b" in mode:
        return handle
    return io.TextIOWrapper(handle, encoding="utf-8")


def read_text(path: str) -> str:
    with open_read(path, "r") as fh:
        return fh.read()


def read_json(path: str) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from exc


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write a whole file so that readers see either the old file or the new one.

    Local: temporary file in the same directory, then ``os.replace``. S3: a single PUT,
    which is atomic for the object.
    """
    if is_remote(path):
        fs, p = get_fs(path)
        with fs.open(p, "wb") as fh:
            fh.write(data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json_atomic(path: str, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def remove_tree(path: str) -> None:
    fs, p = get_fs(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(p, recursive=True)


@contextlib.contextmanager
def atomic_output_dir(final: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a directory to write into; it appears at ``final`` only if the block succeeds.

    Local: a hidden sibling ``.NAME.tmp-XXXX`` renamed onto ``final`` at the end (the old
    directory, with ``overwrite``, is moved aside first and deleted after). Remote: the
    final prefix itself; on failure it is removed. The caller writes its commit marker last.
    """
    if exists(final):
        if not overwrite:
            raise StoreError(f"{final} already exists (pass --overwrite to replace it)")
    if is_remote(final):
        if overwrite:
            remove_tree(final)
        try:
            yield final
        except BaseException:
            remove_tree(final)
            raise
        return
    final = os.path.abspath(final)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        yield tmp
        if os.path.exists(final):
            old = tmp + ".old"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
