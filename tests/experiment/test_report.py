"""The HTML run report on real tiny runs: metrics, curves, pictures and videos inlined, provenance, escaping,
a failed run's page, a search's ranking, the CLI command, and no torch in the process that writes it."""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pydash
import pytest
import typer
from plotly.offline import get_plotlyjs
from safetensors import safe_open
from typer.testing import CliRunner

from hlrp_lab.cli.report import report
from hlrp_lab.experiment.analysis import aggregate_sessions
from hlrp_lab.experiment.experiment import Experiment
from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.experiment.report import trials as report_trials
from hlrp_lab.experiment.report import write_report
from hlrp_lab.lib.errors import NonFiniteLossError
from hlrp_lab.lib.layout import RunLayout
from hlrp_lab.lib.runs import read_status, write_status
from hlrp_lab.lib.util import make_run_dir, write_json
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import Mode
from tests.conftest import tiny_spec_dict

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = bytes.fromhex(  # a 1x1 red PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc000"
    "0003010100c9fe92ef0000000049454e44ae426082"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory, shard_cache) -> Path:
    """data/ with tiny (a run), multi (two trials with a search's table) and broken (failed: NaN loss)."""
    root = tmp_path_factory.mktemp("reports")
    spec = tiny_spec_dict(shard_cache)
    spec["train"].update(max_step=6, eval_frequency=3, pictures=True)
    (root / "specs.json").write_text(json.dumps({"tiny": spec, "broken": spec}))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        run_lab(Path("specs.json"), "tiny", Mode("train"), {})
        run_two_trials(spec)
        with pytest.raises(NonFiniteLossError):
            run_lab(Path("specs.json"), "broken", Mode("train"), {"optim.lr": 1e30, "optim.warmup_steps": 0})
    finally:
        os.chdir(cwd)
    return root


def run_two_trials(spec: dict) -> None:
    """Two trials written as a search writes them (without Ray), with different learning rates."""
    spec = check_spec(spec)
    spec["train"].update(max_step=3, eval_frequency=3)
    run_dir = make_run_dir(Path("data"), "multi", "2020_01_01_000000")
    spec["meta"].update(spec_name="multi", run_dir=str(run_dir), mode="search")
    write_json(RunLayout(run_dir, "multi").spec_file, {"multi": spec})
    Experiment(spec).run([spec, pydash.set_(pydash.clone_deep(spec), "optim.lr", 3e-3)])


def copy_run(root: Path, spec_name: str, tmp_path: Path) -> RunLayout:
    """A copy of the run of ``spec_name`` under ``tmp_path/data`` (tests that add files change their copy)."""
    (source,) = (root / "data").glob(f"{spec_name}_*")
    target = tmp_path / "data" / source.name
    shutil.copytree(source, target)
    return RunLayout(target, spec_name)


class Sources(HTMLParser):
    """Every src and href of the document (script text is not parsed as tags)."""

    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [(tag, value or "") for name, value in attrs if name in ("src", "href")]


def urls_of(html: str) -> list[tuple[str, str]]:
    parser = Sources()
    parser.feed(html)
    return parser.urls


def figure(html: str, div_id: str) -> list[dict]:
    """The traces plotly draws into ``div_id``."""
    start = html.index("[", html.index(f'Plotly.newPlot(                        "{div_id}"'))
    return json.JSONDecoder().raw_decode(html, start)[0]


def values(array: dict | list) -> list[float]:
    """A plotly trace's values (numpy arrays go as base64 ``bdata``)."""
    if isinstance(array, list):
        return array
    return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()


