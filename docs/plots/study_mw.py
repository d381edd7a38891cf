"""Draw docs/STUDY.md's figure from a `study_mw` pipeline run: each arm's pc_success against K, the labelled
episodes per task, as mean ± std over seeds (the same numbers as the run's study.md).

    uv run python docs/plots/study_mw.py data/study_mw_<timestamp>     (from the checkout, as the pipeline ran)
"""

import json
import re
import sys
from pathlib import Path

import numpy as np

from hlrp_lab.lib.viz import Curve, save_plot

STEP = re.compile(r"(?P<arm>\w+)_k(?P<k>\d+)_eval")
LABELS = {"finetune": "latent pretraining", "bc_scratch": "from scratch", "laq_encoder": "LAQ encoder only"}


def success(run_dir: Path) -> list[float]:
    """pc_success of each session of a run's evaluation."""
    (path,) = run_dir.glob("info/*_eval_metrics.json")
    return [session["pc_success"] for session in json.loads(path.read_text())["sessions"]]


def main(pipeline_dir: Path) -> None:
    steps = json.loads((pipeline_dir / "pipeline.json").read_text())["steps"]
    points: dict[str, dict[int, list[float]]] = {}
    for step in steps:
        if match := STEP.fullmatch(step["step"]):
            points.setdefault(match["arm"], {})[int(match["k"])] = success(Path(step["run_dir"]))
    curves = []
    for arm, by_k in points.items():
        ks = sorted(by_k)
        values = [np.array(by_k[k]) for k in ks]
        mean, std = np.array([v.mean() for v in values]), np.array([v.std() for v in values])
        curves.append(Curve(LABELS.get(arm, arm), np.array(ks), mean, std))
    stem = Path(__file__).parent / "study_mw_success_vs_k"
    title = "MT10 closed-loop success (mean ± std over 3 seeds)"
    for path in save_plot(curves, stem, title, "labelled episodes per task (K)", "pc_success (%)"):
        print(path)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
