"""Shared fixtures: tiny models built from configs, with tokenizers trained on the fly; all offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CFPB_CSV = SHARED / "data" / "cfpb" / "complaints_dev.csv"
needs_shared = pytest.mark.skipif(not CFPB_CSV.is_file(), reason="../shared (real CFPB data) is absent")


def corpus(n: int = 600) -> list[str]:
    from longtail.synthetic import make_synthetic_complaints

    df = make_synthetic_complaints(n, seed=123)
    return [t for t in df["Consumer complaint narrative"].fillna("") if t]


def train_wordpiece(texts: list[str], vocab_size: int = 600):
    """A BERT-style tokenizer ([CLS] x [SEP]) trained on the given texts."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


@pytest.fixture(scope="session")
def tiny_modernbert(tmp_path_factory) -> str:
    """A 2-layer ModernBERT (random weights) + WordPiece tokenizer, saved as a local model folder."""
    from transformers import ModernBertConfig, ModernBertModel

    path = tmp_path_factory.mktemp("tiny-modernbert")
    tokenizer = train_wordpiece(corpus())
    config = ModernBertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=512,
        local_attention=64,
        global_attn_every_n_layers=2,
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        reference_compile=False,
    )
    ModernBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