def test_a_run_report_holds_its_metrics_curves_and_provenance(root, tmp_path):
    layout = copy_run(root, "tiny", tmp_path)
    history = pd.read_csv(layout.session_metrics(0, 0))
    (first,) = json.loads(layout.trial_metrics(0).read_text())["sessions"]
    assert (
        f"<tr class=key><td>val_psnr</td><td>{first['val_psnr']:.4g}</td>"
        in write_report(layout.run_dir).read_text()
    )

    history[["step"]].assign(loss=history["loss"] * 2).to_csv(layout.session_metrics(0, 1), index=False)
    metrics = aggregate_sessions([first, first | {"val_psnr": first["val_psnr"] + 2}])  # as a trial of two
    write_json(layout.trial_metrics(0), {"metric": "val_psnr", "metric_mode": "max", **metrics})
    path = write_report(layout.run_dir)
    assert path == layout.report
    html = path.read_text()
    assert "<h1>tiny</h1>" in html and ">completed<" in html
    assert re.search(r"<th>started</th><td>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}</td>", html)
    assert "mean ± std over 2 sessions" in html
    assert f"<tr class=key><td>val_psnr</td><td>{first['val_psnr'] + 1:.4g} ± 1</td>" in html
    loss = figure(html, "curve-0-loss")
    assert [trace["name"] for trace in loss] == ["session 0", "session 1"]
    assert values(loss[1]["y"]) == pytest.approx((history["loss"] * 2).tolist())
    for metric in ("val_psnr", "psnr_gain", "latent_gain", "perplexity", "probe_r2"):
        assert len(figure(html, f"curve-0-{metric}")) == 1  # session 1 logged loss only
    assert html.count(get_plotlyjs()[:200]) == 1  # plotly's bundle, once
    assert not [(tag, url) for tag, url in urls_of(html) if not url.startswith(("#", "data:"))]
    cache = Path(json.loads(layout.spec_file.read_text())["tiny"]["data"]["cache_dir"])
    (manifest,) = [path for path in cache.glob("*/manifest.json") if f"<td>{path}</td>" in html]
    assert f"<td>{hashlib.sha256(manifest.read_bytes()).hexdigest()}</td>" in html
    with safe_open(layout.checkpoint(0, 0, "best"), framework="pt") as weights:
        step = weights.metadata()["step"]
    assert re.search(rf"<td>tiny_t0_s0_best.safetensors</td><td>[\d.]+ KB</td><td>{step}</td>", html)
    assert "&quot;stage&quot;: &quot;laq&quot;" in html  # the resolved spec, escaped
    assert "End of the log" not in html


