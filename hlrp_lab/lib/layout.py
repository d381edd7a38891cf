"""The layout of a run directory: the one place that knows where each file of a run lives (no torch).

```
data/{spec_name}_{timestamp}/
  info/  {spec}_spec.json, status.json, {spec}_experiment.csv (a search), {spec}_best_spec.json,
         {spec}_t{trial}_spec.json, {spec}_t{trial}_trial_metrics.json, {spec}_t{trial}_eval_metrics.json,
         {spec}_t{trial}_s{session}_session_metrics.csv
  model/ {spec}_t{trial}_s{session}_{last,best}.safetensors (+ _state.pt), {spec}_t{trial}_tokenizer/,
         {spec}_t{trial}_s{session}_last_step{step}.dcp/ (a VLA stage's sharded `last`, named by its _state.pt)
  graph/ {spec}_t{trial}_s{session}_session_graph_{metric}, {spec}_t{trial}_trial_graph_{metric},
         {spec}_experiment_graph_{param}, {spec}_t{trial}_s{session}_rollout_*.mp4,
         {spec}_t{trial}_s{session}_picture_{last,best,eval}_{name}.png (+ _picture_{tag}.json: their step)
  log/   {spec}.log, {spec}_t{trial}.log, {spec}_t{trial}_s{session}.log (on several ranks: _rank{r}.log each),
         tb/{spec}_t{trial}_s{session}/ (TensorBoard), wandb/ (W&B), profile/{spec}_t{trial}_s{session}/
         (torch.profiler trace) and profile/{spec}_t{trial}_s{session}_profile.csv (--profile)
  ray/   a search's Ray Tune files (trials named {spec}_t{trial})
  report.html
```
A file of trial ``t`` (and session ``s``) starts with its stem ``{spec}_t{t}`` (``{spec}_t{t}_s{s}``).

Where a trial or session is typed ``int | str``, a string gives a pattern instead of a path: ``"*"`` a glob
(``layout.trial_metrics("*")`` matches every trial's metrics), ``"<trial>"`` a name form for a message.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from hlrp_lab.lib.names import check_name

INFO, MODEL, GRAPH, LOG, RAY = "info", "model", "graph", "log", "ray"
SPEC, TRIAL_METRICS, SESSION_METRICS = "_spec.json", "_trial_metrics", "_session_metrics"
WEIGHTS = ".safetensors"

Index = int | str  # a trial or session; a string is a pattern ("*") or a placeholder ("<trial>")


def file_stem(spec_name: str, trial: Index | None = None, session: Index | None = None) -> str:
    """``{spec}``, ``{spec}_t{trial}`` or ``{spec}_t{trial}_s{session}``: how a file of that scope starts."""
    if trial is None:
        return spec_name
    return f"{spec_name}_t{trial}" + ("" if session is None else f"_s{session}")


def checkpoint_name(stem: str, tag: str) -> str:
    """The weights file of the ``tag`` (``last``, ``best``) checkpoint of the session of ``stem``."""
    return f"{stem}_{tag}{WEIGHTS}"


def merged_weights_name(weights_name: str) -> str:
    """The plain weights ``hlrp-lab merge-lora`` writes beside a LoRA checkpoint's ``weights_name``."""
    return weights_name.removesuffix(WEIGHTS) + f"_merged{WEIGHTS}"


def checkpoint_state_name(stem: str, tag: str) -> str:
    """The state file (optimizer, scheduler, step, history, RNG) beside ``checkpoint_name(stem, tag)``."""
    return f"{stem}_{tag}_state.pt"


def checkpoint_shards_name(stem: str, tag: str, step: int | str) -> str:
    """The torch.distributed.checkpoint folder (one file per rank) of a sharded ``tag`` checkpoint at ``step``
    (``"*"``: a glob of every step); its state file (``checkpoint_state_name``) names the folder that is
    whole."""
    return f"{stem}_{tag}_step{step}.dcp"


def slurm_job_dir(root: Path, name: str) -> Path:
    """``{root}/slurm/{name}``: the folder of a Slurm job (``run-remote --slurm -n NAME``): its sbatch script,
    Slurm's output and the file naming the lab's run directory. ``name`` must be a safe path component."""
    return root / "slurm" / check_name(name, "-n")


