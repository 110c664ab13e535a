"""LoRA on decoder (and encoder) classifiers: padding, target modules, the head, save/reload/merge, and
recipes/lora_decoder.py end to end on tiny models and the synthetic data set."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, SHARED, decoder_args, quick_start, run_quick_start
from test_recipes import RUN_FILES, load_recipe, synthetic_data, synthetic_files

from longtail.adapters import (
    ADAPTER_FILES,
    AdapterArguments,
    add_lora,
    head_modules,
    linear_layer_names,
    load_adapter_classifier,
    merge_adapter,
    peft_training_args,
    resolve_target_modules,
)
from longtail.training import (
    PADDING_PROBE,
    ModelArguments,
    check_padding,
    load_classifier,
    load_tokenizer,
    padding_side_works,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ["Billing dispute", "Late fee", "Closing an account", "Fraud or scam", "Other"]
TEXTS = [
    "I was charged a late fee twice on my statement",
    "They closed my account",
    "Someone opened a credit card in my name and the bank refuses to investigate the fraud at all",
]


def tiny_classifier(model_dir: str, labels=LABELS):
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=model_dir))
    torch.manual_seed(0)
    model = load_classifier(ModelArguments(model_name_or_path=model_dir), labels, tokenizer).eval()
    return model, tokenizer


def logits(model, tokenizer, texts=TEXTS) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(texts, return_tensors="pt", padding=True)).logits


def spy_on_trainer(recipe, monkeypatch) -> dict:
    """Keep the recipe's trainer, to compare the trained model with what was saved."""
    seen = {}
    build = recipe.long_tail_trainer

    def spy(*args, **kwargs):
        seen["trainer"] = build(*args, **kwargs)
        return seen["trainer"]

    monkeypatch.setattr(recipe, "long_tail_trainer", spy)
    return seen


class FakeHubApi:
    """Stands in for huggingface_hub.HfApi: records what would be uploaded."""

    uploads: list = []

    def __init__(self, token=None):
        pass

    def create_repo(self, repo_id, private=None, exist_ok=False):
        import huggingface_hub

        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, folder_path, repo_id, **kwargs):
        files = {str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()}
        FakeHubApi.uploads.append((repo_id, files))


# ---- padding -----------------------------------------------------------------------------------


def test_decoder_without_pad_token_pads_with_eos(tiny_qwen2, tiny_llama, caplog):
    from transformers import AutoTokenizer

    for model_dir in (tiny_qwen2, tiny_llama):
        assert AutoTokenizer.from_pretrained(model_dir).pad_token is None  # as shipped
        with caplog.at_level(logging.INFO, logger="longtail.training"):
            model, tokenizer = tiny_classifier(model_dir)
        assert tokenizer.pad_token == tokenizer.eos_token
        assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
        assert "no pad token: using eos" in caplog.text


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("kind", ["qwen2", "llama"])
def test_text_scores_the_same_alone_and_in_a_padded_batch(kind, side, request):
    """The head pools the last non-pad token with right and with left padding, before and after LoRA."""
    model, tokenizer = tiny_classifier(request.getfixturevalue(f"tiny_{kind}"))
    tokenizer.padding_side = side
    lora = add_lora(model, AdapterArguments())
    torch.nn.init.normal_(lora.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight)
    for m in (model, lora.eval()):
        batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
        assert (batch["attention_mask"] == 0).any()  # the batch really is padded
        with torch.no_grad():
            padded = m(**batch).logits
            for i, text in enumerate(TEXTS):
                alone = m(**tokenizer([text], return_tensors="pt")).logits[0]
                torch.testing.assert_close(padded[i], alone, rtol=1e-5, atol=1e-5)
        assert check_padding(m, tokenizer) == side


def test_padding_side_that_disagrees_with_pooling_is_switched_or_refused(tiny_qwen2, caplog, tmp_path):
    from transformers import AutoTokenizer

    model, tokenizer = tiny_classifier(tiny_qwen2)
    # as SmolLM2's folder, which names no side: a reload pads on its class's default side
    del tokenizer.init_kwargs["padding_side"]

    class Pooling(torch.nn.Module):
        """A head that pools by position instead of finding the last non-pad token."""

        def __init__(self, inner, pool):
            super().__init__()
            self.inner, self.config, self.pool = inner, inner.config, pool

        @property
        def device(self):
            return self.inner.device

        def forward(self, input_ids, attention_mask, **kwargs):
            hidden = self.inner.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return SimpleNamespace(logits=self.pool(self.inner.score(hidden), attention_mask))

    last_position = Pooling(model, lambda x, mask: x[:, -1])  # right only if nothing is padded on the right
    tokenizer.padding_side = "right"
    assert not padding_side_works(last_position, tokenizer, "right")
    with caplog.at_level(logging.WARNING, logger="longtail.training"):
        assert check_padding(last_position, tokenizer) == "left"
    assert tokenizer.padding_side == "left" and "switching the tokenizer to left padding" in caplog.text
    tokenizer(TEXTS)  # the recipe tokenises its splits unpadded, clearing the backend's padding
    tokenizer.save_pretrained(tmp_path)  # the run saves it so: it is served padding on the side that works
    assert AutoTokenizer.from_pretrained(tmp_path).padding_side == "left"

    mean_of_all = Pooling(model, lambda x, mask: x.mean(1))  # counts pads on either side
    with pytest.raises(ValueError, match="alone and inside a padded batch, with left and with right padding"):
        check_padding(mean_of_all, tokenizer)

    model.config.pad_token_id = tokenizer.pad_token_id + 1
    with pytest.raises(ValueError, match="must equal the tokenizer's pad token id"):
        check_padding(model, tokenizer)
    assert len(PADDING_PROBE[1]) > 2 * len(PADDING_PROBE[0])


def test_padding_check_tolerance_is_tight_in_fp32_and_loose_in_half_precision(tiny_qwen2):
    """A head whose padded score is off by 5e-3: a real mismatch in fp32, rounding in bf16."""
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_qwen2))

    class Shifted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = SimpleNamespace(pad_token_id=tokenizer.pad_token_id)

        @property
        def device(self):
            return self.w.device

        def forward(self, input_ids, attention_mask, **kwargs):
            padded = (attention_mask == 0).any(1, keepdim=True).float()
            base = torch.tensor([[1.0, 2.0]]).expand(len(input_ids), 2)
            return SimpleNamespace(logits=base + self.w.float() + 5e-3 * padded)

    model = Shifted()
    assert not padding_side_works(model, tokenizer, "right")
    assert padding_side_works(model.to(torch.bfloat16), tokenizer, "right")
    assert tokenizer.padding_side == "right" and model.training  # both restored