def write_video(path: Path, frames: int = 4) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(10))
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((32, 32, 3), 40 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def test_pictures_and_small_videos_are_inlined_and_large_videos_linked(root, tmp_path, monkeypatch):
    layout = copy_run(root, "tiny", tmp_path)
    picture = layout.picture(0, 0, "best", "probe")
    picture.write_bytes(PNG)
    write_json(layout.picture_index(0, 0, "best"), {"step": 3, "pictures": [picture.name]})
    video = layout.video_prefix(0, 0).with_name(f"{layout.video_prefix(0, 0).name}_reach_0.mp4")
    write_video(video)
    out = tmp_path / "elsewhere" / "page.html"
    html = write_report(layout.run_dir, "tiny", out).read_text()
    assert f'<img src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in html
    assert "<h4>best evaluation (step 3)</h4>" in html and "<figcaption>probe</figcaption>" in html
    drawn = layout.pictures(0, 0, "last")  # the LAQ stage draws at every evaluation
    assert drawn and all(base64.b64encode(p.read_bytes()).decode() in html for p in drawn)
    assert f'src="data:video/mp4;base64,{base64.b64encode(video.read_bytes()).decode()}"' in html

    write_json(layout.picture_index(0, 0, "best"), {"step": 6, "pictures": [picture.name]})
    write_json(layout.picture_index(0, 0, "last"), {"step": 6, "pictures": []})
    html = write_report(layout.run_dir, "tiny", out).read_text()  # best is the last: shown once
    assert "The last evaluation was the best." in html and base64.b64encode(PNG).decode() not in html

    monkeypatch.setattr(report_trials, "INLINE_VIDEO_BYTES", 0)
    html = write_report(layout.run_dir, "tiny", out).read_text()
    (link,) = [url for tag, url in urls_of(html) if tag == "video"]
    assert not link.startswith("data:") and (out.parent / link).resolve() == video.resolve()


def test_strings_from_the_run_directory_are_escaped(root, tmp_path):
    layout = copy_run(root, "tiny", tmp_path)
    hostile = "<script>alert('x')</script>"
    write_status(layout, "failed", f"ValueError: {hostile}")
    saved = json.loads(layout.spec_file.read_text())
    saved["tiny"]["meta"]["git_sha"] = hostile
    write_json(layout.spec_file, saved)
    html = write_report(layout.run_dir).read_text()
    assert hostile not in html
    assert "ValueError: &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert "git sha</th><td>&lt;script&gt;" in html


def test_the_provenance_names_the_runs_the_spec_refers_to(root, tmp_path):
    layout = copy_run(root, "tiny", tmp_path)
    broken = copy_run(root, "broken", tmp_path).run_dir
    saved = json.loads(layout.spec_file.read_text())
    saved["tiny"]["meta"]["variables"] = {"laq": f"data/{broken.name}", "gone": "data/tiny_2000_01_01_000000"}
    write_json(layout.spec_file, saved)
    html = write_report(layout.run_dir).read_text()
    refs = html.split("<h3>Runs this one refers to</h3>")[1].split("</table>")[0]
    assert (
        f"<td>meta.variables.laq</td><td>data/{broken.name}</td><td>yes</td><td>failed</td><td>train</td>"
        in refs
    )
    assert "<td>meta.variables.gone</td><td>data/tiny_2000_01_01_000000</td><td>no</td>" in refs
    assert "meta.run_dir" not in refs


def test_a_failed_run_gets_a_report_of_what_it_left(root, tmp_path):
    layout = copy_run(root, "broken", tmp_path)  # failed at its first logged step: a spec, a status, logs
    error = read_status(layout)["error"]
    assert error.startswith("NonFiniteLossError: ") and not any(layout.model.iterdir())
    html = write_report(layout.run_dir).read_text()
    assert (
        '<span class="failed">failed</span>' in html
        and f'<span class="failed">{escape(error)}</span>' in html
    )
    assert "No trial wrote metrics." in html and "No checkpoint was written." in html
    assert "broken train: writing to" in html.split("<h2>End of the log</h2>")[1]
    assert "Files of the run directory" in html and "info/broken_spec.json" in html
    assert get_plotlyjs()[:200] not in html  # no figures, no bundle


def test_a_search_report_ranks_its_trials_and_links_each(root, tmp_path):
    layout = copy_run(root, "multi", tmp_path)
    html = write_report(layout.run_dir).read_text()
    scores = {t: json.loads(layout.trial_metrics(t).read_text())["mean"]["val_psnr"] for t in (0, 1)}
    order = sorted(scores, key=lambda t: -scores[t])
    assert "<h2>Trials ranked by val_psnr (max)</h2>" in html
    links = [url for tag, url in urls_of(html) if tag == "a" and url.startswith("#trial-")]
    assert links == [f"#trial-{t}" for t in order]
    for trial in order:
        section = html.split(f'<section id="trial-{trial}">')[1].split("</section>")[0]
        assert f"<td>{scores[trial]:.4g}</td>" in section and f"curve-{trial}-loss" in section


def test_the_report_command_takes_a_directory_a_weights_file_or_latest(root, tmp_path, monkeypatch):
    app = typer.Typer()
    app.command()(report)
    app.command("other")(lambda: None)  # two commands: typer keeps `report` as a subcommand
    layout = copy_run(root, "tiny", tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "latest:tiny", "-o", "out/latest.html"])
    assert result.exit_code == 0, result.output
    assert "wrote out/latest.html" in result.output and (tmp_path / "out/latest.html").is_file()
    weights = layout.checkpoint(0, 0, "best")
    result = CliRunner().invoke(app, ["report", str(weights)])
    assert result.exit_code == 0 and layout.report.is_file(), result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1


def test_writing_a_report_imports_neither_torch_nor_ray(root, tmp_path):
    layout = copy_run(root, "tiny", tmp_path)
    code = (
        "import sys; from pathlib import Path; from hlrp_lab.experiment.report import write_report; "
        f"write_report(Path({str(layout.run_dir)!r})); "
        "print(sorted(m for m in ('torch', 'ray', 'webdataset') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]" and layout.report.is_file()
