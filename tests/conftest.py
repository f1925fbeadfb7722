"""Shared fixtures. No hub access anywhere in the suite."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny tensors on 2 shared cores: one intra-op thread is many times faster than a contended pool.
# Set before torch is imported so Ray workers started by the tests inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE (vocab 512) trained on the bundled corpus; unk 0, bos 1, eos 2, no pad token."""
    from refine.models.tiny import train_tiny_tokenizer

    return train_tiny_tokenizer(vocab_size=512)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tiny_tokenizer, tmp_path_factory):
    """The tiny tokenizer saved to a directory (for code that loads by path)."""
    path = tmp_path_factory.mktemp("tiny_tokenizer")
    tiny_tokenizer.save_pretrained(path)
    return path
