"""Tokenizers of a VLA: the pretrained model's own, or a small word-level one built from the data's
instructions (for models built from a config, which no hub tokenizer fits), saved into the run."""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from hlrp_lab.lib.errors import SpecError

# The local tokenizer's special tokens, at these ids (a VLM config built from scratch refers to them).
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>", "<image>", "<vision_start>", "<vision_end>"]
LOCAL_VOCAB = 1024  # at most; small instruction sets give far fewer words


def local_tokenizer(instructions: list[str]) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer over the words of ``instructions``; unseen words become <unk>."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordLevelTrainer(vocab_size=LOCAL_VOCAB, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(instructions or [""], trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        model_max_length=4096,
    )


def pretrained_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of a hub model id or a local model directory."""
    try:
        return AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise SpecError(
            f"model.vla.pretrained: cannot load the tokenizer of {name!r} ({str(err).splitlines()[0]}); give "
            "a hub id this machine can download, or a local save_pretrained directory with its tokenizer"
        ) from None


def with_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> PreTrainedTokenizerBase:
    """``tokenizer`` with ``tokens`` added as special tokens (a no-op for those it has)."""
    tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_extra_special_tokens=False)
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    tokenizer.save_pretrained(directory)


def load_tokenizer(directory: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(directory)