def test_padding_check_needs_a_pad_token_on_both_sides():
    model = SimpleNamespace(config=SimpleNamespace(pad_token_id=None))
    tokenizer = SimpleNamespace(pad_token_id=None)
    with pytest.raises(
        ValueError, match=r"config.pad_token_id \(None\) must equal the tokenizer's pad token id"
    ):
        check_padding(model, tokenizer)


def test_collator_pads_to_a_multiple_of_8_and_the_config_carries_both_label_maps(tiny_qwen2):
    from longtail.training import padding_collator

    model, tokenizer = tiny_classifier(tiny_qwen2)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert model.config.label2id == {"Billing dispute": 0, "Late fee": 1, "Closing an account": 2,
                                     "Fraud or scam": 3, "Other": 4}  # fmt: skip
    assert model.config.problem_type == "single_label_classification" and model.config.num_labels == 5
    rows = [{"input_ids": [5] * n, "attention_mask": [1] * n} for n in (3, 10)]
    batch = padding_collator(tokenizer)(rows)
    assert batch["input_ids"].shape == (2, 16) and batch["attention_mask"].sum().item() == 13
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()


# ---- target modules, head, trainable share ----------------------------------------------------


def test_auto_target_modules_per_architecture(tiny_qwen2, tiny_llama, tiny_modernbert):
    for model_dir in (tiny_qwen2, tiny_llama):
        model, _ = tiny_classifier(model_dir)
        assert resolve_target_modules(model, "auto") == ["q_proj", "k_proj", "v_proj", "o_proj"]
        assert head_modules(model) == ["score"]
        assert "mlp.gate_proj" in resolve_target_modules(model, "all-linear")
    encoder, _ = tiny_classifier(tiny_modernbert)
    assert resolve_target_modules(encoder, "auto") == ["attn.Wqkv", "attn.Wo"]  # not the MLP's Wo
    assert head_modules(encoder) == ["head", "classifier"]
    lora = add_lora(encoder, AdapterArguments())
    targeted = lora.targeted_module_names
    assert targeted and all(n.endswith(("attn.Wqkv", "attn.Wo")) for n in targeted)
    assert not any("mlp" in n for n in targeted)


def test_unknown_target_modules_list_the_linear_layers(tiny_qwen2):
    model, _ = tiny_classifier(tiny_qwen2)
    assert linear_layer_names(model) == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    ]  # fmt: skip
    with pytest.raises(
        ValueError, match=r"query, Wqkv: no such linear layer .*self_attn\.q_proj, .*mlp\.down_proj"
    ):
        add_lora(model, AdapterArguments(lora_target_modules="q_proj,query,Wqkv"))
    with pytest.raises(ValueError, match="score: no such linear layer"):  # the head is trained in full
        resolve_target_modules(model, "score")


def test_target_names_match_whole_module_names_and_auto_needs_every_projection(tiny_qwen2):
    """A name matches a module's whole dotted suffix ('proj' is no layer of Qwen2, whose layers end in
    'q_proj'); "auto" on an unlisted model type takes the first full set of projections it has: a Phi-3-style
    body has o_proj but not q/k/v_proj, so it gets qkv_proj and o_proj, not the Llama set it only half has."""
    from transformers import Phi3Config, Phi3ForSequenceClassification

    model, _ = tiny_classifier(tiny_qwen2)
    with pytest.raises(ValueError, match="proj: no such linear layer"):
        resolve_target_modules(model, "proj")
    assert resolve_target_modules(model, "self_attn.q_proj") == ["self_attn.q_proj"]
    config = Phi3Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, pad_token_id=0, num_labels=3,
    )  # fmt: skip
    phi = Phi3ForSequenceClassification(config)
    assert resolve_target_modules(phi, "auto") == ["qkv_proj", "o_proj"]
    phi.config.model_type = "phi3_like"  # not in AUTO_TARGETS: found by the fallbacks
    assert resolve_target_modules(phi, "auto") == ["qkv_proj", "o_proj"]


def test_a_head_name_that_ends_a_backbone_module_name_is_refused(tiny_qwen2):
    """peft matches modules_to_save by suffix: a backbone module also called `score` would be trained in full
    and saved as if it were the head."""
    model, _ = tiny_classifier(tiny_qwen2)
    model.model.layers[0].score = torch.nn.Linear(4, 4)
    with pytest.raises(ValueError, match=r"would also match backbone modules \['model\.layers\.0\.score'\]"):
        add_lora(model, AdapterArguments())


def test_linear_layer_names_are_relative_to_the_innermost_repeated_block():
    """A mixture of experts repeats blocks inside blocks (model.layers.0.block_sparse_moe.experts.1.w1): each
    expert's layer is named after its expert index (w1), as peft's suffix match reaches every expert."""
    from transformers import MixtralConfig, MixtralForSequenceClassification

    config = MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, num_local_experts=2, num_experts_per_tok=1, pad_token_id=0, num_labels=3,
    )  # fmt: skip
    model = MixtralForSequenceClassification(config)
    assert "model.layers.1.block_sparse_moe.experts.1.w1" in dict(model.named_modules())
    assert linear_layer_names(model) == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "block_sparse_moe.gate", "w1", "w2", "w3",
    ]  # fmt: skip


def test_adapter_options_out_of_range_are_refused():
    """alpha 0 made the adapter's scale alpha / r zero: it never learnt while its report said "LoRA r=16"."""
    for bad, message in (
        ({"lora_r": 0}, "--lora_r must be >= 1, got 0"),
        ({"lora_alpha": 0}, "--lora_alpha must be > 0, got 0"),
        ({"lora_alpha": -8}, "--lora_alpha must be > 0, got -8"),
        ({"lora_dropout": 1.0}, r"--lora_dropout must be in \[0, 1\), got 1.0"),
    ):
        with pytest.raises(ValueError, match=message):
            AdapterArguments(**bad)


def test_head_is_trained_in_full_and_share_is_logged(tiny_qwen2, caplog):
    from peft.utils import ModulesToSaveWrapper

    model, _ = tiny_classifier(tiny_qwen2)
    with caplog.at_level(logging.INFO, logger="longtail.adapters"):
        lora = add_lora(model, AdapterArguments())
    score = lora.base_model.model.score
    assert isinstance(score, ModulesToSaveWrapper)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert "base_model.model.score.modules_to_save.default.weight" in trainable
    assert all("lora_" in n or "score" in n for n in trainable)
    n_trainable, n_total = lora.get_nb_trainable_parameters()
    assert (
        f"Trainable parameters: {n_trainable:,} of {n_total:,} ({100 * n_trainable / n_total:.3f} %)"
        in caplog.text
    )


