"""The framework's spec keys: types, defaults and meaning (docs/SPECS.md is checked against these).

Component blocks (``model.*``, ``data.source``) are validated by the config of the class they name; the keys a
stage adds (``train.init_from``, ``rollout``, ...) are declared by the stage (``stages/config.py``) and merged
in by ``spec_model``.
"""

from functools import cache
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    create_model,
    model_validator,
)

from hlrp_lab.lib.registry import Strict
from hlrp_lab.stages.config import StageConfig


class DataSpec(Strict):
    source: dict[str, Any] | None = Field(
        None,
        description='Data generated on first use and cached: {"name": <registered data source>, ...its keys}. '
        "Give this or `shards`.",
    )
    shards: str | None = Field(
        None,
        description="Shards written by `hlrp-lab data`: a directory with manifest.json, a glob, a brace "
        "pattern (metaworld-{000000..000015}.tar), a local path or a URL. Give this or `source`.",
    )
    image_size: PositiveInt = Field(64, description="Frames are square, image_size x image_size pixels.")
    pairs: Literal["scene", "pair"] = Field(
        "scene",
        description="scene: stream scenes, drawing pairs on the fly; pair: index every valid pair of the "
        "training scenes in memory (for small sets and overfitting).",
    )
    offsets: list[PositiveInt] = Field(
        default_factory=lambda: [1], min_length=1, description="k values of the frame pair (t, t+k)."
    )
    max_samples: PositiveInt | None = Field(
        None, description="Pair level: keep this many training pairs (a fixed random subset); null: all."
    )
    pairs_per_scene: PositiveInt = Field(
        16,
        description="Scene level: pairs drawn from a scene each time the stream reads it (more pairs per read "
        "is faster; fewer mixes more scenes into a batch).",
    )
    shuffle_buffer: PositiveInt = Field(1000, description="Scene level: pairs in the shuffle buffer.")
    num_workers: NonNegativeInt = Field(
        2,
        description="Scene level: DataLoader worker processes reading shards; 0 reads in the training process.",
    )
    batch_size: PositiveInt = Field(
        32,
        description="Frame pairs per optimizer step over all ranks (the global batch): a spec means the same "
        "experiment on any number of devices.",
    )
    val_split: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Fraction of scenes held out for evaluation (by a hash of the scene name, so validation "
        "never shares a scene with training); 0 evaluates on training pairs.",
    )
    val_pairs: PositiveInt = Field(256, description="Held-out frame pairs scored at each evaluation.")
    max_episodes: PositiveInt | None = Field(
        None,
        description="Pair level: train on the first max_episodes episodes of each task (in shard order), e.g. "
        "a few labelled demonstrations for finetuning; null: all.",
    )
    cache_dir: str = Field("data/cache", description="Where `source` shards are written and reused.")

    @model_validator(mode="after")
    def one_data_location(self) -> "DataSpec":
        if (self.source is None) == (self.shards is None):
            raise ValueError(
                'give exactly one of data.source (generated and cached, e.g. {"name": "procedural"}) '
                "or data.shards (shards written by `hlrp-lab data`)"
            )
        for key in ("max_samples", "max_episodes"):
            if getattr(self, key) is not None and self.pairs != "pair":
                raise ValueError(f'data.{key} applies to data.pairs = "pair" only')
        return self


class OptimSpec(BaseModel):
    """Extra keys (betas, eps, momentum, ...) go to the torch.optim class as keyword arguments."""

    model_config = ConfigDict(extra="allow")

    name: str = Field("AdamW", description="Any torch.optim optimizer class name.")
    lr: PositiveFloat = Field(3e-4, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="Weight decay.")
    warmup_steps: NonNegativeInt = Field(0, description="Linear warmup from ~0 to lr over this many steps.")
    min_lr_ratio: float = Field(
        0.1, ge=0, le=1, description="Cosine decay after warmup ends at lr * min_lr_ratio at max_step."
    )


