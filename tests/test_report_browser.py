"""The report of a tiny trained run, opened in headless Chromium: no console error, every figure
decodes, the leaderboard sorts on a click, and a screenshot is saved.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it like PostgreSQL); without
it the test skips with the reason printed. The network is cut off (a dead proxy), so a page
that fetched anything would log an error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fewshot_transfer.cli import main

from conftest import TINY

pytestmark = pytest.mark.integration

#: Appended to a copy of the page: once the page has loaded, the title becomes OK only when every
#: <img> decoded to a size and two clicks on the Dice header sorted the leaderboard of the largest k both ways.
CHECK = """
<script>
window.addEventListener('load', function () {
  try {
    var imgs = Array.prototype.slice.call(document.images);
    imgs.forEach(function (i) {
      if (!(i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)) throw new Error('not decoded: ' + i.alt);
    });
    var tables = document.querySelectorAll('table.sortable[id^="leaderboard-k-"]');
    var table = tables[tables.length - 1];
    var th = Array.prototype.filter.call(table.tHead.rows[0].cells,
      function (c) { return c.textContent.indexOf('Dice') === 0; })[0];
    var col = th.cellIndex;
    function values() {
      return Array.prototype.map.call(table.tBodies[0].rows, function (r) {
        return r.cells[col].getAttribute('data-num'); }).filter(function (v) { return v !== ''; }).map(Number);
    }
    th.click();
    var up = values();
    th.click();
    var down = values();
    if (up.length < 2) throw new Error('too few rows to sort');
    for (var i = 1; i < up.length; i++) {
      if (up[i - 1] > up[i] || down[i - 1] < down[i]) throw new Error('not sorted: ' + up + ' / ' + down);
    }
    document.title = 'OK ' + imgs.length + ' images';
  } catch (e) { document.title = 'FAIL ' + e; }
});
</script>
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    print("\nbrowser test skipped: no chromium on PATH (.ci/run installs Debian's chromium package)")
    pytest.skip("no chromium on PATH")


def _run_chromium(browser: str, *args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--proxy-server=127.0.0.1:9",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def _console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "CONSOLE" in line or "Uncaught" in line or "Failed to load resource" in line
    ]


def test_report_opens_in_a_browser(tmp_path):
    browser = _chromium()
    run = tmp_path / "run"
    args = ["--shots", "0,2", "--learners", "scratch,source-only,finetune", "--seeds", "2"]
    assert main(["run", *TINY, *args, "--jobs", "1", "--out", str(run), "--no-progress"]) == 0
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    page = tmp_path / "report" / "report.html"
    html = page.read_text()
    assert "Prediction gallery (k = 2, seed 0)" in html and "No stored predictions" not in html

    checked = tmp_path / "report" / "checked.html"
    checked.write_text(html.replace("</body>", CHECK + "</body>"))
    dom = _run_chromium(
        browser, "--virtual-time-budget=20000", "--dump-dom", checked.as_uri(), profile=tmp_path / "profile"
    )
    title = re.search(r"<title>(.*?)</title>", dom.stdout, re.S)
    assert title is not None, dom.stderr[-3000:]
    assert title.group(1).startswith("OK "), f"{title.group(1)}\n{dom.stderr[-3000:]}"
    assert int(title.group(1).split()[1]) >= 5  # gain curves, seed pairs, slices, forest, gallery
    assert not _console_errors(dom.stderr), _console_errors(dom.stderr)

    shot = tmp_path / "report.png"
    snap = _run_chromium(
        browser, f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri(), profile=tmp_path / "profile2"
    )
    assert shot.is_file() and shot.stat().st_size > 10_000, snap.stderr[-3000:]
    assert not _console_errors(snap.stderr), _console_errors(snap.stderr)