@pytest.mark.skipif(not (SHARED / "models/Qwen2.5-0.5B/config.json").is_file(), reason="../shared is absent")
def test_trainable_share_on_the_real_qwen_config(caplog):
    """Qwen2.5-0.5B, 113 labels, r 16 on q/k/v/o + the head: the course's ~0.46 % (counted on the meta device)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(SHARED / "models/Qwen2.5-0.5B", num_labels=113, pad_token_id=151643)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
        with caplog.at_level(logging.INFO, logger="longtail.adapters"):
            lora = add_lora(model, AdapterArguments())
    trainable, total = lora.get_nb_trainable_parameters()
    assert trainable == 24 * 16 * (896 + 896 + 896 + 128 + 896 + 128 + 896 + 896) + 896 * 113 == 2_263_936
    assert total == 496_397_952 and "(0.456 %)" in caplog.text


def test_peft_training_args():
    from transformers import TrainingArguments

    args = peft_training_args(
        TrainingArguments(output_dir="unused", gradient_checkpointing=True, report_to="none")
    )
    assert args.label_names == ["labels"]  # trap 8: otherwise no eval loss and no eval_macro_f1
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}


# ---- reload ------------------------------------------------------------------------------------


def test_adapter_whose_base_model_is_not_available(tmp_path):
    for base in ("acme/not-downloaded-7b", str(tmp_path / "deleted-base-model")):
        (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base}))
        with pytest.raises(
            FileNotFoundError, match=rf"base model '{re.escape(base)}', which is not available"
        ):
            load_adapter_classifier(tmp_path)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        merge_adapter(tmp_path / "nowhere")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": None}))
    with pytest.raises(ValueError, match="names no base model"):  # not a FileNotFoundError on "None"
        load_adapter_classifier(tmp_path)


def test_reloading_an_adapter_does_not_call_its_trained_head_untrained(tiny_qwen2, tmp_path, caplog):
    """The base has no head, which the adapter holds: Transformers' "newly initialized: ['score.weight'] ... You
    should probably TRAIN this model" met every reload of a trained run (predict, merge, a distillation teacher; seen
    on SmolLM2). It is gone; a base missing a weight outside the head is still named."""
    import shutil

    from safetensors.torch import load_file, save_file

    model, tokenizer = tiny_classifier(tiny_qwen2)
    run = tmp_path / "run"
    lora = add_lora(model, AdapterArguments())
    lora.save_pretrained(run)
    model.config.save_pretrained(run)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("transformers.modeling_utils").addHandler(handler)
    try:
        reloaded = load_adapter_classifier(run)
        assert not [m for m in seen if "newly initialized" in m]
        torch.testing.assert_close(logits(reloaded, tokenizer), logits(lora.eval(), tokenizer))
        base = tmp_path / "base"  # the same base without its final norm
        shutil.copytree(tiny_qwen2, base)
        weights = load_file(str(base / "model.safetensors"))
        del weights["model.norm.weight"]
        save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
        with caplog.at_level(logging.WARNING, logger="longtail.adapters"):
            load_adapter_classifier(run, str(base))
    finally:
        logging.getLogger("transformers.modeling_utils").removeHandler(handler)
    assert (
        f"{base} holds no weights for ['model.norm.weight'], nor does the adapter: initialised at random"
        in caplog.text
    )
    # an adapter saved without its head (no modules_to_save: a third-party LoRA) leaves the head random: said
    bare = tmp_path / "bare"
    lora.peft_config["default"].modules_to_save = None
    lora.save_pretrained(bare)
    model.config.save_pretrained(bare)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longtail.adapters"):
        load_adapter_classifier(bare)
    assert (
        f"{tiny_qwen2} holds no weights for ['score.weight'], nor does the adapter: initialised at random"
        in (caplog.text)
    )


def test_push_merged_implies_merge_adapter():
    assert AdapterArguments(push_merged=True).merge_adapter is True
    assert AdapterArguments().merge_adapter is False


def test_merge_refuses_a_config_whose_pad_token_is_not_the_tokenizers(tiny_qwen2, tmp_path):
    """The merged model pads with config.pad_token_id: one that is not the tokenizer's pad id would score
    padded batches wrongly, so the merge stops (and with matching ids, writes the merged folder)."""
    model, tokenizer = tiny_classifier(tiny_qwen2)
    lora = add_lora(model, AdapterArguments())
    lora.save_pretrained(tmp_path)
    model.config.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (merge_adapter(tmp_path, tmp_path / "merged") / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    config["pad_token_id"] = tokenizer.pad_token_id + 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"pad_token_id {tokenizer.pad_token_id + 1} != tokenizer pad id"):
        merge_adapter(tmp_path, tmp_path / "merged2")


# ---- the recipe end to end ---------------------------------------------------------------------


def test_yaml_has_course_defaults():
    config = yaml.safe_load((REPO / "recipes/configs/lora_decoder.yaml").read_text())
    encoder = yaml.safe_load((REPO / "recipes/configs/full_ft_encoder.yaml").read_text())
    expected = {
        "model_name_or_path": "Qwen/Qwen2.5-0.5B", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "learning_rate": 2e-4, "per_device_train_batch_size": 32, "num_train_epochs": 3, "warmup_steps": 100,
        "weight_decay": 0.01, "max_length": 128, "metric_for_best_model": "macro_f1",
    }  # fmt: skip
    assert {k: config[k] for k in expected} == expected
    data_keys = ["dataset_name", "text_column", "label_column", "label_merge_map", "label_taxonomy",
                 "min_class_count", "validation_split_fraction", "split_seed", "max_length"]  # fmt: skip
    assert {k: config[k] for k in data_keys} == {k: encoder[k] for k in data_keys}


@pytest.mark.slow
def test_lora_decoder_end_to_end(tiny_qwen2, tmp_path, monkeypatch, fast_bootstrap):
    """Train, save the adapter + head, merge, push; then reload: identical logits; merged within 1e-5."""
    import huggingface_hub
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHubApi)
    monkeypatch.setattr(huggingface_hub, "whoami", lambda token=None: {"name": "me"})  # --push_to_hub's check
    FakeHubApi.uploads = []
    recipe = load_recipe("lora_decoder")
    seen = spy_on_trainer(recipe, monkeypatch)
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "lora"
    metrics = recipe.main(decoder_args(
        "lora_decoder", tiny_qwen2, train, test, out, "--merge_adapter", "true",
        "--push_to_hub", "--hub_model_id", "me/lora-test", "--push_merged", "true",
    ))  # fmt: skip

    for name in ["eval_results.json", "test_results.json", "config.json", *ADAPTER_FILES, *RUN_FILES]:
        assert (out / name).is_file(), name
    assert not (out / "model.safetensors").exists()  # the adapter, not a full copy of the base
    assert (
        metrics["test"]["num_examples"] == json.loads((out / "test_results.json").read_text())["num_examples"]
    )
    trainer = seen["trainer"]
    assert "eval_macro_f1" in trainer.evaluate() and trainer.args.label_names == ["labels"]
    assert any("eval_macro_f1" in row for row in trainer.state.log_history)
    assert "best validation macro_f1" in (out / "report.md").read_text()
    assert "trainable_params" in (out / "report.md").read_text()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert (
        adapter_config["base_model_name_or_path"] == tiny_qwen2
        and "score" in adapter_config["modules_to_save"]
    )
    card = (out / "README.md").read_text()
    assert f"base_model: {Path(tiny_qwen2).name}" in card and "library_name: peft" in card
    assert "PeftModel.from_pretrained" in card and 'adapter = "me/lora-test"' in card

    from safetensors.torch import load_file

    saved = load_file(out / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in saved.items())  # trained
    # reload onto a fresh base: the same logits as the trained model
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.pad_token == tokenizer.eos_token
    trained = logits(trainer.model.eval(), tokenizer)
    reloaded = load_adapter_classifier(out)
    assert torch.equal(logits(reloaded, tokenizer), trained)
    # the merged model: within 1e-5, with the tokenizer and pad_token_id, served by pipeline()
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged")
    assert (
        merged.config.pad_token_id == tokenizer.pad_token_id
        and merged.config.id2label == trainer.model.config.id2label
    )
    torch.testing.assert_close(logits(merged, tokenizer), trained, rtol=0, atol=1e-5)
    assert 'model="me/lora-test-merged"' in (out / "merged" / "README.md").read_text()
    assert (out / "merged" / "temperature.json").read_text() == (out / "temperature.json").read_text()
    clf = pipeline("text-classification", model=str(out / "merged"), device="cpu")
    assert clf(TEXTS)[0]["label"] in merged.config.id2label.values()

    # pushed once: the adapter folder without checkpoints or merged/, then (asked) the merged model
    (adapter_repo, adapter_files), (merged_repo, merged_files) = FakeHubApi.uploads
    assert adapter_repo == "me/lora-test" and merged_repo == "me/lora-test-merged"
    assert {"README.md", "config.json", "report.md", *ADAPTER_FILES} <= adapter_files
    assert not any(f.startswith(("checkpoint-", "merged")) for f in adapter_files)
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= merged_files


def test_lora_refit_on_train_and_validation(tiny_qwen2, tmp_path, fast_bootstrap):
    """--refit_with_validation with LoRA: validation predictions are the selection run's (identical to the same
    run without the refit); the saved adapter is a new one, trained on train + validation, and it is the model
    that scored test (reloaded, its probabilities equal predictions_test.npz)."""
    import numpy as np
    from safetensors.torch import load_file
    from trl import TrlParser

    from longtail.data import prepare_data

    recipe = load_recipe("lora_decoder")
    train, test = synthetic_files(tmp_path)
    runs = {name: tmp_path / name for name in ("selection", "refit")}
    extra = ["--num_train_epochs", "1", "--posthoc_logit_adjustment", "none"]
    recipe.main(decoder_args("lora_decoder", tiny_qwen2, train, test, runs["selection"], *extra))
    args = decoder_args("lora_decoder", tiny_qwen2, train, test, runs["refit"], *extra)
    recipe.main([*args, "--refit_with_validation", "true"])

    val, test_probs = (
        {n: np.load(d / f"predictions_{s}.npz") for n, d in runs.items()} for s in ("validation", "test")
    )
    np.testing.assert_array_equal(val["selection"]["probs"], val["refit"]["probs"])
    assert not np.allclose(test_probs["selection"]["probs"], test_probs["refit"]["probs"])
    splits = json.loads((runs["refit"] / "splits.json").read_text())
    train_results = json.loads((runs["refit"] / "train_results.json").read_text())
    assert train_results["refit_rows"] == len(splits["train"]) + len(splits["validation"])
    assert train_results["refit_epochs"] == 1.0
    assert "## Refit on train + validation" in (runs["refit"] / "report.md").read_text()
    adapters = {n: load_file(d / "adapter_model.safetensors") for n, d in runs.items()}
    assert any(not torch.equal(v, adapters["selection"][k]) for k, v in adapters["refit"].items())

    # the saved adapter scored test
    data_args, *_ = TrlParser(recipe.PARSER_TYPES).parse_args_and_config(args)
    texts = prepare_data(data_args).splits["test"]["text"].tolist()
    model = load_adapter_classifier(runs["refit"]).eval()
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=str(runs["refit"])))
    with torch.no_grad():
        probs = [
            model(**tokenizer([t], truncation=True, max_length=64, return_tensors="pt")).logits.softmax(-1)[0]
            for t in texts
        ]
    np.testing.assert_allclose(torch.stack(probs).numpy(), test_probs["refit"]["probs"], atol=1e-5)


@pytest.mark.slow
def test_lora_on_llama_with_left_padding_and_gradient_checkpointing(tiny_llama, tmp_path, fast_bootstrap):
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "llama"
    load_recipe("lora_decoder").main(decoder_args(
        "lora_decoder", tiny_llama, train, test, out, "--gradient_checkpointing", "true", "--max_steps", "6",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    ))  # fmt: skip
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["training"]["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "left"
    assert set(json.loads((out / "adapter_config.json").read_text())["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj"
    }  # fmt: skip


@pytest.mark.slow
def test_lora_on_an_encoder(tiny_modernbert, tmp_path, fast_bootstrap):
    """The same recipe adapts ModernBERT (attn.Wqkv/attn.Wo); its head + classifier are saved in full."""
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "modernbert"
    load_recipe("lora_decoder").main(decoder_args(
        "lora_decoder", tiny_modernbert, train, test, out, "--max_steps", "4", "--eval_strategy", "no",
        "--save_strategy", "no", "--load_best_model_at_end", "false",
    ))  # fmt: skip
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == {"attn.Wqkv", "attn.Wo"}
    assert {"head", "classifier"} <= set(adapter_config["modules_to_save"])
    from transformers import AutoTokenizer

    reloaded = load_adapter_classifier(out)
    assert logits(reloaded, AutoTokenizer.from_pretrained(out)).shape[-1] == len(reloaded.config.id2label)


def test_adapter_info_rows_of_the_report(tiny_qwen2):
    """The report's rows: LoRA settings and sorted targets; the head alone as trained in full (not peft's default
    head names it appends); trainable parameters counted by hand on the tiny Qwen2 (hidden 32, k/v 16, 2 layers,
    r 16, 5 labels); the quantization line spelled from its options."""
    from longtail.adapters import QuantizationArguments, adapter_info

    model, _ = tiny_classifier(tiny_qwen2)
    base_total = sum(p.numel() for p in model.parameters())
    lora = add_lora(model, AdapterArguments(lora_r=16, lora_alpha=32, lora_dropout=0.05))
    trainable = 2 * 16 * ((32 + 32) + (32 + 16) + (32 + 16) + (32 + 32)) + 32 * len(LABELS)  # q k v o + score
    total = base_total + trainable  # the LoRA matrices and the head's trained copy
    info = adapter_info(lora)
    assert info == {
        "adapter": "LoRA r=16, alpha=32, dropout=0.05 on k_proj, o_proj, q_proj, v_proj",
        "trained_in_full": "score (classification head, saved with the adapter)",
        "trainable_params": f"{trainable:,} of {total:,} ({100 * trainable / total:.3f} %)",
    }
    quant = adapter_info(lora, QuantizationArguments(bnb_4bit_compute_dtype="bfloat16"))["quantization"]
    assert quant == "base in 4-bit NF4, double quantisation, compute bfloat16; head in float32"
    plain = QuantizationArguments(
        bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=False, bnb_4bit_compute_dtype="float16"
    )
    assert adapter_info(lora, plain)["quantization"] == "base in 4-bit FP4, compute float16; head in float32"


def test_hub_repo_ids_default_to_the_folder_name_and_merged_suffix():
    from longtail.adapters import hub_repo_ids

    def ids(hub_model_id=None, merged=None):
        training = SimpleNamespace(hub_model_id=hub_model_id)
        return hub_repo_ids("/runs/qwen-lora", training, AdapterArguments(hub_merged_model_id=merged))

    assert ids() == ("qwen-lora", "qwen-lora-merged")
    assert ids("me/adapter") == ("me/adapter", "me/adapter-merged")
    assert ids("me/adapter", "me/full") == ("me/adapter", "me/full")
    assert ids(merged="me/full") == ("qwen-lora", "me/full")


def test_push_adapter_run_pushes_the_run_files_then_merged_only_when_asked(tmp_path, monkeypatch):
    """The adapter repo gets the run folder's files (not checkpoints/ or merged/); the merged repo gets merged/
    only with --push_merged and a merged folder; token and privacy go to both."""
    import longtail.runs
    from longtail.adapters import push_adapter_run

    pushed = []

    def push_folder(folder, repo_id, token, private):
        pushed.append((repo_id, sorted(p.name for p in Path(folder).iterdir()), token, private))

    monkeypatch.setattr(longtail.runs, "push_folder", push_folder)
    out = tmp_path / "run"
    (out / "checkpoint-10").mkdir(parents=True)
    (out / "checkpoint-10" / "optimizer.pt").write_text("x")
    (out / "merged").mkdir()
    (out / "merged" / "model.safetensors").write_text("m")
    for name in ("adapter_model.safetensors", "README.md"):
        (out / name).write_text(name)
    training = SimpleNamespace(hub_model_id="me/a", hub_token="tok", hub_private_repo=True)
    push_adapter_run(out, training, AdapterArguments(push_merged=True), out / "merged")
    assert pushed == [
        ("me/a", ["README.md", "adapter_model.safetensors"], "tok", True),
        ("me/a-merged", ["model.safetensors"], "tok", True),
    ]
    pushed.clear()
    push_adapter_run(out, training, AdapterArguments(merge_adapter=True), out / "merged")  # not asked
    push_adapter_run(out, training, AdapterArguments(push_merged=True), None)  # nothing merged
    assert [p[0] for p in pushed] == ["me/a", "me/a"]


def test_config_record_names_a_section_per_argument_class(tmp_path):
    import dataclasses

    from transformers import TrainingArguments

    from longtail.adapters import QuantizationArguments, config_record

    adapter, quant = AdapterArguments(lora_r=4), QuantizationArguments()
    training = TrainingArguments(output_dir=str(tmp_path), report_to="none")
    record = config_record(adapter, quant, training)
    assert list(record) == ["adapter", "quantization", "training"]
    assert record["adapter"] == dataclasses.asdict(adapter) and record["adapter"]["lora_r"] == 4
    assert record["quantization"] == dataclasses.asdict(quant) and record["training"] == training.to_dict()


def test_adapter_card_quick_start_names_the_base_and_the_adapter(tmp_path):
    from longtail.adapters import _add_card_section, usage_section

    section = usage_section("Qwen/Qwen2.5-0.5B", "me/adapter", merged=False)
    code = section.split("```python\n")[1]
    assert code == (
        "from peft import PeftModel\n"
        "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline\n"
        "\n"
        'adapter = "me/adapter"\n'
        "config = AutoConfig.from_pretrained(adapter)  # id2label, pad_token_id\n"
        'base = AutoModelForSequenceClassification.from_pretrained("Qwen/Qwen2.5-0.5B", config=config)\n'
        "model = PeftModel.from_pretrained(base, adapter).merge_and_unload()\n"
        'clf = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(adapter))\n'
        'print(clf("I was charged a late fee although I paid on time.", top_k=3))\n'
        "```\n"
    )  # the tokenizer of the run folder: it has the pad token and padding side the run used
    assert "merged/" not in section and section.startswith("## Quick start\n")
    merged = usage_section("Qwen/Qwen2.5-0.5B", "me/adapter", merged=True)
    assert merged.startswith(section) and 'model="<run folder>/merged"' in merged
    card = tmp_path / "README.md"
    card.write_text("# Run\n\n## Versions\n\n- peft\n", "utf-8")
    _add_card_section(card, section)
    assert card.read_text("utf-8") == "# Run\n\n" + section + "\n## Versions\n\n- peft\n"
    card.write_text("# Run\n", "utf-8")
    _add_card_section(card, section)
    assert card.read_text("utf-8") == "# Run\n\n" + section


def test_save_adapter_config_carries_no_quantization_settings(tmp_path):
    """The run folder's config.json (labels, pad id) without the 4-bit settings: a reload or merge onto a
    full-precision base must not read them; only the main process writes it."""
    from transformers import BertConfig

    from longtail.adapters import save_adapter

    config = BertConfig(num_labels=3, pad_token_id=0)
    config.quantization_config = {"load_in_4bit": True}
    config._pre_quantization_dtype = torch.bfloat16

    def trainer(folder, main):
        base = SimpleNamespace(config=config)
        model = SimpleNamespace(get_base_model=lambda: base)
        return SimpleNamespace(save_model=lambda: None, args=SimpleNamespace(output_dir=str(folder)), model=model,
                               is_world_process_zero=lambda: main)  # fmt: skip

    assert save_adapter(trainer(tmp_path / "main", True)) == tmp_path / "main"
    saved = json.loads((tmp_path / "main" / "config.json").read_text())
    assert "quantization_config" not in saved and "_pre_quantization_dtype" not in saved
    assert saved["pad_token_id"] == 0 and len(saved["id2label"]) == 3
    assert config.quantization_config == {"load_in_4bit": True}  # the trained model's own config is untouched
    save_adapter(trainer(tmp_path / "other", False))
    assert not (tmp_path / "other").exists()


def test_yaml_list_of_target_modules():
    assert AdapterArguments(lora_target_modules=["q_proj", "v_proj"]).lora_target_modules == "q_proj,v_proj"


def test_adapter_option_boundaries_and_target_names_with_spaces():
    """r 1 and dropout 0 are valid adapters; "q_proj, v_proj" names two modules (spaces around commas)."""
    from longtail.adapters import target_list

    args = AdapterArguments(lora_r=1, lora_dropout=0.0, lora_alpha=1)
    assert (args.lora_r, args.lora_dropout, args.lora_alpha) == (1, 0.0, 1)
    assert target_list(" q_proj , v_proj ,") == ["q_proj", "v_proj"]


def test_trainable_parameters_of_a_plain_model():
    """Without peft: the parameters that require grad, of all (a frozen 3x4 weight, a trained bias of 3)."""
    from longtail.adapters import trainable_parameters

    layer = torch.nn.Linear(4, 3)
    layer.weight.requires_grad_(False)
    assert trainable_parameters(layer) == (3, 15)


# ---- finish_adapter_run: card, run files, merged model, push (no training) --------------------------------


@pytest.fixture(scope="module")
def adapter_run(tiny_qwen2, tmp_path_factory):
    """What finish_adapter_run is handed at the end of a LoRA run on the tiny Qwen2 and the synthetic data: the
    run folder as save_adapter leaves it (adapter + head, config.json, tokenizer), with every lora_B drawn at
    random so that the merged model is not the base; the adapter model's logits on TEXTS and on the quick start's
    text. Validation and test results are built fresh per call (`results`): the reports fill in their metrics."""
    from longtail.data import DataArguments, prepare_data
    from longtail.runs import public_model_name

    tmp = tmp_path_factory.mktemp("adapter_run")
    train, test = synthetic_files(tmp)
    data_args = DataArguments(
        train_file=train, test_file=test, text_column="Consumer complaint narrative", label_taxonomy="none"
    )
    data = prepare_data(data_args)
    model, tokenizer = tiny_classifier(tiny_qwen2, data.label_names)
    lora = add_lora(model, AdapterArguments(lora_r=4, lora_target_modules="q_proj,v_proj"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
    folder = tmp / "adapter"
    lora.save_pretrained(folder)
    lora.get_base_model().config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    lora.eval()
    return {
        "folder": folder, "data": data, "data_args": data_args, "base": tiny_qwen2,
        "name": public_model_name(tiny_qwen2), "tokenizer": tokenizer, "logits": logits(lora, tokenizer),
        "quick_start_logits": logits(lora, tokenizer, [QUICK_START_TEXT])[0],
    }  # fmt: skip


QUICK_START_TEXT = "I was charged a late fee although I paid on time."


def adapter_results(data) -> list:
    """Validation and test results of random, overconfident probabilities (so the temperature fitted is not 1)."""
    from longtail.report import SplitResult

    rng = np.random.default_rng(0)
    results = []
    for split in ("validation", "test"):
        rows = data.splits[split]
        scores = 4 * rng.standard_normal((len(rows), len(data.label_names)))
        probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
        results.append(SplitResult(split, rows["label_id"].to_numpy(), probs, rows["text"]))
    return results


def finish_run(run, out: Path, *, push=False, tags=("peft", "lora"), sections=None, **adapter_options):
    """finish_adapter_run on a copy of the adapter folder in `out`, as the recipes call it."""
    import shutil

    from transformers import TrainingArguments

    from longtail.adapters import finish_adapter_run

    shutil.copytree(run["folder"], out, dirs_exist_ok=True)
    training = TrainingArguments(output_dir=str(out), report_to="none", hub_model_id="me/a" if push else None)
    arguments = (
        run["data_args"],
        ModelArguments(model_name_or_path=run["base"]),
        AdapterArguments(**adapter_options),
    )
    return finish_adapter_run(
        SimpleNamespace(args=training), title="LoRA: tiny", data=run["data"], results=adapter_results(run["data"]),
        run_info={"model": run["name"], "recipe": "lora_decoder", "adapter": "LoRA r=4"},
        command="python recipes/lora_decoder.py", arguments=arguments, push=push, tags=tags, sections=sections,
    )  # fmt: skip


def front_matter(card: Path) -> dict:
    return yaml.safe_load(card.read_text().split("---\n")[1])


def test_finish_adapter_run_writes_the_card_run_files_and_a_merged_model(
    adapter_run, tmp_path, monkeypatch, capsys, fast_bootstrap
):
    """The card: peft's front matter, one quick start (peft's, naming the base by its public name and this
    folder, noting merged/) before the versions, and its code runs and gives the adapter's top 3; the recipe's
    sections in report.md; run_config.json with a section per argument class; merged/ (an earlier run's files
    gone) scoring as the adapter, with the run's temperature and its own card."""
    import ast

    from transformers import AutoModelForSequenceClassification

    from longtail.adapters import usage_section

    out = tmp_path / "run"
    (out / "merged").mkdir(parents=True)
    (out / "merged" / "stale.bin").write_text("an earlier run's")
    paths = finish_run(adapter_run, out, merge_adapter=True, sections=["## From the recipe\n\nits section"])
    name = adapter_run["name"]
    card = (out / "README.md").read_text()
    assert front_matter(out / "README.md") == {
        "library_name": "peft", "pipeline_tag": "text-classification", "base_model": name,
        "license": "apache-2.0", "tags": ["text-classification", "long-tail", "peft", "lora"],
    }  # fmt: skip
    max_length = adapter_run["data_args"].max_length
    quick_start = usage_section(name, str(out), merged=True, max_length=max_length)
    # the pipeline truncates at the run's length (it does not by itself: a longer text was a traceback)
    assert f"top_k=3, truncation=True, max_length={max_length}))" in quick_start
    assert "\n" + quick_start + "\n## Versions" in card
    assert card.count("## Quick start") == 1 and "from transformers import pipeline\n" not in card
    # the quick start runs as written (the base named by its folder's name: run from beside it)
    code = card.split("## Quick start")[1].split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(Path(adapter_run["base"]).parent)
    capsys.readouterr()
    exec(code, {})
    shown = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    probs = adapter_run["quick_start_logits"].softmax(-1)
    top = probs.argsort(descending=True)[:3].tolist()
    assert [r["label"] for r in shown] == [adapter_run["data"].label_names[i] for i in top]
    np.testing.assert_allclose([r["score"] for r in shown], probs[top].numpy(), atol=1e-5)

    assert "## From the recipe\n\nits section" in (out / "report.md").read_text()
    record = json.loads((out / "run_config.json").read_text())
    assert {"data", "model", "adapter", "training"} <= record.keys()
    assert record["adapter"]["merge_adapter"] is True and record["training"]["output_dir"] == str(out)

    merged = out / "merged"
    assert paths["merged"] == merged and not (merged / "stale.bin").exists()
    model = AutoModelForSequenceClassification.from_pretrained(merged)
    torch.testing.assert_close(
        logits(model, adapter_run["tokenizer"]), adapter_run["logits"], rtol=0, atol=1e-5
    )
    assert json.loads((out / "temperature.json").read_text())["temperature"] != 1.0
    assert (merged / "temperature.json").read_text() == (out / "temperature.json").read_text()
    merged_card = (merged / "README.md").read_text()
    assert front_matter(merged / "README.md") == {
        "library_name": "transformers", "pipeline_tag": "text-classification", "base_model": name,
        "license": "apache-2.0", "tags": ["text-classification", "long-tail", "peft", "lora", "merged"],
    }  # fmt: skip
    assert merged_card.startswith("---") and "\n# LoRA: tiny (merged)\n" in merged_card
    assert "| **adapter** | LoRA r=4 (merged into the base) |" in merged_card
    assert "## Metrics" in merged_card and "| **macro-F1**" in merged_card
    assert "Source: local files `train.csv`, `test.csv`. See the adapter run's `report.md`" in merged_card
    assert f'clf = pipeline("text-classification", model="{merged}")' in merged_card


