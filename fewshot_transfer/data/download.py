"""``ftbench data download``: fetch a public dataset, verify it, unpack it and import it.

Layout of the target folder ``DIR`` (default ``datasets/NAME``)::

    DIR/downloads/<file>        the published files, exactly as served (``<file>.part`` while incomplete)
    DIR/raw/                    the unpacked files (hard links for plain files)
    DIR/dataset/                the imported dataset folder: what ``ftbench run --target/--source`` takes
    DIR/checksums.lock.json     sha256 pinned on the first download of files without a published checksum

Why each step looks the way it does:

* **Resume.** Bytes go to ``<file>.part``; a rerun asks for the rest with an HTTP ``Range``
  request. A server that ignores ``Range`` (answers 200 with the whole body) is detected and
  the file is fetched from the start; a 416 answer means the part is already complete.
* **Nothing half-written.** A file gets its real name only after its checksum matched
  (``os.replace`` of the verified part). A mismatch deletes the part and says so. Archives are
  extracted into a temporary sibling of ``raw/`` that is renamed into place only when every
  archive unpacked (``atomic_dir``), and the import writes ``dataset/`` the same way.
* **Mirrors.** A file's URLs are tried in order; each failure is reported if all fail.
* **Manual steps.** Some sets sit behind a login, a form or Google Drive's confirmation
  page (an HTML page where the file should be). The command then says what to do and where
  to put the file, and a rerun continues from there: it finds the file in ``downloads/``,
  verifies it and imports it.
* **No invented checksums.** A file without a published checksum is pinned: its sha256 is
  written to the lock file on the first download, later downloads must match it.

Only the standard library talks to the network (``urllib``), so no dependency is added.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from fewshot_transfer import __version__
from fewshot_transfer.atomic import atomic_write_text
from fewshot_transfer.data.dataset_format import atomic_dir
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers import ImportReport, import_dataset
from fewshot_transfer.data.importers.common import place_file
from fewshot_transfer.data.registry import DatasetEntry, RemoteFile, format_size

if TYPE_CHECKING:
    from rich.progress import Progress

log = logging.getLogger(__name__)

LOCK_FILE = "checksums.lock.json"
#: Written into ``raw/`` last: its presence means every archive was unpacked.
RAW_COMPLETE = ".ftbench-unpacked.json"
CHUNK = 1 << 20
USER_AGENT = f"ftbench/{__version__} (python-urllib)"


class ManualStepRequired(DatasetError):
    """A file must be fetched by a person (login, form, confirmation page); the message says how."""


class _SourceFailed(Exception):
    """One URL did not deliver the file; the next mirror is tried."""


@dataclass
class DownloadReport:
    """What ``download_dataset`` did, for the CLI summary."""

    entry: DatasetEntry
    root: Path
    files: dict[str, str] = field(default_factory=dict)
    pinned: dict[str, str] = field(default_factory=dict)
    dataset_dir: Path | None = None
    imported: ImportReport | None = None


def paths(root: Path) -> dict[str, Path]:
    """The folders and files of one download folder (see the module docstring)."""
    return {
        "downloads": root / "downloads",
        "raw": root / "raw",
        "dataset": root / "dataset",
        "lock": root / LOCK_FILE,
    }


def download_dataset(
    entry: DatasetEntry,
    root: Path | str,
    *,
    do_import: bool = True,
    mirrors: tuple[str, ...] = (),
    force: bool = False,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> DownloadReport:
    """Fetch, verify, unpack and (unless ``do_import`` is False) import ``entry`` under ``root``.

    ``mirrors`` are base URLs tried before the entry's own (``BASE/<file name>``). ``force``
    unpacks and imports again even when ``raw/`` and ``dataset/`` exist (downloads are kept:
    they are verified anyway). Raises :class:`ManualStepRequired` when a file must be fetched
    by hand (after fetching every file that needs no person), :class:`DatasetError` for every
    other failure, with what to do next.
    """
    root = Path(root).expanduser()
    where = paths(root)
    report = DownloadReport(entry=entry, root=root)
    raw_done = (where["raw"] / RAW_COMPLETE).is_file() and not force
    if raw_done and (not do_import or _is_dataset(where["dataset"])):
        report.files = {f.name: "already unpacked" for f in entry.files}
        report.dataset_dir = where["dataset"] if do_import else None
        return report
    if not raw_done:
        _fetch_all(entry, where, report, mirrors=mirrors, progress=progress, timeout=timeout)
        _unpack(entry, where)
    if do_import:
        source = find_root(where["raw"], entry.marker)
        report.imported = import_dataset(
            entry.importer, source, where["dataset"], overwrite=True, name=entry.name, **entry.import_options
        )
        report.dataset_dir = where["dataset"]
    return report


def _fetch_all(
    entry: DatasetEntry,
    where: dict[str, Path],
    report: DownloadReport,
    *,
    mirrors: tuple[str, ...],
    progress: Progress | None,
    timeout: float,
) -> None:
    manual: list[tuple[RemoteFile, list[str]]] = []
    for remote in entry.files:
        urls = tuple(f"{m.rstrip('/')}/{remote.name}" for m in mirrors) + remote.urls
        final = where["downloads"] / remote.name
        if final.is_file():
            report.pinned.update(verify(remote, final, where["lock"], source="the file you placed"))
            report.files[remote.name] = "present, verified"
            continue
        errors = fetch(remote, urls, where["downloads"], progress=progress, timeout=timeout)
        if errors is None:
            report.pinned.update(verify(remote, final, where["lock"], source=urls[0] if urls else ""))
            report.files[remote.name] = "downloaded, verified"
        elif remote.manual:
            manual.append((remote, errors))
        else:
            part = final.with_name(final.name + ".part")
            kept = f"; the partial download is kept in {part}: rerun to resume" if part.is_file() else ""
            raise DatasetError(f"{entry.name}: could not download {remote.name}:\n  " + "\n  ".join(errors) + kept)
    if manual:
        raise ManualStepRequired(manual_instructions(entry, manual, where["downloads"]))


def manual_instructions(entry: DatasetEntry, missing: list[tuple[RemoteFile, list[str]]], downloads: Path) -> str:
    """The message of :class:`ManualStepRequired`: per file what to do and the exact path to save it at."""
    lines = [f"{entry.name}: {len(missing)} file(s) need a manual download step:"]
    for i, (remote, errors) in enumerate(missing, 1):
        lines.append(f"  {i}. {remote.manual}")
        lines.append(f"     then put it here: {(downloads / remote.name).resolve()}")
        for err in errors:
            lines.append(f"     (tried {err})")
    lines.append(
        f"Then run the same command again: it finds the file(s) in {downloads.resolve()}, verifies and imports them."
    )
    return "\n".join(lines)


def fetch(
    remote: RemoteFile,
    urls: tuple[str, ...],
    downloads: Path,
    *,
    progress: Progress | None = None,
    timeout: float = 60.0,
) -> list[str] | None:
    """Download ``remote`` to ``downloads/<name>.part`` from the first URL that serves it.

    Returns None on success (the complete, unverified bytes are in the part file) or the
    list of ``"URL: what went wrong"`` when no URL delivered it. A failure midway keeps the
    part file, so the next call resumes it.
    """
    downloads.mkdir(parents=True, exist_ok=True)
    part = downloads / f"{remote.name}.part"
    errors: list[str] = []
    for url in urls:
        try:
            _transfer(url, part, remote, progress=progress, timeout=timeout)
            return None
        except _SourceFailed as err:
            errors.append(f"{url}: {err}")
            log.warning("%s: %s", url, err)
    return errors


def _transfer(url: str, part: Path, remote: RemoteFile, *, progress: Progress | None, timeout: float) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    if remote.size is not None and offset > remote.size:
        part.unlink()
        offset = 0
    if remote.size is not None and offset == remote.size:
        return
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as err:
        if err.code == 416 and offset:
            return  # the part already holds every byte; the checksum decides
        raise _SourceFailed(f"the server answered HTTP {err.code} {err.reason}") from None
    except (URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise _SourceFailed(f"cannot connect ({reason})") from None
    with response:
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("text/html") and not remote.name.endswith((".html", ".htm")):
            raise _SourceFailed(
                "the server sent an HTML page instead of the file (a login, a form or Google Drive's "
                "download confirmation)"
            )
        length = response.headers.get("Content-Length")
        if offset and response.status == 206 and _range_start(response.headers.get("Content-Range")) == offset:
            mode = "ab"
        else:
            if offset:
                log.info("%s ignored the range request; downloading %s from the start", url, remote.name)
            offset, mode = 0, "wb"
        total = offset + int(length) if length is not None else remote.size
        task = progress.add_task(remote.name, total=total, completed=offset) if progress is not None else None
        written = offset
        try:
            with open(part, mode) as fh:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    fh.write(chunk)
                    written += len(chunk)
                    if task is not None:
                        progress.update(task, completed=written)
        except (http.client.HTTPException, ConnectionError, TimeoutError) as err:
            raise _SourceFailed(
                f"the connection broke after {format_size(written)} ({type(err).__name__}); rerun to resume"
            ) from None
        finally:
            if task is not None:
                progress.remove_task(task)
    if total is not None and written != total:
        raise _SourceFailed(f"the connection closed after {written} of {total} bytes; rerun to resume")


def _range_start(content_range: str | None) -> int | None:
    """``"bytes 100-199/200"`` -> 100."""
    if not content_range or not content_range.startswith("bytes "):
        return None
    try:
        return int(content_range[6:].split("-", 1)[0])
    except ValueError:
        return None


def verify(remote: RemoteFile, final: Path, lock: Path, *, source: str) -> dict[str, str]:
    """Check ``final`` (or its ``.part``, which then becomes ``final``) against the published checksum,
    or the pinned one; pin the sha256 when there is neither. Returns ``{name: sha256}`` when it pinned.

    A downloaded part that does not match is deleted; a file the user placed is left where it is.
    """
    part = final.with_name(final.name + ".part")
    candidate = part if part.is_file() and not final.is_file() else final
    pins = _read_lock(lock)
    if remote.checksum is not None:
        algo, expected = remote.checksum.split(":", 1)
        origin = f"published by {remote.checksum_source}" if remote.checksum_source else "published"
    elif remote.name in pins:
        algo, expected = "sha256", pins[remote.name]["sha256"]
        origin = f"pinned in {lock} on the first download"
    else:
        algo, expected = "sha256", None
        origin = ""
    actual = file_digest(candidate, algo)
    if expected is not None and actual != expected:
        if candidate == part:
            part.unlink()
            fate = "the download was deleted; run the command again to fetch it anew"
        else:
            fate = f"{candidate} was left in place: replace it with the published file, or delete it and rerun"
        hint = ""
        if remote.checksum is None:
            hint = f" (if the publisher changed the file on purpose, delete its entry from {lock})"
        raise DatasetError(
            f"checksum mismatch for {remote.name}: expected {algo} {expected} ({origin}), got {actual}; {fate}{hint}"
        )
    if candidate == part:
        os.replace(part, final)
    if expected is None:
        pins[remote.name] = {"sha256": actual, "size": final.stat().st_size, "source": source, "pinned": _now()}
        atomic_write_text(lock, json.dumps({"files": pins}, indent=2, sort_keys=True) + "\n")
        return {remote.name: actual}
    return {}


def file_digest(path: Path, algo: str) -> str:
    """Hex digest of ``path`` (streamed, so multi-GB archives need no memory)."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _read_lock(lock: Path) -> dict[str, dict[str, Any]]:
    if not lock.is_file():
        return {}
    try:
        return dict(json.loads(lock.read_text())["files"])
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{lock} is not a valid lock file ({err}); delete it to pin the checksums again") from None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _unpack(entry: DatasetEntry, where: dict[str, Path]) -> None:
    """Every downloaded file into ``raw/``: archives extracted, plain files hard-linked; all or nothing."""
    with atomic_dir(where["raw"], overwrite=True) as tmp:
        for remote in entry.files:
            src = where["downloads"] / remote.name
            if remote.unpack_to is None:
                place_file(src, tmp / remote.name)
                continue
            dest = tmp / remote.unpack_to
            try:
                extract_archive(src, dest)
            except DatasetError as err:
                raise DatasetError(_damaged(entry, remote, src, where["lock"], err)) from None
            if remote.unpack_to:
                _hoist_single_folder(dest)
        atomic_write_text(tmp / RAW_COMPLETE, json.dumps({"dataset": entry.name, "unpacked": _now()}) + "\n")


