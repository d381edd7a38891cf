"""The layout of a run directory: the one place that knows where each file of a run lives (no torch).

```
data/{spec_name}_{timestamp}/
  info/  {spec}_spec.json, status.json, {spec}_experiment.csv (a search), {spec}_best_spec.json,
         {spec}_t{trial}_spec.json, {spec}_t{trial}_trial_metrics.json, {spec}_t{trial}_eval_metrics.json,
         {spec}_t{trial}_s{session}_session_metrics.csv
  model/ {spec}_t{trial}_s{session}_{last,best}.safetensors (+ _state.pt), {spec}_t{trial}_tokenizer/
  graph/ {spec}_t{trial}_s{session}_session_graph_{metric}, {spec}_t{trial}_trial_graph_{metric},
         {spec}_experiment_graph_{param}, {spec}_t{trial}_s{session}_rollout_*.mp4
  log/   {spec}.log, {spec}_t{trial}.log, {spec}_t{trial}_s{session}.log
  ray/   a search's Ray Tune files (trials named {spec}_t{trial})
```
A file of trial ``t`` (and session ``s``) starts with its stem ``{spec}_t{t}`` (``{spec}_t{t}_s{s}``).
"""

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """Every path of the run of ``spec_name`` in ``run_dir``."""

    run_dir: Path
    spec_name: str

    @classmethod
    def of(cls, spec: dict) -> "RunLayout":
        """The layout of the run a checked spec belongs to (its ``meta.run_dir`` and ``meta.spec_name``)."""
        return cls(Path(spec["meta"]["run_dir"]), spec["meta"]["spec_name"])

    # folders
    @property
    def info(self) -> Path:
        return self.run_dir / "info"

    @property
    def model(self) -> Path:
        return self.run_dir / "model"

    @property
    def graph(self) -> Path:
        return self.run_dir / "graph"

    @property
    def log(self) -> Path:
        return self.run_dir / "log"

    @property
    def ray(self) -> Path:
        return self.run_dir / "ray"

    # names
    def stem(self, trial: int | None = None, session: int | None = None) -> str:
        """``{spec}``, ``{spec}_t{trial}`` or ``{spec}_t{trial}_s{session}``: how a file of that scope starts."""
        if trial is None:
            return self.spec_name
        return f"{self.spec_name}_t{trial}" + ("" if session is None else f"_s{session}")

    def trial_of(self, stem: str) -> int:
        """The trial of a stem ``{spec}_t{trial}`` (a Ray Tune trial's name)."""
        match = re.fullmatch(rf"{re.escape(self.spec_name)}_t(\d+)", stem)
        if match is None:
            raise ValueError(f"{stem!r} is not a trial stem {self.spec_name}_t<trial>")
        return int(match[1])

    # the run
    @property
    def spec_file(self) -> Path:
        """The resolved spec the run saved."""
        return self.info / f"{self.spec_name}_spec.json"

    @property
    def status(self) -> Path:
        return self.info / "status.json"

    @property
    def experiment_table(self) -> Path:
        """A search's table of trials (CSV; a Parquet copy beside it)."""
        return self.info / f"{self.spec_name}_experiment.csv"

    @property
    def best_spec(self) -> Path:
        """A search's best trial's spec."""
        return self.info / f"{self.spec_name}_best_spec.json"

    def log_file(self, trial: int | None = None, session: int | None = None) -> Path:
        return self.log / f"{self.stem(trial, session)}.log"

    def experiment_graph(self, param: str) -> Path:
        """A search's metric against one searched key (without suffix: PNG and HTML are written)."""
        return self.graph / f"{self.spec_name}_experiment_graph_{param.replace('.', '_')}"

    # a trial
    def trial_spec(self, trial: int) -> Path:
        return self.info / f"{self.stem(trial)}_spec.json"

    def trial_metrics(self, trial: int) -> Path:
        return self.info / f"{self.stem(trial)}_trial_metrics.json"

    def eval_metrics(self, trial: int) -> Path:
        return self.info / f"{self.stem(trial)}_eval_metrics.json"

    def trial_graph(self, trial: int, metric: str) -> Path:
        return self.graph / f"{self.stem(trial)}_trial_graph_{metric}"

    def tokenizer(self, trial: int) -> Path:
        """A VLA trial's tokenizer (per trial: a search may vary the query tokens)."""
        return self.model / f"{self.stem(trial)}_tokenizer"

    def trial_models(self, trial: int) -> list[Path]:
        """Every model file and folder of a trial (checkpoints of each session, tokenizer)."""
        return sorted(self.model.glob(f"{self.stem(trial)}_*"))

    # a session
    def session_metrics(self, trial: int, session: int) -> Path:
        return self.info / f"{self.stem(trial, session)}_session_metrics.csv"

    def session_graph(self, trial: int, session: int, metric: str) -> Path:
        return self.graph / f"{self.stem(trial, session)}_session_graph_{metric}"

    def checkpoint(self, trial: int, session: int, tag: str) -> Path:
        """Weights of a session's ``last`` or ``best`` checkpoint (its state is ``checkpoint_state``)."""
        return self.model / f"{self.stem(trial, session)}_{tag}.safetensors"

    def checkpoint_state(self, trial: int, session: int, tag: str) -> Path:
        """Optimizer, scheduler, step, history and RNG state of a checkpoint."""
        return self.model / f"{self.stem(trial, session)}_{tag}_state.pt"

    def video_prefix(self, trial: int, session: int) -> Path:
        """Rollout videos of a session are ``{video_prefix}_*.mp4``."""
        return self.graph / f"{self.stem(trial, session)}_rollout"

    # what exists
    def trials(self) -> list[int]:
        """Trials that wrote their metrics, in order."""
        return sorted(self._indices(self.info.glob("*_trial_metrics.json"), r"_t(\d+)_trial_metrics\.json"))

    def trials_with_sessions(self) -> list[int]:
        """Trials with at least one session's metrics, in order."""
        paths = self.info.glob("*_session_metrics.csv")
        return sorted(self._indices(paths, r"_t(\d+)_s\d+_session_metrics\.csv"))

    def session_metrics_files(self, trial: int) -> list[Path]:
        """The metrics CSVs of a trial's sessions, by session."""
        found = {
            s: p
            for p in self.info.glob(f"{self.stem(trial)}_s*_session_metrics.csv")
            if (s := self._session(p.name, trial)) is not None
        }
        return [found[s] for s in sorted(found)]

    def parse_checkpoint(self, name: str) -> tuple[int, int, str] | None:
        """(trial, session, tag) of a weights file name ``{spec}_t{trial}_s{session}_{tag}.safetensors``."""
        match = re.fullmatch(rf"{re.escape(self.spec_name)}_t(\d+)_s(\d+)_(\w+)\.safetensors", name)
        return None if match is None else (int(match[1]), int(match[2]), match[3])

    def _indices(self, paths, tail: str) -> set[int]:
        pattern = re.compile(rf"{re.escape(self.spec_name)}{tail}")
        return {int(m[1]) for p in paths if (m := pattern.fullmatch(p.name))}

    def _session(self, name: str, trial: int) -> int | None:
        match = re.fullmatch(rf"{re.escape(self.stem(trial))}_s(\d+)_session_metrics\.csv", name)
        return None if match is None else int(match[1])


def parse_trial_metrics(name: str) -> tuple[str, int] | None:
    """(spec name, trial) of a file name ``{spec}_t{trial}_trial_metrics.json`` (a spec name is not known
    beforehand, e.g. in a bundle of files)."""
    match = re.fullmatch(r"(?P<spec>.+)_t(?P<trial>\d+)_trial_metrics\.json", name)
    return None if match is None else (match["spec"], int(match["trial"]))
