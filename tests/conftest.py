"""Shared fixtures: tiny models built from configs, with tokenizers trained on the fly; all offline."""

from __future__ import annotations

import os
import sys
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


@pytest.fixture(autouse=True)
def no_leaked_accelerate_env():
    """Each test leaves the ACCELERATE_* environment as it found it. TrainingArguments writes into os.environ
    (bf16/fp16=True: ACCELERATE_MIXED_PRECISION), and a value left behind made every later run of the session, and
    the processes it launched, train in half precision (the two-process tests then missed the one-process losses)."""
    before = {k: v for k, v in os.environ.items() if k.startswith("ACCELERATE_")}
    yield
    for key in [k for k in os.environ if k.startswith("ACCELERATE_") and k not in before]:
        del os.environ[key]
    os.environ.update(before)


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
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
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


def save_seeded(model_cls, config, tokenizer, path: Path) -> Path:
    """`model_cls(config)` drawn from seed 0 (the same random weights in every session, whatever ran before; the
    global generator left as it was), saved to `path` with `tokenizer`."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model_cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
    return str(save_seeded(ModernBertModel, config, tokenizer, path))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT (random weights) whose learned position table holds 64 positions, + WordPiece tokenizer:
    the kind of model a text past its table breaks (rotary ModernBERT and Qwen2 run on)."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = train_wordpiece(corpus())
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return str(save_seeded(BertModel, config, tokenizer, path))


def train_byte_bpe(
    texts: list[str],
    vocab_size: int = 512,
    bos: str | None = None,
    eos: str = "<|endoftext|>",
    padding_side: str = "right",
):
    """A byte-level BPE tokenizer (GPT-2/Qwen/Llama-3 style) with an eos and NO pad token, like most
    decoders; with `bos`, every text is prefixed with it (Llama style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [eos] + ([bos] if bos else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        bos_token=bos or eos,
        model_max_length=512,
        padding_side=padding_side,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids, as decoder tokenizers
    )


def save_tiny_decoder(path: Path, kind: str) -> str:
    """A 2-layer decoder LM (random weights; hidden 32, 4 heads, 2 kv heads, intermediate 64) saved as its
    *ForCausalLM, as Base checkpoints ship; loading it for classification adds a fresh `score` head."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    qwen = kind == "qwen2"
    tokenizer = train_byte_bpe(
        corpus(),
        bos=None if qwen else "<s>",
        eos="<|endoftext|>" if qwen else "</s>",
        padding_side="right" if qwen else "left",  # both sides go through the recipes
    )
    config_cls, model_cls = (Qwen2Config, Qwen2ForCausalLM) if qwen else (LlamaConfig, LlamaForCausalLM)
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=qwen,  # Qwen2.5-0.5B ties its embeddings; Llama does not
    )
    return str(save_seeded(model_cls, config, tokenizer, path))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    """A 2-layer Qwen2 (random weights) + byte-level BPE tokenizer without a pad token."""
    return save_tiny_decoder(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer Llama (random weights) + byte-level BPE tokenizer (bos-prefixed, left padding) without a
    pad token."""
    return save_tiny_decoder(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> str:
    """A 2-layer GPT-2 (random weights; learned absolute positions) + byte-level BPE tokenizer padding on the
    left, without a pad token: a body whose features move when its input is left-padded (rotary Qwen2 and
    Llama shift every position alike, which attention does not see)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = train_byte_bpe(corpus(), padding_side="left")
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    return str(save_seeded(GPT2LMHeadModel, config, tokenizer, path))


def decoder_args(recipe: str, model: str, train: str, test: str, out: Path, *extra: str) -> list[str]:
    """Command line of a quick run of a decoder recipe on the synthetic CSVs (see test_recipes)."""
    return [
        "--config", str(REPO / f"recipes/configs/{recipe}.yaml"),
        "--model_name_or_path", model, "--train_file", train, "--test_file", test,
        "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none",
        "--output_dir", str(out), "--do_predict", "--warmup_steps", "0",
        "--num_train_epochs", "2", "--learning_rate", "5e-3", "--per_device_train_batch_size", "16",
        "--max_length", "64", "--logging_steps", "5", "--save_total_limit", "1", *extra,
    ]  # fmt: skip


@pytest.fixture
def fast_bootstrap(monkeypatch):
    """Reports with 100 bootstrap resamples instead of 1,000 (the CIs of quick runs are not under test)."""
    import functools

    import longtail.report

    monkeypatch.setattr(
        longtail.report, "score_split", functools.partial(longtail.report.score_split, n_resamples=100)
    )


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for tiny models: they gain nothing from more, and on a shared, busy machine
    OpenMP threads waiting for each other made each forward pass ~100x slower (0.2 s instead of 2 ms)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eval_csv(tmp_path_factory) -> Path:
    """Labelled synthetic complaints (every row with a text and an issue) for export, predict and bench tests."""
    from longtail.synthetic import make_synthetic_complaints

    df = make_synthetic_complaints(160, seed=3)
    df = df[df["Consumer complaint narrative"].fillna("").str.strip() != ""].dropna(subset=["Issue"])
    path = tmp_path_factory.mktemp("eval") / "eval.csv"
    df.to_csv(path, index=False)
    return path


def save_bert_classifier(path: Path, tokenizer, labels: list[str], max_positions: int) -> Path:
    """A 1-layer BERT classifier (random weights, seed 0, the global generator left as it was) over `labels`,
    with `tokenizer`, saved to `path`: the benches' tiny model."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)},
    )  # fmt: skip
    return save_seeded(BertForSequenceClassification, config, tokenizer, path)


def load_bench(name: str, module_name: str | None = None):
    """bench/<name>.py imported as a module (the scripts are not a package), registered as `module_name`
    (default bench_<name>) so that dataclasses and pickling inside it resolve."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        module_name or f"bench_{name}", REPO / "bench" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bench_fixture(name: str):
    """A module-scoped fixture: bench/<name>.py loaded once per test file, as a module of that file's own (so no
    file sees another's patched copy)."""

    @pytest.fixture(scope="module", name=name)
    def fixture(request):
        return load_bench(name, f"bench_{name}_{request.module.__name__}")

    return fixture


inference, scaling, kd_step, train_memory = map(
    bench_fixture, ("inference", "scaling", "kd_step", "train_memory")
)


def quick_start(card: Path) -> str:
    """The Python code of a model card's "Quick start" section."""
    section = Path(card).read_text("utf-8").split("## Quick start", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def run_quick_start(card: Path, cwd: Path) -> str:
    """Run a card's quick start as a user would, in a fresh Python (nothing of longtail imported unless the code
    imports it), offline; its output."""
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", quick_start(card)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def memory_markdown(train_memory, results: list[dict], ratios: dict, command: str = "c") -> str:
    """bench/train_memory.py's train_memory.md for `results` and `ratios`, at the tiny settings its tests use."""
    settings = {"architecture": "tiny (qwen2)", "num_labels": 2, "batch_size": 2, "seq_len": 16, "steps": 1,
                "repeats": 1, "malloc_mmap_threshold": 65536}  # fmt: skip
    report = {"settings": settings, "environment": {"device": "CPU"}, "results": results, "ratios": ratios}
    return train_memory.markdown({**report, "command": command})


def run_as(monkeypatch, script: str) -> None:
    """Run a tool's main() as its command line would: argparse and our one-line errors both name the program by
    sys.argv[0]'s file name (`<script>: error: ...`)."""
    monkeypatch.setattr(sys, "argv", [f"/somewhere/{script}", *sys.argv[1:]])


def refused(main, argv, capsys) -> str:
    """main(argv) ends with a one-line usage error (status 2, no traceback); that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]
