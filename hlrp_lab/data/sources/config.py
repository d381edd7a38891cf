"""Data source configs: the spec keys of each source (pydantic only: a spec is checked without importing the
sources)."""

from pydantic import Field, field_validator, model_validator

from hlrp_lab.data.sources import DATA_SOURCES
from hlrp_lab.env.metaworld_tasks import MAX_PATH_LENGTH, Camera, resolve_tasks
from hlrp_lab.lib.registry import Strict

MAX_OBJECTS = 4  # blocks a procedural scene can hold
MIN_FRAMES = 2  # frames of a video clip at least


@DATA_SOURCES.register_config("procedural")
class ProceduralConfig(Strict):
    episodes: int = Field(256, gt=0, description="Number of episodes to generate.")
    episode_length: int = Field(32, ge=2, description="Frames per episode.")
    num_objects: int = Field(3, ge=1, le=MAX_OBJECTS, description="Coloured blocks in the scene.")
    seed: int = Field(0, ge=0, description="Dataset seed; episode i uses seed * 1_000_003 + i.")


@DATA_SOURCES.register_config("videos")
class VideosConfig(Strict):
    root: str = Field(description="Folder searched recursively for .mp4, .webm, .mkv and .avi files.")
    fps: float = Field(10.0, gt=0, description="Output frame rate; slower videos have frames repeated.")
    clip_seconds: float | None = Field(
        None,
        gt=0,
        description="Cut each video into consecutive clips of round(clip_seconds * fps) frames (a trailing "
        "clip of 1 frame is dropped); null keeps each video whole.",
    )
    instruction_file: str | None = Field(
        None,
        description="CSV with the header file,instruction; file is a path relative to root or a bare "
        "file name. Videos without a row get the instruction ''.",
    )

    @model_validator(mode="after")
    def clips_hold_two_frames(self) -> "VideosConfig":
        if self.clip_seconds is not None and round(self.clip_seconds * self.fps) < MIN_FRAMES:
            raise ValueError(f"clip_seconds * fps must give at least {MIN_FRAMES} frames per clip")
        return self


@DATA_SOURCES.register_config("metaworld")
class MetaWorldConfig(Strict):
    tasks: str = Field(
        "easy",
        description="Comma-separated Meta-World v3 tasks (reach-v3,push-v3), or one of easy, medium, hard, "
        "very_hard (the MT50 difficulty split), mt10, mt50.",
    )
    episodes: int = Field(10, gt=0, description="Episodes per task.")
    max_steps: int = Field(
        150, ge=1, le=MAX_PATH_LENGTH, description="Steps per episode at most (frames: one more)."
    )
    after_success: int | None = Field(
        10,
        ge=0,
        description="Steps recorded after the first success before stopping; null runs to max_steps.",
    )
    camera: Camera = Field("corner2", description="Meta-World camera; corner4 is LeRobot's closer view.")
    seed: int = Field(0, ge=0, description="Dataset seed; every episode keeps its own seed, derived from it.")
    workers: int = Field(1, ge=1, description="Rendering processes (spawned; never the caller's own).")

    @field_validator("tasks")
    @classmethod
    def known_tasks(cls, tasks: str) -> str:
        resolve_tasks(tasks)
        return tasks


@DATA_SOURCES.register_config("lerobot")
class LeRobotConfig(Strict):
    path: str = Field(
        description="A LeRobotDataset (v3.x or v2.x): a local folder holding meta/info.json, or a Hub "
        "dataset repo id owner/name (only the files the chosen episodes and camera need are downloaded)."
    )
    revision: str | None = Field(
        None, description="Hub revision (branch, tag or commit) of a repo id; null: its default branch."
    )
    episodes: list[int] | None = Field(
        None, min_length=1, description="Episode indices (episode_index) to convert; null: all."
    )
    camera: str | None = Field(
        None,
        description="The video feature to take frames from (e.g. observation.images.top); null: the first "
        "video feature of meta/info.json.",
    )

    @field_validator("episodes")
    @classmethod
    def distinct_indices(cls, episodes: list[int] | None) -> list[int] | None:
        if episodes is None:
            return None
        if min(episodes) < 0:
            raise ValueError("episode indices are 0 or more")
        if len(set(episodes)) < len(episodes):
            raise ValueError("an episode is listed twice")
        return sorted(episodes)
