"""Post-hoc logit adjustment: tau chosen on validation, folded into the head's bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longtail.posthoc import (
    TAU_GRID,
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


def test_fold_into_head_without_bias_reports_false():
    model = torch.nn.Linear(4, 3, bias=False)
    assert not fold_into_head(model, np.log([0.5, 0.3, 0.2]), 1.0)
    assert fold_into_head(model, np.log([0.5, 0.3, 0.2]), 0.0)  # nothing to fold
