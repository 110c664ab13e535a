"""Layer-wise learning-rate decay (`--layer_lr_decay`, longtail.layer_decay): the rate of each parameter, the
step Trainer's AdamW actually takes with it, and the recipes' selection run and refit using it."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import decoder_args
from test_recipes import encoder_args, load_recipe, synthetic_files
from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

from longtail.layer_decay import layerwise_param_groups, parameter_depths

DECAY = 0.5


def expected_scale(name: str, layers: int) -> float:
    """The rate a parameter should get, by its name: embeddings d^(L+1), layer i d^(L-i), the rest 1."""
    if m := re.search(r"\.layers\.(\d+)\.", name):
        return DECAY ** (layers - int(m.group(1)))
    if "embed" in name:
        return DECAY ** (layers + 1)
    return 1.0


def lora_qwen2(path: str):
    from longtail.adapters import AdapterArguments, add_lora

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    return add_lora(model, AdapterArguments(lora_r=4, lora_target_modules="q_proj,v_proj"))


@pytest.mark.parametrize("kind", ["modernbert", "qwen2", "qwen2+lora"])
def test_each_parameter_gets_its_layers_rate(kind, tiny_modernbert, tiny_qwen2):
    path = tiny_modernbert if kind == "modernbert" else tiny_qwen2
    if kind == "qwen2+lora":
        model = lora_qwen2(path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    decay_names = Trainer.get_decay_parameter_names(None, model)
    groups = layerwise_param_groups(model, 2e-3, DECAY, 0.1, decay_names)

    by_id = {id(p): n for n, p in model.named_parameters()}
    seen = [by_id[id(p)] for g in groups for p in g["params"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)  # each trainable parameter once, no frozen one
    for g in groups:
        for p in g["params"]:
            name = by_id[id(p)]
            assert g["lr"] == pytest.approx(2e-3 * expected_scale(name, 2), rel=1e-12), name
            assert g["weight_decay"] == (0.1 if name in decay_names else 0.0), name
    scales = {round(g["lr"] / 2e-3, 6) for g in groups}
    if kind == "qwen2+lora":  # the base (embeddings included) is frozen: adapters in layers 0-1, the head
        assert scales == {0.25, 0.5, 1.0}
        assert any(".lora_A." in by_id[id(p)] for g in groups if g["lr"] == 2e-3 * 0.25 for p in g["params"])
    else:
        assert scales == {0.125, 0.25, 0.5, 1.0}
    assert groups[0]["lr"] == 2e-3  # the head's first: Trainer logs the first group's rate


def test_depths_follow_registration_and_a_model_without_layers_is_refused():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(5, 4)  # before the first layer: the embeddings, whatever its name
            self.h = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
            self.ln_f = torch.nn.LayerNorm(4)  # after the last layer: with the head
            self.score = torch.nn.Linear(4, 2)

    depths = parameter_depths(Net())
    assert depths["wte.weight"] == 0 and depths["h.0.weight"] == 1 and depths["h.2.bias"] == 3
    assert depths["ln_f.weight"] == depths["score.bias"] == 4
    with pytest.raises(ValueError, match=r"no numbered layers.*Sequential.*--layer_lr_decay 1"):
        parameter_depths(torch.nn.Sequential(torch.nn.Linear(2, 2)))

    from longtail.lpft import LPFTArguments

    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=rf"--layer_lr_decay must be in \(0, 1\], got {bad}"):
            LPFTArguments(layer_lr_decay=bad)


def test_lpft_warm_up_options_are_checked(caplog):
    """nan / inf passed the "< 0" and "<= 0" checks; a warm-up learning rate without a warm-up went unused unsaid."""
    import logging

    from longtail.lpft import LPFTArguments

    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(
            ValueError, match=rf"^--head_warmup_epochs must be a finite number >= 0, got {bad}$"
        ):
            LPFTArguments(head_warmup_epochs=bad)
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(
            ValueError, match=rf"^--head_warmup_learning_rate must be a finite number > 0, got {bad}$"
        ):
            LPFTArguments(head_warmup_learning_rate=bad)
    with caplog.at_level(logging.WARNING, logger="longtail.lpft"):
        LPFTArguments(head_warmup_epochs=1, head_warmup_learning_rate=5e-3)
        LPFTArguments()
        assert caplog.text == ""
        LPFTArguments(head_warmup_learning_rate=5e-3)
    assert caplog.messages == [
        "--head_warmup_learning_rate 0.005 is not used: there is no head-only warm-up (--head_warmup_epochs 0)"
    ]


def bare_trainer(model_dir: str, out, **overrides):
    """A LongTailTrainer with the decay on 8 rows in one batch: AdamW at a constant 1e-3, no weight decay."""
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from longtail.losses import LongTailTrainer, LossArguments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3)
    rows = Dataset.from_dict(
        {**tokenizer([f"complaint {i} about a loan" for i in range(8)]), "labels": [0, 1, 2, 0, 1, 2, 0, 1]}
    )
    settings = dict(
        output_dir=str(out),
        max_steps=1,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        save_strategy="no",
        report_to=[],
        max_grad_norm=0.0,  # no clipping: a clipped gradient can fall near AdamW's eps
        use_cpu=True,
        logging_steps=1,
        seed=0,
    )
    trainer = LongTailTrainer(
        model=model,
        args=TrainingArguments(**{**settings, **overrides}),
        train_dataset=rows,
        data_collator=DataCollatorWithPadding(tokenizer),
        loss_args=LossArguments(),
        train_counts={0: 3, 1: 3, 2: 2},
    )
    trainer.layer_lr_decay = DECAY
    return trainer


def test_one_adamw_step_moves_each_layer_by_its_rate(tiny_modernbert, tmp_path):
    """AdamW's first step moves a weight by lr * g / (|g| + eps), i.e. by its group's rate wherever the gradient
    is not tiny: the largest move in each tensor is the rate Trainer's optimizer and scheduler really used."""
    trainer = bare_trainer(tiny_modernbert, tmp_path)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    for name, step in moved.items():
        assert step == pytest.approx(1e-3 * expected_scale(name, 2), rel=1e-3), name
    assert trainer.state.log_history[0]["learning_rate"] == 1e-3  # the head's rate is the one logged


