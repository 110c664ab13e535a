"""Distillation: the loss against hand-computed values and its three classic silent bugs, the teacher-logits
cache, label-map checks, precomputed logits, and the recipe end to end (tiny decoder teacher -> tiny
encoder student, different tokenizers)."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from test_recipes import load_recipe, synthetic_data, synthetic_files

from longtail.cli import UsageError
from longtail.data import DataError
from longtail.distill import (
    DistillArguments,
    LabelMapError,
    distillation_loss,
    fit_text,
    kd_term,
    label_columns,
    load_precomputed,
    teacher_fit,
    teacher_logits,
    write_logits_file,
)

# One row by hand: student s = (1, 2, 0), teacher t = (2, 0, 1), gold label 1, T = 2, alpha = 0.7.
#   softmax(s/T) = e^(0.5, 1, 0) / (e^0.5 + e + 1) = (0.3072, 0.5065, 0.1863)
#   softmax(t/T) = e^(1, 0, 0.5) / (e + 1 + e^0.5) = (0.5065, 0.1863, 0.3072)
#   KL(teacher || student) = sum p_t log(p_t / p_s) = 0.2205144151612286
#   CE = -log softmax(s)[1] = log(e + e^2 + 1) - 2 = 0.4076059644443803
#   loss = 0.7 * 4 * 0.2205144151612286 + 0.3 * 0.4076059644443803 = 0.7397221517847542
S, TCH, Y, T, ALPHA = [1.0, 2.0, 0.0], [2.0, 0.0, 1.0], 1, 2.0, 0.7
KL_BY_HAND = 0.2205144151612286
CE_BY_HAND = 0.4076059644443803
LOSS_BY_HAND = 0.7397221517847542


def _p(z, temp):
    e = [math.exp(v / temp) for v in z]
    return [v / sum(e) for v in e]


def test_hand_values_are_what_the_comment_says():
    ps, pt = _p(S, T), _p(TCH, T)
    assert sum(a * math.log(a / b) for a, b in zip(pt, ps, strict=True)) == pytest.approx(
        KL_BY_HAND, abs=1e-15
    )
    assert math.log(math.e + math.e**2 + 1) - 2 == pytest.approx(CE_BY_HAND, abs=1e-15)
    assert ALPHA * T**2 * KL_BY_HAND + (1 - ALPHA) * CE_BY_HAND == pytest.approx(LOSS_BY_HAND, abs=1e-15)


def test_distillation_loss_hand_computed():
    s, t, y = torch.tensor([S]), torch.tensor([TCH]), torch.tensor([Y])
    assert distillation_loss(s, t, y, T, ALPHA).item() == pytest.approx(LOSS_BY_HAND, abs=1e-6)
    assert kd_term(s, t, T).item() == pytest.approx(T**2 * KL_BY_HAND, abs=1e-6)
    # the ends of alpha: CE alone, KD alone
    assert distillation_loss(s, t, y, T, 0.0).item() == pytest.approx(CE_BY_HAND, abs=1e-6)
    assert distillation_loss(s, t, y, T, 1.0).item() == pytest.approx(T**2 * KL_BY_HAND, abs=1e-6)
    # a batch: the KD term is the mean over rows (batchmean), not over rows x classes; a second row whose
    # student equals its teacher adds 0 to the KL and its own CE = log(1 + 2 e^-3) to the hard part
    s2, t2 = torch.tensor([S, [3.0, 0.0, 0.0]]), torch.tensor([TCH, [3.0, 0.0, 0.0]])
    ce2 = math.log(1 + 2 * math.exp(-3))
    expected = ALPHA * T**2 * KL_BY_HAND / 2 + (1 - ALPHA) * (CE_BY_HAND + ce2) / 2
    assert distillation_loss(s2, t2, torch.tensor([Y, 0]), T, ALPHA).item() == pytest.approx(
        expected, abs=1e-6
    )


def _missing_t2(s, t, temp):
    return F.kl_div(
        F.log_softmax(s / temp, -1), F.log_softmax(t / temp, -1), reduction="batchmean", log_target=True
    )


def _reversed_kl(s, t, temp):
    return temp**2 * F.kl_div(
        F.log_softmax(t / temp, -1), F.log_softmax(s / temp, -1), reduction="batchmean", log_target=True
    )


def _softmax_not_log_softmax(s, t, temp):
    return temp**2 * F.kl_div(F.softmax(s / temp, -1), F.softmax(t / temp, -1), reduction="batchmean")


@pytest.mark.parametrize("buggy", [_missing_t2, _reversed_kl, _softmax_not_log_softmax])
def test_each_classic_bug_breaks_the_hand_value(buggy, monkeypatch):
    """Swap each bug into the KD term: the hand-computed loss no longer comes out."""
    import longtail.distill

    s, t, y = torch.tensor([S]), torch.tensor([TCH]), torch.tensor([Y])
    monkeypatch.setattr(longtail.distill, "kd_term", buggy)
    assert abs(longtail.distill.distillation_loss(s, t, y, T, ALPHA).item() - LOSS_BY_HAND) > 0.05


def test_kd_gradient_is_t_times_probability_gap():
    """d/ds T^2 KL(p_t || softmax(s/T)) = T (p_s - p_t) / batch: exact, and different under each bug
    (no T^2: divided by T^2; reversed KL: another vector; softmax inputs: not a KL gradient at all)."""
    torch.manual_seed(0)
    s = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, dtype=torch.float64) * 3
    for temp in (1.0, 4.0):
        (grad,) = torch.autograd.grad(kd_term(s, t, temp), s)
        expected = temp * (torch.softmax(s / temp, -1) - torch.softmax(t / temp, -1)) / 4
        torch.testing.assert_close(grad, expected.detach())
        for buggy in (_missing_t2, _reversed_kl, _softmax_not_log_softmax):
            (bad,) = torch.autograd.grad(buggy(s, t, temp), s)
            if buggy is _missing_t2 and temp == 1.0:
                continue  # T^2 = 1: the same
            assert not torch.allclose(bad, expected.detach(), atol=1e-4), buggy.__name__
    # and the KD term is 0 when the student matches the teacher (not so with softmax inputs)
    assert kd_term(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    assert abs(_softmax_not_log_softmax(t, t, 4.0).item()) > 1e-3


def test_distillation_trainer_loss_uses_the_recipes_hard_loss():
    """compute_loss: the KD term plus (1 - alpha) times the configured hard loss (here a stand-in worth 5), not
    plain CE; a batch without teacher logits (test rows) gets the hard loss alone."""
    from types import SimpleNamespace

    from longtail.distill import DistillationTrainer

    trainer = SimpleNamespace(hard_loss=lambda logits, labels: torch.tensor(5.0), temperature=T, alpha=ALPHA)

    def model(**inputs):
        assert set(inputs) == {"input_ids"}  # labels and teacher logits never reach forward()
        return {"logits": torch.tensor([S])}

    batch = {
        "input_ids": torch.tensor([[1]]),
        "labels": torch.tensor([Y]),
        "teacher_logits": torch.tensor([TCH]),
    }
    loss = DistillationTrainer.compute_loss(trainer, model, batch)
    assert loss.item() == pytest.approx(ALPHA * T**2 * KL_BY_HAND + (1 - ALPHA) * 5.0, abs=1e-6)
    without = {k: v for k, v in batch.items() if k != "teacher_logits"}
    loss, outputs = DistillationTrainer.compute_loss(trainer, model, without, return_outputs=True)
    assert loss.item() == 5.0 and outputs["logits"].tolist() == [S]


def test_distill_arguments_are_checked():
    DistillArguments(teacher_logits="x", kd_alpha=1.0)
    DistillArguments(teacher_logits="x", kd_alpha=0.0)
    for bad in (dict(teacher_logits="x", teacher_model_name_or_path="y"), dict(teacher_logits="none")):
        with pytest.raises(ValueError, match="Pass exactly one of"):
            DistillArguments(**bad)
    # inf passed a "> 0" check and gave a NaN KD term; nan fails any comparison
    for temperature in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="--kd_temperature must be a finite number > 0"):
            DistillArguments(teacher_logits="x", kd_temperature=temperature)
    for alpha in (-0.1, 1.01):
        with pytest.raises(ValueError, match=r"--kd_alpha must be in \[0, 1\]"):
            DistillArguments(teacher_logits="x", kd_alpha=alpha)
    # a batch size below 1 once scored no teacher row (all-zero logits, distilled and cached); a
    # teacher_max_length of 0 once fell back to --max_length unsaid
    for size in (0, -1):
        with pytest.raises(ValueError, match="--teacher_batch_size must be >= 1"):
            DistillArguments(teacher_model_name_or_path="y", teacher_batch_size=size)
        with pytest.raises(ValueError, match="--teacher_max_length must be >= 1"):
            DistillArguments(teacher_model_name_or_path="y", teacher_max_length=size)
    DistillArguments(teacher_model_name_or_path="y", teacher_batch_size=1, teacher_max_length=1)


def test_teacher_column_and_collator_carry_float32_logits(tiny_modernbert):
    import datasets
    from transformers import AutoTokenizer

    from longtail.distill import TEACHER_COLUMN, DistillationCollator, add_teacher_column

    rows = {"input_ids": [[2, 5, 3], [2, 6, 7, 8, 3]], "labels": [0, 1]}
    tokenised = {s: datasets.Dataset.from_dict(rows) for s in ("train", "test")}
    values = np.array([[1 / 3, -2 / 3], [0.1, 7.25]])
    out = add_teacher_column(tokenised, {"train": values})
    assert TEACHER_COLUMN not in out["test"].column_names
    np.testing.assert_array_equal(
        np.asarray(out["train"][TEACHER_COLUMN], np.float32), values.astype(np.float32)
    )
    collate = DistillationCollator(AutoTokenizer.from_pretrained(tiny_modernbert))
    batch = collate([out["train"][0], out["train"][1]])
    assert batch[TEACHER_COLUMN].dtype == torch.float32
    torch.testing.assert_close(batch[TEACHER_COLUMN], torch.tensor(values, dtype=torch.float32))
    assert batch["input_ids"].shape == (2, 8)  # padded to a multiple of 8
    assert TEACHER_COLUMN not in collate([out["test"][0]])


def test_fingerprints_follow_file_names_contents_and_texts(tmp_path):
    from longtail.data import PreparedData
    from longtail.distill import data_fingerprint, teacher_fingerprint

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, name in ((a, "config.json"), (b, "vocab.txt")):
        folder.mkdir()
        (folder / name).write_text("same bytes")
    assert teacher_fingerprint(str(a)) != teacher_fingerprint(str(b))  # a renamed file is another teacher
    before = teacher_fingerprint(str(a))
    (a / "report.md").write_text("not a teacher file")
    (a / "checkpoint-3").mkdir()
    assert teacher_fingerprint(str(a)) == before
    assert teacher_fingerprint(str(a), "org/base") != before
    (a / "tokenizer.json").write_text("{}")
    assert teacher_fingerprint(str(a)) != before
    # a LoRA teacher on a local base: the base's files count, named by the adapter or by --teacher_base_model
    base, lora = tmp_path / "base", tmp_path / "lora"
    base.mkdir(), lora.mkdir()
    (base / "model.safetensors").write_bytes(b"weights 1")
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    first, named = teacher_fingerprint(str(lora)), teacher_fingerprint(str(lora), str(base))
    (base / "model.safetensors").write_bytes(b"weights 2")  # the base retrained in place
    assert teacher_fingerprint(str(lora)) != first and teacher_fingerprint(str(lora), str(base)) != named
    second = teacher_fingerprint(str(lora))
    (base / "notes.md").write_text("not a model file")
    assert teacher_fingerprint(str(lora)) == second

    def data(texts):
        df = pd.DataFrame({"text": texts, "row_id": [0, 1]})
        return PreparedData({"train": df, "validation": df.iloc[:1]}, ["x", "y"], {0: 1, 1: 1})

    assert data_fingerprint(data(["one", "two"])) == data_fingerprint(data(["one", "two"]))
    assert data_fingerprint(data(["one", "two"])) != data_fingerprint(data(["one", "TWO"]))


def test_label_maps_must_agree():
    assert label_columns(["b", "a", "c"], ["a", "b", "c"], "x").tolist() == [1, 0, 2]
    with pytest.raises(LabelMapError, match=r"missing from the teacher: \['d'\]"):
        label_columns(["a", "b"], ["a", "b", "d"], "teacher-dir")
    with pytest.raises(LabelMapError, match=r"absent from the student's training data: \['z'\].*drop_extra"):
        label_columns(["a", "z", "b"], ["a", "b"], "teacher-dir")
    assert label_columns(["a", "z", "b"], ["a", "b"], "t", drop_extra=True).tolist() == [0, 2]


# ---------------------------------------------------------------------------------------------
# Teacher logits: cache, precomputed files
# ---------------------------------------------------------------------------------------------


def _data(train, test, **kw):
    return synthetic_data(train, test, max_length=32, **kw)


def save_teacher(decoder_dir: str, out: Path, label_names, seed: int = 0) -> str:
    """A decoder classifier with the run's label maps (random head: a stand-in for a trained run)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(decoder_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(
        decoder_dir,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_teacher_logits_cache_reuse_and_invalidation(tiny_qwen2, tmp_path, one_torch_thread, caplog):
    caplog.set_level("INFO", logger="longtail.distill")
    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    teacher = save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names)
    args = DistillArguments(teacher_model_name_or_path=teacher, teacher_batch_size=64)
    first, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["cache_status"] == "computed" and (tmp_path / "out/teacher_logits.parquet").is_file()
    assert first["train"].shape == (len(data.splits["train"]), len(data.label_names))
    # the teacher scores a text the same alone as inside its batch (pad token and pooling are right)
    from longtail.distill import load_teacher, teacher_forward

    model, tok, _ = load_teacher(teacher)
    alone = teacher_forward(model, tok, data.splits["validation"]["text"].tolist()[:1], 32, 1)
    np.testing.assert_allclose(alone[0], first["validation"][0], atol=1e-5)

    again, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["cache_status"] == "reused"
    for split in first:
        np.testing.assert_array_equal(again[split], first[split])
    assert "Reusing the teacher logits" in caplog.text

    # a changed max_length, changed data, a changed teacher: each rebuilds
    assert teacher_logits(args, data, tmp_path / "out", max_length=16)[1]["cache_status"] == "computed"
    fewer = _data(train, test, max_train_samples=200)
    assert teacher_logits(args, fewer, tmp_path / "out", max_length=16)[1]["cache_status"] == "computed"
    save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names, seed=1)  # retrained in place
    logits, info = teacher_logits(args, fewer, tmp_path / "out", max_length=16)
    assert info["cache_status"] == "computed"
    assert teacher_logits(args, fewer, tmp_path / "out", max_length=16)[1]["cache_status"] == "reused"

    # a teacher with another label map: a clear error naming the labels, before any weights load
    other = save_teacher(tiny_qwen2, tmp_path / "other", [*data.label_names[:-1], "Not a CFPB issue"])
    with pytest.raises(LabelMapError, match="Not a CFPB issue"):
        teacher_logits(DistillArguments(teacher_model_name_or_path=other), data, tmp_path / "o2", 32)


