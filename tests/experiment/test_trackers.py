"""Trackers for real: TensorBoard events read back with tensorboard's EventAccumulator, W&B in offline mode read
back from its run file (the API key in no file), and a run without trackers importing neither library."""

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from loguru import logger
from PIL import Image

from hlrp_lab.experiment.trackers import open_trackers
from hlrp_lab.lib.errors import RunError
from hlrp_lab.lib.layout import RunLayout

API_KEY = "sk-test-0123456789abcdefghijklmnopqrstuvwxyzABCD"
TRIAL, SESSION = 1, 0


@pytest.fixture
def layout(tmp_path) -> RunLayout:
    layout = RunLayout(tmp_path / "tiny_2026_01_01_000000", "tiny")
    for folder in layout.folders:
        folder.mkdir(parents=True)
    return layout


def spec_of(layout: RunLayout, trackers: list[str]) -> dict:
    meta = {"trackers": trackers, "spec_name": layout.spec_name, "run_dir": str(layout.run_dir)}
    return {
        "stage": "laq",
        "train": {"max_step": 4},
        "meta": {**meta, "variables": {"wandb_api_key": API_KEY}},
    }


def picture(layout: RunLayout, name: str, color: tuple[int, int, int]) -> Path:
    """A 6 x 4 RGBA PNG named as the loop's pictures are."""
    path = layout.picture(TRIAL, SESSION, "last", name)
    Image.new("RGBA", (4, 6), (*color, 255)).save(path)
    return path


def log_steps(trackers, layout: RunLayout, steps: range, offset: float = 0.0) -> None:
    """Rows of ``steps`` (loss = step / 10 + offset) with a picture at even steps."""
    for step in steps:
        pictures = [picture(layout, "recon", (step * 50, 0, 0))] if step % 2 == 0 else []
        trackers.log(step, {"step": float(step), "loss": step / 10 + offset}, pictures)