def test_a_resumed_run_gets_its_layered_optimizer_back(tiny_modernbert, tmp_path):
    """Resumed from its first checkpoint (the same options), a run ends with the uninterrupted run's weights: the
    checkpoint's per-layer groups load into the optimizer the decay builds again."""
    steps = {"max_steps": 3, "save_strategy": "steps", "save_steps": 1}
    whole = bare_trainer(tiny_modernbert, tmp_path / "whole", **steps)
    whole.train()
    resumed = bare_trainer(tiny_modernbert, tmp_path / "whole", **steps)
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-1"))
    assert len(resumed.optimizer.param_groups) == len(whole.optimizer.param_groups) > 2
    for (name, p), q in zip(whole.model.named_parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)


def test_a_resume_with_another_decay_is_refused(tiny_modernbert, tmp_path):
    """The checkpoint records its decay; a resume that asks for another one stops before training, naming both.
    torch alone would load a same-shaped optimizer state (0.5 -> 0.8) silently, with the old rates. A checkpoint
    without the record (another trainer's) falls back to torch's group check, reworded."""
    first = bare_trainer(tiny_modernbert, tmp_path, save_strategy="steps", save_steps=1)
    first.train()
    checkpoint = tmp_path / "checkpoint-1"
    assert json.loads((checkpoint / "layer_lr_decay.json").read_text()) == {"layer_lr_decay": DECAY}
    for other in (0.8, 1.0):
        resumed = bare_trainer(tiny_modernbert, tmp_path, max_steps=2)
        resumed.layer_lr_decay = other
        with pytest.raises(
            ValueError,
            match=rf"written with --layer_lr_decay {DECAY}, this run asks for --layer_lr_decay {other}",
        ):
            resumed.train(resume_from_checkpoint=str(checkpoint))
        assert resumed.state.global_step == 0
    (checkpoint / "layer_lr_decay.json").unlink()
    resumed = bare_trainer(tiny_modernbert, tmp_path, max_steps=2)
    resumed.layer_lr_decay = 1.0
    with pytest.raises(
        ValueError, match="has another optimizer layout, this run asks for --layer_lr_decay 1.0"
    ):
        resumed.train(resume_from_checkpoint=True)  # Trainer's own "the last checkpoint"


def test_check_resume_refuses_any_other_decay_lower_or_higher(tmp_path):
    """The recorded decay must equal the asked one: a lower one is refused as well as a higher one."""
    from longtail.layer_decay import DECAY_FILE, check_resume

    (tmp_path / DECAY_FILE).write_text(json.dumps({"layer_lr_decay": 0.5}))
    check_resume(tmp_path, 0.5)
    for other in (0.3, 0.8):
        with pytest.raises(
            ValueError, match=rf"written with --layer_lr_decay 0.5, .* --layer_lr_decay {other}"
        ):
            check_resume(tmp_path, other)
    check_resume(tmp_path / "elsewhere", 0.3)  # no record: Trainer's own load decides


def test_recipes_train_and_refit_with_the_decay(
    tiny_modernbert, tiny_qwen2, tmp_path, monkeypatch, one_torch_thread
):
    """full_ft_encoder (head warm-up, then the run; the refit repeats both) and lora_decoder: every optimizer but
    the head-only warm-ups' has one rate per layer; run_config.json and report.md record the decay."""
    from longtail.losses import LongTailTrainer

    made = []
    original = LongTailTrainer.create_optimizer

    def spy(self):
        optimizer = original(self)
        made.append(sorted({round(g["lr"] / self.args.learning_rate, 6) for g in optimizer.param_groups}))
        return optimizer

    monkeypatch.setattr(LongTailTrainer, "create_optimizer", spy)
    train, test = synthetic_files(tmp_path)
    quick = ("--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end",
             "false", "--layer_lr_decay", str(DECAY), "--refit_with_validation", "true")  # fmt: skip

    out = tmp_path / "encoder"
    args = encoder_args(tiny_modernbert, train, test, out, *quick, "--head_warmup_epochs", "1")
    load_recipe("full_ft_encoder").main(args)
    layered = [0.125, 0.25, 0.5, 1.0]
    assert made == [[1.0], layered, [1.0], layered]  # warm-up, run; the refit's warm-up, the refit
    assert json.loads((out / "run_config.json").read_text())["lpft"]["layer_lr_decay"] == DECAY
    assert "layer-wise lr decay 0.5: fixed" in (out / "report.md").read_text()

    made.clear()
    out = tmp_path / "lora"
    load_recipe("lora_decoder").main(decoder_args("lora_decoder", tiny_qwen2, train, test, out, *quick))
    assert made == [[0.25, 0.5, 1.0], [0.25, 0.5, 1.0]]  # run, refit: adapters in layers 0-1, the head
    assert json.loads((out / "run_config.json").read_text())["lpft"]["layer_lr_decay"] == DECAY
