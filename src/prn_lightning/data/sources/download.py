"""Downloading and unpacking the public datasets, safely and resumably, with a manual route when it fails.

The official URLs move (MVTec's has 404'd several times), so every URL and checksum is overridable
(`data.url`, `data.sha256`) and every failure says how to place the files by hand. A download streams into
`<archive>.part` (resumed with an HTTP Range request when the server supports it), is checked against its sha256
and only then renamed into place. Archives are unpacked into a temporary folder inside the target, member by member
checked against path traversal, links leaving the archive and device files, and only then moved into place.
"""
from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from prn_lightning.data.sources.download_specs import DOWNLOAD_SPECS, DownloadSpec, manual_route
from prn_lightning.errors import DatasetError

CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, start: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "prn-lightning"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) URLs from config)


def _stream(url: str, part: Path, timeout: float) -> None:
    """Fetch `url` into `part`, continuing an existing partial file when the server answers 206."""
    start = part.stat().st_size if part.exists() else 0
    response = _open(url, start, timeout)
    resumed = start > 0 and response.status == 206 and \
        response.headers.get("Content-Range", "").startswith(f"bytes {start}-")
    if response.status == 206 and not resumed:  # a range other than the one asked for: start over
        response.close()
        response = _open(url, 0, timeout)
    with response:
        length = response.headers.get("Content-Length")
        total = (int(length) + (start if resumed else 0)) if length else None
        done = start if resumed else 0
        print(f"downloading {url} -> {part.with_suffix('')}" + (f" (resuming at {start} bytes)" if resumed else ""),
              file=sys.stderr)
        with open(part, "ab" if resumed else "wb") as handle:
            for block in iter(lambda: response.read(CHUNK), b""):
                handle.write(block)
                done += len(block)
                if total:
                    print(f"\r  {done / total:6.1%} of {total / 1e6:.1f} MB", end="", file=sys.stderr)
        if total:
            print(file=sys.stderr)
    if total is not None and part.stat().st_size != total:
        raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")


def _record_sha256(path: Path, actual: str) -> None:
    record = path.with_name(path.name + ".sha256")
    record.write_text(f"{actual}  {path.name}\n")
    print(f"no sha256 is known for {path.name}; observed {actual} (recorded in {record}); "
          f"pin it with data.sha256={actual}", file=sys.stderr)


def verify_sha256(path: Path, expected: str | None) -> str:
    """The sha256 of a file already in place; a mismatch raises, an unknown hash is recorded in `<file>.sha256`."""
    actual = sha256_of(path)
    if expected is None:
        _record_sha256(path, actual)
    elif actual != expected.lower():
        raise DatasetError(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}; the file is "
                           f"kept where it is. If it is a newer release you trust, run again with "
                           f"data.sha256={actual}; otherwise delete it and run again to download it")
    return actual


def download_file(url: str, dest: str | Path, sha256: str | None = None, timeout: float = 60.0,
                  hint: str | None = None) -> Path:
    """Download `url` to `dest` atomically (via `<dest>.part`, resumable), checked against `sha256` when given.

    A network failure keeps `<dest>.part` for a later resume and raises a DatasetError naming the URL and `hint`
    (how to place the file by hand). On a checksum mismatch the download is moved aside to `<dest>.rejected`
    (kept, not deleted, never used) and the error names the URL and both hashes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hint = hint or f"download it by hand, put it at {dest} and run the same command again"
    try:
        _stream(url, part, timeout)
    except urllib.error.HTTPError as err:
        if not (err.code == 416 and part.exists()):  # 416: the partial file is already complete
            raise DatasetError(f"could not download {url}: HTTP {err.code} {err.reason}. The URL may have moved: "
                               f"set data.url to a working mirror, or {hint}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or err
        raise DatasetError(f"could not download {url}: {reason}. You may be offline or the URL may have moved: "
                           f"set data.url to a working mirror, or {hint}") from err
    actual = sha256_of(part)
    if sha256 is not None and actual != sha256.lower():
        rejected = dest.with_name(dest.name + ".rejected")
        os.replace(part, rejected)
        raise DatasetError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}; the download is "
                           f"kept aside at {rejected} (not used). If you trust it, rename it to {dest} and run "
                           f"again with data.sha256={actual}; otherwise delete it and run again")
    os.replace(part, dest)
    if sha256 is None:
        _record_sha256(dest, actual)
    return dest


# ---------------------------------------------------------------------------------------------- extraction
def _archive_kind(path: Path) -> str:
    name = path.name.lower()
    for suffixes, kind in (((".zip",), "zip"), ((".tar",), "tar"), ((".tar.gz", ".tgz"), "tar"),
                           ((".tar.xz", ".txz"), "tar"), ((".tar.bz2", ".tbz2"), "tar")):
        if name.endswith(suffixes):
            return kind
    raise DatasetError(f"unsupported archive type for {path}: use .zip, .tar, .tar.gz, .tar.xz or .tar.bz2, "
                       "or extract it yourself")


def _checked_name(archive: Path, name: str) -> str:
    """The member's normalised relative path; absolute paths and `..` components are rejected."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise DatasetError(f"unsafe archive {archive}: member '{name}' has an absolute path; refusing to extract")
    if ".." in posix.split("/"):
        raise DatasetError(f"unsafe archive {archive}: member '{name}' points outside the target (`..`); "
                           "refusing to extract")
    return posixpath.normpath(posix)