def test_the_students_rows_a_teacher_run_trained_on_are_counted(
    tiny_qwen2, tmp_path, one_torch_thread, caplog
):
    """A teacher run refit on train + validation (the probe and TF-IDF YAMLs' default) has trained on the student's
    validation rows too, so the train-vs-validation gap cannot show it: the study's probe scored 0.374 on 293
    validation rows it was refit on (0.26 on unseen ones) and the reports said nothing. Counted by text from its
    splits.json (its ids here name other rows), per split, with the refit read from run_config.json."""
    from longtail.data import TEXTS_KEY, norm_digest, normalised

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    teacher = Path(save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names))
    n_train, n_val = len(data.splits["train"]), len(data.splits["validation"])
    digests = {
        s: normalised(data.splits[s]["text"]).map(norm_digest).tolist() for s in ("train", "validation")
    }
    once = [d for d in digests["train"] if digests["train"].count(d) == 1][:100]  # 100 rows, each text once
    by_id = {"train": once, "validation": digests["validation"]}
    (teacher / "splits.json").write_text(
        json.dumps({TEXTS_KEY: {s: {str(10**6 + i): d for i, d in enumerate(v)} for s, v in by_id.items()}})
    )
    args = DistillArguments(teacher_model_name_or_path=str(teacher), teacher_batch_size=64)
    seen = {}
    for refit in (False, True):
        (teacher / "run_config.json").write_text(json.dumps({"refit": {"refit_with_validation": refit}}))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longtail.distill"):
            logits, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
            fit = teacher_fit(logits, data, info["seen"])
        seen[refit] = info["seen"]
        assert (
            "validation scores here, and its row in comparison.md, are in-sample too" in caplog.text
        ) is refit
    assert seen[False] == {"refit": False, "train": [100, n_train], "validation": [0, n_val]}
    assert seen[True] == {"refit": True, "train": [100, n_train], "validation": [n_val, n_val]}
    assert fit_text(fit).endswith(
        f"; its run trained on 100 of these {n_train} train rows and {n_val} of these {n_val} validation rows "
        "(refit on train + validation)"
    )
    (teacher / "splits.json").unlink()  # not a run of these recipes (a downloaded model): nothing to count
    _, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["seen"] is None and "its run trained on" not in fit_text(
        teacher_fit(logits, data, info["seen"])
    )


def test_a_teacher_pass_reads_the_adapter_config_once(tiny_qwen2, tmp_path, monkeypatch, one_torch_thread):
    """`adapter_base` (a Hub adapter's adapter_config.json: a Hub request online) ran twice a pass, for the base's
    resolve and again for the cache key. A counting fake: once a pass, computed or reused, a whole model included
    (None is an answer, not "not read"); the key is the one `teacher_fingerprint` gives alone (caches stay valid)."""
    import longtail.distill as distill
    from longtail.distill import _digest, data_fingerprint, read_logits_table, teacher_fingerprint

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    teacher = save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names)
    args = DistillArguments(teacher_model_name_or_path=teacher, teacher_batch_size=64)
    real, calls = distill.adapter_base, []
    monkeypatch.setattr(distill, "adapter_base", lambda t: calls.append(str(t)) or real(t))
    for status in ("computed", "reused"):
        calls.clear()
        assert teacher_logits(args, data, tmp_path / "out", max_length=32)[1]["cache_status"] == status
        assert calls == [teacher]
    key = _digest(
        teacher_fingerprint(teacher), data_fingerprint(data), 32, list(range(len(data.label_names)))
    )
    assert read_logits_table(tmp_path / "out" / "teacher_logits.parquet")[0]["fingerprint"] == key


