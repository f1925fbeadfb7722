"""Tiny tokenizers and model configs built offline, for tests and the CPU demo.

Nothing here touches the hub: the tokenizer is a byte-level BPE trained on text shipped in `data/corpus/`, and the
models are built from config. The tokenizer mirrors the Llama-2 style tokenizer of the real checkpoints
(unk 0, bos 1, eos 2, no pad token), so "pad = EOS" code paths are exercised exactly as on the real models.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from refine.models.families import DEMO_FAMILY

REPO_ROOT = Path(__file__).resolve().parents[2]
CORPUS_PATH = REPO_ROOT / "data" / "corpus" / "python_docs.parquet"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]
# the tiny models' special ids are the tokenizer's: bos 1, eos 2, no pad (as the real checkpoints)
SPECIAL_TOKEN_IDS = {"bos_token_id": SPECIAL_TOKENS.index("<s>"), "eos_token_id": SPECIAL_TOKENS.index("</s>"),
                     "pad_token_id": None}


def corpus_texts(path: str | Path = CORPUS_PATH) -> list[str]:
    """The bundled corpus documents (column `text`)."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["text"]).column("text").to_pylist()


def train_tiny_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 512):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on `texts` (default: the bundled corpus).

    Deterministic for the same texts and vocab size. No pad token is set (as with the real checkpoints).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus_texts() if texts is None else texts)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>", clean_up_tokenization_spaces=False
    )


def tiny_config(family: str, vocab_size: int = 512, **overrides):
    """The tiny CPU config of a family of `refine.models.families` (2 layers, 64 wide, this module's special ids)."""
    import importlib

    from refine.models.families import family_named  # (the table; fla's configs import on demand)

    entry = family_named(family)
    if entry.tiny_builder:
        module, _, name = entry.tiny_builder.partition(":")
        return getattr(importlib.import_module(module), name)(vocab_size=vocab_size, **overrides)
    return entry.config_cls()(**{**entry.tiny, "vocab_size": vocab_size, **SPECIAL_TOKEN_IDS, **overrides})


def tiny_deltanet_config(vocab_size: int = 512, **overrides):
    """The tiny config of the embedded demo's family (`DEMO_FAMILY`: a 2-layer, 64-wide fla DeltaNet)."""
    return tiny_config(DEMO_FAMILY, vocab_size, **overrides)