def _damaged(entry: DatasetEntry, remote: RemoteFile, src: Path, lock: Path, err: Exception) -> str:
    """Message for an archive that does not unpack; a pinned (unpublished) checksum is dropped with the file."""
    if remote.checksum is None:
        pins = _read_lock(lock)
        if pins.pop(remote.name, None) is not None:
            atomic_write_text(lock, json.dumps({"files": pins}, indent=2, sort_keys=True) + "\n")
        src.unlink(missing_ok=True)
        return (
            f"{entry.name}: {remote.name} is not a readable archive ({err}); it had no published checksum, so it "
            "was deleted with its pin: run the command again to fetch it anew"
        )
    return (
        f"{entry.name}: {remote.name} matches its published checksum but does not unpack ({err}); the file "
        f"{src} is kept. Check free disk space, then report it to the publisher ({entry.homepage})"
    )


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar(.gz/.bz2/.xz) into ``dest``, refusing members that would land outside it
    (absolute paths, ``..``) and links or device files (tar). Raises DatasetError when unreadable."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _safe_member(archive, name)
                bad = zf.testzip()
                if bad is not None:
                    raise DatasetError(f"member {bad} fails its CRC check")
                zf.extractall(dest)
            return
        with tarfile.open(archive, "r:*") as tf:
            members = []
            for member in tf:
                _safe_member(archive, member.name)
                if member.isdir() or member.isfile():
                    members.append(member)
                else:
                    log.info("%s: skipping %s (not a regular file)", archive.name, member.name)
            data_filter = getattr(tarfile, "data_filter", None)
            if data_filter is not None:
                tf.extractall(dest, members=members, filter=data_filter)
            else:  # pragma: no cover - Python < 3.11.4; members were checked above
                tf.extractall(dest, members=members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as err:
        if isinstance(err, OSError) and err.errno is not None and getattr(err, "filename", None) is not None:
            raise  # disk full, permissions: not the archive's fault
        raise DatasetError(f"{type(err).__name__}: {err}") from None


def _safe_member(archive: Path, name: str) -> None:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DatasetError(f"{archive.name}: member {name!r} would be written outside the target folder")


def _hoist_single_folder(dest: Path) -> None:
    """An archive holding one folder (``X/ct_scans/*.nii.gz``) extracted into ``ct_scans/``: lift its content."""
    entries = [p for p in dest.iterdir() if p.name != "__MACOSX"]
    if len(entries) != 1 or not entries[0].is_dir():
        return
    inner = entries[0]
    staging = dest.with_name(f".{dest.name}.hoist")
    inner.rename(staging)
    shutil.rmtree(dest)
    staging.rename(dest)


def find_root(raw: Path, marker: str) -> Path:
    """The shallowest folder under ``raw`` containing ``marker`` (the importer's source folder)."""
    queue = [raw]
    while queue:
        here = queue.pop(0)
        if (here / marker).exists():
            return here
        queue.extend(sorted(p for p in here.iterdir() if p.is_dir() and p.name != "__MACOSX"))
    raise DatasetError(
        f"{raw}: no folder holds {marker!r} after unpacking; the archive layout is not the expected one. "
        "Delete the folder and rerun, or import by hand with ftbench data import"
    )


def _is_dataset(folder: Path) -> bool:
    return (folder / "dataset.json").is_file() and (folder / "manifest.csv").is_file()


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress | None]:
    """A rich download bar (size, speed, time left), or None when ``enabled`` is False."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ) as bar:
        yield bar