def test_finish_adapter_run_without_merge_leaves_no_merged_folder(adapter_run, tmp_path, fast_bootstrap):
    """Without --merge_adapter: an earlier run's merged/ is removed (it would serve the old adapter), none is
    written, and the quick start does not mention one."""
    from longtail.adapters import usage_section

    out = tmp_path / "run"
    (out / "merged").mkdir(parents=True)
    (out / "merged" / "model.safetensors").write_text("an earlier run's")
    paths = finish_run(adapter_run, out)
    assert not (out / "merged").exists() and "merged" not in paths
    assert (
        usage_section(
            adapter_run["name"], str(out), merged=False, max_length=adapter_run["data_args"].max_length
        )
        + "\n## Versions"
        in (out / "README.md").read_text()
    )


def test_finish_adapter_run_pushes_the_adapter_and_the_merged_model_only_when_asked(
    adapter_run, tmp_path, monkeypatch, fast_bootstrap
):
    """--push_to_hub: the quick start names the Hub repo; merged/ goes to <repo>-merged, and its card names that
    repo, only with --push_merged; without --push_to_hub nothing is pushed and the cards name the folders."""
    import longtail.runs

    pushed = []
    monkeypatch.setattr(
        longtail.runs, "push_folder",
        lambda folder, repo_id, token, private: pushed.append((repo_id, sorted(p.name for p in Path(folder).iterdir()))),
    )  # fmt: skip

    out = tmp_path / "pushed"
    finish_run(adapter_run, out, push=True, merge_adapter=True)
    assert [repo for repo, _ in pushed] == ["me/a"]  # merged/ written, not pushed
    assert {"README.md", "adapter_model.safetensors", "config.json", "temperature.json"} <= set(pushed[0][1])
    assert 'adapter = "me/a"' in (out / "README.md").read_text()
    merged_card = (out / "merged" / "README.md").read_text()
    assert "me/a-merged" not in merged_card and f'model="{out / "merged"}"' in merged_card

    pushed.clear()
    out = tmp_path / "both"
    finish_run(adapter_run, out, push=True, push_merged=True, tags=("peft", "lora", "qlora"))
    assert [repo for repo, _ in pushed] == ["me/a", "me/a-merged"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "temperature.json", "README.md"} <= set(
        pushed[1][1]
    )
    assert 'model="me/a-merged"' in (out / "merged" / "README.md").read_text()
    assert front_matter(out / "README.md")["tags"][-3:] == ["peft", "lora", "qlora"]
    assert front_matter(out / "merged" / "README.md")["tags"][-2:] == ["qlora", "merged"]

    pushed.clear()
    out = tmp_path / "local"
    finish_run(adapter_run, out, push_merged=True)  # implies the merge; no --push_to_hub
    assert pushed == [] and (out / "merged" / "model.safetensors").is_file()
    assert f'adapter = "{out}"' in (out / "README.md").read_text()
    merged_card = (out / "merged" / "README.md").read_text()
    assert (
        "hub_model_id" not in merged_card and f'model="{out / "merged"}"' in merged_card
    )  # no Hub repo named


