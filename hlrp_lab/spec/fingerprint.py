"""A run's fingerprint: what makes two runs the same experiment, as one hash (no torch).

``hlrp-lab pipeline`` reuses a completed run whose fingerprint equals that of the spec it would start: the
resolved spec as a run starts from it (checked, its mode applied, ``latest:`` references pinned to run
directories) and the mode, less the keys the lab sets itself (``meta.run_dir``, ``experiment_ts``, ``git_sha``,
the ``-s`` values, ...). An unset ``meta.random_seed`` stays unset here: a seed drawn by the run does not make
it another experiment.
"""

import hashlib
import json

import pydash

from hlrp_lab.spec.schema import LAB_KEYS


def spec_fingerprint(spec: dict, mode: str) -> str:
    """The sha256 of the canonical JSON of ``spec`` without the lab's keys, and ``mode``."""
    canonical = {"mode": mode, "spec": pydash.omit(spec, *LAB_KEYS)}
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