class DistributedSpec(Strict):
    """How a session trains on several ranks (``--nproc-per-node``, torchrun); see docs/DISTRIBUTED.md."""

    strategy: Literal["auto", "none", "ddp", "fsdp"] = Field(
        "auto",
        description="auto: none on one process; on several, fsdp for a stage with a trainable VLA "
        "(foundation, finetune), ddp otherwise (LAQ, a frozen VLA's heads). ddp: DistributedDataParallel; "
        "fsdp: FSDP2 fully_shard per transformer block.",
    )
    cpu_offload: bool = Field(False, description="fsdp: keep parameters and optimizer states on the CPU.")
    find_unused_parameters: bool = Field(
        False, description="ddp: allow trainable parameters that get no gradient (DDP's own option)."
    )
    timeout_s: PositiveInt = Field(
        1800,
        description="Seconds a collective waits for the other ranks before the job fails (rank 0 prepares "
        "the data while the others wait: raise it for a large dataset generated on first use).",
    )


class TrainSpec(Strict):
    max_step: PositiveInt = Field(1000, description="Optimizer steps per session.")
    log_frequency: PositiveInt = Field(50, description="Steps between training-metric log rows.")
    eval_frequency: PositiveInt = Field(
        500, description="Steps between evaluations; each writes the `last` (and maybe `best`) checkpoint."
    )
    pictures: bool = Field(
        True,
        description="Draw the stage's pictures after each evaluation and in eval mode (docs/PICTURES.md); "
        "false saves their time (~0.3 s per LAQ evaluation), e.g. in a search of many short trials.",
    )
    grad_clip: PositiveFloat | None = Field(1.0, description="Max global gradient norm; null disables.")
    grad_accum: PositiveInt = Field(
        1,
        description="Micro-batches accumulated per optimizer step: each rank's micro-batch is "
        "data.batch_size / (ranks x grad_accum).",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available.")
    dev_max_step: PositiveInt = Field(300, description="`dev` mode caps max_step at this value.")
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each transformer block's activations in the backward pass (less memory, "
        "about a third more compute); torch's checkpoint wrapper.",
    )
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="Several ranks: strategy and its options."
    )


class SearchScheduler(Strict):
    """ASHA (Ray Tune's AsyncHyperBandScheduler), in training steps."""

    grace_period: PositiveInt = Field(description="Steps every trial runs before it can be stopped.")
    reduction_factor: float = Field(3.0, gt=1, description="Only the top 1/reduction_factor go on at a rung.")
    max_t: PositiveInt | None = Field(None, description="Steps at which a trial ends; null: train.max_step.")


class SearchMetric(Strict):
    name: str = Field(
        min_length=1, description="A metric the stage reports at every evaluation, e.g. probe_mse."
    )
    mode: Literal["max", "min"] = Field(description="max: higher is better; min: lower is better.")


class SearchResources(Strict):
    cpu: PositiveFloat = Field(1.0, description="CPUs per trial (fractions share a CPU).")
    gpu: NonNegativeFloat = Field(0.0, description="GPUs per trial (fractions share a GPU).")


