"""QLoRA: the base in 4-bit NF4 (bitsandbytes runs it on CPU), the head unquantized in float32 and saved,
compute dtype by hardware, and recipes/qlora_decoder.py end to end on a tiny Qwen2."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import decoder_args
from test_lora import TEXTS, assert_refit_bias_shifted_by_tau, logits, spy_on_trainer
from test_recipes import RUN_FILES, load_recipe, synthetic_files

import longtail.adapters
from longtail.adapters import (
    ADAPTER_FILES,
    AdapterArguments,
    QuantizationArguments,
    add_lora,
    compute_dtype,
    load_adapter_classifier,
    load_quantized_classifier,
)
from longtail.cli import MissingDependencyError, UsageError
from longtail.training import ModelArguments, check_padding, load_tokenizer

bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_compute_dtype_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_dtype("auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert compute_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))  # T4: bf16 is emulated
    assert compute_dtype("auto") == torch.float16
    assert compute_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(ValueError, match="bnb_4bit_compute_dtype"):
        QuantizationArguments(bnb_4bit_compute_dtype="int8")


def test_head_stays_unquantized_in_float32(tiny_llama):
    """Even with a bf16 compute dtype: the backbone's linears are 4-bit, the head a float32 nn.Linear."""
    from peft.utils import ModulesToSaveWrapper
    from transformers import TrainingArguments

    model_args = ModelArguments(model_name_or_path=tiny_llama)
    tokenizer = load_tokenizer(model_args)
    args = TrainingArguments(output_dir="unused", gradient_checkpointing=True, report_to="none")
    model = load_quantized_classifier(
        model_args, QuantizationArguments(bnb_4bit_compute_dtype="bfloat16"), ["a", "b", "c"], tokenizer, args
    )
    attention = model.model.layers[0].self_attn
    assert isinstance(attention.q_proj, bnb.nn.Linear4bit) and attention.q_proj.weight.quant_type == "nf4"
    assert attention.q_proj.weight.quant_state.nested  # double quantisation
    assert type(model.score) is torch.nn.Linear and model.score.weight.dtype == torch.float32
    assert model.is_gradient_checkpointing
    lora = add_lora(model, AdapterArguments())
    head = lora.base_model.model.score
    assert isinstance(head, ModulesToSaveWrapper)
    assert (
        head.modules_to_save["default"].weight.dtype == torch.float32
        and head.modules_to_save["default"].weight.requires_grad
    )
    assert check_padding(lora, tokenizer) == "left"  # within bf16 tolerance


def test_every_head_module_of_an_encoder_stays_unquantized(tiny_modernbert):
    """ModernBERT's head is two modules, `head` (dense + norm) then `classifier`: both stay float32 nn.Linear,
    not only the last one (all that transformers keeps out of 4-bit by itself)."""
    from transformers import TrainingArguments

    model_args = ModelArguments(model_name_or_path=tiny_modernbert)
    args = TrainingArguments(output_dir="unused", report_to="none")
    model = load_quantized_classifier(
        model_args, QuantizationArguments(), ["a", "b", "c"], load_tokenizer(model_args), args
    )
    assert isinstance(model.model.layers[0].attn.Wqkv, bnb.nn.Linear4bit)
    for head in (model.head.dense, model.classifier):
        assert type(head) is torch.nn.Linear and head.weight.dtype == torch.float32