def test_teacher_cache_key_of_a_hub_id_follows_its_commit(
    tiny_qwen2, tmp_path, monkeypatch, one_torch_thread
):
    """A Hub-id teacher was keyed by its id alone, so one updated on the Hub reused its old logits. Offline, on a
    Hub cache faked in tmp_path: the same commit reuses the cache, a new commit (a new `main` in the Hub cache, here
    with the same files) scores again. A LoRA teacher's Hub base, named by its adapter or by --teacher_base_model,
    is keyed with its commit too: two commits, two keys; the same commit, the same key."""
    from test_probe import fake_hub_cache, fake_hub_download

    from longtail.distill import teacher_fingerprint

    hub = fake_hub_cache(monkeypatch, tmp_path)
    old, new = "a" * 40, "b" * 40
    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    files = save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names)
    fake_hub_download(hub, "org/teacher", files, old)
    args = DistillArguments(teacher_model_name_or_path="org/teacher", teacher_batch_size=64)
    first, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["cache_status"] == "computed" and info["teacher"] == "org/teacher"
    assert teacher_logits(args, data, tmp_path / "out", max_length=32)[1]["cache_status"] == "reused"
    key = teacher_fingerprint("org/teacher")
    fake_hub_download(hub, "org/teacher", files, new)  # updated on the Hub, downloaded again
    assert teacher_fingerprint("org/teacher") != key
    again, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["cache_status"] == "computed"
    np.testing.assert_allclose(again["train"], first["train"], atol=1e-5)  # the same files: the same logits
    assert teacher_logits(args, data, tmp_path / "out", max_length=32)[1]["cache_status"] == "reused"
    (hub / "models--org--teacher" / "refs" / "main").write_text(old)  # main back at the old commit
    assert teacher_fingerprint("org/teacher") == key

    # a local LoRA teacher on a Hub base: the base's commit counts, named by the adapter or by the option
    base_files = tmp_path / "base_files"
    base_files.mkdir()
    (base_files / "config.json").write_text("{}")
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    main = hub / "models--org--base" / "refs" / "main"
    for commit in (new, old):
        fake_hub_download(hub, "org/base", base_files, commit)
    for base in (None, "org/base"):
        at_old = teacher_fingerprint(str(lora), base)
        assert teacher_fingerprint(str(lora), base) == at_old
        main.write_text(new)
        at_new = teacher_fingerprint(str(lora), base)
        assert at_new != at_old and teacher_fingerprint(str(lora), base) == at_new, base
        main.write_text(old)
        assert teacher_fingerprint(str(lora), base) == at_old, base


def lora_on_a_hub_base(tiny_qwen2, tmp_path, monkeypatch):
    """(Hub cache, data, base folder, LoRA run folder): on a Hub cache faked in tmp_path, a tiny Qwen2 classifier as
    commit "a" * 40 of Hub model org/base, a LoRA run on it (adapter, head, config, tokenizer), and in
    tmp_path/base_new the base as updated on the Hub (other body weights), not yet downloaded."""
    import transformers
    from test_probe import fake_hub_cache, fake_hub_download
    from transformers import AutoModelForSequenceClassification

    from longtail.adapters import AdapterArguments, add_lora

    hub = fake_hub_cache(monkeypatch, tmp_path)
    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    base_old = save_teacher(tiny_qwen2, tmp_path / "base_old", data.label_names)
    updated = AutoModelForSequenceClassification.from_pretrained(base_old)
    with torch.no_grad():
        updated.get_input_embeddings().weight.mul_(-1.5)
    updated.save_pretrained(tmp_path / "base_new")
    fake_hub_download(hub, "org/base", base_old, "a" * 40)
    lora = add_lora(AutoModelForSequenceClassification.from_pretrained("org/base"), AdapterArguments())
    run = tmp_path / "lora_run"
    lora.save_pretrained(run)
    lora.get_base_model().config.save_pretrained(run)
    transformers.AutoTokenizer.from_pretrained(base_old).save_pretrained(run)
    return hub, data, base_old, run


def test_teacher_cache_key_of_a_lora_teachers_hub_base_follows_the_commit_that_loads(
    tiny_qwen2, tmp_path, monkeypatch, one_torch_thread
):
    """A LoRA teacher's Hub base was keyed by the commit the Hub cache last downloaded: nothing resolved it before
    the key, so on a cache hit a base updated on the Hub reused the old base's logits. On a Hub cache faked in
    tmp_path, an online resolve faked where Transformers downloads (the Hub's main moves to a new commit with other
    weights): the next pass scores again, with the new base, and the one after reuses that."""
    import transformers.utils.hub
    from test_probe import fake_hub_download

    from longtail.distill import load_teacher, teacher_forward

    hub, data, base_old, run = lora_on_a_hub_base(tiny_qwen2, tmp_path, monkeypatch)
    old, new = "a" * 40, "b" * 40
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/base"

    args = DistillArguments(teacher_model_name_or_path=str(run), teacher_batch_size=64)
    first, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["cache_status"] == "computed"
    assert teacher_logits(args, data, tmp_path / "out", max_length=32)[1]["cache_status"] == "reused"

    real_download = transformers.utils.hub.hf_hub_download

    def hub_moved_on(repo_id, filename, **kw):  # online, resolving main finds the new commit and downloads it
        if repo_id == "org/base" and (hub / "models--org--base" / "refs" / "main").read_text() == old:
            fake_hub_download(hub, "org/base", str(tmp_path / "base_new"), new)
        return real_download(repo_id, filename, **kw)

    monkeypatch.setattr(transformers.utils.hub, "hf_hub_download", hub_moved_on)
    again, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["cache_status"] == "computed"
    assert (hub / "models--org--base" / "refs" / "main").read_text() == new
    texts = data.splits["validation"]["text"].tolist()[:8]
    on_new = teacher_forward(*load_teacher(str(run), str(tmp_path / "base_new"))[:2], texts, 32, 4)
    np.testing.assert_allclose(again["validation"][:8], on_new, atol=1e-5)
    # the old base's logits are not the ones served
    assert np.abs(again["validation"] - first["validation"]).max() > 1e-3
    assert teacher_logits(args, data, tmp_path / "out", max_length=32)[1]["cache_status"] == "reused"


def test_teacher_cache_key_of_a_hub_adapter_repo_follows_its_bases_commit(
    tiny_qwen2, tmp_path, monkeypatch, one_torch_thread
):
    """A LoRA run pushed to the Hub, as a teacher: Transformers loads it on the base its adapter_config.json names.
    It was keyed by the adapter's commit alone, so a base updated on the Hub reused the old base's logits. On a Hub
    cache faked in tmp_path: the Hub adapter scores as its run folder does; the base's main moved to other weights,
    it scores again, with them, and the next pass reuses that. --teacher_base_model, which its load ignored, is
    refused for a Hub id."""
    from dataclasses import replace

    from test_probe import fake_hub_download

    from longtail.distill import teacher_fingerprint

    hub, data, base_old, run = lora_on_a_hub_base(tiny_qwen2, tmp_path, monkeypatch)
    old, new = "a" * 40, "b" * 40
    # the run, pushed (at a commit of its own: Transformers passes the adapter's commit on to the base's files)
    fake_hub_download(hub, "org/lora", str(run), "c" * 40)

    args = DistillArguments(teacher_model_name_or_path="org/lora", teacher_batch_size=64)
    first, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["cache_status"] == "computed"
    local = teacher_logits(replace(args, teacher_model_name_or_path=str(run)), data, tmp_path / "o2", 32)[0]
    np.testing.assert_allclose(first["validation"], local["validation"], atol=1e-6)
    key = teacher_fingerprint("org/lora")
    fake_hub_download(hub, "org/base", str(tmp_path / "base_new"), new)  # only the base moved on
    assert teacher_fingerprint("org/lora") != key
    again, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info["cache_status"] == "computed"
    assert np.abs(again["validation"] - first["validation"]).max() > 1e-3  # the new base's logits
    assert teacher_logits(args, data, tmp_path / "out", max_length=32)[1]["cache_status"] == "reused"
    (hub / "models--org--base" / "refs" / "main").write_text(old)
    assert teacher_fingerprint("org/lora") == key
    with pytest.raises(UsageError, match="is a Hub id, loaded as its repo says"):
        teacher_logits(replace(args, teacher_base_model=base_old), data, tmp_path / "o3", 32)
    typo = replace(args, teacher_model_name_or_path=str(tmp_path / "lora_rnu"), teacher_base_model=base_old)
    with pytest.raises(Exception, match="neither a local folder nor available") as err:  # not "a Hub id"
        teacher_logits(typo, data, tmp_path / "o3", 32)
    assert "Hub id" not in str(err.value)