def test_no_trackers_does_nothing_and_imports_neither_library(tmp_path):
    code = f"""
import sys
from pathlib import Path
from hlrp_lab.experiment.trackers import open_trackers
from hlrp_lab.lib.layout import RunLayout
layout = RunLayout(Path({str(tmp_path)!r}) / "run", "tiny")
trackers = open_trackers({{"meta": {{"trackers": []}}}}, layout, 0, 0)
trackers.start(0)
trackers.log(1, {{"step": 1.0, "loss": 0.5}}, [])
trackers.close({{"loss": 0.5}})
print(sorted(name for name in ("wandb", "tensorboard", "torch") if name in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert not (tmp_path / "run").exists()


def test_tensorboard_scalars_pictures_spec_and_resume(layout):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = spec_of(layout, ["tensorboard"])
    trackers = open_trackers(spec, layout, TRIAL, SESSION)
    trackers.start(0)
    log_steps(trackers, layout, range(1, 5))
    trackers.close(None)  # the run died after step 4; its last checkpoint is at step 2
    resumed = open_trackers(spec, layout, TRIAL, SESSION)
    resumed.start(2)
    log_steps(resumed, layout, range(3, 5), offset=1.0)
    resumed.close({"step": 4.0, "loss": 1.4})

    folder = layout.tensorboard(TRIAL, SESSION)
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0}).Reload()
    loss = [(event.step, round(event.value, 6)) for event in events.Scalars("loss")]
    assert loss == [(1, 0.1), (2, 0.2), (3, 1.3), (4, 1.4)]  # steps after the checkpoint: the resumed run's
    assert [(e.step, e.value) for e in events.Scalars("final/loss")] == [(4, pytest.approx(1.4))]
    assert sorted(events.Tags()["scalars"]) == ["final/loss", "loss"]  # a row's step is the x axis only
    images = events.Images("pictures/recon")
    assert [(image.step, image.width, image.height) for image in images] == [(2, 4, 6), (4, 4, 6)]
    red = np.asarray(Image.open(io.BytesIO(images[-1].encoded_image_string)))
    assert red.shape == (6, 4, 3) and (red[..., 0] == 200).all()
    spec_text = events.Tensors("spec/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"stage": "laq"' in spec_text and API_KEY not in spec_text and "***" in spec_text


def test_a_tracker_failing_mid_run_warns_once_and_training_goes_on(layout):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    warnings: list[str] = []
    sink = logger.add(lambda message: warnings.append(message.record["message"]), level="WARNING")
    try:
        trackers = open_trackers(spec_of(layout, ["tensorboard"]), layout, TRIAL, SESSION)
        trackers.start(0)
        trackers.log(1, {"step": 1.0, "loss": 0.1}, [])
        missing = layout.picture(TRIAL, SESSION, "last", "gone")
        trackers.log(2, {"step": 2.0, "loss": 0.2}, [missing])  # the PNG is not there: adding it fails
        trackers.log(3, {"step": 3.0, "loss": 0.3}, [])
        trackers.close({"loss": 0.3})
    finally:
        logger.remove(sink)
    assert len(warnings) == 1
    assert warnings[0].startswith("tracker tensorboard failed at step 2 and logs no more in this session: ")
    assert "FileNotFoundError" in warnings[0]
    events = EventAccumulator(str(layout.tensorboard(TRIAL, SESSION))).Reload()
    assert [event.step for event in events.Scalars("loss")] == [1, 2]  # closed when it failed


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B with a fake API key, its config, cache and data under tmp_path; its settings reset afterwards."""
    import wandb

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    for name in ("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    wandb.teardown()
    yield
    wandb.teardown()


def wandb_records(run_file: Path) -> list:
    """The records of a W&B run file (``run-{id}.wandb``): a LevelDB-style log of protobuf ``Record``s in 32 KiB
    blocks, after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data.startswith(b":W&B")
    records, pending, position = [], b"", 7
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a chunk header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def of_kind(records: list, kind: str) -> list:
    return [getattr(record, kind) for record in records if record.WhichOneof("record_type") == kind]


def history(records: list) -> dict[int, dict]:
    rows = {}
    for item in of_kind(records, "history"):
        row = {"/".join(entry.nested_key or [entry.key]): json.loads(entry.value_json) for entry in item.item}
        rows[row["_step"]] = row
    return rows


def test_wandb_offline_run_groups_config_resume_and_no_key_in_files(layout, tmp_path, monkeypatch, wandb_env):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    spec = spec_of(layout, ["wandb"])
    trackers = open_trackers(spec, layout, TRIAL, SESSION)
    trackers.start(0)
    log_steps(trackers, layout, range(1, 5))
    trackers.close(None)  # a failed attempt
    resumed = open_trackers(spec, layout, TRIAL, SESSION)
    resumed.start(2)
    log_steps(resumed, layout, range(3, 5), offset=1.0)
    resumed.close({"loss": 1.4})
    wandb.teardown()  # waits for W&B's service to finish writing the run files (as it does at exit)

    stem = layout.stem(TRIAL, SESSION)
    expected_id = layout.wandb_id(TRIAL, SESSION).read_text().strip()
    folders = sorted(layout.wandb.glob("offline-run-*"))
    assert len(folders) == 2 and all(folder.name.split("-")[3] == expected_id for folder in folders)
    first, second = (wandb_records(folder / f"run-{expected_id}.wandb") for folder in folders)

    for records in (first, second):
        (run,) = of_kind(records, "run")
        assert (run.run_id, run.project, run.run_group, run.job_type, run.display_name) == (
            expected_id,
            "hlrp-lab",
            layout.run_dir.name,
            layout.stem(TRIAL),
            stem,
        )
        config = {entry.key: json.loads(entry.value_json) for entry in run.config.update}
        assert config["stage"] == "laq" and config["meta"]["variables"] == {"wandb_api_key": "***"}
    assert [exit.exit_code for exit in of_kind(first, "exit")] == [1]
    assert [exit.exit_code for exit in of_kind(second, "exit")] == [0]

    steps = history(first)
    assert {step: row["loss"] for step, row in steps.items()} == {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4}
    assert [step for step, row in steps.items() if "pictures/recon/_type" in row] == [2, 4]
    assert (steps[2]["pictures/recon/_type"], steps[2]["pictures/recon/width"]) == ("image-file", 4)
    assert (folders[0] / "files" / steps[2]["pictures/recon/path"]).is_file()
    assert {step: row["loss"] for step, row in history(second).items()} == {3: 1.3, 4: 1.4}
    summary = {entry.key: entry.value_json for item in of_kind(second, "summary") for entry in item.update}
    assert json.loads(summary["loss"]) == 1.4

    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(written) > 10
    assert [path for path in written if API_KEY.encode() in path.read_bytes()] == []


def test_wandb_not_logged_in_is_one_line_naming_the_fix(layout, monkeypatch, wandb_env):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY")
    with pytest.raises(RunError) as raised:
        open_trackers(spec_of(layout, ["tensorboard", "wandb"]), layout, TRIAL, SESSION)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("meta.trackers: wandb did not open (")
    assert "wandb login" in message and "WANDB_MODE=offline" in message
