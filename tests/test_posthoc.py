"""Post-hoc logit adjustment: tau chosen on validation, folded into the head's bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.posthoc import (
    TAU_GRID,
    adjust_on_validation,
    classification_head,
    fold_into_head,
    log_prior_array,
    parse_tau_option,
    select_tau,
)


def test_parse_tau_option():
    assert parse_tau_option("auto") == TAU_GRID and 0.0 in TAU_GRID
    assert parse_tau_option("none") == (0.0,)
    assert parse_tau_option("0.5") == (0.5,)
    with pytest.raises(ValueError, match="auto, none or a number"):
        parse_tau_option("sometimes")


def test_log_prior_array_exact():
    np.testing.assert_allclose(log_prior_array({0: 6, 1: 3, 2: 1}, 3), np.log([0.6, 0.3, 0.1]))
    # a class with no training rows counts as one row: a finite prior, not log 0
    np.testing.assert_allclose(log_prior_array({0: 3}, 3), np.log([0.6, 0.2, 0.2]))


def test_select_tau_moves_predictions_to_the_rare_class():
    # class 0 holds 90 % of training rows; the model's logits favour it by a margin smaller than log(9)
    log_prior = np.log([0.9, 0.1])
    logits = np.array([[1.0, 0.0]] * 4 + [[3.0, 0.0]] * 4)
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    tau, rows = select_tau(logits, y, log_prior)
    # tau=0 predicts all class 0 (macro-F1 1/3); shift >= 1/log(9) = 0.455 flips the first four rows
    assert [r["tau"] for r in rows] == list(TAU_GRID)
    assert rows[0]["val_macro_f1"] == pytest.approx(1 / 3)
    assert rows[1]["val_macro_f1"] == pytest.approx(1 / 3)  # 0.25 * log 9 = 0.55 < 1: nothing flips
    assert tau == 0.5 and rows[2]["val_macro_f1"] == 1.0  # ties go to the smaller shift


def test_select_tau_keeps_zero_when_shifting_does_not_help():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    tau, _ = select_tau(logits, np.array([0, 1, 0]), np.log([0.5, 0.5]))
    assert tau == 0.0


def test_fold_into_head_shifts_the_bias_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4)
    before = model(x).detach().numpy()
    log_prior = np.log([0.7, 0.2, 0.1])
    assert classification_head(model, 3) is model[2]
    assert fold_into_head(model, log_prior, 0.5)
    np.testing.assert_allclose(model(x).detach().numpy(), before - 0.5 * log_prior, atol=1e-6)


def test_classification_head_is_the_last_linear_with_num_labels_outputs():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3))
    assert classification_head(model, 3) is model[2]
    assert classification_head(model, 5) is None


def test_fold_into_head_without_bias_reports_false():
    model = torch.nn.Linear(4, 3, bias=False)
    assert not fold_into_head(model, np.log([0.5, 0.3, 0.2]), 1.0)
    assert fold_into_head(model, np.log([0.5, 0.3, 0.2]), 0.0)  # nothing to fold


def test_adjust_on_validation_folds_the_chosen_tau_and_saves_the_model():
    """With a stand-in Trainer (its predict returns fixed validation logits): the select_tau example above
    chooses tau 0.5, which goes into the head's bias and the re-saved model; a head without a bias reports
    tau 0 (nothing served shifts) and saves nothing; 'none' does not even predict."""
    from types import SimpleNamespace

    import pandas as pd

    logits = np.array([[1.0, 0.0]] * 4 + [[3.0, 0.0]] * 4)
    data = SimpleNamespace(
        train_counts={0: 9, 1: 1},
        label_names=["a", "b"],
        splits={"validation": pd.DataFrame({"label_id": [1, 1, 1, 1, 0, 0, 0, 0]})},
    )

    class StandIn:
        def __init__(self, model):
            self.model, self.saved, self.predicted = model, 0, 0

        def predict(self, dataset, metric_key_prefix):
            assert dataset == "val-rows"
            self.predicted += 1
            return SimpleNamespace(predictions=logits)

        def save_model(self):
            self.saved += 1

    trainer = StandIn(torch.nn.Linear(2, 2))
    with torch.no_grad():
        trainer.model.bias.zero_()
    tau, section = adjust_on_validation(trainer, data, {"validation": "val-rows"}, "auto")
    assert tau == 0.5 and trainer.saved == 1
    torch.testing.assert_close(
        trainer.model.bias, torch.tensor([-0.5 * np.log(0.9), -0.5 * np.log(0.1)], dtype=torch.float32)
    )
    assert "| 0.5 | 1.0000 **(chosen)** | 1.0000 |" in section and section.count("(chosen)") == 1
    assert "| 0.0 | 0.3333 | 0.5000 |" in section

    no_bias = StandIn(torch.nn.Linear(2, 2, bias=False))
    tau, section = adjust_on_validation(no_bias, data, {"validation": "val-rows"}, "auto")
    assert tau == 0.0 and no_bias.saved == 0 and "The head has no bias" in section
    untouched = StandIn(torch.nn.Linear(2, 2))
    assert adjust_on_validation(untouched, data, {"validation": "val-rows"}, "none") == (0.0, None)
    assert untouched.predicted == 0
