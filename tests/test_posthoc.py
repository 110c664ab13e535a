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
    tau, section, applied = adjust_on_validation(trainer, data, {"validation": "val-rows"}, "auto")
    assert tau == 0.5 and applied is True and trainer.saved == 1
    torch.testing.assert_close(
        trainer.model.bias, torch.tensor([-0.5 * np.log(0.9), -0.5 * np.log(0.1)], dtype=torch.float32)
    )
    assert "| 0.5 | 1.0000 **(chosen)** | 1.0000 |" in section and section.count("(chosen)") == 1
    assert "| 0.0 | 0.3333 | 0.5000 |" in section

    no_bias = StandIn(torch.nn.Linear(2, 2, bias=False))
    tau, section, applied = adjust_on_validation(no_bias, data, {"validation": "val-rows"}, "auto")
    assert tau == 0.0 and applied is False and no_bias.saved == 0
    assert (
        "**The head has no bias (a decoder's `score`), so the chosen shift is not in the saved model, nor in the "
        "test scores reported.** `--loss logit_adjusted` trains the shift in instead, with no bias needed."
    ) in section.splitlines()
    # a run that trains with the logit-adjusted loss already is not told to
    no_bias.loss_args = SimpleNamespace(loss="logit_adjusted")
    tau, section, applied = adjust_on_validation(no_bias, data, {"validation": "val-rows"}, "auto")
    assert applied is False
    assert (
        "**The head has no bias (a decoder's `score`), so the chosen shift is not in the saved model, nor in the "
        "test scores reported.**"
    ) in section.splitlines()
    # the report's selection line: tau 0 is what a bias-less head (SmolLM2's, Qwen's `score`) serves, not the best
    # (0.5 was); it read "post-hoc tau 0.0: best validation macro-F1" beside the grid marking 0.5 chosen
    from longtail.lpft import LPFTArguments, selection_note

    note = selection_note("checkpoint: best", LPFTArguments(), tau, applied, 30)
    assert "post-hoc tau: chosen on validation, not applied (the head has no bias)" in note
    assert "best validation macro-F1" not in note
    note = selection_note("checkpoint: best", LPFTArguments(), 0.5, True, 30)
    assert "; post-hoc tau 0.5: best validation macro-F1;" in note
    untouched = StandIn(torch.nn.Linear(2, 2))
    assert adjust_on_validation(untouched, data, {"validation": "val-rows"}, "none") == (0.0, None, None)
    assert untouched.predicted == 0