def test_precomputed_logits_file_and_run_folder(tmp_path, caplog):
    from longtail.report import SplitResult, save_predictions

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    rng = np.random.default_rng(0)
    logits = {
        s: rng.normal(size=(len(data.splits[s]), len(data.label_names))) for s in ("train", "validation")
    }
    path = write_logits_file(tmp_path / "t.parquet", logits, data, {"teacher": "x"})
    loaded = load_precomputed(path, data)
    np.testing.assert_allclose(loaded["validation"], logits["validation"], rtol=1e-6)
    # rows are matched by row id, not position: a student on a subset of the rows gets its own rows
    fewer = _data(train, test, max_train_samples=100)
    sub = load_precomputed(path, fewer, drop_extra=True)
    position = {int(r): i for i, r in enumerate(data.splits["train"]["row_id"])}
    cols = label_columns(data.label_names, fewer.label_names, "t", drop_extra=True)
    expected = logits["train"][[position[int(r)] for r in fewer.splits["train"]["row_id"]]][:, cols]
    np.testing.assert_allclose(sub["train"], expected, rtol=1e-6)
    # rows the file lacks: an error with the count
    write_logits_file(tmp_path / "few.parquet", {"train": logits["train"][:5]}, fewer_rows(data, 5), {})
    with pytest.raises(DataError, match=r"rows have no teacher logits|no logits for the validation"):
        load_precomputed(tmp_path / "few.parquet", data)

    # a run folder (e.g. baseline_tfidf --predict_train true): predictions_{train,validation}.npz
    run = tmp_path / "run"
    run.mkdir()
    for split in ("train", "validation"):
        df = data.splits[split]
        probs = np.exp(logits[split]) / np.exp(logits[split]).sum(1, keepdims=True)
        save_predictions(
            run,
            SplitResult(split, df["label_id"].to_numpy(), probs, df["text"], row_ids=df["row_id"]),
            data.label_names,
        )
    with caplog.at_level("WARNING", logger="longtail.distill"):
        from_run = load_precomputed(run, data)
    gap = from_run["validation"] - logits["validation"]  # log-probabilities: logits up to a per-row shift
    np.testing.assert_allclose(gap - gap[:, :1], 0, atol=1e-4)
    # how its train predictions were made: unrecorded or in-sample is warned about, cross-fitted is not
    assert "does not record how it was made" in caplog.text
    for folds, warned in ((0, "is in-sample (--predict_train_folds 0)"), (5, None)):
        caplog.clear()
        (run / "run_config.json").write_text(
            json.dumps({"data": {}, "baseline": {"predict_train_folds": folds}})
        )
        with caplog.at_level("WARNING", logger="longtail.distill"):
            load_precomputed(run, data)
        assert (warned in caplog.text) if warned else "predictions_train.npz" not in caplog.text
    (run / "predictions_train.npz").unlink()
    with pytest.raises(DataError, match="predict_train"):
        load_precomputed(run, data)


def _logits_table(path, data, rows=None, width=None, **columns):
    """A hand-made teacher-logits Parquet file: one row per (split, row_id) of `data` (or `rows`), with the
    data's label_names in its metadata and `width` random logits per row; any column can be replaced."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from longtail.distill import METADATA_KEY

    rows = rows or [(s, int(r)) for s in ("train", "validation") for r in data.splits[s]["row_id"]]
    logits = np.random.default_rng(0).normal(size=(len(rows), width or len(data.label_names)))
    columns = {
        "split": [s for s, _ in rows],
        "row_id": [r for _, r in rows],
        "logits": logits.tolist(),
        **columns,
    }
    meta = {"label_names": list(data.label_names)}
    pq.write_table(pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}), path)
    return path


def test_logits_files_need_label_names_and_may_be_arrow(tmp_path):
    import pyarrow.feather
    import pyarrow.parquet as pq

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    path = _logits_table(tmp_path / "t.parquet", data)
    table = pq.read_table(path)
    pyarrow.feather.write_feather(table, tmp_path / "t.arrow")
    from_arrow, from_parquet = load_precomputed(tmp_path / "t.arrow", data), load_precomputed(path, data)
    for split in ("train", "validation"):
        np.testing.assert_array_equal(from_arrow[split], from_parquet[split])
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "bare.parquet")
    with pytest.raises(DataError, match="bare.parquet has no label_names in its metadata"):
        load_precomputed(tmp_path / "bare.parquet", data)


def test_a_teacher_run_with_other_gold_labels_is_refused(tmp_path):
    from longtail.report import SplitResult, save_predictions

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    k = len(data.label_names)
    (tmp_path / "run").mkdir()
    for split in ("train", "validation"):
        df = data.splits[split]
        y = df["label_id"].to_numpy().copy()
        if split == "train":
            y[[3, 8]] = (y[[3, 8]] + 1) % k  # two rows relabelled
        save_predictions(
            tmp_path / "run",
            SplitResult(split, y, np.full((len(df), k), 1.0 / k), None, row_ids=df["row_id"]),
            data.label_names,
        )
    n = len(data.splits["train"])
    with pytest.raises(
        DataError, match=f"run: 2 of {n} train rows have another gold label in the teacher run"
    ):
        load_precomputed(tmp_path / "run", data)


def test_a_teacher_folder_without_train_predictions_says_which_runs_write_them(tmp_path):
    """It named baseline_tfidf alone: a probe run writes them too, and an ensemble only when every member did."""
    from longtail.report import SplitResult, save_predictions

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    df, k = data.splits["validation"], len(data.label_names)
    for name in ("probe", "ensemble"):
        (tmp_path / name).mkdir()
        save_predictions(
            tmp_path / name,
            SplitResult("validation", df["label_id"].to_numpy(), np.full((len(df), k), 1 / k), None,
                        row_ids=df["row_id"]),
            data.label_names,
        )  # fmt: skip
    (tmp_path / "ensemble" / "ensemble.json").write_text("{}")
    with pytest.raises(
        DataError, match=r"\(baseline_tfidf and probe_encoder write it with --predict_train true\)"
    ):
        load_precomputed(tmp_path / "probe", data)
    with pytest.raises(
        DataError, match="an ensemble writes it only when every member ran with --predict_train true"
    ):
        load_precomputed(tmp_path / "ensemble", data)


def test_non_finite_teacher_logits_are_refused(
    tmp_path, tiny_qwen2, tiny_modernbert, one_torch_thread, monkeypatch
):
    """NaN or inf teacher logits (a file, a run folder's probabilities, the teacher's own pass) would make the
    student's weights NaN with a normal-looking train loss: refused before training, naming the source, split,
    count and row ids; nothing is cached."""
    import longtail.distill
    from longtail.report import SplitResult, save_predictions

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    k, ids = len(data.label_names), data.splits["train"]["row_id"].to_numpy()
    logits = {s: np.zeros((len(data.splits[s]), k)) for s in ("train", "validation")}
    logits["train"][[1, 4], 0], logits["train"][6, 2] = np.nan, np.inf
    path = write_logits_file(tmp_path / "nan.parquet", logits, data, {})
    expected = f"nan.parquet: 3 of {len(ids)} train rows have NaN or infinite teacher logits (row ids {ids[[1, 4, 6]].tolist()})"
    with pytest.raises(DataError, match=re.escape(expected)):
        teacher_logits(DistillArguments(teacher_logits=str(path)), data, tmp_path / "o", 32)
    # the recipe stops before training (all train rows: the NaN ones among them)
    argv = distill_args(tiny_modernbert, "none", train, test, tmp_path / "run", "--teacher_logits", str(path))
    with pytest.raises(DataError, match="NaN or infinite"):
        load_recipe("distill").main([*argv, "--max_train_samples", "100000"])
    assert not (tmp_path / "run" / "model.safetensors").exists()

    run = tmp_path / "tfidf_run"  # a run folder: NaN probabilities (zeros are fine: clipped before the log)
    run.mkdir()
    for split in ("train", "validation"):
        df = data.splits[split]
        probs = np.full((len(df), k), 1.0 / k)
        probs[0] = np.eye(k)[0]
        probs[2] = np.nan if split == "validation" else probs[2]
        save_predictions(
            run,
            SplitResult(split, df["label_id"].to_numpy(), probs, None, row_ids=df["row_id"]),
            data.label_names,
        )
    val_id = data.splits["validation"]["row_id"].iloc[2]
    # read as compare reads a run's predictions (`compare.read_predictions`), with its message
    expected = rf"tfidf_run/predictions_validation.npz has NaN or infinite probabilities in 1 of \d+ rows \(row ids \[{val_id}\]\)"
    with pytest.raises(DataError, match=expected):
        teacher_logits(DistillArguments(teacher_logits=str(run)), data, tmp_path / "o", 32)

    # a teacher whose own pass overflows: refused before anything is cached
    teacher = save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names)
    real = longtail.distill.teacher_forward
    monkeypatch.setattr(longtail.distill, "teacher_forward", lambda *a: real(*a) * np.nan)
    with pytest.raises(DataError, match=rf"teacher .*: {len(ids)} of {len(ids)} train rows have NaN"):
        teacher_logits(DistillArguments(teacher_model_name_or_path=teacher), data, tmp_path / "o", 32)
    assert not (tmp_path / "o" / "teacher_logits.parquet").exists()


@pytest.mark.parametrize("case", ["narrow", "wide", "ragged", "duplicate", "other_split", "null", "scalar"])
def test_malformed_logits_files_are_refused(tmp_path, case):
    """A logits file whose rows are narrower or wider than its label_names, of different lengths, repeated,
    empty, or in other splits: a DataError naming the file and the rows, not numpy's IndexError, a silently
    dropped column or a last-row-wins lookup."""
    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    k = len(data.label_names)
    rows = [(s, int(r)) for s in ("train", "validation") for r in data.splits[s]["row_id"]]
    n, ids = len(rows), [r for _, r in rows[:3]]
    change, expected = {
        "narrow": (
            {"width": k - 1},
            f"{n} of {n} rows have {k - 1} logits, but its metadata lists {k} label_names",
        ),
        "wide": (
            {"width": k + 1},
            f"{n} of {n} rows have {k + 1} logits, but its metadata lists {k} label_names",
        ),
        "ragged": (
            {"logits": [[0.0] * (k - (i == 1)) for i in range(n)]},
            f"1 of {n} rows have {k - 1} logits, but its metadata lists {k} label_names (rows train {ids[1]})",
        ),
        "duplicate": ({"rows": rows[:3] + rows}, f"3 train row ids appear more than once (row ids {ids})"),
        "other_split": (
            {"rows": [("val" if s == "validation" else s, r) for s, r in rows]},
            "has no logits for the validation split (found: ['train', 'val'])",
        ),
        "null": ({"row_id": [None] + [r for _, r in rows[1:]]}, "has empty (null) cells in: row_id (1 rows)"),
        "scalar": ({"logits": [0.0] * n}, "its logits column holds double, not a list of numbers per row"),
    }[case]
    path = _logits_table(tmp_path / f"{case}.parquet", data, **change)
    with pytest.raises(DataError, match=re.escape(expected)) as err:
        load_precomputed(path, data)
    assert str(err.value).startswith(str(path))


def test_malformed_teacher_or_vanilla_predictions_are_one_line_through_the_recipe(
    tiny_bert, tmp_path, capsys, monkeypatch
):
    """A teacher run folder's (--teacher_logits) or a --vanilla_run's predictions file was read with plain
    `report.load_predictions`: one without probs was a KeyError traceback, and logits saved as probs were taken as
    probabilities without a word. Now `compare.read_predictions` checks them: compare's one-line message, status 2,
    through the recipe's command-line entry, before any training."""
    from conftest import refused, run_as

    from longtail.cli import run
    from longtail.compare import CompareError
    from longtail.report import SplitResult, save_predictions

    assert issubclass(CompareError, UsageError) and issubclass(DataError, UsageError)
    train, test = synthetic_files(tmp_path)
    data = _data(train, test, max_train_samples=240)
    k = len(data.label_names)
    recipe = load_recipe("distill")
    run_as(monkeypatch, "distill.py")

    def run_folder(name, logits_split=None):
        folder = tmp_path / name
        folder.mkdir()
        for split in ("train", "validation"):
            df = data.splits[split]
            scores = np.random.default_rng(0).normal(size=(len(df), k))
            probs = scores if split == logits_split else np.full((len(df), k), 1.0 / k)
            result = SplitResult(split, df["label_id"].to_numpy(), probs, None, row_ids=df["row_id"])
            save_predictions(folder, result, data.label_names)
        return folder

    # a malformed predictions_train.npz: no probs
    broken = run_folder("broken")
    pred = dict(np.load(broken / "predictions_train.npz", allow_pickle=False))
    np.savez(broken / "predictions_train.npz", **{key: v for key, v in pred.items() if key != "probs"})
    logits = run_folder("logits", logits_split="train")  # logits saved as probs
    vanilla = run_folder("vanilla", logits_split="validation")
    out = tmp_path / "run"
    argv = distill_args(tiny_bert, "none", train, test, out)
    cases = {
        ("--teacher_logits", broken): f"{broken / 'predictions_train.npz'} has no probs (found: label_names, "
        "row_id, y_true): not a predictions file of these tools",
        (
            "--teacher_logits",
            logits,
        ): f"{logits / 'predictions_train.npz'} holds rows that are not probabilities",
        (
            "--vanilla_run",
            vanilla,
        ): f"{vanilla / 'predictions_validation.npz'} holds rows that are not probabilities",
    }
    for (option, folder), message in cases.items():
        extra = [option, str(folder)]
        if option == "--vanilla_run":
            extra += ["--teacher_logits", str(run_folder("teacher"))]
        line = refused(lambda a: run(recipe.main, a), [*argv, *extra], capsys)
        assert line.startswith(f"distill.py: error: {message}"), line
        assert not (out / "model.safetensors").exists()