def force_avx512_bf16(monkeypatch) -> None:
    """Make bitsandbytes believe this CPU has AVX512-BF16, where it repacks a 4-bit layer for its CPU inference
    kernel at a no-grad eval forward (kept afterwards: training after an evaluation then fails, and a 32-wide
    layer cannot be repacked at all). The recipes turn that off; forcing it on tests them on any CPU."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def test_4bit_layers_keep_their_training_layout(tiny_qwen2, tmp_path, monkeypatch):
    from transformers import TrainingArguments

    force_avx512_bf16(monkeypatch)
    model_args = ModelArguments(model_name_or_path=tiny_qwen2)
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    model = load_quantized_classifier(
        model_args, QuantizationArguments(), ["a", "b"], load_tokenizer(model_args), args
    )
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)


def test_qlora_without_bitsandbytes_is_a_clear_error(tiny_qwen2, tmp_path, monkeypatch):
    monkeypatch.setattr(longtail.adapters, "bitsandbytes_available", lambda: False)
    with pytest.raises(
        MissingDependencyError,
        match=r"QLoRA loads the base model in 4-bit with bitsandbytes.*lora_decoder\.py",
    ) as raised:
        load_recipe("qlora_decoder").main(
            decoder_args("qlora_decoder", tiny_qwen2, "a.csv", "b.csv", tmp_path / "x")
        )
    assert not (tmp_path / "x").exists()  # failed before touching anything
    # the command line prints it as one line (a UsageError); code that catches ImportError still does
    assert isinstance(raised.value, UsageError) and isinstance(raised.value, ImportError)


@pytest.mark.slow
def test_qlora_decoder_end_to_end(tiny_qwen2, tmp_path, monkeypatch, fast_bootstrap):
    force_avx512_bf16(monkeypatch)  # trains, evaluates and reloads in 4-bit as on such a CPU
    from safetensors import safe_open
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    recipe = load_recipe("qlora_decoder")
    seen = spy_on_trainer(recipe, monkeypatch)
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "qlora"
    metrics = recipe.main(decoder_args(
        "qlora_decoder", tiny_qwen2, train, test, out, "--merge_adapter", "true", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "32",
    ))  # fmt: skip

    for name in ["eval_results.json", "test_results.json", "config.json", *ADAPTER_FILES, *RUN_FILES]:
        assert (out / name).is_file(), name
    assert metrics["validation"]["num_examples"] > 0
    trainer = seen["trainer"]
    assert "eval_macro_f1" in trainer.evaluate()
    assert trainer.args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert trainer.model.get_base_model().is_gradient_checkpointing
    assert isinstance(trainer.model.get_base_model().model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    # the head: saved with the adapter, in float32; config.json carries no quantization settings
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        head = {k: f.get_tensor(k) for k in f.keys() if ".score." in k}
    assert head and all(t.dtype == torch.float32 for t in head.values())
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["pad_token_id"] == config["eos_token_id"]
    report = (out / "report.md").read_text()
    assert "4-bit NF4, double quantisation, compute float32; head in float32" in report
    # the selection line the other Trainer recipes write (`lpft.selection_note`): it lacked the post-hoc tau
    # (chosen, not applied: Qwen2's `score` has no bias) and the temperature
    best = trainer.state.best_model_checkpoint.rsplit("/", 1)[-1]
    best += f", epoch {trainer.state.epoch:g}"  # one epoch: the only checkpoint
    assert (
        f"| **selection** | checkpoint: best validation macro_f1 ({best}); post-hoc tau: chosen on validation, not "
        "applied (the head has no bias); temperature: fitted on half of validation, kept only if it lowers NLL on "
        "the other half (temperature.json, see Temperature scaling); test scored once at the end |"
    ) in report

    # reload in 4-bit onto a fresh base: identical logits
    tokenizer = AutoTokenizer.from_pretrained(out)
    trained = logits(trainer.model.eval(), tokenizer)
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["score"],
    )  # fmt: skip
    reloaded = load_adapter_classifier(out, quantization_config=quant, dtype=torch.float32)
    assert torch.equal(logits(reloaded, tokenizer), trained)
    # merged into the full-precision base: equal to the adapter on that base within 1e-5
    full = load_adapter_classifier(out)
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged")
    torch.testing.assert_close(
        logits(merged, tokenizer, TEXTS), logits(full, tokenizer, TEXTS), rtol=0, atol=1e-5
    )
    assert merged.config.pad_token_id == tokenizer.pad_token_id
    # so its card says that the metrics it shows are the 4-bit run's (they are not the merged model's)
    assert (
        "the metrics above are the 4-bit run's, not this model's"
        in (out / "merged" / "README.md").read_text()
    )


def test_bf16_checkpoint_loads_without_an_fp32_copy_and_keeps_its_embedding_table(tiny_qwen2, tmp_path):
    """A bf16 checkpoint (like the real Qwen2.5) loads in bf16 (no fp32 copy before quantizing); the frozen
    embedding table stays bf16 and changes no value: the same model with the table upcast gives equal logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    bf16_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    AutoTokenizer.from_pretrained(tiny_qwen2).save_pretrained(bf16_dir)
    model_args = ModelArguments(model_name_or_path=str(bf16_dir))
    tokenizer = load_tokenizer(model_args)
    args = TrainingArguments(output_dir="unused", gradient_checkpointing=True, report_to="none")
    torch.manual_seed(0)
    model = load_quantized_classifier(model_args, QuantizationArguments(), ["a", "b", "c"], tokenizer, args)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.model.norm.weight.dtype == torch.float32 and model.score.weight.dtype == torch.float32
    model.eval()
    kept = logits(model, tokenizer, TEXTS)
    model.get_input_embeddings().to(torch.float32)
    torch.testing.assert_close(kept, logits(model, tokenizer, TEXTS), rtol=0, atol=0)


