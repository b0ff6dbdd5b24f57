"""Local and ``s3://`` paths behind one small interface (fsspec / s3fs underneath).

Endpoint and credentials for S3 come only from the standard AWS environment and profiles
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ... , instance profiles), never from flags.

Atomicity: a local output directory is built under a hidden temporary sibling and renamed
into place, so an interrupted writer leaves nothing at the destination. Object stores have
no directory rename; there the writer puts its files under the final prefix (under a fresh
``v-<id>/`` sub-prefix when it replaces an existing store, so no old file is touched) and
writes its commit marker (a store's ``manifest.json``, which lists the files) last, as one
PUT; on failure it removes only its own objects. Readers treat a prefix without its marker
as absent. ``--overwrite`` replaces only what acl-dist wrote (a store, a run).
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
from typing import Any, Callable, Iterator

import fsspec

from .errors import StoreError


def is_remote(path: str) -> bool:
    """True for URLs with a scheme other than ``file`` (``s3://...``)."""
    return "://" in path and not path.startswith("file://")


def absolute(path: str | None) -> str | None:
    """``path`` made absolute when it is local (URLs and None as they are): what Ray
    workers and run files are handed, as they run elsewhere than this process's cwd."""
    if path is None or is_remote(path):
        return path
    return os.path.abspath(path)


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


#: The most bytes :func:`read_text` reads from one file (after decompression): text inputs
#: are configs, annotations and detections, far below it; the cap turns a wrong path (a
#: device, a video file, a decompression bomb) into one line instead of memory exhaustion.
TEXT_LIMIT = 2 * 2**30


def open_read(path: str, mode: str = "rb"):
    """Open a file for reading; ``*.gz`` files are decompressed transparently. Only regular
    files are read: a device or a FIFO (``/dev/zero``) never ends. Text mode (``"r"``)
    reads the whole file through :func:`read_text`, so a decoding error is one line."""
    if "b" not in mode:
        return io.StringIO(read_text(path))
    if not is_remote(path):
        local = path.removeprefix("file://")
        if os.path.exists(local) and not os.path.isfile(local):
            kind = "a directory" if os.path.isdir(local) else "not a regular file"
            raise StoreError(f"{path}: {kind}")
    fs, p = get_fs(path)
    try:
        handle = fs.open(p, "rb")
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise StoreError(f"{path}: a directory") from exc
    except Exception as exc:
        raise StoreError(f"cannot read {path}: {exc}") from exc
    if path.endswith(".gz"):
        handle = gzip.GzipFile(fileobj=handle)
    return handle


def read_text(path: str, limit: int | None = None) -> str:
    """A whole UTF-8 text file (at most ``limit`` bytes, default :data:`TEXT_LIMIT`); bytes
    that are not UTF-8, a file over the limit or a damaged ``.gz`` are one
    :class:`StoreError` naming the file."""
    limit = TEXT_LIMIT if limit is None else limit
    with open_read(path) as fh:
        try:
            data = fh.read(limit + 1)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
    if len(data) > limit:
        raise StoreError(f"{path}: larger than {limit / 2**20:.0f} MB, not a text input of "
                         "acl-dist")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start})") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return out


def read_json(path: str, *, unique_keys: bool = False, limit: int | None = None) -> Any:
    """A JSON file, or one :class:`StoreError` naming it: invalid JSON, bytes that are not
    UTF-8, nesting deeper than Python's recursion allows, over ``limit`` bytes, or (with
    ``unique_keys``) an object that repeats a key, where JSON keeps only the last value
    silently."""
    text = read_text(path, limit)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys if unique_keys else None)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise StoreError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:       # _unique_keys
        raise StoreError(f"{path}: not valid JSON ({exc})") from None


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


def write_json_atomic(path: str, obj: Any, indent: int | None = 1) -> None:
    """``obj`` as JSON, atomically. ``indent=None`` writes it compact, through json's C
    encoder: 10x faster than an indented dump (which only the pure-Python encoder does),
    for files read by programs (780k ActivityNet-sized detections: 13 -> ~1.3 s)."""
    text = json.dumps(obj, indent=indent) if indent is not None else \
        json.dumps(obj, separators=(",", ":"))
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))


def remove_tree(path: str) -> None:
    fs, p = get_fs(path)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(p, recursive=True)


def listing(path: str, limit: int = 3) -> tuple[int, list[str]]:
    """(number of entries, the first ``limit`` names) directly under a directory or prefix;
    (0, []) when it does not exist."""
    fs, p = get_fs(path)
    if is_remote(path):
        fs.invalidate_cache(p)   # s3fs caches listings: another process may have written
    try:
        names = sorted(posixpath.basename(d["name"].rstrip("/"))
                       + ("/" if d["type"] == "directory" else "")
                       for d in fs.ls(p, detail=True))
    except (FileNotFoundError, NotADirectoryError):
        return 0, []
    except Exception as exc:
        raise StoreError(f"cannot list {path}: {exc}") from exc
    return len(names), names[:limit]


def describe_contents(path: str) -> str:
    """``"holds a.csv, notes/, x.txt (5 entries)"``: what a directory or prefix holds."""
    n, first = listing(path)
    more = f" ({n} entries)" if n > len(first) else ""
    return f"holds {', '.join(first)}{more}" if n else "is empty"