def test_teacher_that_is_not_a_transformers_model(tmp_path):
    """A TF-IDF or ensemble run folder given as --teacher_model_name_or_path points to --teacher_logits; a path
    that is neither a local folder nor in the Hugging Face cache (offline) is named, not a Hub connection error."""
    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    for name, marker, expected in (
        ("tfidf", "model.joblib", "a scikit-learn TF-IDF run"),
        ("ens", "ensemble.json", "an ensemble"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / marker).write_text("{}")
        with pytest.raises(
            ValueError, match=rf"{expected} .*pass --teacher_logits {tmp_path / name} instead"
        ):
            teacher_logits(
                DistillArguments(teacher_model_name_or_path=str(tmp_path / name)), data, tmp_path / "o", 32
            )
    (tmp_path / "empty").mkdir()
    for teacher, expected in (
        (tmp_path / "empty", "has no config.json"),
        (
            tmp_path / "absent",
            "is neither a local folder nor available in the Hugging Face cache, and the Hub is offline",
        ),
        ("nobody/no-such-model", "is neither a local folder nor available"),
    ):
        with pytest.raises(
            (ValueError, FileNotFoundError), match=rf"--teacher_model_name_or_path {teacher} {expected}"
        ):
            teacher_logits(
                DistillArguments(teacher_model_name_or_path=str(teacher)), data, tmp_path / "o", 32
            )


def test_an_ensemble_of_cross_fitted_runs_teaches(tmp_path, caplog, capsys):
    """`longtail.ensemble` over runs with train predictions (`--predict_train`) mixes them by the setting it chose on
    validation, row by row id, and its folder loads as a teacher; it records how held out they are (the fewest
    folds, 0 if any member is in-sample), and writes none when a member lacks them, saying which."""
    from longtail.ensemble import main as ensemble
    from longtail.report import SplitResult, load_predictions, save_predictions

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    splits, k = ("train", "validation", "test"), len(data.splits["test"])
    rng = np.random.default_rng(1)
    members = []
    for m, folds in enumerate((5, 3)):
        run = tmp_path / f"member{m}"
        run.mkdir()
        probs = {s: rng.dirichlet(np.ones(len(data.label_names)) * 0.3, len(data.splits[s])) for s in splits}
        probs["train"][:k] = probs["test"]  # the first train rows look like the test rows to this member
        order = rng.permutation(len(data.splits["train"])) if m else slice(None)  # member 1: rows shuffled
        for split in splits:
            df = data.splits[split]
            rows = order if split == "train" else slice(None)
            save_predictions(
                run,
                SplitResult(
                    split,
                    df["label_id"].to_numpy()[rows],
                    probs[split][rows],
                    None,
                    row_ids=df["row_id"].to_numpy()[rows],
                ),
                data.label_names,
            )
        (run / "run_config.json").write_text(json.dumps({"baseline": {"predict_train_folds": folds}}))
        members.append(str(run))
    ensemble([*members, "--output_dir", str(tmp_path / "ens"), "--n_resamples", "20"])
    mixed = {s: load_predictions(tmp_path / "ens" / f"predictions_{s}.npz") for s in ("train", "test")}
    by_id = dict(zip(mixed["train"]["row_id"].tolist(), mixed["train"]["probs"], strict=True))
    lookalikes = np.array([by_id[int(r)] for r in data.splits["train"]["row_id"][:k]])
    test_by_id = dict(zip(mixed["test"]["row_id"].tolist(), mixed["test"]["probs"], strict=True))
    np.testing.assert_allclose(
        lookalikes, [test_by_id[int(r)] for r in data.splits["test"]["row_id"]], atol=1e-6
    )
    record = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert record["train_predictions"] == {
        "predict_train_folds": 3,
        "members": [
            {"run": members[0], "predict_train_folds": 5},
            {"run": members[1], "predict_train_folds": 3},
        ],
    }
    assert "cross-fitted in every member (fewest folds: 3)" in (tmp_path / "ens" / "report.md").read_text()
    with caplog.at_level("WARNING", logger="longtail.distill"):
        teacher = load_precomputed(tmp_path / "ens", data)
    assert "predictions_train.npz" not in caplog.text
    expected = np.log([by_id[int(r)] for r in data.splits["train"]["row_id"]])
    np.testing.assert_allclose(teacher["train"], expected, atol=1e-5)

    (tmp_path / "member1" / "run_config.json").write_text(
        json.dumps({"baseline": {"predict_train_folds": 0}})
    )
    ensemble([*members, "--output_dir", str(tmp_path / "ens0"), "--n_resamples", "20"])
    assert f"not held out in {members[1]} (in-sample)" in (tmp_path / "ens0" / "report.md").read_text()
    with caplog.at_level("WARNING", logger="longtail.distill"):
        load_precomputed(tmp_path / "ens0", data)
    assert "is in-sample (--predict_train_folds 0)" in caplog.text

    # members fit on different training rows: the ensemble is built, without train predictions, saying why
    fewer = load_predictions(tmp_path / "member1" / "predictions_train.npz")
    np.savez_compressed(
        tmp_path / "member1" / "predictions_train.npz",
        **{k: v[:-1] for k, v in fewer.items() if k != "label_names"},
        label_names=fewer["label_names"],
    )
    capsys.readouterr()
    ensemble([*members, "--output_dir", str(tmp_path / "ens_other_rows"), "--n_resamples", "20"])
    assert "the members' do not match" in capsys.readouterr().err
    assert (tmp_path / "ens_other_rows" / "predictions_test.npz").is_file()
    assert not (tmp_path / "ens_other_rows" / "predictions_train.npz").exists()

    (tmp_path / "member1" / "predictions_train.npz").unlink()
    capsys.readouterr()
    ensemble([*members, "--output_dir", str(tmp_path / "ens_no_train"), "--n_resamples", "20"])
    assert f"no predictions_train.npz in {members[1]}" in capsys.readouterr().err
    assert not (tmp_path / "ens_no_train" / "predictions_train.npz").exists()
    with pytest.raises(DataError, match="predict_train"):
        load_precomputed(tmp_path / "ens_no_train", data)


def test_teacher_fit_on_the_student_rows_warns_when_in_sample(tmp_path, caplog):
    """The teacher's arg-max scored on the student's rows (sklearn's macro-F1 and accuracy); train macro-F1 above
    validation's by more than IN_SAMPLE_GAP is warned about, with the cross-fitted way out; otherwise logged."""
    from sklearn.metrics import accuracy_score, f1_score

    from longtail.distill import IN_SAMPLE_GAP

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    y = {s: data.splits[s]["label_id"].to_numpy() for s in ("train", "validation")}
    k = len(data.label_names)
    wrong = {s: (y[s] + (np.arange(len(y[s])) % 3 == 0)) % k for s in y}  # every third row shifted by one
    for train_pred, warned in ((y["train"], True), (wrong["train"], False)):
        logits = {"train": np.eye(k)[train_pred], "validation": np.eye(k)[wrong["validation"]]}
        caplog.clear()
        with caplog.at_level("INFO", logger="longtail.distill"):
            fit = teacher_fit(logits, data)
        for split, pred in (("train", train_pred), ("validation", wrong["validation"])):
            assert fit[split]["macro_f1"] == pytest.approx(
                f1_score(y[split], pred, average="macro"), abs=1e-12
            )
            assert fit[split]["accuracy"] == pytest.approx(accuracy_score(y[split], pred), abs=1e-12)
        gap = fit["train"]["macro_f1"] - fit["validation"]["macro_f1"]
        assert fit["in_sample"] is warned and (gap > IN_SAMPLE_GAP) is warned, gap
        record = next(r for r in caplog.records if "Teacher on the student's rows" in r.message)
        assert record.levelname == ("WARNING" if warned else "INFO")
        assert ("--predict_train true" in record.message) is warned


def teacher_argmax(cache, data) -> np.ndarray:
    """The cached teacher logits' arg-max for the train rows, in the data's row order."""
    from longtail.distill import align_rows, read_logits_table

    _, by_split = read_logits_table(cache)
    return align_rows(by_split, data, str(cache))["train"].argmax(1)


def fewer_rows(data, n):
    """A PreparedData with the first n train rows only (to write an incomplete logits file)."""
    import dataclasses

    return dataclasses.replace(data, splits={"train": data.splits["train"].head(n)})


# ---------------------------------------------------------------------------------------------
# The recipe end to end
# ---------------------------------------------------------------------------------------------


def distill_args(student, teacher, train, test, out, *extra):
    return [
        "--config", str(REPO / "recipes/configs/distill.yaml"),
        "--model_name_or_path", student, "--teacher_model_name_or_path", teacher,
        "--train_file", train, "--test_file", test,
        "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none",
        "--output_dir", str(out), "--do_predict", "--max_train_samples", "240",
        "--num_train_epochs", "2", "--learning_rate", "5e-3", "--warmup_ratio", "0",
        "--per_device_train_batch_size", "16", "--max_length", "48", "--logging_steps", "5",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_distill_recipe_end_to_end(
    tiny_qwen2, tiny_modernbert, tmp_path, one_torch_thread, fast_bootstrap, monkeypatch
):
    import longtail.distill
    import longtail.metrics

    monkeypatch.setattr(longtail.metrics, "BOOTSTRAP_RESAMPLES", 100)
    calls = []
    real_loss = longtail.distill.distillation_loss

    def spy(student, teacher, labels, *args, **kwargs):
        calls.append(teacher.shape)
        return real_loss(student, teacher, labels, *args, **kwargs)

    monkeypatch.setattr(longtail.distill, "distillation_loss", spy)

    train, test = synthetic_files(tmp_path)
    data = _data(train, test, max_train_samples=240)
    teacher = save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names)
    out = tmp_path / "run"
    recipe = load_recipe("distill")
    metrics = recipe.main(distill_args(tiny_modernbert, teacher, train, test, out))

    # the teacher's logits reached compute_loss through the batch (remove_unused_columns kept them)
    assert calls and all(shape[1] == len(data.label_names) for shape in calls)
    assert metrics["teacher"]["cache_status"] == "computed"
    for name in ["model.safetensors", "temperature.json", "comparison.md", "reliability_comparison.png",
                 "teacher_logits.parquet", "eval_results.json", "test_results.json", "report.md",
                 "vanilla/model.safetensors", "vanilla/predictions_validation.npz"]:  # fmt: skip
        assert (out / name).is_file(), name
    comparison = (out / "comparison.md").read_text()
    for arm in ("| vanilla |", "| vanilla+T |", "| distilled |", "| distilled+T |", "| teacher |"):
        assert arm in comparison, arm
    assert "distilled − vanilla | NLL" in comparison and "Confidence gating" in comparison
    # temperature scaling never changes predictions: its macro-F1 delta is exactly 0
    assert "| vanilla+T − vanilla | macro-F1 | +0.0000 | [+0.0000, +0.0000]" in comparison
    # the temperature saved with the model is the distilled arm's, fitted on the calibration half
    from longtail.calibration import load_temperature

    saved = load_temperature(out)
    assert f"| distilled+T | {saved:.3f} |" in comparison
    assert json.loads((out / "temperature.json").read_text())["fitted_on"].startswith("validation")
    report = (out / "report.md").read_text()
    assert "## Temperature scaling" in report and "Confidence gating" in report
    assert "alpha=0.7, T=4.0" in report
    # the selection line the other Trainer recipes write (`lpft.selection_note`): it lacked the temperature
    assert re.search(
        r"\| \*\*selection\*\* \| checkpoint: best validation macro_f1 \(checkpoint-\d+, epoch [\d.]+\); temperature: fitted on half "
        r"of validation, kept only if it lowers NLL on the other half \(temperature.json, see Temperature scaling\); "
        r"test scored once at the end \|",
        report,
    )
    fit = metrics["teacher"]["fit"]  # the teacher's own scores on the student's rows, in both reports
    assert f"Teacher's arg-max on the student's rows: {fit_text(fit)}" in comparison
    assert fit_text(fit) in report and fit["train"]["accuracy"] == pytest.approx(
        float(
            (teacher_argmax(out / "teacher_logits.parquet", data) == data.splits["train"]["label_id"]).mean()
        )
    )
    scores = metrics["comparison"]
    assert scores["distilled+T"]["macro_f1"] == scores["distilled"]["macro_f1"]

    # rerun into the same folder: the cached logits are reused; the vanilla arm read from the first run
    calls.clear()
    again = recipe.main(
        distill_args(
            tiny_modernbert,
            teacher,
            train,
            test,
            out,
            "--overwrite_output_dir",
            "--vanilla_run",
            str(out / "vanilla"),
        )
    )
    assert again["teacher"]["cache_status"] == "reused" and calls
    # same seed, same rows, same teacher: the distilled student comes out the same
    assert again["validation"]["macro_f1"] == pytest.approx(metrics["validation"]["macro_f1"], abs=1e-9)
    # the vanilla arm read back (probabilities stored as float32) scores as when it was trained
    assert again["comparison"]["vanilla"] == pytest.approx(metrics["comparison"]["vanilla"], rel=1e-6)


class Stopped(Exception):
    """Stands for a kill right after a checkpoint was written."""


@pytest.mark.slow
def test_a_stopped_run_resumes_its_vanilla_arm(
    tiny_modernbert, tmp_path, one_torch_thread, fast_bootstrap, monkeypatch
):
    """--resume_from_checkpoint true after a stop in the vanilla arm (trained first) found no checkpoint of the
    distilled arm: the folder was refused as another run's, and a rerun with --overwrite_output_dir trained the
    vanilla arm again whole, as did every resume after a stop in the distilled arm. Here the run stops in each arm
    in turn and resumes: the vanilla arm from its own checkpoint, then read back once finished; the results are
    the uninterrupted run's."""
    from transformers import TrainerCallback

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    rng = np.random.default_rng(0)
    logits = {
        s: 3 * rng.normal(size=(len(data.splits[s]), len(data.label_names))) for s in ("train", "validation")
    }
    teacher = write_logits_file(tmp_path / "teacher.parquet", logits, data, {})
    recipe = load_recipe("distill")
    real_trainer, real_vanilla = recipe.long_tail_trainer, recipe.train_vanilla
    vanilla_runs = []  # the checkpoint each vanilla training starts from

    def spy(*args, **kwargs):
        vanilla_runs.append(args[-1] if len(args) > 5 else kwargs.get("checkpoint"))
        return real_vanilla(*args, **kwargs)

    monkeypatch.setattr(recipe, "train_vanilla", spy)

    def stop_in(arm, step):
        class Stop(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise Stopped(f"{arm} arm at step {step}")

        def make(*args, **kwargs):
            trainer = real_trainer(*args, **kwargs)
            if ("trainer_class" in kwargs) == (arm == "distilled"):
                trainer.add_callback(Stop())
            return trainer

        monkeypatch.setattr(recipe, "long_tail_trainer", make if arm else real_trainer)

    def argv(out, *extra):
        return distill_args(
            tiny_modernbert, "none", train, test, out, "--teacher_logits", str(teacher),
            "--num_train_epochs", "1", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "5",
            "--save_total_limit", "5", "--load_best_model_at_end", "false", *extra,
        )  # fmt: skip

    out = tmp_path / "run"
    full = recipe.main(argv(out))  # uninterrupted; its vanilla/ stays through the overwrite below
    assert vanilla_runs == [None] and (out / "vanilla/checkpoint-15").is_dir()
    stop_in("vanilla", 10)
    with pytest.raises(Stopped):
        recipe.main(argv(out, "--overwrite_output_dir"))
    # the earlier run's finished arm is gone: a resume would have read it (or resumed its checkpoint-15) as this one's
    assert sorted(p.name for p in (out / "vanilla").glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-5"]
    assert not (out / "vanilla/predictions_validation.npz").exists()
    stop_in("distilled", 5)
    with pytest.raises(Stopped):
        recipe.main(argv(out, "--resume_from_checkpoint", "true"))
    assert vanilla_runs == [None, None, str(out / "vanilla/checkpoint-10")]
    assert (out / "vanilla/predictions_validation.npz").is_file()
    stop_in(None, 0)
    resumed = recipe.main(argv(out, "--resume_from_checkpoint", "true"))
    assert len(vanilla_runs) == 3  # the finished vanilla arm is read back, not trained again
    assert resumed["comparison"]["vanilla"] == pytest.approx(full["comparison"]["vanilla"], rel=1e-6)
    assert resumed["comparison"]["distilled"] == pytest.approx(full["comparison"]["distilled"], rel=1e-6)
    assert "trained in this run before it was resumed, `vanilla/`" in (out / "comparison.md").read_text()


def test_kd_step_bench_smoke(tiny_modernbert, tmp_path, one_torch_thread):
    """bench/kd_step.py runs and writes its ratio (a smoke test: the timing itself is not asserted)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("kd_step", REPO / "bench" / "kd_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []  # the environment (its load average) is taken before any step, as the other benches do
    environment, timed_step = bench.environment, bench.timed_step
    bench.environment = lambda: calls.append("environment") or environment()
    bench.timed_step = lambda *a: calls.append("step") or timed_step(*a)
    argv = ["--model_dir", tiny_modernbert, "--batch_size", "2", "--seq_len", "16", "--num_labels", "5"]
    argv += ["--temperature", "2", "--alpha", "0.5", "--warmup", "1", "--rounds", "2"]
    assert bench.main([*argv, "--output_dir", str(tmp_path)]) == 0
    assert calls[0] == "environment" and calls.count("environment") == 1
    report = json.loads((tmp_path / "kd_step.json").read_text())
    assert (
        report["kd_over_ce"] > 0
        and report["rounds"] == 2
        and "KD / CE" in (tmp_path / "kd_step.md").read_text()
    )
    # what kd_step.md states is in the JSON too, and the CPU is named with its ISA flags as in the other benches
    assert (report["warmup"], report["temperature"], report["alpha"]) == (1, 2.0, 0.5)
    assert {"cpu", "avx2", "avx512_vnni", "amx", "load_average"} <= set(report["environment"])


def test_teacher_max_length_and_cache_path_are_the_teachers_own(tiny_qwen2, tmp_path, one_torch_thread):
    from longtail.distill import load_teacher, teacher_forward

    train, test = synthetic_files(tmp_path)
    data = _data(train, test, max_train_samples=40)
    teacher = save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names)
    cache = tmp_path / "elsewhere" / "cache.parquet"
    args = DistillArguments(
        teacher_model_name_or_path=teacher, teacher_max_length=8, teacher_cache=str(cache)
    )
    logits, info = teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert info == {
        "teacher": "teacher",
        "teacher_max_length": 8,
        "cache": str(cache),
        "seen": None,  # a model folder without splits.json: the rows it trained on cannot be told
        "cache_status": "computed",
    }
    assert cache.is_file() and not (tmp_path / "out" / "teacher_logits.parquet").exists()
    model, tok, _ = load_teacher(teacher)
    texts = data.splits["validation"]["text"].tolist()
    np.testing.assert_allclose(logits["validation"], teacher_forward(model, tok, texts, 8, 4), atol=1e-5)
    assert np.abs(logits["validation"] - teacher_forward(model, tok, texts, 32, 4)).max() > 1e-3


def test_a_teacher_run_that_read_its_texts_otherwise_is_warned_about(tiny_qwen2, tmp_path, caplog):
    """The teacher's pass reads the first --teacher_max_length tokens (default: the student's --max_length); a
    probe trained on whole texts in windows, or a run at another max_length, scored its own rows otherwise, and
    nothing said so."""
    import logging

    train, test = synthetic_files(tmp_path)
    data = _data(train, test, max_train_samples=40)
    teacher = Path(save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names))
    for record, warned in (
        (None, None),
        ({"data": {"max_length": 32}}, None),
        ({"data": {"max_length": 64}}, "read the first 64 tokens"),
        (
            {"data": {"max_length": 32}, "probe": {"long_text": "windows"}},
            "read whole texts in 32-token windows",
        ),
    ):
        if record:
            (teacher / "run_config.json").write_text(json.dumps(record))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longtail.distill"):
            teacher_logits(
                DistillArguments(teacher_model_name_or_path=str(teacher)),
                data,
                tmp_path / "out",
                max_length=32,
            )
        warnings = [r.getMessage() for r in caplog.records if "its pass here reads" in r.getMessage()]
        if warned is None:
            assert not warnings, (record, warnings)
        else:
            assert len(warnings) == 1 and warned in warnings[0], (record, warnings)
            assert "its pass here reads the first 32 tokens of each text" in warnings[0]


def test_a_base_model_for_a_whole_model_teacher_is_refused(tiny_qwen2, tmp_path):
    """--teacher_base_model only applies to a LoRA teacher; a whole model's teacher ignored it without a word."""
    train, test = synthetic_files(tmp_path)
    data = _data(train, test, max_train_samples=40)
    teacher = save_teacher(tiny_qwen2, tmp_path / "teacher", data.label_names)
    args = DistillArguments(teacher_model_name_or_path=teacher, teacher_base_model=tiny_qwen2)
    with pytest.raises(
        UsageError, match=f"^--teacher_base_model {tiny_qwen2}: the teacher {teacher} is a whole"
    ):
        teacher_logits(args, data, tmp_path / "out", max_length=32)
    assert not (tmp_path / "out").exists()


def test_lora_teacher_run_folder(tiny_qwen2, tmp_path, monkeypatch, one_torch_thread):
    """A LoRA run folder (adapter + head + config.json with the labels) serves as the teacher: its logits are
    those of the adapter on its base, and its label map is checked like a full model's."""
    from transformers import AutoModelForSequenceClassification

    from longtail.adapters import AdapterArguments, add_lora
    from longtail.distill import load_teacher, teacher_forward

    train, test = synthetic_files(tmp_path)
    data = _data(train, test)
    base = save_teacher(tiny_qwen2, tmp_path / "base", data.label_names)
    lora = add_lora(AutoModelForSequenceClassification.from_pretrained(base), AdapterArguments())
    with torch.no_grad():  # a trained-looking adapter: B != 0, so it changes the logits
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    run = tmp_path / "lora_run"
    lora.save_pretrained(run)
    lora.get_base_model().config.save_pretrained(run)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(base).save_pretrained(run)
    texts = data.splits["validation"]["text"].tolist()[:8]
    model, tok, labels = load_teacher(str(run))
    assert labels == data.label_names
    lora.eval()
    expected = teacher_forward(lora, tok, texts, 32, 4)
    np.testing.assert_allclose(teacher_forward(model, tok, texts, 32, 4), expected, atol=1e-5)
    plain = teacher_forward(*load_teacher(base)[:2], texts, 32, 4)
    assert np.abs(plain - expected).max() > 1e-3  # the adapter was applied
    import longtail.distill as distill

    real, calls = distill.adapter_base, []
    monkeypatch.setattr(distill, "adapter_base", lambda t: calls.append(str(t)) or real(t))
    logits, info = teacher_logits(
        DistillArguments(teacher_model_name_or_path=str(run)), data, tmp_path / "o", 32
    )
    np.testing.assert_allclose(logits["validation"][:8], expected, atol=1e-5)
    assert calls == [str(run), base]  # the adapter's once, then its base's own key (a whole model: None)


def test_the_students_length_is_checked_before_the_teachers_pass(tiny_bert, tmp_path):
    """Its --max_length past the student's positions once surfaced only after the teacher had scored every row;
    here the teacher does not even exist, and the student's mistake is the one named."""
    train, test = synthetic_files(tmp_path)
    argv = distill_args(tiny_bert, str(tmp_path / "no_teacher"), train, test, tmp_path / "run")
    with pytest.raises(UsageError, match=f"^--max_length 65 exceeds the 64 positions of {tiny_bert}"):
        load_recipe("distill").main([*argv, "--max_length", "65"])


def test_a_vanilla_run_with_other_labels_is_refused_before_the_teachers_pass_and_any_clearing(
    tiny_bert, tmp_path
):
    """--vanilla_run was read after the teacher's pass and after --overwrite_output_dir had cleared the previous
    run: a wrong one emptied the folder the README says a refused rerun leaves as it was. Here the teacher does
    not even exist, and the vanilla run's mistake is the one named."""
    from longtail.report import SplitResult, save_predictions

    train, test = synthetic_files(tmp_path)
    vanilla = tmp_path / "vanilla"
    vanilla.mkdir()
    result = SplitResult("validation", np.array([0, 1]), np.eye(2), pd.Series(["a", "b"]), row_ids=[0, 1])
    save_predictions(vanilla, result, ["not a label", "nor this"])
    out = tmp_path / "run"
    out.mkdir()
    previous = {"run_config.json": "{}", "report.md": "# a previous run", "model.safetensors": "weights"}
    for name, text in previous.items():
        (out / name).write_text(text)
    argv = distill_args(tiny_bert, str(tmp_path / "no_teacher"), train, test, out)
    with pytest.raises(DataError, match=f"^--vanilla_run {vanilla} has other labels than this run's student"):
        load_recipe("distill").main([*argv, "--overwrite_output_dir", "--vanilla_run", str(vanilla)])
    assert {p.name: p.read_text() for p in out.iterdir()} == previous


def test_teacher_pass_options_with_precomputed_logits_are_named_as_unused(monkeypatch, caplog):
    """--teacher_cache, --teacher_max_length, --teacher_batch_size and --teacher_base_model shape a teacher model's
    pass; with --teacher_logits there is none, and they were ignored without a word."""
    import longtail.distill as distill
    from longtail.distill import DistillArguments, teacher_logits, teacher_pass_options

    assert teacher_pass_options(DistillArguments(teacher_logits="t.parquet")) == []
    args = DistillArguments(teacher_logits="t.parquet", teacher_max_length=64, teacher_cache="c.parquet")
    assert teacher_pass_options(args) == ["--teacher_max_length 64", "--teacher_cache c.parquet"]
    args.teacher_batch_size, args.teacher_base_model = 8, "base"
    monkeypatch.setattr(distill, "load_precomputed", lambda *a: {"train": np.zeros((1, 2))})
    monkeypatch.setattr(distill, "require_finite", lambda logits, *a: logits)
    with caplog.at_level(logging.WARNING, logger="longtail.distill"):
        teacher_logits(args, None, "out", 128)
    assert (
        "--teacher_logits are precomputed: ['--teacher_base_model base', '--teacher_max_length 64', "
        "'--teacher_batch_size 8', '--teacher_cache c.parquet'] not used" in caplog.text
    )


@pytest.mark.parametrize("kind", ["model.joblib", "ensemble.json"])
def test_a_vanilla_run_that_is_no_run_of_the_student_is_refused(kind, tiny_bert, tmp_path):
    """--vanilla_run a TF-IDF run or an ensemble (e.g. the teacher's folder, passed to the wrong option): its labels
    and rows are the student's, so it was taken, and comparison.md set the distilled student against TF-IDF under the
    name 'vanilla' (the same student trained with the hard loss alone), silently. Refused before the teacher's pass."""
    train, test = synthetic_files(tmp_path)
    vanilla = tmp_path / "teacher_run"
    vanilla.mkdir()
    (vanilla / kind).write_text("{}")
    argv = distill_args(tiny_bert, str(tmp_path / "no_teacher"), train, test, tmp_path / "run")
    what = (
        "a scikit-learn TF-IDF run (model.joblib)"
        if kind == "model.joblib"
        else "an ensemble (ensemble.json)"
    )
    with pytest.raises(DataError) as err:
        load_recipe("distill").main([*argv, "--vanilla_run", str(vanilla)])
    assert str(err.value) == (
        f"--vanilla_run {vanilla} is {what}, not a run of this student: pass a run of the same student with the "
        "hard loss alone (e.g. an earlier distill run's vanilla/), or leave --vanilla_run out to train one"
    )


def test_teacher_seen_follows_the_runs_its_model_started_from_each_with_its_own_refit(tmp_path):
    """`teacher_seen` counts by text the student's rows that a teacher run, and the runs its model started from,
    trained on: each run's validation rows only where that run was refit on them (the last run of the chain, not
    refit, does not undo the teacher's refit), a run of the chain without splits.json passed over, and the 8-digit
    digests of runs written before the normalised ones."""
    import hashlib

    from longtail.data import PreparedData
    from longtail.distill import teacher_seen

    def digest(text):  # 16 hex digits of the SHA-256 of the text, lower-cased, spaces folded
        return hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()[:16]

    def run(folder, config, texts=None):
        folder.mkdir()
        (folder / "run_config.json").write_text(json.dumps(config))
        if texts is not None:
            (folder / "splits.json").write_text(
                json.dumps(
                    {"text_digests": {s: {str(i): d for i, d in enumerate(v)} for s, v in texts.items()}}
                )
            )
        return folder

    base = run(
        tmp_path / "base",
        {"refit": {"refit_with_validation": False}},
        {"train": [digest("a fee charged")], "validation": [digest("second val")]},
    )
    middle = run(tmp_path / "middle", {"model": {"model_name_or_path": str(base)}})  # no splits.json
    legacy = hashlib.sha256(b"Card  Lost").hexdigest()[
        :8
    ]  # an older run's digest: the text as kept, 8 digits
    teacher = run(
        tmp_path / "teacher",
        {"model": {"model_name_or_path": str(middle)}, "refit": {"refit_with_validation": True}},
        {"train": [digest("Late  FEE"), legacy], "validation": [digest("first val")]},
    )
    splits = {
        "train": pd.DataFrame({"text": ["A fee   charged", "late fee", "Card  Lost", "unseen"]}),
        "validation": pd.DataFrame({"text": ["First val", "second val", "other"]}),
    }
    data = PreparedData(splits=splits, label_names=["x"], train_counts={0: 4})
    # train: 'A fee charged' (base), 'late fee' (teacher), 'Card  Lost' (legacy digest); validation: 'First val'
    # (the refit teacher's), not 'second val' (base's validation, base not refit)
    assert teacher_seen(str(teacher), data) == {"refit": True, "train": [3, 4], "validation": [1, 3]}


def test_teacher_fit_warns_of_validation_rows_a_teacher_trained_on_without_a_refit(caplog):
    """A teacher run whose training split held student validation rows (another split of the data, no refit) has
    them in-sample too: warned, with "trained on them", as a refit teacher is with its refit."""
    from longtail.data import PreparedData
    from longtail.distill import teacher_fit

    y = {"train": [0, 1, 0, 1], "validation": [0, 1, 1, 0, 1]}
    splits = {s: pd.DataFrame({"label_id": v}) for s, v in y.items()}
    data = PreparedData(splits=splits, label_names=["a", "b"], train_counts={0: 2, 1: 2})
    logits = {s: np.eye(2)[v] for s, v in y.items()}
    for seen, expected in (
        ({"refit": False, "train": [1, 4], "validation": [2, 5]}, "its run trained on them"),
        ({"refit": True, "train": [4, 4], "validation": [5, 5]}, "its run was refit on train + validation"),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longtail.distill"):
            teacher_fit(logits, data, seen)
        n, total = seen["validation"]
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("The teacher")] == [
            f"The teacher trained on {n} of the student's {total} validation rows ({expected}): its validation "
            "scores here, and its row in comparison.md, are in-sample too"
        ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longtail.distill"):
        teacher_fit(logits, data, {"refit": False, "train": [4, 4], "validation": [0, 5]})
    assert not [r for r in caplog.records if r.getMessage().startswith("The teacher")]


def test_resume_in_vanilla_only_where_the_distilled_arm_left_no_complete_checkpoint(tmp_path):
    """--resume_from_checkpoint true resumes in vanilla/ only when the distilled arm has no complete checkpoint to
    resume from (a complete one: it resumes in place, the vanilla arm read back), and vanilla/ holds the arm's
    predictions or a complete checkpoint of its own; a path, false or none never does."""
    from safetensors.torch import save_file

    recipe = load_recipe("distill")

    def checkpoint(folder, complete=True):
        folder.mkdir(parents=True)
        save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": 5}))

    out = tmp_path / "run"
    checkpoint(out / "vanilla" / "checkpoint-3", complete=False)  # cut short by the stop
    assert recipe.resume_in_vanilla("true", out) is False
    checkpoint(out / "vanilla" / "checkpoint-2")
    assert [recipe.resume_in_vanilla(r, out) for r in ("true", "Last", None, "false", str(out / "x"))] == [
        True,
        True,
        False,
        False,
        False,
    ]
    checkpoint(
        out / "checkpoint-5", complete=False
    )  # the distilled arm's, incomplete: still the vanilla arm's
    assert recipe.resume_in_vanilla("true", out) is True
    # a finished run saved without checkpoints (--save_strategy no) is no run to resume: it skipped every output
    # folder check and retrained over the finished results
    finished = tmp_path / "finished"
    (finished / "vanilla").mkdir(parents=True)
    (finished / "vanilla" / "predictions_validation.npz").write_bytes(b"")
    assert recipe.resume_in_vanilla("true", finished) is True
    (finished / "report.md").write_text("# Distillation")
    assert recipe.resume_in_vanilla("true", finished) is False
    checkpoint(out / "checkpoint-10")
    (out / "vanilla" / "predictions_validation.npz").write_bytes(b"")
    assert recipe.resume_in_vanilla("true", out) is False