def test_selection_note_reads_whether_tau_was_applied_not_the_sections_wording():
    """The selection line's post-hoc part follows adjust_on_validation's `applied` (it looked for the "no bias"
    sentence in the report section's text, so a reworded section, or none passed, said nothing): False names a
    tau chosen but not in the model, True the tau served (0 too: the best was no shift), None no tau at all."""
    from longtail.lpft import LPFTArguments, selection_note

    temperature = "temperature: none fitted (5 validation rows, 20 needed)"
    assert selection_note("last epoch", LPFTArguments(), 0.0, False, 5) == (
        f"last epoch; post-hoc tau: chosen on validation, not applied (the head has no bias); {temperature}"
    )
    assert selection_note("last epoch", LPFTArguments(), 0.0, True, 5) == (
        f"last epoch; post-hoc tau 0.0: best validation macro-F1; {temperature}"
    )
    assert selection_note("last epoch", LPFTArguments(), 0.0, None, 5) == f"last epoch; {temperature}"


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Each large tau is warned about once per process: forget the ones other tests warned about."""
    import longtail.posthoc

    monkeypatch.setattr(longtail.posthoc, "_warned_taus", set(), raising=False)


def test_a_negative_tau_is_refused_and_a_large_one_warned_about(caplog, fresh_warnings):
    """A negative tau multiplies the prior in: predictions move to the head classes, the opposite of what the
    option is for (it was accepted, and folded into the served model). Above 2 the shift over-corrects past tau = 1,
    the Bayes rule for balanced error: accepted, with one warning however often the value is parsed."""
    for value in ("-0.5", "-1", "-3e-2"):
        with pytest.raises(ValueError) as err:
            parse_tau_option(value)
        assert str(err.value) == (
            f"--posthoc_logit_adjustment must be >= 0, got '{value}': a negative tau shifts predictions towards "
            "the head classes (tau = 1 is the Bayes rule for balanced error)"
        )
    with caplog.at_level("WARNING", logger="longtail.posthoc"):
        assert parse_tau_option("2") == (2.0,) and parse_tau_option("0") == (0.0,)
        assert parse_tau_option("-0") == (0.0,)  # float("-0") is -0.0, no shift
        assert not caplog.records  # 2 is still accepted silently: twice the balanced-error rule
        assert parse_tau_option("3.5") == (3.5,) and parse_tau_option("3.5") == (3.5,)
    assert [r.getMessage() for r in caplog.records] == [
        "--posthoc_logit_adjustment 3.5 is above 2.0: it over-corrects past the balanced-error rule "
        "(tau = 1 is its Bayes rule), so predictions lean to the tail classes"
    ]
    assert caplog.records[0].levelname == "WARNING"


def test_the_training_loss_tau_is_checked_like_the_posthoc_one(caplog, fresh_warnings):
    """--logit_adjustment_tau: a negative one trained the raw logits towards the head classes, NaN (from Python; the
    command line refuses it in `parse_config`) gave a NaN loss at the first step; both passed every check."""
    from longtail.losses import LossArguments

    for tau in (-1.0, -0.25):
        with pytest.raises(
            ValueError, match=f"^--logit_adjustment_tau must be >= 0, got '{tau}': a negative tau"
        ):
            LossArguments(loss="logit_adjusted", logit_adjustment_tau=tau)
    with pytest.raises(ValueError, match="^--logit_adjustment_tau must be >= 0, got '-1.0'"):
        LossArguments(logit_adjustment_tau=-1.0)  # unused by ce, but a mistake all the same
    for tau in (float("nan"), float("inf")):
        with pytest.raises(
            ValueError, match=f"^--logit_adjustment_tau must be a finite number >= 0, got '{tau}'$"
        ):
            LossArguments(loss="logit_adjusted", logit_adjustment_tau=tau)
    with caplog.at_level("WARNING", logger="longtail.posthoc"):
        assert LossArguments(loss="logit_adjusted", logit_adjustment_tau=0.0).logit_adjustment_tau == 0.0
        LossArguments(logit_adjustment_tau=5.0)  # ce: the loss tau is not read, so nothing to warn about
        assert not caplog.records
        LossArguments(loss="logit_adjusted", logit_adjustment_tau=5.0)
    assert [r.getMessage() for r in caplog.records] == [
        "--logit_adjustment_tau 5.0 is above 2.0: it over-corrects past the balanced-error rule "
        "(tau = 1 is its Bayes rule), so predictions lean to the tail classes"
    ]


def test_a_negative_tau_stops_a_recipe_with_one_line(tmp_path, capsys, monkeypatch):
    """Through the recipe's command-line entry (`longtail.cli.run`): status 2 and one line naming the option and
    the value, while the options are parsed (before any data, model or output folder)."""
    from conftest import refused, run_as
    from test_recipes import load_recipe

    from longtail.cli import run

    recipe = load_recipe("full_ft_encoder")
    run_as(monkeypatch, "full_ft_encoder.py")
    out = tmp_path / "out"
    for option, value, message in (
        ("--posthoc_logit_adjustment", "-0.5", "must be >= 0, got '-0.5': a negative tau shifts predictions"),
        ("--logit_adjustment_tau", "-1", "must be >= 0, got '-1.0': a negative tau shifts predictions"),
    ):
        # a local file that is not there: had the options passed, the run would stop at once (and offline)
        argv = ["--loss", "logit_adjusted", option, value, "--train_file", str(tmp_path / "absent.csv")]
        argv += ["--output_dir", str(out)]
        line = refused(lambda a: run(recipe.main, a), argv, capsys)
        assert line.startswith(f"full_ft_encoder.py: error: {option} {message}"), line
    assert not out.exists()


def test_adjust_on_validation_applies_a_chosen_tau_of_zero_to_any_head():
    """The best shift is none: tau 0 is what the model serves, with a bias or without one (nothing to fold), so it
    is applied (the selection line says "post-hoc tau 0.0: best validation macro-F1", not "not applied"), and the
    model is not saved again."""
    from types import SimpleNamespace

    import pandas as pd

    # argmax of the logits is right on all 8 rows; any tau > 0 lifts class 1 (prior 0.1) over the first four
    logits = np.array([[0.2, 0.0]] * 4 + [[0.0, 2.0]] * 4)
    data = SimpleNamespace(
        train_counts={0: 9, 1: 1},
        label_names=["a", "b"],
        splits={"validation": pd.DataFrame({"label_id": [0] * 4 + [1] * 4})},
    )

    class StandIn:
        def __init__(self, model):
            self.model, self.saved = model, 0

        def predict(self, dataset, metric_key_prefix):
            return SimpleNamespace(predictions=logits)

        def save_model(self):
            self.saved += 1

    for bias in (True, False):
        trainer = StandIn(torch.nn.Linear(2, 2, bias=bias))
        tau, section, applied = adjust_on_validation(trainer, data, {"validation": "val-rows"}, "auto")
        assert (tau, applied, trainer.saved) == (0.0, True, 0), bias
        assert "| 0.0 | 1.0000 **(chosen)** | 1.0000 |" in section