@pytest.mark.slow
def test_qlora_refit_on_train_and_validation(tiny_qwen2, tmp_path, monkeypatch, fast_bootstrap):
    """--refit_with_validation with QLoRA: validation is scored by the selection run's model (the one the
    recipe trained first), test by a second 4-bit model + adapter trained on train + validation, which is the
    adapter saved (reloaded in 4-bit onto a fresh base, it reproduces predictions_test.npz)."""
    import numpy as np
    from transformers import AutoTokenizer, BitsAndBytesConfig

    from longtail.data import DataArguments, prepare_data

    recipe = load_recipe("qlora_decoder")
    seen = spy_on_trainer(recipe, monkeypatch)  # the first trainer built: the selection run's
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "refit"
    recipe.main(decoder_args(
        "qlora_decoder", tiny_qwen2, train, test, out, "--num_train_epochs", "1", "--posthoc_logit_adjustment",
        "none", "--per_device_train_batch_size", "32", "--refit_with_validation", "true",
    ))  # fmt: skip
    splits = json.loads((out / "splits.json").read_text())
    train_results = json.loads((out / "train_results.json").read_text())
    assert train_results["refit_rows"] == len(splits["train"]) + len(splits["validation"])
    assert train_results["refit_epochs"] == 1.0
    assert "## Refit on train + validation" in (out / "report.md").read_text()

    data = prepare_data(
        DataArguments(train_file=train, test_file=test, text_column="Consumer complaint narrative",
                      label_taxonomy="none", max_length=64)
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(out)
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=["score"],
    )  # fmt: skip
    reloaded = load_adapter_classifier(out, quantization_config=quant, dtype=torch.float32).eval()
    saved = {s: np.load(out / f"predictions_{s}.npz")["probs"] for s in ("validation", "test")}
    for split, model in {"test": reloaded, "validation": seen["trainer"].model.eval()}.items():
        with torch.no_grad():
            probs = [
                model(**tokenizer([t], truncation=True, max_length=64, return_tensors="pt")).logits.softmax(
                    -1
                )[0]
                for t in data.splits[split]["text"].tolist()[:8]
            ]
        np.testing.assert_allclose(torch.stack(probs).numpy(), saved[split][:8], atol=1e-5, err_msg=split)
    assert not np.allclose(logits(reloaded, tokenizer), logits(seen["trainer"].model, tokenizer))


@pytest.mark.slow
def test_qlora_refit_folds_tau_into_a_head_with_a_bias(tiny_modernbert, tmp_path, fast_bootstrap):
    """The recipe hands its refit the post-hoc tau the selection run folded into its head. A decoder's head
    (`score`) has no bias: nothing is folded, the tau handed on is 0 (test_posthoc), and the refit has nothing to
    fold either. An encoder's has one (QLoRA on ModernBERT: `classifier`): the refit's saved adapter is the one of
    the same run without the shift, its head's bias moved by -0.5 * log(prior of train + validation), counted by
    hand; the report says so."""
    train, test = synthetic_files(tmp_path)
    runs = {tau: tmp_path / f"tau_{tau}" for tau in ("0.5", "none")}
    for tau, out in runs.items():
        load_recipe("qlora_decoder").main(decoder_args(
            "qlora_decoder", tiny_modernbert, train, test, out, "--num_train_epochs", "1",
            "--per_device_train_batch_size", "32", "--refit_with_validation", "true",
            "--posthoc_logit_adjustment", tau,
        ))  # fmt: skip
    assert_refit_bias_shifted_by_tau(runs, train, test)