class MetaSpec(Strict):
    max_session: PositiveInt = Field(1, description="Sessions (seeds) per trial, run in parallel processes.")
    max_trial: PositiveInt = Field(
        1, description="Search mode: samples drawn from `search` (each runs every grid_search value)."
    )
    search_scheduler: SearchScheduler | None = Field(
        None,
        description="Search mode: {grace_period, reduction_factor (3), max_t (null: train.max_step)} in "
        "training steps turns on ASHA early stopping; null runs every trial to the end.",
    )
    search_metric: SearchMetric | None = Field(
        None,
        description="Search mode: {name, mode}, the metric ASHA stops trials by and the best trial is chosen "
        "by (e.g. a latent-quality metric, docs/SEARCH.md); null: the stage's metric (LAQ: val_psnr, max).",
    )
    search_algorithm: Literal["random", "optuna"] = Field(
        "random", description="Search mode: how trials are sampled: random, or Optuna's TPE."
    )
    search_resources: SearchResources = Field(
        default_factory=lambda: {"cpu": 1.0, "gpu": 0.0},
        validate_default=True,
        description="Search mode: {cpu, gpu} reserved per trial; fractions allowed.",
    )
    random_seed: int | None = Field(
        None, description="Base seed; session s of trial t uses seed + 1000 * t + s. null: drawn and saved."
    )
    trackers: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list,
        description="Also log scalars, pictures and the spec to these (rank 0; docs/TRACKERS.md); "
        "`--tracker NAME` (repeatable) sets the list.",
    )
    profile: bool = Field(
        False,
        description="Trace a window of steps with torch.profiler and time each phase of a step "
        "(docs/PROFILING.md); `--profile` sets it.",
    )
    # Set by the lab when a run starts and recorded in the saved spec.
    spec_name: str | None = Field(None, description="Set by the lab: the spec's name.")
    spec_file: str | None = Field(None, description="Set by the lab: the file the spec came from.")
    mode: str | None = Field(None, description="Set by the lab: dev, train, eval or search.")
    variables: dict[str, Any] = Field(default_factory=dict, description="Set by the lab: the -s values.")
    run_dir: str | None = Field(None, description="Set by the lab: data/{spec_name}_{timestamp}.")
    experiment_ts: str | None = Field(None, description="Set by the lab: the run's start time.")
    git_sha: str | None = Field(None, description="Set by the lab: the lab's git commit, if any.")
    trial: NonNegativeInt = Field(0, description="Set by the lab: the trial index.")
    session: NonNegativeInt = Field(0, description="Set by the lab: the session index.")


class Spec(Strict):
    stage: str = Field(description="Which stage trains: laq, foundation or finetune (docs/PIPELINE.md).")
    data: DataSpec = Field(description="The data block.")
    model: dict[str, Any] = Field(description="The stage's components, one block per family.")
    optim: OptimSpec = Field(default_factory=OptimSpec, description="Optimizer and learning-rate schedule.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="The training loop.")
    meta: MetaSpec = Field(default_factory=MetaSpec, description="Sessions, trials, seeds, run bookkeeping.")
    search: dict[str, Any] = Field(
        default_factory=dict,
        description="Search mode: `dotted.spec.path__sampler` -> the sampler's arguments, e.g. "
        '`"optim.lr__loguniform": [1e-4, 1e-2]`; see docs/SEARCH.md.',
    )


SECTIONS: dict[str, type[BaseModel]] = {
    "data": DataSpec,
    "optim": OptimSpec,
    "train": TrainSpec,
    "meta": MetaSpec,
}

# The meta keys the lab sets itself when a run starts (described as "Set by the lab"): `-s` cannot set them,
# so that no override can move where a run writes.
LAB_KEYS: tuple[str, ...] = tuple(
    f"meta.{name}"
    for name, field in MetaSpec.model_fields.items()
    if (field.description or "").startswith("Set by the lab")
)


@cache
def spec_model(stage: type[StageConfig]) -> type[Spec]:
    """The schema of a ``stage`` spec: the framework's sections with the stage's keys merged in, and the
    stage's own sections."""
    fields: dict[str, Any] = {}
    for name, section in stage.sections.items():
        framework = SECTIONS.get(name)
        if framework is None:
            fields[name] = (section, Field(default_factory=section, description=section.__doc__))
            continue
        merged = create_model(f"{stage.__name__}{framework.__name__}", __base__=(section, framework))
        field = Spec.model_fields[name]
        if field.is_required():
            fields[name] = (merged, Field(description=field.description))
        else:
            fields[name] = (merged, Field(default_factory=merged, description=field.description))
    return create_model(f"{stage.__name__}Spec", __base__=Spec, **fields)
