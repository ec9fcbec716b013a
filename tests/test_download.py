"""``ftbench data download`` against a loopback HTTP server: no test touches the internet.

The server (``http.server`` on 127.0.0.1, port 0, in a thread) serves archives the tests
build from the importer fixtures of ``fixtures_datasets``; registry entries are built per
test and point at it, so the real entries stay as published.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from fewshot_transfer.cli import main as cli
from fewshot_transfer.data.dataset_format import read_manifest
from fewshot_transfer.data.download import LOCK_FILE, ManualStepRequired, download_dataset
from fewshot_transfer.data.errors import DatasetError
from fewshot_transfer.data.importers import import_dataset
from fewshot_transfer.data.registry import ENTRIES, DatasetEntry, RemoteFile

from fixtures_datasets import build_covid19_ct_seg, build_medseg, build_mosmed, build_msd, build_semiseg


@pytest.fixture
def server():
    """A loopback file server; ``routes[path]`` = dict(body=bytes, ranges=True, cut=None, status=None,
    redirect=None, content_type=...). ``cut`` (one shot) sends that many bytes, then drops the connection."""
    routes: dict[str, dict] = {}
    hits: list[tuple[str, str | None]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            hits.append((self.path, self.headers.get("Range")))
            route = routes.get(self.path)
            if route is None:
                self.send_error(404)
                return
            if route.get("status"):
                self.send_error(route["status"])
                return
            if route.get("redirect"):
                self.send_response(302)
                self.send_header("Location", route["redirect"])
                self.end_headers()
                return
            body = route["body"]
            start = 0
            requested = self.headers.get("Range")
            if requested and route.get("ranges", True):
                start = int(requested.split("=")[1].split("-")[0])
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Type", route.get("content_type", "application/octet-stream"))
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = route.pop("cut", None)
            self.wfile.write(body[start:] if cut is None else body[start : start + cut])
            self.wfile.flush()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{srv.server_address[1]}", routes=routes, hits=hits)
    srv.shutdown()
    srv.server_close()


def zip_folder(folder: Path, *, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
    return buf.getvalue()


def tar_folder(folder: Path, *, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            tf.add(path, prefix + path.relative_to(folder).as_posix())
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def entry_for(name: str, importer: str, marker: str, files: tuple[RemoteFile, ...], **extra) -> DatasetEntry:
    return DatasetEntry(
        name=name,
        title=f"test {name}",
        files=files,
        importer=importer,
        marker=marker,
        citation="test citation",
        license="test license",
        homepage="http://127.0.0.1/",
        **extra,
    )


def serve(server, path: str, body: bytes, **options) -> str:
    server.routes[path] = {"body": body, **options}
    return server.url + path


def one_zip_entry(server, tmp_path, *, checksum: str | None = "auto", **route) -> tuple[DatasetEntry, bytes]:
    """The Inf-Net layout zipped under one top folder (as COVID-SemiSeg.zip is), served at /semiseg.zip."""
    build_semiseg(tmp_path / "layout")
    body = zip_folder(tmp_path / "layout", prefix="COVID-SemiSeg/Dataset/")
    url = serve(server, "/semiseg.zip", body, **route)
    remote = RemoteFile(
        "COVID-SemiSeg.zip", (url,), size=len(body), checksum=sha(body) if checksum == "auto" else checksum
    )
    return entry_for("semiseg-test", "semiseg", "TrainingSet", (remote,)), body


def test_resume_after_a_broken_connection(server, tmp_path):
    entry, body = one_zip_entry(server, tmp_path)
    server.routes["/semiseg.zip"]["cut"] = len(body) // 2
    root = tmp_path / "dl"
    with pytest.raises(DatasetError, match="rerun to resume"):
        download_dataset(entry, root)
    part = root / "downloads" / "COVID-SemiSeg.zip.part"
    assert part.stat().st_size == len(body) // 2
    assert not (root / "downloads" / "COVID-SemiSeg.zip").exists() and not (root / "raw").exists()
    report = download_dataset(entry, root)
    assert server.hits[-1] == ("/semiseg.zip", f"bytes={len(body) // 2}-")
    assert (root / "downloads" / "COVID-SemiSeg.zip").read_bytes() == body and not part.exists()
    assert report.imported is not None and report.imported.rows == 7
    again = download_dataset(entry, root)
    assert again.files == {"COVID-SemiSeg.zip": "already unpacked"} and len(server.hits) == 2


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    entry, body = one_zip_entry(server, tmp_path, ranges=False)
    root = tmp_path / "dl"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "COVID-SemiSeg.zip.part").write_bytes(b"garbage that is not the start of the file")
    download_dataset(entry, root, do_import=False)
    assert (root / "downloads" / "COVID-SemiSeg.zip").read_bytes() == body
    assert (root / "raw" / "COVID-SemiSeg" / "Dataset" / "TrainingSet").is_dir()
    assert not (root / "dataset").exists()


def test_wrong_checksum_leaves_nothing_behind(server, tmp_path):
    entry, _ = one_zip_entry(server, tmp_path, checksum="md5:" + "0" * 32)
    root = tmp_path / "dl"
    with pytest.raises(DatasetError, match=r"checksum mismatch for COVID-SemiSeg.zip: expected md5 0{32}"):
        download_dataset(entry, root)
    assert sorted(p.name for p in root.rglob("*")) == ["downloads"]


def test_user_placed_file_with_wrong_checksum_is_kept(server, tmp_path):
    entry, body = one_zip_entry(server, tmp_path)
    placed = tmp_path / "dl" / "downloads" / "COVID-SemiSeg.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(body[:-1] + b"!")
    with pytest.raises(DatasetError, match="was left in place"):
        download_dataset(entry, tmp_path / "dl")
    assert placed.is_file() and not server.hits


def test_corrupted_archive_without_published_checksum(server, tmp_path):
    entry, body = one_zip_entry(server, tmp_path, checksum=None)
    broken = bytearray(body)
    broken[len(body) // 3 : len(body) // 3 + 64] = b"\xff" * 64
    server.routes["/semiseg.zip"]["body"] = bytes(broken)
    root = tmp_path / "dl"
    with pytest.raises(DatasetError, match="not a readable archive.*deleted with its pin"):
        download_dataset(entry, root)
    assert not (root / "raw").exists() and not list(root.glob("downloads/*"))
    assert json.loads((root / LOCK_FILE).read_text())["files"] == {}
    server.routes["/semiseg.zip"]["body"] = body
    report = download_dataset(entry, root)
    pin = json.loads((root / LOCK_FILE).read_text())["files"]["COVID-SemiSeg.zip"]
    assert pin["sha256"] == hashlib.sha256(body).hexdigest() and report.pinned == {"COVID-SemiSeg.zip": pin["sha256"]}


def test_pinned_checksum_guards_later_downloads(server, tmp_path):
    entry, body = one_zip_entry(server, tmp_path, checksum=None)
    first = tmp_path / "dl"
    download_dataset(entry, first, do_import=False)
    lock = json.loads((first / LOCK_FILE).read_text())
    second = tmp_path / "dl2"
    second.mkdir()
    (second / LOCK_FILE).write_text(json.dumps(lock))
    server.routes["/semiseg.zip"]["body"] = body[:-1] + b"!"
    with pytest.raises(DatasetError, match="pinned in .* on the first download"):
        download_dataset(entry, second)
    assert not list(second.glob("downloads/*"))


def test_redirect_and_mirror_order(server, tmp_path):
    entry, body = one_zip_entry(server, tmp_path)
    serve(server, "/moved.zip", b"", redirect=server.url + "/semiseg.zip")
    remote = entry.files[0]
    entry = entry_for(
        "semiseg-test",
        "semiseg",
        "TrainingSet",
        (RemoteFile(remote.name, (server.url + "/missing.zip", server.url + "/moved.zip"), checksum=remote.checksum),),
    )
    report = download_dataset(entry, tmp_path / "dl", do_import=False)
    assert report.files["COVID-SemiSeg.zip"] == "downloaded, verified"
    assert [h[0] for h in server.hits] == ["/missing.zip", "/moved.zip", "/semiseg.zip"]


def test_server_error_is_a_clear_message(server, tmp_path):
    serve(server, "/a.zip", b"", status=503)
    entry = entry_for("err", "semiseg", "TrainingSet", (RemoteFile("a.zip", (server.url + "/a.zip",)),))
    with pytest.raises(
        DatasetError, match=r"could not download a.zip:\n  http://127.0.0.1:\d+/a.zip: the server answered HTTP 503"
    ):
        download_dataset(entry, tmp_path / "dl")
    assert not (tmp_path / "dl" / "raw").exists()


def test_manual_step_then_rerun_continues(server, tmp_path):
    """An HTML confirmation page where the file should be (Google Drive) -> instructions; the placed file is used."""
    build_semiseg(tmp_path / "layout")
    body = zip_folder(tmp_path / "layout", prefix="COVID-SemiSeg/Dataset/")
    url = serve(server, "/drive", b"<html>confirm</html>", content_type="text/html; charset=utf-8")
    remote = RemoteFile("COVID-SemiSeg.zip", (url,), checksum=sha(body), manual="open the Drive page and save the zip")
    entry = entry_for("semiseg-test", "semiseg", "TrainingSet", (remote,))
    root = tmp_path / "dl"
    with pytest.raises(ManualStepRequired) as err:
        download_dataset(entry, root)
    target = (root / "downloads" / "COVID-SemiSeg.zip").resolve()
    assert f"then put it here: {target}" in str(err.value) and "HTML page" in str(err.value)
    assert "open the Drive page" in str(err.value)
    target.write_bytes(body)
    report = download_dataset(entry, root)
    assert report.files["COVID-SemiSeg.zip"] == "present, verified" and report.imported.rows == 7


def _same_import(tmp_path: Path, kind: str, layout: Path, report, **options) -> None:
    """The downloaded + imported folder has the manifest a direct import of the layout gives."""
    direct = import_dataset(kind, layout, tmp_path / f"direct-{kind}", **options)
    assert report.imported.rows == direct.rows and report.imported.labeled_rows == direct.labeled_rows
    assert [(r.image, r.mask, r.patient, r.split) for r in read_manifest(report.dataset_dir)] == [
        (r.image, r.mask, r.patient, r.split) for r in read_manifest(direct.out_dir)
    ]


def test_covid19_ct_seg_three_zips(server, tmp_path):
    layout = tmp_path / "layout"
    build_covid19_ct_seg(layout)
    files = []
    for name, folder, prefix in (
        ("COVID-19-CT-Seg_20cases.zip", "ct_scans", ""),
        ("Infection_Mask.zip", "infection_mask", "Infection_Mask/"),
        ("Lung_Mask.zip", "lung_mask", ""),
    ):
        body = zip_folder(layout / folder, prefix=prefix)
        files.append(RemoteFile(name, (serve(server, f"/{name}", body),), checksum=sha(body), unpack_to=folder))
    entry = entry_for("covid19-ct-seg", "covid19-ct-seg", "ct_scans", tuple(files))
    report = download_dataset(entry, tmp_path / "dl")
    _same_import(tmp_path, "covid19-ct-seg", layout, report)
    assert (tmp_path / "dl" / "raw" / "infection_mask" / "coronacases_000.nii.gz").is_file()


def test_medseg_plain_files_and_zips(server, tmp_path):
    layout = tmp_path / "layout"
    build_medseg(layout)
    files = [
        RemoteFile(n, (serve(server, f"/{n}", (layout / n).read_bytes()),), unpack_to=None)
        for n in ("tr_im.nii.gz", "tr_mask.nii.gz", "val_im.nii.gz")
    ]
    entry = entry_for("medseg", "medseg", "tr_im.nii.gz", tuple(files))
    report = download_dataset(entry, tmp_path / "dl")
    _same_import(tmp_path, "medseg", layout, report)
    assert set(report.pinned) == {"tr_im.nii.gz", "tr_mask.nii.gz", "val_im.nii.gz"}


def test_mosmed_labeled_only(server, tmp_path):
    layout = tmp_path / "layout"
    build_mosmed(layout)
    body = zip_folder(layout, prefix="COVID19_1110/")
    remote = RemoteFile("COVID19_1110.zip", (serve(server, "/mosmed.zip", body),))
    entry = entry_for("mosmed", "mosmed", "studies", (remote,), import_options={"labeled_only": True})
    report = download_dataset(entry, tmp_path / "dl")
    _same_import(tmp_path, "mosmed", layout, report, labeled_only=True)
    assert report.imported.rows == 2


def test_msd_tar(server, tmp_path):
    layout = tmp_path / "layout"
    build_msd(layout, v2=False)
    body = tar_folder(layout, prefix="Task06_Lung/")
    remote = RemoteFile(
        "Task06_Lung.tar", (serve(server, "/Task06_Lung.tar", body),), size=len(body), checksum=sha(body)
    )
    report = download_dataset(entry_for("msd-lung", "msd", "imagesTr", (remote,)), tmp_path / "dl")
    _same_import(tmp_path, "msd", layout, report)


def test_tar_member_escaping_the_folder_is_refused(server, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    body = buf.getvalue()
    remote = RemoteFile("x.tar", (serve(server, "/x.tar", body),), checksum=sha(body))
    with pytest.raises(DatasetError, match="outside the target folder"):
        download_dataset(entry_for("x", "msd", "imagesTr", (remote,)), tmp_path / "dl")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dl" / "raw").exists()


def test_real_entries_are_complete():
    """Every shipped entry has an importer, a license, a citation, and for each file a URL or manual steps;
    a checksum always names who published it."""
    from fewshot_transfer.data.importers import builtin_kinds

    assert {"covid19-ct-seg", "medseg", "covid-semiseg", "mosmed", "msd-lung"} <= set(ENTRIES)
    for entry in ENTRIES.values():
        assert entry.importer in builtin_kinds() and entry.license and entry.citation and entry.homepage
        for f in entry.files:
            assert f.urls or f.manual
            assert (f.checksum is None) == (not f.checksum_source)
    assert (
        ENTRIES["mosmed"].restrictions
        and ENTRIES["msd-lung"].files[0].checksum == "md5:8afd997733c7fc0432f71255ba4e52dc"
    )


def test_cli_list_and_mirror(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert cli(["data", "download", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ENTRIES:
        assert name in out
    assert "NON-COMMERCIAL" in out and "none published" in out and "8.5 GiB" in out
    layout = tmp_path / "layout"
    build_msd(layout, v2=False)
    serve(server, "/Task06_Lung.tar", tar_folder(layout, prefix="Task06_Lung/"))
    code = cli(["data", "download", "msd-lung", "--to", str(tmp_path / "dl"), "--mirror", server.url, "--no-progress"])
    out = capsys.readouterr()
    assert code == 1 and "checksum mismatch for Task06_Lung.tar: expected md5 8afd9977" in out.err
    assert "CC BY-SA 4.0" in out.out and not list((tmp_path / "dl").glob("downloads/*"))


def test_cli_manual_entry_says_where_to_put_the_file(tmp_path, capsys, monkeypatch):
    """The shipped MosMed entry has no direct URL: no network is touched, the user learns what to do."""
    monkeypatch.setenv("COLUMNS", "250")
    assert cli(["data", "download", "mosmed", "--to", str(tmp_path / "mm"), "--no-progress"]) == 3
    out = capsys.readouterr().out
    assert "NON-COMMERCIAL" in out and "NO DERIVATIVES" in out and "mosmed.ai/datasets/covid19_1110" in out
    assert str((tmp_path / "mm" / "downloads" / "COVID19_1110.zip").resolve()) in out.replace("\n", "")
    assert not (tmp_path / "mm" / "raw").exists()


def test_progress_bar_tracks_and_removes_its_task(server, tmp_path):
    from rich.console import Console
    from rich.progress import Progress

    entry, body = one_zip_entry(server, tmp_path)
    seen = []
    with Progress(console=Console(file=io.StringIO())) as bar:
        real_update = bar.update

        def update(task, **kw):
            seen.append(kw.get("completed"))
            real_update(task, **kw)

        bar.update = update
        download_dataset(entry, tmp_path / "dl", do_import=False, progress=bar)
        assert not bar.tasks
    assert seen[-1] == len(body)
