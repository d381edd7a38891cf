"""ASHA vs every trial to completion: the same search space and seeds, searched twice.

Runs a spec's search (default: specs/laq.json laq_search) as written, with ASHA from meta.search_scheduler,
then with meta.search_scheduler = null so that every trial trains to train.max_step. Prints the training
steps each search used (summed over trials and sessions) and the best metric each reached; the target is
ASHA reaching >= 95% of the full search's best metric with <= 40% of its steps. Both searches sample the
same trials (random search seeded by meta.random_seed); the script checks that.

    uv run python benchmarks/asha_vs_full.py [--spec laq_search] [-s meta.max_trial=8 ...]

``--smoke`` runs it at tiny sizes (the test suite's check that it still runs; figures meaningless). Run
directories go under ./data, like any run.
"""

import argparse
from pathlib import Path

import pandas as pd
import ray

from hlrp_lab.experiment.lab import run_lab
from hlrp_lab.experiment.search import init_ray
from hlrp_lab.lib.logger import setup_logger
from hlrp_lab.spec.check import check_spec
from hlrp_lab.spec.spec_util import Mode, parse_sets, resolve_spec
from hlrp_lab.stages import STAGES

SPEC_FILE = Path(__file__).parents[1] / "specs" / "laq.json"
SMOKE = [  # -s settings of --smoke; yours come after them and win
    "meta.max_trial=2",
    "train.max_step=4",
    "train.eval_frequency=2",
    "train.log_frequency=2",
    "meta.search_scheduler.grace_period=2",
    "data.source.episodes=16",
    "data.source.episode_length=6",
    "data.val_pairs=16",
]


def search(spec_name: str, sets: dict) -> pd.DataFrame:
    """One search (no model files kept); its table."""
    run_dir = run_lab(SPEC_FILE, spec_name, Mode("search"), sets, keep=0)
    return pd.read_csv(run_dir / "info" / f"{spec_name}_experiment.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="laq_search")
    parser.add_argument("-s", "--set", dest="sets", action="append", default=[], help="KEY=VALUE, as in run")
    parser.add_argument("--smoke", action="store_true", help=f"Tiny sizes, to check that it runs: {SMOKE}")
    args = parser.parse_args()
    setup_logger()
    sets = parse_sets([*SMOKE, *args.sets] if args.smoke else args.sets)
    spec = check_spec(resolve_spec(SPEC_FILE, args.spec, sets))
    stage = STAGES.config_class(spec["stage"], "stage")
    params = [key.rpartition("__")[0] for key in spec["search"]]
    init_ray()  # one Ray instance for both searches (a second start in one process can fail to register)
    try:
        tables = {
            "ASHA": search(args.spec, sets),
            "full": search(args.spec, {**sets, "meta.search_scheduler": None}),
        }
    finally:
        ray.shutdown()
    same = [table.sort_values("trial")[params].reset_index(drop=True) for table in tables.values()]
    assert same[0].equals(same[1]), "the two searches sampled different trials"
    best = max if stage.metric_mode == "max" else min
    rows = {
        name: {
            "trials": len(table),
            "stopped early": int((table["status"] == "stopped early").sum()),
            "steps": int(table["step"].fillna(0).sum()) * spec["meta"]["max_session"],
            f"best {stage.metric}": best(table[stage.metric].dropna()),
        }
        for name, table in tables.items()
    }
    summary = pd.DataFrame(rows).T
    print(summary.to_string())
    steps = rows["ASHA"]["steps"] / rows["full"]["steps"]
    metric = rows["ASHA"][f"best {stage.metric}"] / rows["full"][f"best {stage.metric}"]
    print(f"ASHA / full: steps {steps:.1%} (target <= 40%), best {stage.metric} {metric:.1%} (target >= 95%)")


if __name__ == "__main__":
    main()
