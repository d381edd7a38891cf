"""The run report in a real browser: Debian's chromium, headless, loads report.html from disk; the DOM after
its scripts ran holds the metrics, the pictures and plotly's drawn figures, no script failed, and a screenshot
is not blank.

Script errors are caught twice: the page's own catcher (``window`` error and unhandledrejection listeners,
installed before any other script) writes them into ``#js-errors``, which the dumped DOM shows; and chromium's
console log on stderr must hold no ``Uncaught``. A page with a broken script shows that the catcher catches."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.experiment.report import write_report
from hlrp_lab.experiment.report.html import page
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.util import write_json
from hlrp_lab.spec.spec_util import Mode
from tests.conftest import tiny_spec_dict

CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)"
    ),
    pytest.mark.usefixtures("one_thread"),
]
PNG = bytes.fromhex(  # a 1x1 red PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc000"
    "0003010100c9fe92ef0000000049454e44ae426082"
)


def chromium(page_path: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium on ``page_path`` with a fresh profile; console messages go to stderr."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=20000",  # let plotly's timers run before the DOM is read
        *args,
        page_path.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def dump_dom(page_path: Path, tmp_path: Path) -> tuple[str, str]:
    """(the DOM after the page's scripts ran, chromium's stderr)."""
    out = chromium(page_path, tmp_path / "profile-dom", "--dump-dom")
    return out.stdout, out.stderr


def js_errors(dom: str) -> str:
    return re.search(r'<pre id="js-errors">(.*?)</pre>', dom, re.DOTALL)[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory, shard_cache) -> tuple[Path, RunLayout]:
    """The report of a real tiny LAQ run, with one more picture of our own."""
    root = tmp_path_factory.mktemp("browser")
    spec = tiny_spec_dict(shard_cache)
    spec["train"].update(max_step=6, eval_frequency=3, pictures=True)
    (root / "specs.json").write_text(json.dumps({"tiny": spec}))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        layout = RunLayout(run_lab(Path("specs.json"), "tiny", Mode("train"), {}).resolve(), "tiny")
    finally:
        os.chdir(cwd)
    picture = layout.picture(0, 0, "best", "probe")
    picture.write_bytes(PNG)
    write_json(layout.picture_index(0, 0, "best"), {"step": 3, "pictures": [picture.name]})
    return write_report(layout.run_dir), layout


def test_the_report_renders_in_chromium_without_script_errors(report, tmp_path):
    path, layout = report
    dom, stderr = dump_dom(path, tmp_path)
    assert js_errors(dom) == "" and "Uncaught" not in stderr, js_errors(dom) or stderr[-2000:]
    mean = json.loads(layout.trial_metrics(0).read_text())["mean"]
    assert f"<td>{mean['val_psnr']:.4g}</td>" in dom and f"<td>{mean['loss']:.4g}</td>" in dom
    pictures = re.findall(r'<img src="data:image/png;base64,[^"]+" alt="([^"]+)"', dom)
    assert layout.picture(0, 0, "best", "probe").name in pictures
    assert {p.name for p in layout.pictures(0, 0, "last")} <= set(pictures)
    curves = re.findall(r'<div id="curve-0-([\w-]+)" class="[^"]*js-plotly-plot', dom)  # plotly drew them
    assert sorted(curves) == sorted(
        ["loss", "val_psnr", "psnr_gain", "latent_gain", "perplexity", "probe_r2"]
    )
    assert dom.count('class="main-svg"') >= 2 * len(curves)  # each plot's svg layers
    assert len(re.findall(r'<path class="js-line"', dom)) >= len(curves)  # a drawn line in each


def test_a_screenshot_of_the_report_is_not_blank(report, tmp_path):
    path, _ = report
    shot = tmp_path / "report.png"
    chromium(path, tmp_path / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000")
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    ink = (pixels < 0.9).any(axis=-1).mean()  # share of pixels that are not (near) white
    assert pixels.std() > 0.05 and 0.02 < ink < 0.9, (pixels.std(), ink)
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50  # text, tables, plot lines: not a flat page


def test_a_script_error_in_the_page_is_caught(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text(page("broken", "<p>text</p><script>notAFunction();</script>", None))
    dom, stderr = dump_dom(broken, tmp_path)
    assert "notAFunction is not defined" in js_errors(dom) and "Uncaught" in stderr
