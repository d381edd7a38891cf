"""A policy backbone made of an LAQ run's encoder: the study baseline of stage 1 without stage 2.

The frame: the LAQ encoders read two frames, and most fuse them from the first layer on (CNNEncoder
convolves frame t, frame t+k and their difference stacked as channels; the joint ViTEncoder's patches of both
frames attend to each other), so they have no features of one frame alone. The backbone gives the encoder the
pair (frame t, frame t), a transition without motion that it met in training (consecutive frames differ
little), and reads the features of its trunk, one token per image cell: CNNEncoder's last convolution map, the
joint ViTEncoder's transformer outputs at frame t's patches, the factorised ViTEncoder's
(``temporal_depth`` > 0) spatial layers on frame t, which never see the other frame. Not its latent action
tokens: those describe the change between the frames, which for (t, t) is "none" whatever the frame shows.
The trunk has to see where things are to tell how they moved, so its features of a still frame keep what it
learned to see.

Those frame tokens, then the prompt's (the instruction and the latent head's tokens, embedded from the run's
tokenizer) pass through a small transformer, the frame attending to itself and the prompt causally as in a
VLM; its last hidden states are what ``VLABackbone.forward`` returns, so the latent and action heads read the
query positions unchanged.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from safetensors import safe_open
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import PreTrainedTokenizerBase

from hlrp_lab.components.encoder import ENCODERS
from hlrp_lab.components.quantizer import QUANTIZERS
from hlrp_lab.components.vla import VLAS
from hlrp_lab.components.vla.config_laq_encoder import CONTROL_ARCHITECTURE, LAQEncoderConfig
from hlrp_lab.lib.errors import SpecError
from hlrp_lab.lib.runs import RunReference, resolve_reference

CHANNELS = 3  # RGB, as the LAQ stage builds its encoder
TEXT_INIT_STD = 0.02  # token and text position embeddings, as transformers' initializer_range
ENCODER_PREFIX = "encoder."  # the encoder's tensors in an LAQ run's weights file


@dataclass(frozen=True)
class Trunk:
    """Where an encoder's frame features are: the submodule that outputs them, how its output becomes frame
    t's (B, N, C) tokens, and the parameters (or modules) that take no part in them, frozen: the latent action
    read-out after the trunk, and weights that see only the zero change of (t, t)."""

    module: str
    tokens: Callable[[Tensor, nn.Module], Tensor]
    unused: tuple[str, ...]


def grid_tokens(features: Tensor, encoder: nn.Module) -> Tensor:
    """A (B, C, h, w) feature map -> (B, h * w, C)."""
    return features.flatten(2).transpose(1, 2)


def joint_frame_t(hidden: Tensor, encoder: nn.Module) -> Tensor:
    """The joint transformer's outputs (B, queries + 2 N, D) -> frame t's N patches (B, N, D)."""
    patches = (hidden.shape[1] - encoder.num_tokens) // 2
    return hidden[:, encoder.num_tokens : encoder.num_tokens + patches]


def spatial_frame_t(hidden: Tensor, encoder: nn.Module) -> Tensor:
    """The spatial layers' outputs, frames in rows (b, t) -> frame t's (B, N, D)."""
    return hidden[0::2]


CNN = Trunk("convs", grid_tokens, ("head",))
JOINT_VIT = Trunk("transformer", joint_frame_t, ("change_embed.weight", "norm", "head"))
FACTORIZED_VIT = Trunk("spatial", spatial_frame_t, ("temporal", "queries", "readout", "norm", "head"))
TRUNKS: dict[str, Callable[[nn.Module], Trunk]] = {
    "CNNEncoder": lambda encoder: CNN,
    "ViTEncoder": lambda encoder: FACTORIZED_VIT if getattr(encoder, "factorized", False) else JOINT_VIT,
}


@VLAS.register
class LAQEncoder(nn.Module):
    """An LAQ run's encoder given (frame t, frame t); a small transformer over its features and the prompt.

    ``query_tokens`` need nothing here: they are rows of the embedding table like every token."""

    Config = LAQEncoderConfig

    def __init__(
        self,
        config: LAQEncoderConfig,
        *,
        tokenizer: PreTrainedTokenizerBase,
        query_tokens: list[str] | None = None,
    ):
        super().__init__()
        built, reference = architecture(config)
        name = built["encoder"]["name"]
        if name not in TRUNKS:
            raise SpecError(
                f"model.vla.encoder.name: LAQEncoder reads the trunk of {', '.join(TRUNKS)}, not {name}; "
                "use one of them (or add its Trunk to components/vla/laq_encoder.py)"
            )
        self.tokenizer = tokenizer
        self.image_size, self.max_text_tokens = built["image_size"], config.max_text_tokens
        self.hidden_size = config.hidden_size
        self.encoder = ENCODERS.build(
            built["encoder"],
            "model.vla.encoder",
            image_size=self.image_size,
            channels=CHANNELS,
            num_tokens=built["num_tokens"],
            out_dim=built["token_dim"],
        )
        if reference is not None and not next(self.encoder.parameters()).is_meta:  # a dry build reads nothing
            self.encoder.load_state_dict(encoder_weights(reference.weights))
            logger.info(f"model.vla: the encoder of {reference.weights}")
        self.trunk = TRUNKS[name](self.encoder)
        self.encoder.requires_grad_(not config.freeze_encoder)
        for key, parameter in self.encoder.named_parameters():
            if any(key == unused or key.startswith(f"{unused}.") for unused in self.trunk.unused):
                parameter.requires_grad_(False)
        with torch.no_grad():
            probe = torch.zeros(1, CHANNELS, self.image_size, self.image_size)
            count, width = self.frame_features(probe).shape[1:]
        self.frame_proj = nn.Linear(width, self.hidden_size)
        # N(0, 1), in the scale of the projected features: the queries tell the cells apart from step one
        self.frame_position = nn.Parameter(torch.randn(1, count, self.hidden_size))
        self.embed = nn.Embedding(len(tokenizer), self.hidden_size)
        self.text_position = nn.Embedding(config.max_text_tokens, self.hidden_size)
        for table in (self.embed, self.text_position):  # small, as a transformers LM's: the frame stays heard
            nn.init.normal_(table.weight, std=TEXT_INIT_STD)
        layer = nn.TransformerEncoderLayer(
            config.hidden_size,
            config.heads,
            4 * config.hidden_size,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(self.hidden_size)
        self.prompts: dict[tuple[str, str], list[int]] = {}

    def frame_features(self, frames: Tensor) -> Tensor:
        """(B, N, C) trunk features of the encoder given (frame t, frame t), for frames (B, 3, S, S)."""
        captured: list[Tensor] = []
        module = self.encoder.get_submodule(self.trunk.module)
        handle = module.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
        try:
            self.encoder(frames, frames)
        finally:
            handle.remove()
        return self.trunk.tokens(captured[0], self.encoder)

    def encode(self, instructions: list[str], suffix: str) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask (B, L) of each ``instruction + suffix``, left-padded so that the
        suffix is last; prompts are cached by text."""
        rows = []
        for instruction in instructions:
            key = (instruction, suffix)
            if key not in self.prompts:
                ids = self.tokenizer(f"{instruction}{suffix}", add_special_tokens=True)["input_ids"]
                if len(ids) > self.max_text_tokens:
                    raise SpecError(
                        f"model.vla.max_text_tokens: the prompt of {instruction!r} has {len(ids)} tokens, "
                        f"more than {self.max_text_tokens}; pass -s model.vla.max_text_tokens={len(ids)}"
                    )
                self.prompts[key] = ids
            rows.append(self.prompts[key])
        length = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (length - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
        device = self.frame_position.device
        return ids.to(device), mask.to(device)

    def forward(self, frames: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Last hidden states (B, N + L, hidden_size) of [frame tokens, prompt] for frames (B, 3, H, W) in
        [0, 1] and encoded prompts (B, L)."""
        if frames.shape[-2:] != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            frames = F.interpolate(frames, size=size, mode="bilinear", antialias=True)
        frame_tokens = self.frame_proj(self.frame_features(frames)) + self.frame_position
        positions = (attention_mask.cumsum(1) - 1).clamp_min(0)
        text_tokens = self.embed(input_ids) + self.text_position(positions)
        tokens = torch.cat([frame_tokens, text_tokens], dim=1)
        seen = torch.ones(frame_tokens.shape[:2], dtype=torch.bool, device=frames.device)
        padding = ~torch.cat([seen, attention_mask.bool()], dim=1)
        hidden = self.transformer(
            tokens,
            mask=prefix_causal(frame_tokens.shape[1], tokens.shape[1], tokens.device),
            src_key_padding_mask=padding,
        )
        return self.norm(hidden)


def prefix_causal(prefix: int, length: int, device: torch.device) -> Tensor:
    """(length, length) attention mask, True where attention is not allowed: the first ``prefix`` positions
    (the frame) see each other, every later one (the prompt) sees the frame and the prompt up to itself, as in
    a VLM's causal language model (a head that decodes codes after the prompt relies on it)."""
    position = torch.arange(length, device=device)
    return (position[None, :] > position[:, None]) & (position[None, :] >= prefix)


def architecture(config: LAQEncoderConfig) -> tuple[dict[str, Any], RunReference | None]:
    """The encoder's architecture (the keys of ``CONTROL_ARCHITECTURE``) and the LAQ run whose weights it
    loads: the ``config.laq`` run's (a key the block gives must be the run's), or for the control the block's
    keys, ``CONTROL_ARCHITECTURE``'s where it leaves them null."""
    given = {key: getattr(config, key) for key in CONTROL_ARCHITECTURE}
    if config.laq is None:
        return {
            key: CONTROL_ARCHITECTURE[key] if value is None else value for key, value in given.items()
        }, None
    reference = resolve_reference(config.laq, "model.vla.laq")
    laq = reference.spec()
    if laq["stage"] != "laq":
        raise SpecError(f"model.vla.laq: {reference.run_dir} is a {laq['stage']!r} run, not an LAQ run")
    quantizer = QUANTIZERS.config(laq["model"]["quantizer"], "model.quantizer")
    runs = {
        "encoder": laq["model"]["encoder"],
        "image_size": laq["data"]["image_size"],
        "num_tokens": quantizer.num_tokens,
        "token_dim": quantizer.latent_dim,
    }
    for key, value in given.items():
        if value is not None and value != runs[key]:
            raise SpecError(
                f"model.vla.{key}: {value}, but the LAQ run {reference.run_dir.name} has {runs[key]}; leave "
                f"model.vla.{key} null to take the run's"
            )
    return runs, reference


def encoder_weights(path: Path) -> dict[str, Tensor]:
    """The encoder's tensors of an LAQ weights file, named as in the encoder."""
    with safe_open(str(path), framework="pt") as file:
        return {
            key.removeprefix(ENCODER_PREFIX): file.get_tensor(key)
            for key in file.keys()  # noqa: SIM118 (safe_open has keys(), no iteration)
            if key.startswith(ENCODER_PREFIX)
        }
