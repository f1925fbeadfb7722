"""Tiny tokenizers and model configs built offline, for tests and the CPU demo.

Nothing here touches the hub: the tokenizer is a byte-level BPE trained on text shipped in `data/corpus/`, and the
models are built from config. The tokenizer mirrors the Llama-2 style tokenizer of the real checkpoints
(unk 0, bos 1, eos 2, no pad token), so "pad = EOS" code paths are exercised exactly as on the real models.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

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


def _cpu_fla_kwargs(vocab_size: int) -> dict:
    """Settings shared by the tiny fla configs: 2 layers, 64 wide, Llama-style special ids, unfused norms / CE
    (fla's fused versions are Triton-only)."""
    return dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_heads=2,
        vocab_size=vocab_size,
        **SPECIAL_TOKEN_IDS,
        fuse_norm=False,
        fuse_swiglu=False,
        fuse_cross_entropy=False,
        fuse_linear_cross_entropy=False,
        tie_word_embeddings=False,
    )


def tiny_deltanet_config(vocab_size: int = 512, **overrides):
    """A 2-layer, 64-wide fla DeltaNet config that runs on CPU."""
    from fla.models import DeltaNetConfig

    return DeltaNetConfig(**{**_cpu_fla_kwargs(vocab_size), **overrides})


def tiny_gated_deltanet_config(vocab_size: int = 512, **overrides):
    """A 2-layer, 64-wide fla GatedDeltaNet config (head dim 32) that runs on CPU."""
    from fla.models import GatedDeltaNetConfig

    kwargs = {**_cpu_fla_kwargs(vocab_size), "head_dim": 32, "expand_v": 1, **overrides}
    return GatedDeltaNetConfig(**kwargs)
