"""Tests for the long-tail losses and LongTailTrainer (longtail.losses): exact values, computed by hand."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longtail.losses import LongTailTrainer, LossArguments, class_weights, log_prior, long_tail_loss

LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-0.5, 1.5, 0.0], [1.0, 1.0, 3.0]]
LABELS = [0, 2, 1, 0]


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS), torch.tensor(LABELS)


def hand_log_softmax(row: list[float]) -> list[float]:
    lse = math.log(sum(math.exp(z) for z in row))
    return [z - lse for z in row]


def hand_ce(logits=LOGITS, labels=LABELS) -> list[float]:
    """Per-row cross-entropy, in plain Python floats."""
    return [-hand_log_softmax(row)[y] for row, y in zip(logits, labels)]


def hand_p_true(logits=LOGITS, labels=LABELS) -> list[float]:
    return [math.exp(hand_log_softmax(row)[y]) for row, y in zip(logits, labels)]


# ---------------------------------------------------------------------------------------------
# class_weights and log_prior
# ---------------------------------------------------------------------------------------------


def test_class_weights_inverse_exact_and_mean_one():
    # 1/n = [1/4, 1, 1/16], mean 7/16 -> [4/7, 16/7, 1/7]
    w = class_weights({0: 4, 1: 1, 2: 16}, 3, "inverse")
    torch.testing.assert_close(w, torch.tensor([4 / 7, 16 / 7, 1 / 7]))
    assert w.mean().item() == pytest.approx(1.0)


def test_class_weights_sqrt_inverse_exact_and_mean_one():
    # 1/sqrt(n) = [1/2, 1, 1/4], mean 7/12 -> [6/7, 12/7, 3/7]
    w = class_weights({0: 4, 1: 1, 2: 16}, 3, "sqrt_inverse")
    torch.testing.assert_close(w, torch.tensor([6 / 7, 12 / 7, 3 / 7]))
    assert w.mean().item() == pytest.approx(1.0)


def test_class_weights_none_is_none():
    assert class_weights({0: 4, 1: 1}, 2, "none") is None


def test_class_weights_class_without_rows_is_an_error():
    with pytest.raises(ValueError, match=r"Class ids \[1, 3\] have no training rows"):
        class_weights({0: 5, 2: 7}, 4, "inverse")


def test_log_prior_exact():
    lp = log_prior({0: 1, 1: 2, 2: 1}, 3)
    torch.testing.assert_close(lp, torch.tensor([math.log(0.25), math.log(0.5), math.log(0.25)]))
    # a class with no rows counts as one row (finite prior, no -inf)
    torch.testing.assert_close(log_prior({0: 3}, 2), torch.tensor([math.log(0.75), math.log(0.25)]))


# ---------------------------------------------------------------------------------------------
# long_tail_loss
# ---------------------------------------------------------------------------------------------


def test_ce_exact(batch):
    expected = sum(hand_ce()) / 4
    assert long_tail_loss(*batch, loss="ce").item() == pytest.approx(expected, rel=1e-6)


def test_weighted_ce_is_a_weighted_mean_like_torch(batch):
    weights = torch.tensor([0.5, 3.0, 1.0])
    w = [0.5, 1.0, 3.0, 0.5]  # weights of labels [0, 2, 1, 0]; sum 5, not 4
    ce = hand_ce()
    expected = sum(wi * ci for wi, ci in zip(w, ce)) / sum(w)
    got = long_tail_loss(*batch, loss="weighted_ce", weights=weights)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the weighted mean differs from the plain mean of weighted terms
    assert got.item() != pytest.approx(sum(wi * ci for wi, ci in zip(w, ce)) / 4, rel=1e-3)
    torch.testing.assert_close(got, F.cross_entropy(batch[0], batch[1], weight=weights))


def test_focal_gamma_zero_equals_ce(batch):
    torch.testing.assert_close(
        long_tail_loss(*batch, loss="focal", focal_gamma=0.0), long_tail_loss(*batch, loss="ce")
    )


def test_focal_gamma_two_exact(batch):
    expected = sum((1 - p) ** 2 * c for p, c in zip(hand_p_true(), hand_ce())) / 4
    got = long_tail_loss(*batch, loss="focal", focal_gamma=2.0).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got < sum(hand_ce()) / 4  # focusing down-weights easy rows


def test_focal_gradient_matches_finite_differences():
    """The focal loss differentiates through its CE factor too, not only through (1 - p_t)^gamma: the
    gradient equals central differences of the hand-written loss."""
    gamma, h = 2.0, 1e-4

    def hand_focal(logits) -> float:
        return sum((1 - p) ** gamma * c for p, c in zip(hand_p_true(logits), hand_ce(logits))) / len(logits)

    want = []
    for i, row in enumerate(LOGITS):
        for j in range(len(row)):
            up = [list(r) for r in LOGITS]
            down = [list(r) for r in LOGITS]
            up[i][j] += h
            down[i][j] -= h
            want.append((hand_focal(up) - hand_focal(down)) / (2 * h))
    logits = torch.tensor(LOGITS, requires_grad=True)
    long_tail_loss(logits, torch.tensor(LABELS), loss="focal", focal_gamma=gamma).backward()
    torch.testing.assert_close(logits.grad.flatten(), torch.tensor(want), rtol=1e-4, atol=1e-6)


def test_focal_with_class_weights_is_a_weighted_mean(batch):
    weights = torch.tensor([0.5, 3.0, 1.0])
    w = [0.5, 1.0, 3.0, 0.5]  # sum 5: a weighted mean differs from a plain mean
    terms = [(1 - p) ** 2 * c for p, c in zip(hand_p_true(), hand_ce())]
    expected = sum(wi * t for wi, t in zip(w, terms)) / sum(w)
    got = long_tail_loss(*batch, loss="focal", focal_gamma=2.0, weights=weights).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_logit_adjusted_exact(batch):
    prior = [0.25, 0.5, 0.25]
    tau = 1.5
    shifted = [[z + tau * math.log(p) for z, p in zip(row, prior)] for row in LOGITS]
    expected = sum(hand_ce(shifted)) / 4
    lp = torch.tensor([math.log(p) for p in prior])
    got = long_tail_loss(*batch, loss="logit_adjusted", log_prior=lp, tau=tau).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(sum(hand_ce()) / 4, rel=1e-3)


def test_logit_adjusted_with_class_weights_is_a_weighted_mean_of_the_shifted_ce(batch):
    """--class_weighting also weights the logit-adjusted loss (the README said only ce, weighted_ce and focal)."""
    prior, tau, weights = [0.25, 0.5, 0.25], 1.0, [2.0, 0.5, 0.5]
    shifted = [[z + tau * math.log(p) for z, p in zip(row, prior)] for row in LOGITS]
    w = [weights[y] for y in LABELS]  # 2, 0.5, 0.5, 2
    expected = sum(wi * ce for wi, ce in zip(w, hand_ce(shifted))) / sum(w)
    lp = torch.tensor([math.log(p) for p in prior])
    got = long_tail_loss(
        *batch, loss="logit_adjusted", weights=torch.tensor(weights), log_prior=lp, tau=tau
    ).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got != pytest.approx(sum(hand_ce(shifted)) / 4, rel=1e-3)


def test_logit_adjusted_tau_zero_equals_ce(batch):
    lp = torch.tensor([math.log(0.25), math.log(0.5), math.log(0.25)])
    torch.testing.assert_close(
        long_tail_loss(*batch, loss="logit_adjusted", log_prior=lp, tau=0.0),
        long_tail_loss(*batch, loss="ce"),
    )


def test_logit_adjusted_without_prior_is_an_error(batch):
    with pytest.raises(ValueError, match="log-prior"):
        long_tail_loss(*batch, loss="logit_adjusted")


def test_label_smoothing_exact(batch):
    eps, k = 0.1, 3
    expected = 0.0
    for row, y in zip(LOGITS, LABELS):
        logp = hand_log_softmax(row)
        expected += (1 - eps) * -logp[y] + eps * -sum(logp) / k
    expected /= 4
    got = long_tail_loss(*batch, loss="ce", label_smoothing=eps).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_focal_label_smoothing_gamma_zero_equals_smoothed_ce(batch):
    torch.testing.assert_close(
        long_tail_loss(*batch, loss="focal", focal_gamma=0.0, label_smoothing=0.2),
        long_tail_loss(*batch, loss="ce", label_smoothing=0.2),
    )


def test_loss_runs_in_fp32_for_half_logits(batch):
    logits, labels = batch
    got = long_tail_loss(logits.to(torch.bfloat16), labels, loss="ce")
    assert got.dtype == torch.float32


# ---------------------------------------------------------------------------------------------
# LossArguments
# ---------------------------------------------------------------------------------------------


def test_loss_arguments_unknown_loss():
    with pytest.raises(ValueError, match="--loss must be one of .* got 'hinge'"):
        LossArguments(loss="hinge")


def test_loss_arguments_weighted_ce_needs_weighting():
    with pytest.raises(ValueError, match="weighted_ce needs --class_weighting"):
        LossArguments(loss="weighted_ce")
    assert LossArguments(loss="weighted_ce", class_weighting="inverse").class_weighting == "inverse"


def test_loss_arguments_unknown_weighting_and_bad_smoothing():
    with pytest.raises(ValueError, match="--class_weighting must be one of .* got 'log'"):
        LossArguments(class_weighting="log")
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        LossArguments(label_smoothing=1.0)
    # checked with the options, not after training (where adjust_on_validation would first read it)
    with pytest.raises(
        ValueError, match="posthoc_logit_adjustment must be auto, none or a number, got 'bogus'"
    ):
        LossArguments(posthoc_logit_adjustment="bogus")
    with pytest.raises(
        ValueError, match="posthoc_logit_adjustment must be auto, none or a number, got 'nan'"
    ):
        LossArguments(posthoc_logit_adjustment="nan")  # float() takes it: NaN logits, a report of them


def test_loss_arguments_refuse_a_negative_or_non_finite_focal_gamma():
    """--focal_gamma -1 was taken and trained: (1 - p_t)^gamma then weights the rows the model already gets right
    most (the opposite of focusing), and a row it is sure of, p_t = 1, gives 0^-1 * 0 = NaN loss. Refused while the
    options are parsed, as a negative tau is; 0 is plain CE and stays allowed."""
    confident = long_tail_loss(
        torch.tensor([[30.0, -30.0]]), torch.tensor([0]), loss="focal", focal_gamma=-1.0
    )
    assert math.isnan(confident.item())  # what the option let through
    for gamma in (-1.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=rf"^--focal_gamma must be a finite number >= 0, got {gamma}"):
            LossArguments(loss="focal", focal_gamma=gamma)
    assert LossArguments(loss="focal", focal_gamma=0.0).focal_gamma == 0.0
    assert LossArguments(loss="focal", focal_gamma=5.0).focal_gamma == 5.0
    assert LossArguments(posthoc_logit_adjustment="0.5").posthoc_logit_adjustment == "0.5"


# ---------------------------------------------------------------------------------------------
# LongTailTrainer
# ---------------------------------------------------------------------------------------------

NUM_LABELS = 3
TRAIN_COUNTS = {0: 6, 1: 3, 2: 1}


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=NUM_LABELS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def rows() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "input_ids": torch.tensor(rng.integers(5, 50, size=8)),
            "attention_mask": torch.ones(8, dtype=torch.long),
            "labels": torch.tensor(label),
        }
        for label in (0, 1, 2, 0)
    ]


def make_trainer(tmp_path, model, loss_args, batch_size=4, accumulation=1, max_steps=2):
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=max_steps,
        learning_rate=0.5,
        optim="sgd",  # SGD, not Adam: Adam's first step hides a wrong loss scale
        lr_scheduler_type="constant",
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
    )
    return LongTailTrainer(
        model=model, args=args, train_dataset=rows(), loss_args=loss_args, train_counts=TRAIN_COUNTS
    )


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@pytest.mark.parametrize(
    "loss_args",
    [
        LossArguments(loss="ce"),
        LossArguments(loss="weighted_ce", class_weighting="inverse"),
        LossArguments(loss="focal", focal_gamma=2.0, class_weighting="sqrt_inverse"),
        LossArguments(loss="logit_adjusted", logit_adjustment_tau=1.0),
        # options away from their defaults: each must reach the loss, not just the default value
        pytest.param(
            LossArguments(loss="focal", focal_gamma=0.5, class_weighting="inverse", label_smoothing=0.1),
            id="focal-gamma0.5-smoothed",
        ),
        pytest.param(
            LossArguments(loss="logit_adjusted", logit_adjustment_tau=0.5, label_smoothing=0.1),
            id="logit_adjusted-tau0.5-smoothed",
        ),
    ],
    ids=lambda a: a.loss,
)
def test_trainer_compute_loss_matches_long_tail_loss(tmp_path, loss_args):
    model = tiny_bert().eval()
    trainer = make_trainer(tmp_path, model, loss_args)
    batch = collate(rows())
    with torch.no_grad():
        loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
        loss_kw = trainer.compute_loss(model, batch, num_items_in_batch=torch.tensor(4))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = long_tail_loss(
        logits,
        batch["labels"],
        loss=loss_args.loss,
        weights=class_weights(TRAIN_COUNTS, NUM_LABELS, loss_args.class_weighting),
        focal_gamma=loss_args.focal_gamma,
        log_prior=log_prior(TRAIN_COUNTS, NUM_LABELS),
        tau=loss_args.logit_adjustment_tau,
        label_smoothing=loss_args.label_smoothing,
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(loss_kw, expected)
    # labels were not passed to the model: it computed no loss of its own
    assert outputs.loss is None
    # ... and the caller's batch still holds them (Trainer reads them after compute_loss)
    assert "labels" in batch


def test_trainer_weighted_ce_differs_from_plain_ce(tmp_path):
    model = tiny_bert().eval()
    batch = collate(rows())
    with torch.no_grad():
        plain = make_trainer(tmp_path / "a", model, LossArguments(loss="ce")).compute_loss(model, batch)
        weighted = make_trainer(
            tmp_path / "b", model, LossArguments(loss="weighted_ce", class_weighting="inverse")
        ).compute_loss(model, batch)
    assert plain.item() != pytest.approx(weighted.item(), rel=1e-4)


def test_gradient_accumulation_matches_full_batch(tmp_path):
    """One optimizer step over 4 rows: batch 4, or 2 micro-batches of 2 with accumulation 2."""
    base = tiny_bert()
    full = make_trainer(tmp_path / "full", copy.deepcopy(base), LossArguments(), batch_size=4, max_steps=1)
    accum = make_trainer(
        tmp_path / "accum", copy.deepcopy(base), LossArguments(), batch_size=2, accumulation=2, max_steps=1
    )
    out_full, out_accum = full.train(), accum.train()
    assert out_full.global_step == out_accum.global_step == 1
    batch = collate(rows())
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        direct = long_tail_loss(logits, batch["labels"]).item()
    # the reported loss is the mean over the 4 rows, not the sum of the two micro-batch means
    assert out_full.training_loss == pytest.approx(direct, rel=1e-5)
    assert out_accum.training_loss == pytest.approx(direct, rel=1e-5)
    # and the gradients (hence the SGD update) are the same
    for (name, p_full), (_, p_accum) in zip(full.model.named_parameters(), accum.model.named_parameters()):
        torch.testing.assert_close(p_accum, p_full, rtol=1e-5, atol=1e-6, msg=name)
    # the step really moved the weights (otherwise the comparison above proves nothing)
    assert not torch.allclose(full.model.classifier.weight, base.classifier.weight)


def test_group_by_length_groups_training_rows_only_predictions_keep_the_rows_order(tiny_bert, tmp_path):
    """--group_by_length: Transformers also groups evaluation and prediction rows by length (a random order), and
    `predict` returned them in that order, which the recipes paired with the split's rows: every validation and test
    prediction, alpha, tau and temperature was scored against another row's label. Rows here grow longer, so any
    length grouping reorders them."""
    from datasets import Dataset
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, TrainingArguments

    from longtail.training import padding_collator

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=3)  # fmt: skip
    model = BertForSequenceClassification(config)
    texts = [" ".join(["complaint"] * n) for n in range(1, 25)]
    rows = Dataset.from_dict({**tokenizer(texts), "labels": [i % 3 for i in range(24)]})

    def predict(group_by_length: bool):
        args = TrainingArguments(output_dir=str(tmp_path / str(group_by_length)), per_device_eval_batch_size=4,
                                 group_by_length=group_by_length, report_to=[], use_cpu=True)  # fmt: skip
        trainer = LongTailTrainer(model=model, args=args, processing_class=tokenizer,
                                  data_collator=padding_collator(tokenizer), loss_args=LossArguments(),
                                  train_counts={0: 8, 1: 8, 2: 8})  # fmt: skip
        assert trainer._get_train_sampler(rows).__class__.__name__ == (
            "LengthGroupedSampler" if group_by_length else "RandomSampler"
        )  # training rows are still grouped
        torch.manual_seed(1)
        return trainer.predict(rows)

    plain, grouped = predict(False), predict(True)
    assert grouped.label_ids.tolist() == list(rows["labels"])  # the rows' own order
    np.testing.assert_allclose(grouped.predictions, plain.predictions, rtol=0, atol=1e-6)