class OutputDir:
    """Where an atomic writer puts its files (see :func:`atomic_output_dir`).

    Attributes:
        final: the destination.
        workdir: the directory or prefix to write into (locally a hidden temporary sibling
            of ``final``; on S3 ``final`` itself).
        data_prefix: prefix (relative to ``workdir``) for every file other than the commit
            marker: ``""``, or on S3 when replacing an existing store a fresh
            ``v-<id>/`` that no old file uses, so the old store stays whole until the new
            marker replaces the old one.
    """

    def __init__(self, final: str, workdir: str, data_prefix: str = ""):
        self.final, self.workdir, self.data_prefix = final, workdir, data_prefix


def check_output_dir(final: str, overwrite: bool = False,
                     replaceable: Callable[[str], str | None] | None = None) -> bool:
    """Refuse an output that exists (and is not an empty directory) unless ``overwrite``,
    and with ``overwrite`` one that ``replaceable`` says is not ours. Returns whether
    something will be replaced. Cheap: writers call it before any work."""
    if not exists(final):
        return False
    is_dir = _is_dir(final)
    if is_dir and not listing(final, 0)[0]:
        return False
    if not overwrite:
        raise StoreError(f"{final} already exists (pass --overwrite to replace it)")
    if not is_dir:
        why = "a file, not a directory"
    else:
        why = replaceable(final) if replaceable is not None else None
    if why:
        raise StoreError(f"--overwrite refused: {final} is {why}"
                         f"{' and ' + describe_contents(final) if is_dir else ''}; "
                         "acl-dist only replaces what it wrote (remove it yourself or "
                         "choose another output)")
    return True


@contextlib.contextmanager
def atomic_output_dir(final: str, overwrite: bool = False,
                      replaceable: Callable[[str], str | None] | None = None,
                      marker: str | None = None) -> Iterator[OutputDir]:
    """Yield an :class:`OutputDir` to write into; the result appears at ``final`` only if
    the block succeeds, and an existing ``final`` survives any failure.

    ``final`` must not exist (or be an empty directory) unless ``overwrite``; then
    ``replaceable(final)`` must return None (it returns what ``final`` is otherwise, e.g.
    "not an acl-dist store"), so ``--overwrite`` never deletes a directory of anything else.

    Local: a hidden sibling ``.NAME.tmp-XXXX`` renamed onto ``final`` at the end (the old
    directory is moved aside first and deleted after). S3 (no rename): the writer puts its
    data files under a fresh ``data_prefix`` and writes its commit ``marker`` (one PUT)
    last; after the block every object of the old generation is deleted. On failure only
    this attempt's objects are removed.
    """
    from .locks import exclusive

    with exclusive(final):
        yield from _atomic_output_dir(final, overwrite, replaceable, marker)


def _atomic_output_dir(final: str, overwrite: bool,
                       replaceable: Callable[[str], str | None] | None,
                       marker: str | None) -> Iterator[OutputDir]:
    replacing = check_output_dir(final, overwrite, replaceable)
    if is_remote(final):
        yield from _atomic_remote(final, replacing, marker)
        return
    shown = final
    final = os.path.abspath(final)
    parent = os.path.dirname(final)
    try:
        os.makedirs(parent, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise StoreError(f"cannot create {shown}: a part of its path is a file, not a "
                         "directory") from None
    sweep_temporaries(final)
    tmp = os.path.join(parent, f".{os.path.basename(final)}.tmp-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        try:
            yield OutputDir(final, tmp)
        except OSError as exc:
            # name the destination, not the hidden temporary directory
            name = str(exc.filename or "")
            if exc.errno is not None and name.startswith(tmp):
                raise OSError(exc.errno, exc.strerror,
                              os.path.join(shown, os.path.relpath(name, tmp))) from None
            raise
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


def sweep_temporaries(final: str) -> list[str]:
    """Remove what killed writers of ``final`` left beside it (``.NAME.tmp-*``: a
    directory being built, a file being written, an old directory being dropped). Called
    with ``final``'s lock held (:mod:`acl_dist.locks`), when no other writer of it can be
    running, so every such entry is a leftover. Returns the removed names."""
    if is_remote(final):
        return []     # an S3 writer removes its own objects; a killed one's stay unlisted
    parent, name = os.path.split(os.path.abspath(final))
    prefix = f".{name}.tmp-"
    try:
        left = [e for e in os.listdir(parent) if e.startswith(prefix)]
    except OSError:
        return []
    for entry in left:
        path = os.path.join(parent, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
    return left


def _is_dir(path: str) -> bool:
    if is_remote(path):
        return True   # a prefix
    return os.path.isdir(path)


def _atomic_remote(final: str, replacing: bool, marker: str | None) -> Iterator[OutputDir]:
    fs, root = get_fs(final)
    prefix = f"v-{uuid.uuid4().hex[:12]}/" if replacing else ""
    out = OutputDir(final, final, prefix)
    try:
        yield out
    except BaseException:
        # only this attempt's objects: the old store (if any) is untouched
        remove_tree(join(final, prefix) if prefix else final)
        raise
    if not replacing:
        return
    # committed (the new marker is in place): drop the old generation's objects
    fs.invalidate_cache(root)
    keep_marker = f"{root.rstrip('/')}/{marker}" if marker else None
    new_data = f"{root.rstrip('/')}/{prefix}"
    for obj in fs.find(root):
        if obj == keep_marker or obj.startswith(new_data):
            continue
        with contextlib.suppress(FileNotFoundError):
            fs.rm(obj)