def test_merge_adapter_writes_beside_the_adapter_and_takes_another_base_folder(adapter_run, tmp_path):
    """merge_adapter(run) writes <run>/merged; a base passed by hand replaces the one adapter_config.json names
    (here a folder that no longer exists), and the merged model scores as the adapter."""
    import shutil

    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    shutil.copytree(adapter_run["folder"], run)
    config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")})
    )
    with pytest.raises(FileNotFoundError, match="gone"):
        merge_adapter(run)
    assert merge_adapter(run, base_model=adapter_run["base"]) == run / "merged"
    model = AutoModelForSequenceClassification.from_pretrained(run / "merged")
    torch.testing.assert_close(
        logits(model, adapter_run["tokenizer"]), adapter_run["logits"], rtol=0, atol=1e-5
    )


# ---- LoRA from a refit probe (--head_init_from): which head each phase starts from, merge, post-hoc tau ------


@pytest.fixture(scope="module")
def lora_from_refit_probe(tiny_qwen2, tmp_path_factory):
    """A probe on the tiny Qwen2 refit on train + validation (its saved head saw validation; its train-only head
    is kept beside it), then LoRA from it (--head_init_from) refit too and merged, with a fixed post-hoc tau 0.5
    (the probe's head has a bias, so the shift is folded in), and the same LoRA run without the shift. Records the
    head of each model the LoRA recipe loaded, in order: the selection run's start, then the refit's."""
    import functools

    from test_probe import probe_args

    import longtail.report as report
    from longtail.lpft import load_model

    tmp = tmp_path_factory.mktemp("lora_from_probe")
    train, test = synthetic_files(tmp)
    probe, runs, starts = tmp / "probe", {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:  # the module-scoped twin of the fast_bootstrap fixture
            patch.setattr(report, "score_split", functools.partial(report.score_split, n_resamples=100))
            load_recipe("probe_encoder").main(probe_args(
                tiny_qwen2, train, test, probe, tmp / "cache", "--refit_with_validation", "true",
                "--posthoc_logit_adjustment", "0.5",
            ))  # fmt: skip
            for tau in ("0.5", "none"):
                recipe = load_recipe("lora_decoder")
                starts[tau] = []

                def spy(*args, _starts=starts[tau], **kwargs):
                    model = load_model(*args, **kwargs)
                    _starts.append({k: v.detach().clone() for k, v in model.classifier.state_dict().items()})
                    return model

                patch.setattr(recipe, "load_model", spy)
                runs[tau] = tmp / f"lora_tau_{tau}"
                recipe.main(decoder_args(
                    "lora_decoder", tiny_qwen2, train, test, runs[tau], "--head_init_from", str(probe),
                    "--refit_with_validation", "true", "--num_train_epochs", "1", "--posthoc_logit_adjustment", tau,
                    *(["--merge_adapter", "true"] if tau == "0.5" else []),
                ))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return {"probe": probe, "runs": runs, "starts": starts, "train": train, "test": test}


@pytest.mark.slow
def test_lora_from_a_refit_probe_starts_at_its_train_only_head_and_refits_from_its_saved_head(
    lora_from_refit_probe,
):
    """The selection run is chosen on validation, so it starts from the probe's train-only head
    (selection_head.safetensors); the refit on train + validation starts from the probe's saved head, itself refit
    on train + validation (model.safetensors)."""
    from safetensors.torch import load_file

    from longtail.refit import SELECTION_HEAD

    probe = lora_from_refit_probe["probe"]
    train_only = load_file(str(probe / SELECTION_HEAD))
    saved = load_file(str(probe / "model.safetensors"))
    refit = {k.removeprefix("classifier."): v for k, v in saved.items() if k.startswith("classifier.")}
    train_only = {k.removeprefix("classifier."): v for k, v in train_only.items()}
    assert not torch.allclose(train_only["weight"], refit["weight"])  # two different heads to start from
    for starts in lora_from_refit_probe["starts"].values():  # with and without the post-hoc shift
        assert len(starts) == 2
        selection, refit_start = starts
        assert selection.keys() == train_only.keys() == refit_start.keys()
        for k in train_only:
            torch.testing.assert_close(selection[k], train_only[k], rtol=0, atol=0)
            torch.testing.assert_close(refit_start[k], refit[k], rtol=0, atol=0)


@pytest.mark.slow
def test_lora_from_a_probe_merges_onto_the_probe(lora_from_refit_probe):
    """--merge_adapter on a LoRA run whose base is the probe (--head_init_from): merged/ is the probe's
    architecture with the adapter merged in, scoring as the adapter does (it was merged onto the bare decoder named
    by --model_name_or_path: a body of random weights)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = lora_from_refit_probe["runs"]["0.5"]
    tokenizer = AutoTokenizer.from_pretrained(run)
    merged = AutoModelForSequenceClassification.from_pretrained(run / "merged")
    assert merged.config.model_type == "longtail_probe"
    torch.testing.assert_close(
        logits(merged, tokenizer), logits(load_adapter_classifier(run), tokenizer), rtol=0, atol=1e-5
    )
    # its card's quick start imports longtail.probe, and runs as written in a fresh Python
    assert quick_start(run / "merged" / "README.md").startswith("import longtail.probe  # registers")
    assert "'label': " in run_quick_start(run / "merged" / "README.md", run)


@pytest.mark.slow
def test_lora_from_a_probe_card_quick_start_loads_the_probe(lora_from_refit_probe, monkeypatch, capsys):
    """The card of a LoRA run from a probe names the probe run as the base and imports longtail.probe; its quick
    start, run as written (the base named by its folder, from the folder holding it), scores as the adapter. It
    named --model_name_or_path, which the probe's architecture reads none of (a random body), and without the
    import AutoConfig did not know the run's config."""
    from transformers import AutoTokenizer

    from longtail.probe import REGISTER_LINE

    run, probe = lora_from_refit_probe["runs"]["0.5"], lora_from_refit_probe["probe"]
    code = quick_start(run / "README.md")
    assert code.startswith(REGISTER_LINE)
    assert f'from_pretrained("{probe.name}", config=config)' in code and f'adapter = "{run}"' in code
    assert "'label': " in run_quick_start(run / "README.md", probe.parent)  # as written, in a fresh Python
    monkeypatch.chdir(probe.parent)  # and here, to compare its model with the adapter's
    namespace: dict = {}
    exec(code, namespace)
    capsys.readouterr()
    tokenizer = AutoTokenizer.from_pretrained(run)
    torch.testing.assert_close(
        logits(namespace["model"], tokenizer),
        logits(load_adapter_classifier(run), tokenizer),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.slow
def test_lora_refit_from_a_probe_folds_tau_with_the_train_and_validation_prior(lora_from_refit_probe):
    """The probe's head has a bias, so the chosen post-hoc tau is folded into the refit LoRA head too, with the
    train + validation prior: the saved adapter is the one of the same run without the shift, its head's bias
    moved by -0.5 * log(prior of train + validation), counted by hand; the report says so."""
    probe = lora_from_refit_probe
    assert_refit_bias_shifted_by_tau(probe["runs"], probe["train"], probe["test"])


def assert_refit_bias_shifted_by_tau(runs: dict, train: str, test: str) -> None:
    """runs["0.5"] (--posthoc_logit_adjustment 0.5, refit) saved the adapter of runs["none"] with its head's bias
    moved by -0.5 * log(prior of train + validation), counted by hand; its report says so."""
    from safetensors.torch import load_file

    data = synthetic_data(train, test)
    labels = np.concatenate([data.splits[s]["label_id"].to_numpy() for s in ("train", "validation")])
    counts = np.bincount(labels, minlength=len(data.label_names))
    assert counts.min() > 0
    shift = torch.as_tensor(-0.5 * np.log(counts / counts.sum()), dtype=torch.float32)
    shifted, plain = (load_file(str(runs[t] / "adapter_model.safetensors")) for t in ("0.5", "none"))
    bias = "base_model.model.classifier.bias"
    assert shifted.keys() == plain.keys() and bias in plain
    for k in plain:
        expected = plain[k] + shift if k == bias else plain[k]
        torch.testing.assert_close(shifted[k], expected, rtol=0, atol=1e-5, msg=k)
    assert "post-hoc tau 0.5 (with the train + validation prior)" in (runs["0.5"] / "report.md").read_text()