def spec_and_trial_of(name: str) -> tuple[str, int] | None:
    """(spec name, trial) of a file name ``{spec}_t{trial}_trial_metrics.json`` (a spec name is not known
    beforehand, e.g. in a bundle of files)."""
    match = re.fullmatch(rf"(?P<spec>.+)_t(?P<trial>\d+){TRIAL_METRICS}\.json", name)
    return None if match is None else (match["spec"], int(match["trial"]))


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
        return self.run_dir / INFO

    @property
    def model(self) -> Path:
        return self.run_dir / MODEL

    @property
    def graph(self) -> Path:
        return self.run_dir / GRAPH

    @property
    def log(self) -> Path:
        return self.run_dir / LOG

    @property
    def ray(self) -> Path:
        return self.run_dir / RAY

    @property
    def folders(self) -> tuple[Path, ...]:
        """The folders a new run directory gets (``ray/`` is made by a search only)."""
        return self.info, self.graph, self.log, self.model

    # names
    def stem(self, trial: Index | None = None, session: Index | None = None) -> str:
        """``{spec}``, ``{spec}_t{trial}`` or ``{spec}_t{trial}_s{session}``: how a file of that scope starts
        (a search's Ray Tune trial is named ``stem(trial)``)."""
        return file_stem(self.spec_name, trial, session)

    def trial_of(self, stem: str) -> int:
        """The trial of a stem ``{spec}_t{trial}`` (a Ray Tune trial's name)."""
        match = re.fullmatch(rf"{re.escape(self.spec_name)}_t(\d+)", stem)
        if match is None:
            raise ValueError(f"{stem!r} is not a trial stem {self.stem('<trial>')}")
        return int(match[1])

    # the run
    @property
    def spec_file(self) -> Path:
        """The resolved spec the run saved."""
        return self.info / f"{self.spec_name}{SPEC}"

    @property
    def status(self) -> Path:
        """The run's state (``{"status": ..., "error": ...}``)."""
        return self.info / "status.json"

    @property
    def experiment_table(self) -> Path:
        """A search's table of trials (CSV; a Parquet copy beside it)."""
        return self.info / f"{self.spec_name}_experiment.csv"

    @property
    def report(self) -> Path:
        """The run's self-contained HTML report (``hlrp-lab report``)."""
        return self.run_dir / "report.html"

    @property
    def wandb(self) -> Path:
        """Weights & Biases' folder of every session of the run (W&B makes it in the ``dir`` it is given: ``log/``)."""
        return self.log / "wandb"

    @property
    def best_spec(self) -> Path:
        """A search's best trial's spec."""
        return self.info / f"{self.spec_name}_best{SPEC}"

    def log_file(self, trial: int | None = None, session: int | None = None, rank: int | None = None) -> Path:
        """The log of the run (the lab's), of a trial, or of a session; of one ``rank`` in a distributed run."""
        return self.log / f"{self.stem(trial, session)}{'' if rank is None else f'_rank{rank}'}.log"

    def experiment_graph(self, param: str) -> Path:
        """A search's metric against one searched key (without suffix: PNG and HTML are written)."""
        return self.graph / f"{self.spec_name}_experiment_graph_{param.replace('.', '_')}"

    # a trial
    def trial_spec(self, trial: int) -> Path:
        return self.info / f"{self.stem(trial)}{SPEC}"

    def trial_metrics(self, trial: Index) -> Path:
        return self.info / f"{self.stem(trial)}{TRIAL_METRICS}.json"

    def eval_metrics(self, trial: int) -> Path:
        return self.info / f"{self.stem(trial)}_eval_metrics.json"

    def trial_graph(self, trial: int, metric: str) -> Path:
        """Mean ± std over the trial's sessions (without suffix: PNG and HTML are written)."""
        return self.graph / f"{self.stem(trial)}_trial_graph_{metric}"

    def tokenizer(self, trial: Index) -> Path:
        """A VLA trial's tokenizer (per trial: a search may vary the query tokens)."""
        return self.model / f"{self.stem(trial)}_tokenizer"

    def trial_models(self, trial: int) -> list[Path]:
        """Every model file and folder of a trial (checkpoints of each session, tokenizer)."""
        return sorted(self.model.glob(f"{self.stem(trial)}_*"))

    # a session
    def session_metrics(self, trial: Index, session: Index) -> Path:
        return self.info / f"{self.stem(trial, session)}{SESSION_METRICS}.csv"

    def session_graph(self, trial: int, session: int, metric: str) -> Path:
        """A session's metric against step (without suffix: PNG and HTML are written)."""
        return self.graph / f"{self.stem(trial, session)}_session_graph_{metric}"

    def checkpoint(self, trial: Index, session: Index, tag: str) -> Path:
        """Weights of a session's ``last`` or ``best`` checkpoint (its state is ``checkpoint_state``)."""
        return self.model / checkpoint_name(self.stem(trial, session), tag)

    def checkpoint_state(self, trial: Index, session: Index, tag: str) -> Path:
        """Optimizer, scheduler, step, history and RNG state of a checkpoint."""
        return self.model / checkpoint_state_name(self.stem(trial, session), tag)

    def picture(self, trial: Index, session: Index, tag: str, name: str) -> Path:
        """A picture (PNG) of what the model learned at the ``tag`` evaluation: ``last``, ``best`` (the best
        checkpoint's, drawn in training) or ``eval`` (`eval` mode's, of the best checkpoint)."""
        return self.graph / f"{self.picture_prefix(trial, session, tag)}{name}.png"

    def picture_prefix(self, trial: Index, session: Index, tag: str) -> str:
        """How the file names of a session's ``tag`` pictures start (``Stage.draw`` adds ``{name}.png``)."""
        return f"{self.stem(trial, session)}_picture_{tag}_"

    def pictures(self, trial: int, session: int, tag: str) -> list[Path]:
        """A session's ``tag`` pictures that exist, by name."""
        return sorted(self.graph.glob(self.picture(trial, session, tag, "*").name))

    def picture_index(self, trial: Index, session: Index, tag: str) -> Path:
        """``{"step": ..., "pictures": [file names]}`` of a session's ``tag`` pictures."""
        return self.graph / f"{self.stem(trial, session)}_picture_{tag}.json"

    def wandb_id(self, trial: Index, session: Index) -> Path:
        """The W&B run id of a session (a resumed session continues that W&B run)."""
        return self.wandb / f"{self.stem(trial, session)}_run_id.txt"

    def tensorboard(self, trial: Index, session: Index) -> Path:
        """A session's TensorBoard folder."""
        return self.log / "tb" / self.stem(trial, session)

    def profile(self, trial: Index, session: Index) -> Path:
        """A session's torch.profiler trace folder (``--profile``)."""
        return self.log / "profile" / self.stem(trial, session)

    def profile_table(self, trial: Index, session: Index) -> Path:
        """A session's per-phase time table (``--profile``)."""
        return self.log / "profile" / f"{self.stem(trial, session)}_profile.csv"

    def video_prefix(self, trial: int, session: int) -> Path:
        """Rollout videos of a session are ``{video_prefix}_*.mp4``."""
        return self.graph / f"{self.stem(trial, session)}_rollout"

    # what exists
    def trials(self) -> list[int]:
        """Trials that wrote their metrics, in order."""
        paths = self.info.glob(f"*{TRIAL_METRICS}.json")
        return sorted(self._indices(paths, rf"_t(\d+){TRIAL_METRICS}\.json"))

    def trials_with_sessions(self) -> list[int]:
        """Trials with at least one session's metrics, in order."""
        paths = self.info.glob(f"*{SESSION_METRICS}.csv")
        return sorted(self._indices(paths, rf"_t(\d+)_s\d+{SESSION_METRICS}\.csv"))

    def session_metrics_files(self, trial: int) -> list[Path]:
        """The metrics CSVs of a trial's sessions, by session."""
        found = {
            s: p
            for p in self.info.glob(self.session_metrics(trial, "*").name)
            if (s := self._session(p.name, trial)) is not None
        }
        return [found[s] for s in sorted(found)]

    def parse_checkpoint(self, name: str) -> tuple[int, int, str] | None:
        """(trial, session, tag) of a weights file name ``{spec}_t{trial}_s{session}_{tag}.safetensors``."""
        match = re.fullmatch(rf"{re.escape(self.spec_name)}_t(\d+)_s(\d+)_(\w+){re.escape(WEIGHTS)}", name)
        return None if match is None else (int(match[1]), int(match[2]), match[3])

    def _indices(self, paths, tail: str) -> set[int]:
        pattern = re.compile(rf"{re.escape(self.spec_name)}{tail}")
        return {int(m[1]) for p in paths if (m := pattern.fullmatch(p.name))}

    def _session(self, name: str, trial: int) -> int | None:
        match = re.fullmatch(rf"{re.escape(self.stem(trial))}_s(\d+){SESSION_METRICS}\.csv", name)
        return None if match is None else int(match[1])

    @staticmethod
    def run_dir_of(path: Path) -> Path:
        """The run directory of ``path``: a checkpoint's weights file in it, or (any other path) itself."""
        return path.parent.parent if path.suffix == WEIGHTS else path

    # any run's files, by glob relative to its directory (the spec name unknown: a bundle, the Hub's card)
    @staticmethod
    def trial_metrics_glob(suffix: str = ".json") -> str:
        return f"{INFO}/*{TRIAL_METRICS}{suffix}"

    @staticmethod
    def session_metrics_glob(suffix: str = ".csv") -> str:
        return f"{INFO}/*{SESSION_METRICS}{suffix}"

    @staticmethod
    def experiment_table_glob(suffix: str = ".csv") -> str:
        return f"{INFO}/*_experiment{suffix}"

    @staticmethod
    def result_globs() -> tuple[str, ...]:
        """The specs and tables in info/ (JSON, CSV, Parquet) and the graphs (PNG, HTML)."""
        return (f"{INFO}/*.json", f"{INFO}/*.csv", f"{INFO}/*.parquet", f"{GRAPH}/*.png", f"{GRAPH}/*.html")

    @staticmethod
    def model_globs() -> tuple[str, ...]:
        """Checkpoint weights and tokenizers' files (not the checkpoints' training state)."""
        return (f"{MODEL}/*{WEIGHTS}", f"{MODEL}/*_tokenizer/*")

    @staticmethod
    def is_spec_file(name: str) -> bool:
        """Whether a file name is a spec's: the run's, a trial's or a search's best."""
        return name.endswith(SPEC)