def _check_tar_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = _checked_name(archive, member.name)
    if member.isdev() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DatasetError(f"unsafe archive {archive}: member '{member.name}' is a device or special file; "
                           "refusing to extract")
    if member.issym() or member.islnk():
        link = member.linkname.replace("\\", "/")
        base = posixpath.dirname(name) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise DatasetError(f"unsafe archive {archive}: link '{member.name}' -> '{member.linkname}' points "
                               "outside the target; refusing to extract")


def _checked_members(archive: Path, bundle: tarfile.TarFile):
    for member in bundle:
        _check_tar_member(archive, member)
        yield member


def _unpack(archive: Path, into: Path) -> None:
    """Unpack into the staging folder `into`; an unsafe member stops it (the caller deletes `into`)."""
    if _archive_kind(archive) == "zip":
        with zipfile.ZipFile(archive) as bundle:
            for info in bundle.infolist():
                _checked_name(archive, info.filename)
            bundle.extractall(into)
    else:
        with tarfile.open(archive) as bundle:  # one streaming pass: a .tar.xz is not decompressed twice
            bundle.extractall(into, members=_checked_members(archive, bundle), filter="data")


def _find_root(folder: Path, expect: tuple[str, ...], depth: int = 3) -> Path | None:
    """The shallowest folder under `folder` holding every entry of `expect` (breadth-first, sorted)."""
    level = [folder]
    for _ in range(depth + 1):
        for candidate in level:
            if all((candidate / entry).exists() for entry in expect):
                return candidate
        level = [child for parent in level for child in sorted(parent.iterdir()) if child.is_dir()]
    return None


def extract_archive(archive: str | Path, target: str | Path, expect: tuple[str, ...]) -> Path:
    """Unpack `archive` so that `target` holds the dataset root (the folder with every entry of `expect`).

    Each member is checked before it is written, into a temporary folder inside `target`; only when the whole
    archive is unpacked are the dataset root's entries renamed into `target`, so a failure (unsafe member,
    damaged archive, unexpected layout) leaves nothing behind.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
    try:
        try:
            _unpack(archive, staging)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
            raise DatasetError(f"cannot extract {archive}: {err}; the archive is damaged or incomplete: delete it "
                               "and download it again") from err
        root = _find_root(staging, expect)
        if root is None:
            found = ", ".join(sorted(p.name for p in staging.iterdir())) or "(nothing)"
            raise DatasetError(f"{archive} does not have the expected layout: no folder in it holds "
                               f"{', '.join(expect)} (its top level holds: {found}); check the archive or "
                               "extract it by hand and set data.root")
        entries = sorted(root.iterdir())
        clashes = [str(target / entry.name) for entry in entries if (target / entry.name).exists()]
        if clashes:
            raise DatasetError(f"cannot extract {archive}: {', '.join(clashes)} already exist(s); remove them "
                               "and run again")
        for entry in entries:
            os.replace(entry, target / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ------------------------------------------------------------------------------------------------ datasets
def is_present(target: Path, spec: DownloadSpec) -> bool:
    return all((target / entry).exists() for entry in spec.expect)


def download_dataset(name: str, data_dir: str | Path, url: str | None = None, sha256: str | None = None) -> Path:
    """Make `data_dir/name` hold the dataset `name` and return that folder.

    Nothing is fetched when the dataset is already extracted there, and an archive already at
    `data_dir/name/<archive>` (placed by hand) is used instead of downloading. `url` and `sha256` override the
    spec's (config keys `data.url`, `data.sha256`). The archive is kept after extraction.
    """
    specs = DOWNLOAD_SPECS
    if name not in specs:
        raise DatasetError(f"unknown dataset '{name}' for download; choose one of: {', '.join(sorted(specs))}")
    spec = specs[name]
    target = Path(data_dir) / spec.name
    if is_present(target, spec):
        return target
    archive = target / spec.archive
    expected = sha256 or spec.sha256
    if archive.exists():
        verify_sha256(archive, expected)
    else:
        source = url or spec.url
        if source is None:
            raise DatasetError(f"no download URL is known for {name}: set data.url to the archive's URL, or "
                               + manual_route(spec, target))
        download_file(source, archive, expected, hint=manual_route(spec, target, source))
    return extract_archive(archive, target, spec.expect)
