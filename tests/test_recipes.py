"""End-to-end runs of the recipes through their main(), on tiny models and the synthetic data set."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import CFPB_CSV, REPO, needs_shared

REQUIRED_KEYS = {
    "accuracy",
    "macro_f1",
    "weighted_f1",
    "zero_f1_classes",
    "macro_f1_head",
    "macro_f1_mid",
    "macro_f1_tail",
    "ece",
    "nll",
    "macro_f1_ci_low",
    "macro_f1_ci_high",
    "num_examples",
    "num_classes",
}
# what the README's Outputs table lists for eval_results.json / test_results.json beyond REQUIRED_KEYS
README_RESULT_KEYS = {
    "temperature",
    "ece_served",
    "nll_served",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "classes_scored",
    "slices",
}
RUN_FILES = [
    "per_class.csv",
    "report.md",
    "confusion.png",
    "reliability.png",
    "README.md",
    "labels.json",
    "splits.json",
    "run_config.json",
    "predictions_validation.npz",
    "temperature.json",
]


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def synthetic_files(tmp_path: Path) -> tuple[str, str]:
    from longtail.synthetic import make_synthetic_splits

    splits = make_synthetic_splits(n_train=500, n_test=200, seed=7)
    paths = []
    for name, df in splits.items():
        path = tmp_path / f"{name}.csv"
        df.to_csv(path, index=False)
        paths.append(str(path))
    return paths[0], paths[1]


def synthetic_data(train: str, test: str, **options):
    """The recipes' data split of synthetic_files' CSVs, as a run on them with these data options prepares it."""
    from longtail.data import DataArguments, prepare_data

    return prepare_data(
        DataArguments(
            train_file=train,
            test_file=test,
            text_column="Consumer complaint narrative",
            label_taxonomy="none",
            **options,
        )
    )


def encoder_args(model: str, train: str, test: str, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(REPO / "recipes/configs/full_ft_encoder.yaml"),
        "--model_name_or_path",
        model,
        "--train_file",
        train,
        "--test_file",
        test,
        "--text_column",
        "Consumer complaint narrative",
        "--label_taxonomy",
        "none",
        "--output_dir",
        str(out),
        "--do_predict",
        "--num_train_epochs",
        "2",
        "--learning_rate",
        "5e-3",
        "--per_device_train_batch_size",
        "16",
        "--max_length",
        "64",
        "--logging_steps",
        "5",
        "--save_total_limit",
        "1",
        *extra,
    ]


def test_every_yaml_config_parses():
    """Every YAML under recipes/configs maps onto the recipe's dataclasses (unknown keys raise)."""
    from trl import TrlParser

    recipes = {p.stem: p for p in (REPO / "recipes").glob("*.py")}
    configs = sorted((REPO / "recipes/configs").glob("*.yaml"))
    assert configs
    for config in configs:
        # configs are named <recipe>[_variant].yaml
        matches = [r for r in recipes if config.stem == r or config.stem.startswith(r + "_")]
        assert matches, f"{config.name} names no recipe"
        recipe = max(matches, key=len)
        module = load_recipe(recipe)
        types = module.PARSER_TYPES
        parsed = TrlParser(types).parse_args_and_config(["--config", str(config)])
        assert len(parsed) == len(types)
        assert yaml.safe_load(config.read_text())


@pytest.mark.parametrize("recipe", ["baseline_tfidf", "probe_encoder", "full_ft_encoder"])
def test_mistakes_in_the_options_are_one_line_usage_errors(recipe, tmp_path, capsys):
    """A missing config, a YAML key or an option the recipe does not take, a YAML that does not parse or is
    not a mapping: each once a traceback from TRL or Transformers (one naming TRL's `fail_with_unknown_args`)."""
    module = load_recipe(recipe)
    (tmp_path / "extra.yaml").write_text("seed: 1\nbogus_key: -1\n")
    (tmp_path / "broken.yaml").write_text("seed: [1\n")
    (tmp_path / "list.yaml").write_text("- 1\n")
    cases = {
        "absent.yaml: no such file": ["--config", str(tmp_path / "absent.yaml")],
        "extra.yaml this recipe does not take: bogus_key (`--help`": [
            "--config",
            str(tmp_path / "extra.yaml"),
        ],
        "options this recipe does not take: bogus, other (`--help`": ["--bogus", "-3", "--other"],
        f"--config {tmp_path} cannot be read": ["--config", str(tmp_path)],
        "--config needs a YAML file": ["--config"],
        "broken.yaml is not valid YAML": ["--config", str(tmp_path / "broken.yaml")],
        "list.yaml must contain a YAML mapping": ["--config", str(tmp_path / "list.yaml")],
    }
    for message, argv in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            module.main(argv if argv == ["--config"] else [*argv, "--output_dir", str(tmp_path / "out")])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]  # usage lines, then this one; no traceback ends the output
        assert exit_info.value.code == 2 and message in last and "error:" in last, (message, err[-300:])
    assert not (tmp_path / "out").exists()


def test_cli_overrides_yaml(tmp_path):
    from trl import TrlParser

    module = load_recipe("full_ft_encoder")
    parser = TrlParser(module.PARSER_TYPES)
    config = str(REPO / "recipes/configs/full_ft_encoder.yaml")
    data_args, model_args, loss_args, *_, training_args = parser.parse_args_and_config(
        ["--config", config, "--learning_rate", "3e-4", "--loss", "focal", "--output_dir", str(tmp_path)]
    )
    assert training_args.learning_rate == 3e-4 and loss_args.loss == "focal"
    assert training_args.per_device_train_batch_size == 32  # from the YAML
    assert training_args.metric_for_best_model == "macro_f1"
    bad = tmp_path / "bad.yaml"
    bad.write_text("learning_rte: 1e-4\n")
    with pytest.raises(ValueError, match="learning_rte"):
        TrlParser(module.PARSER_TYPES).parse_args_and_config(["--config", str(bad)])


@pytest.mark.slow
def test_full_ft_encoder_end_to_end(tiny_modernbert, tmp_path, one_torch_thread):
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "run"
    recipe = load_recipe("full_ft_encoder")
    metrics = recipe.main(encoder_args(tiny_modernbert, train, test, out, "--loss", "logit_adjusted"))

    for name in ["eval_results.json", "test_results.json", *RUN_FILES]:
        assert (out / name).is_file(), name
    assert (out / "model.safetensors").is_file() and not list(out.glob("pytorch_model*.bin"))
    for split in ("eval", "test"):
        results = json.loads((out / f"{split}_results.json").read_text())
        assert REQUIRED_KEYS <= results.keys()
        assert results["macro_f1_ci_low"] <= results["macro_f1"] <= results["macro_f1_ci_high"]
        # the rest of what the README's Outputs table says these files hold
        assert README_RESULT_KEYS <= results.keys(), README_RESULT_KEYS - results.keys()
        assert results["accuracy_ci_low"] <= results["accuracy"] <= results["accuracy_ci_high"]
    # the Outputs table's other files of a Trainer run with --do_predict: the test predictions (their four keys)
    # and Trainer's own train_results.json / all_results.json with the mean training loss
    from longtail.report import load_predictions

    for split in ("validation", "test"):
        saved = load_predictions(out / f"predictions_{split}.npz")
        assert set(saved) == {"row_id", "y_true", "probs", "label_names"}, split
        assert len(saved["row_id"]) == metrics[split]["num_examples"], split
    for name in ("train_results.json", "all_results.json"):
        assert "train_loss" in json.loads((out / name).read_text()), name
    assert (
        metrics["test"]["num_examples"] == json.loads((out / "test_results.json").read_text())["num_examples"]
    )
    # the tiny model learns something: macro-F1 well above always predicting the majority class
    # (whose macro-F1 is at most 2p/(1+p) over the classes scored); accuracy is not the yardstick,
    # since the post-hoc shift trades head accuracy for tail recall
    labels = json.loads((out / "labels.json").read_text())
    p = max(labels["train_counts"].values()) / sum(labels["train_counts"].values())
    assert metrics["validation"]["macro_f1"] > 2 * (2 * p / (1 + p)) / metrics["validation"]["classes_scored"]
    # the label maps travel with the model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(out)
    assert (
        config.id2label[0] == labels["id2label"]["0"] and config.problem_type == "single_label_classification"
    )
    report = (out / "report.md").read_text()
    assert "best validation macro_f1" in report and "test scored once" in report
    card = (out / "README.md").read_text()
    assert "recipes/full_ft_encoder.py" in card and "--do_predict" in card

    # the saved model reloads and reproduces the validation predictions
    from transformers import pipeline

    clf = pipeline("text-classification", model=str(out), tokenizer=str(out), device="cpu")
    assert clf("I was charged a late fee twice on my statement")[0]["label"] in labels["id2label"].values()
    # the saved model (post-hoc shift folded into its head) reproduces the reported test accuracy
    data = synthetic_data(train, test, max_length=64)
    test_rows = data.splits["test"]
    predicted = [
        p["label"] for p in clf(test_rows["text"].tolist(), truncation=True, max_length=64, batch_size=32)
    ]
    reproduced = float(np.mean(np.array(predicted) == test_rows["label"].to_numpy()))
    assert reproduced == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert "Post-hoc logit adjustment" in report

    # a second run into the same folder is refused unless asked
    from longtail.runs import OutputDirError

    with pytest.raises(OutputDirError, match="overwrite_output_dir"):
        recipe.main(encoder_args(tiny_modernbert, train, test, out))


# A finished run's files, as an overwrite would remove them (ours: run_config.json marks the folder as a run)
PREVIOUS_RUN = {"run_config.json": "{}", "report.md": "the old report", "model.safetensors": "old weights",
                "eval_results.json": '{"macro_f1": 0.5}'}  # fmt: skip


def refused_overwrite_argv(case: str, request, tmp_path: Path, out: Path) -> list[str]:
    """A rerun into `out` with --overwrite_output_dir and one mistake, found at the latest point each recipe
    checks: the data (a column), the model (a length past its 64 positions, LoRA targets it lacks), the teacher."""
    from conftest import decoder_args

    train, test = synthetic_files(tmp_path)
    bert, qwen2 = (request.getfixturevalue("tiny_bert"), request.getfixturevalue("tiny_qwen2")) if case not in (
        "baseline_tfidf", "qlora_decoder") else (None, None)  # fmt: skip
    source = ["--train_file", train, "--test_file", test, "--text_column", "Consumer complaint narrative",
              "--label_taxonomy", "none", "--output_dir", str(out), "--overwrite_output_dir"]  # fmt: skip
    config = ["--config", str(REPO / f"recipes/configs/{case}.yaml")]
    if case == "baseline_tfidf":
        return [*config, *source, "--label_column", "Nope"]
    if case == "probe_encoder":
        return [*config, *source, "--model_name_or_path", bert, "--max_length", "128",
                "--embedding_cache_dir", str(tmp_path / "cache")]  # fmt: skip
    if case == "full_ft_encoder":
        return [*config, *source, "--model_name_or_path", bert, "--max_length", "128"]
    if case == "lora_decoder":
        return [
            *decoder_args(case, qwen2, train, test, out),
            "--overwrite_output_dir",
            "--lora_target_modules",
            "nope",
        ]
    if case == "qlora_decoder":
        return [*config, *source, "--model_name_or_path", str(tmp_path), "--label_column", "Nope"]
    (tmp_path / "no_teacher").mkdir()
    return [*config, *source, "--model_name_or_path", request.getfixturevalue("tiny_modernbert"),
            "--teacher_model_name_or_path", str(tmp_path / "no_teacher"), "--max_length", "48"]  # fmt: skip


@pytest.mark.parametrize(
    "case",
    ["baseline_tfidf", "probe_encoder", "full_ft_encoder", "lora_decoder", "qlora_decoder", "distill"],
)
def test_a_refused_overwrite_leaves_the_previous_results(case, request, tmp_path):
    """--overwrite_output_dir replaces a run's results, but only a run that starts: one refused for a mistake in
    its data, model or teacher must leave the previous results as they were (they were once removed first)."""
    from longtail.cli import UsageError

    if case == "qlora_decoder":
        pytest.importorskip("bitsandbytes")
    out = tmp_path / "run"
    out.mkdir()
    for name, text in PREVIOUS_RUN.items():
        (out / name).write_text(text)
    (out / "checkpoint-4").mkdir()
    argv = refused_overwrite_argv(case, request, tmp_path, out)
    with pytest.raises(UsageError):
        load_recipe(case).main(argv)
    assert {p.name: p.read_text() for p in out.iterdir() if p.is_file()} == PREVIOUS_RUN
    assert (out / "checkpoint-4").is_dir()
    # not written, and made by none of them: a refused run into a new folder leaves no empty one behind
    with pytest.raises(UsageError):
        load_recipe(case).main(
            [*argv[: argv.index(str(out))], str(tmp_path / "new"), *argv[argv.index(str(out)) + 1 :]]
        )
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_baseline_tfidf_end_to_end(tmp_path, monkeypatch):
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "baseline"
    recipe = load_recipe("baseline_tfidf")
    args = [
        "--config", str(REPO / "recipes/configs/baseline_tfidf.yaml"), "--train_file", train,
        "--test_file", test, "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none",
        "--output_dir", str(out), "--do_predict", "--grid_C", "1.0", "10.0",
    ]  # fmt: skip
    metrics = recipe.main(args)
    for name in ["eval_results.json", "test_results.json", "model.joblib", *RUN_FILES]:
        assert (out / name).is_file(), name
    config = json.loads((out / "run_config.json").read_text())
    grid = config["grid"]
    assert len(grid) == 2 * 1 * 2  # C x balanced x raw/sublinear tf, from the YAML
    assert {r["class_weight"] for r in grid} == {"balanced"} and config["baseline"]["char_ngram_max"] == 5
    best = max(grid, key=lambda r: r["val_macro_f1"])
    assert metrics["validation"]["macro_f1"] == pytest.approx(best["val_macro_f1"])
    assert "Validation grid" in (out / "report.md").read_text()
    assert "temperature: fitted on half of validation, kept only if" in (out / "report.md").read_text()
    assert metrics["test"]["accuracy"] > 0.5
    # the YAML runs lbfgs to convergence: every fit stops on its tolerance, well before max_iter
    assert config["baseline"]["tol"] == 1e-6 and all(0 < r["iterations"] < 1000 for r in grid)
    assert (
        "Solver: lbfgs, tol 1e-06, at most 1000 iterations; every fit met the tolerance."
        in (out / "report.md").read_text()
    )
    # the model card: a scikit-learn model (its front matter said `library_name: transformers`, with no way to
    # load it), whose quick start serves it
    import shlex

    from longtail.predict import main as predict

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "sklearn"
    quick_start = card.split("## Quick start")[1].split("```bash\n")[1].split("\n```")[0]
    assert quick_start.startswith("python -m longtail.predict ")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts.csv").write_text("text\nI was charged a late fee although I paid on time.\n")
    assert predict(shlex.split(quick_start)[3:])["predicted"] == 1

    # the config refits the chosen setting on train + validation: the saved vectoriser counted every one of
    # those documents (smooth idf of a term in one document: ln((1 + n) / 2) + 1) ...
    import joblib

    splits = json.loads((out / "splits.json").read_text())
    n_fit = len(splits["train"]) + len(splits["validation"])
    model = joblib.load(out / "model.joblib")
    words, chars = (
        step for _, step in model.named_steps["tfidf"].transformer_list
    )  # the YAML's words + chars
    assert words.idf_.max() == pytest.approx(np.log((1 + n_fit) / 2) + 1)
    assert chars.idf_.max() <= np.log((1 + n_fit) / 2) + 1 + 1e-6
    assert model.named_steps["logreg"].C == best["C"] and "Refit" in (out / "report.md").read_text()
    # ... while validation was scored by the train-only fit: a run without the refit (grid: the chosen cell
    # alone) has the same validation
    chosen = ["--grid_C", str(best["C"]), "--grid_sublinear_tf", str(best["sublinear_tf"]).lower()]
    plain = recipe.main(
        [*args, *chosen, "--output_dir", str(tmp_path / "plain"), "--refit_with_validation", "false"]
    )
    assert len(json.loads((tmp_path / "plain" / "run_config.json").read_text())["grid"]) == 1
    assert plain["validation"]["macro_f1"] == metrics["validation"]["macro_f1"]
    plain_model = joblib.load(tmp_path / "plain" / "model.joblib")
    n_train = len(splits["train"])
    plain_words = plain_model.named_steps["tfidf"].transformer_list[0][1]
    assert plain_words.idf_.max() == pytest.approx(np.log((1 + n_train) / 2) + 1)


def test_baseline_logs_fits_that_stop_at_max_iter(tmp_path, capsys):
    """A fit that runs out of iterations is named in the log and the report (the grid's and the refit's),
    and its iterations are in the grid: scikit-learn's ConvergenceWarning alone is lost in grid workers."""
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "short"
    args = [
        "--config", str(REPO / "recipes/configs/baseline_tfidf.yaml"), "--train_file", train,
        "--test_file", test, "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none",
        "--output_dir", str(out), "--grid_C", "10.0", "--grid_sublinear_tf", "true", "--char_ngram_max", "0",
        "--max_iter", "3",
    ]  # fmt: skip
    load_recipe("baseline_tfidf").main(args)  # the recipe logs to stderr (its own basicConfig)
    log = capsys.readouterr().err
    grid = json.loads((out / "run_config.json").read_text())["grid"]
    assert [r["iterations"] for r in grid] == [3]
    assert (
        "2 of 2 fits stopped at max_iter 3 before the solver's tolerance was met (C=10.0, class_weight=balanced, "
        "sublinear_tf=True; refit=True, C=10.0, class_weight=balanced, sublinear_tf=True)" in log
    )
    assert "**2 fit(s) stopped at max_iter** before meeting it" in (out / "report.md").read_text()


def test_baseline_grid_in_parallel_equals_serial(tmp_path):
    """n_jobs fits the grid's settings in worker processes: the same scores, models and choice as one by one."""
    import dataclasses

    import pandas as pd

    recipe = load_recipe("baseline_tfidf")
    df = pd.read_csv(synthetic_files(tmp_path)[0]).dropna(subset=["Consumer complaint narrative"])
    df = pd.DataFrame({"text": df["Consumer complaint narrative"], "label_id": pd.factorize(df["Issue"])[0]})
    train, validation = df.iloc[:350], df.iloc[350:]
    serial = recipe.BaselineArguments(
        select_on_validation=True, grid_C=[0.3, 10.0], char_ngram_max=3, n_jobs=1
    )
    best_serial, rows_serial = recipe.fit_grid(serial, train, validation)
    best_parallel, rows_parallel = recipe.fit_grid(dataclasses.replace(serial, n_jobs=2), train, validation)
    drop_time = lambda rows: [{k: v for k, v in r.items() if k != "fit_s"} for r in rows]  # noqa: E731
    assert len(rows_serial) == 2 * 2 * 2 and drop_time(rows_parallel) == drop_time(rows_serial)
    assert len({r["val_macro_f1"] for r in rows_serial}) > 1  # the grid has something to choose
    np.testing.assert_array_equal(
        best_parallel.named_steps["logreg"].coef_, best_serial.named_steps["logreg"].coef_
    )
    with pytest.raises(ValueError, match="n_jobs must be .* got 0"):
        recipe.BaselineArguments(n_jobs=0)
    with pytest.raises(
        ValueError, match=r"--tol must be >= 0 and --max_iter >= 1, got tol=-0.001, max_iter=1000"
    ):
        recipe.BaselineArguments(tol=-1e-3)
    with pytest.raises(ValueError, match=r"got tol=0.0001, max_iter=0"):  # zero iterations: an unfit model
        recipe.BaselineArguments(max_iter=0)
    with pytest.raises(ValueError, match=r"^grid_C must be positive numbers, got \[3.0, 0.0\]$"):
        recipe.BaselineArguments(grid_C=[3.0, 0.0])


def test_grid_solver_helpers_at_their_limits(caplog):
    """longtail.grid without fitting: tol 0 and max_iter 1 are valid, tol < 0 and max_iter 0 are not; a fit's
    iterations are the most over its sub-problems (a Pipeline: its last step's); a fit that ran exactly
    max_iter iterations counts as stopped, one below does not."""
    from types import SimpleNamespace

    from longtail.grid import check_solver_options, solver_iterations, warn_unconverged

    check_solver_options(0.0, 1)
    for tol, max_iter in ((-1e-9, 100), (1e-4, 0)):
        with pytest.raises(ValueError, match="--tol must be >= 0 and --max_iter >= 1"):
            check_solver_options(tol, max_iter)
    assert solver_iterations(SimpleNamespace(n_iter_=np.array([3, 7, 5]))) == 7
    pipeline = SimpleNamespace(steps=[("tfidf", None), ("logreg", SimpleNamespace(n_iter_=np.array([4, 9])))])
    assert solver_iterations(pipeline) == 9
    fits = [{"C": 1.0, "iterations": 99}, {"C": 10.0, "iterations": 100}]
    with caplog.at_level("WARNING", logger="longtail.grid"):
        assert warn_unconverged(fits, 100) == [fits[1]]
    assert "1 of 2 fits stopped at max_iter 100 before the solver's tolerance was met (C=10.0)" in caplog.text


def test_baseline_tfidf_character_ngrams(tmp_path):
    """--char_ngram_max adds a char_wb TF-IDF block beside the words: one pipeline, saved and refit like the
    word-only one; a word never seen in training still lights up its character n-grams."""
    import joblib
    from sklearn.pipeline import FeatureUnion

    train, test = synthetic_files(tmp_path)
    recipe = load_recipe("baseline_tfidf")
    args = [
        "--config", str(REPO / "recipes/configs/baseline_tfidf.yaml"), "--train_file", train,
        "--test_file", test, "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none",
        "--do_predict", "--grid_C", "1.0", "--grid_class_weight", "balanced", "--grid_sublinear_tf", "true",
    ]  # fmt: skip
    metrics = recipe.main([*args, "--output_dir", str(tmp_path / "chars"), "--char_ngram_max", "4"])
    model = joblib.load(tmp_path / "chars" / "model.joblib")
    union = model.named_steps["tfidf"]
    assert isinstance(union, FeatureUnion) and [name for name, _ in union.transformer_list] == [
        "words",
        "chars",
    ]
    words, chars = (step for _, step in union.transformer_list)
    assert chars.analyzer == "char_wb" and chars.ngram_range == (2, 4) and chars.sublinear_tf
    assert model.named_steps["logreg"].coef_.shape[1] == len(words.vocabulary_) + len(chars.vocabulary_)
    unseen = "zzzmortgagezzz"  # not a training word: no word feature, but its character n-grams are known
    assert words.transform([unseen]).nnz == 0 and chars.transform([unseen]).nnz > 0
    assert "char 2-4-grams" in (tmp_path / "chars" / "report.md").read_text()
    assert metrics["test"]["accuracy"] > 0.5
    with pytest.raises(ValueError, match=r"char_ngram_max must be 0 \(off\) or at least 2, got 1"):
        recipe.main([*args, "--output_dir", str(tmp_path / "bad"), "--char_ngram_max", "1"])


@pytest.mark.slow
@needs_shared
def test_baseline_on_real_cfpb(tmp_path):
    """The course floor on the real CFPB sample: its fixed settings (words only, C=1, no class weighting) read
    the head and miss the tail. For speed, one fit (no refit on train + validation) to tol 1e-4, which scores
    validation as the YAML's 1e-6 does here (macro-F1 0.0990 either way) in under half the time."""
    recipe = load_recipe("baseline_tfidf")
    metrics = recipe.main(
        [
            "--config", str(REPO / "recipes/configs/baseline_tfidf.yaml"), "--train_file", str(CFPB_CSV),
            "--text_column", "Consumer complaint narrative", "--output_dir", str(tmp_path / "b"),
            "--select_on_validation", "false", "--max_features", "20000",
            "--char_ngram_max", "0",  # the course's features: words only
            "--refit_with_validation", "false", "--tol", "1e-4",
        ]
    )  # fmt: skip
    val = metrics["validation"]
    assert val["num_classes"] == 64 and np.isfinite(val["nll"])
    # measured: accuracy 0.426, macro-F1 0.099, tail macro-F1 0 on these 793 validation rows
    assert 0.38 < val["accuracy"] < 0.47 and 0.07 < val["macro_f1"] < 0.13
    assert val["macro_f1_tail"] < 0.02 < val["macro_f1_head"]


def test_push_to_hub_once_without_leaking_the_token(
    tiny_modernbert, tmp_path, monkeypatch, capsys, caplog, one_torch_thread
):
    """--push_to_hub uploads the run folder once at the end; the token never reaches a file or the log."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id))
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "whoami", lambda token=None: calls.append(("whoami", token)))
    token = "hf_" + "S3cr3t" * 6
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "pushed"
    load_recipe("full_ft_encoder").main(
        encoder_args(
            tiny_modernbert,
            train,
            test,
            out,
            "--max_steps",
            "2",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            "--load_best_model_at_end",
            "false",
            "--push_to_hub",
            "--hub_model_id",
            "me/cfpb-test",
            "--hub_token",
            token,
        )
    )
    assert [c[0] for c in calls] == [
        "whoami",
        "init",
        "create_repo",
        "upload_folder",
    ]  # checked before training
    assert calls[0][1] == token and calls[1][1] == token and calls[2][1] == "me/cfpb-test"
    assert {"README.md", "model.safetensors", "report.md", "eval_results.json"} <= set(calls[3][2])
    for path in out.rglob("*"):  # every file, training_args.bin (a pickle of the arguments, pushed) included
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err + caplog.text
    assert "<redacted>" in (out / "README.md").read_text()  # the command is shown, the token is not


def test_push_to_hub_that_cannot_succeed_is_refused_before_training(tiny_modernbert, tmp_path, monkeypatch):
    """--push_to_hub offline, or with no token (no --hub_token, HF_TOKEN or stored login), or a token the Hub
    refuses: the run trained, wrote its results and then ended in huggingface_hub's traceback at the push
    (Trainer, which the recipes keep from pushing every checkpoint, would have failed at its start creating the
    repo). Now one line before the data is read; the token is never printed."""
    import huggingface_hub
    import requests
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    from longtail.cli import UsageError

    train, test = synthetic_files(tmp_path)
    out = tmp_path / "pushed"
    token = "hf_" + "S3cr3t" * 6
    argv = encoder_args(tiny_modernbert, train, test, out, "--push_to_hub", "--hub_model_id", "me/cfpb-test")
    recipe = load_recipe("full_ft_encoder")
    monkeypatch.setattr(recipe, "prepare_data", lambda *a: pytest.fail("the data was read"))
    with pytest.raises(UsageError) as err:  # the real whoami: HF_HUB_OFFLINE=1 in the tests (conftest)
        recipe.main([*argv, "--hub_token", token])
    assert str(err.value).startswith(
        "--push_to_hub: the Hugging Face Hub cannot be reached as a user here (Cannot reach "
    ), str(err.value)
    assert str(err.value).endswith(
        "): pass --hub_token, set HF_TOKEN or log in (`hf auth login`), and unset HF_HUB_OFFLINE; or drop "
        "--push_to_hub and push the run folder later"
    )
    assert token not in str(err.value)

    def no_login(token=None):
        raise LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")

    monkeypatch.setattr(huggingface_hub, "whoami", no_login)
    with pytest.raises(
        UsageError, match=r"as a user here \(Token is required .* but no token found\.\): pass"
    ):
        recipe.main(argv)
    assert not out.exists()

    class DataRead(Exception):
        pass

    def unsure(status):  # whoami's strict rate limit (429), or the Hub down: nothing said of the token
        def whoami(token=None):
            response = requests.Response()
            response.status_code = status
            raise HfHubHTTPError(f"{status} Client Error: rate limit for /whoami-v2", response=response)

        return whoami

    monkeypatch.setattr(recipe, "prepare_data", lambda *a: (_ for _ in ()).throw(DataRead()))
    for status in (429, 503):
        monkeypatch.setattr(huggingface_hub, "whoami", unsure(status))
        with pytest.raises(DataRead):  # a warning, and on to the data
            recipe.main([*argv, "--hub_token", token])


def test_hub_dataset_path(monkeypatch):
    """A Hub data set (train/test splits, no validation) goes through the same pipeline; offline we
    stand in for `datasets.load_dataset` with the synthetic rows in the Hub data set's column names."""
    import datasets

    from longtail.data import DataArguments, prepare_data
    from longtail.synthetic import make_synthetic_splits

    splits = make_synthetic_splits(n_train=400, n_test=100, seed=3)
    hub = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_pandas(
                df.rename(columns={"Consumer complaint narrative": "Consumer Complaint"}),
                preserve_index=False,
            )
            for name, df in splits.items()
        }
    )
    seen = {}

    def fake_load_dataset(name, config_name=None):
        seen["name"] = name
        return hub

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = prepare_data(DataArguments())
    assert seen["name"] == "determined-ai/consumer_complaints_medium"
    assert set(data.splits) == {"train", "validation", "test"}
    assert data.log["validation_from_train"]["fraction"] == 0.1


def test_baseline_names_the_setting_options_its_mode_does_not_read(tmp_path, capsys):
    """`--grid_C 3 10` without `--select_on_validation true` (its default is false: the course baseline) fitted C=1
    alone, and `--C 10` under baseline_tfidf.yaml (which selects) was replaced by the grid's choice, both without a
    word. The options the chosen mode does not read are now named in a warning; the run is as before."""
    recipe = load_recipe("baseline_tfidf")
    args = recipe.BaselineArguments
    assert recipe.unread_options(args()) == []
    assert recipe.unread_options(args(grid_C=[3.0, 10.0], grid_sublinear_tf="true")) == [
        "--grid_C 3.0 10.0", "--grid_sublinear_tf true"]  # fmt: skip
    assert recipe.unread_options(args(select_on_validation=True)) == []
    assert recipe.unread_options(
        args(select_on_validation=True, C=10.0, class_weight="balanced", sublinear_tf=True)
    ) == ["--C 10.0", "--class_weight balanced", "--sublinear_tf True"]
    train, test = synthetic_files(tmp_path)
    argv = ["--train_file", train, "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none",
            "--max_train_samples", "200", "--output_dir", str(tmp_path / "out"), "--grid_C", "3", "10"]  # fmt: skip
    recipe.main(argv)  # the recipe logs to stderr (its own basicConfig)
    assert (
        "Not read without --select_on_validation true (the fixed --C, --class_weight, --sublinear_tf are fitted): "
        "--grid_C 3.0 10.0" in capsys.readouterr().err
    )
    assert [r["C"] for r in json.loads((tmp_path / "out" / "run_config.json").read_text())["grid"]] == [1.0]


def test_baseline_names_a_config_files_unread_options_as_its_and_not_when_the_mode_is_typed(
    tmp_path, capsys, monkeypatch
):
    """A YAML with a grid (baseline_tfidf.yaml's) and `--select_on_validation false` typed: the warning named the
    YAML's `--grid_C 3.0 10.0` as if typed, though the mode typed leaves the config's grid unread by choice. Now
    options the command line sets are named as typed, in any form argparse takes; one the config sets, as the
    config's, and only when the mode is the config's too."""
    from trl import TrlParser

    from longtail.cli import config_path, parse_config, typed_options

    recipe = load_recipe("baseline_tfidf")
    config = tmp_path / "grid.yaml"
    config.write_text("select_on_validation: true\ngrid_C: [3.0, 10.0]\ngrid_class_weight: [balanced]\n")

    def unread(*argv):
        parser = TrlParser(recipe.PARSER_TYPES)
        args = parse_config(parser, list(argv))[1]
        return recipe.unread_options(args, typed_options(parser, list(argv)), config_path(list(argv)))

    assert unread("--config", str(config), "--select_on_validation", "false") == []
    assert unread("--config", str(config), "--select_on_validation=false", "--grid-C", "3", "10") == [
        "--grid_C 3.0 10.0"]  # fmt: skip
    assert unread("--config", str(config), "--select_on_val", "true", "--C", "3") == ["--C 3.0"]
    # the mode typed as the config has it: the config's own unread setting is still named
    config.write_text("select_on_validation: true\nC: 5.0\n")
    assert unread("--config", str(config), "--select_on_validation", "true") == [f"C 5.0 (from {config})"]
    config.write_text("select_on_validation: true\ngrid_C: [3.0, 10.0]\ngrid_class_weight: [balanced]\n")
    # the config's mode (the default: no grid) and a grid in the config
    config.write_text("grid_C: [3.0, 10.0]\nC: 3.0\n")
    assert unread("--config", str(config)) == [f"grid_C 3.0 10.0 (from {config})"]
    assert unread("--config", str(config), "--C", "1") == [f"grid_C 3.0 10.0 (from {config})"]
    assert unread("--select_on_validation", "true", "--C", "2", "--class_weight", "balanced") == [
        "--C 2.0", "--class_weight balanced"]  # fmt: skip

    config.write_text("select_on_validation: true\ngrid_C: [3.0, 10.0]\ngrid_class_weight: [balanced]\n")
    train, test = synthetic_files(tmp_path)
    # as the command line runs it (main() reads sys.argv; the options it typed are read from there too)
    monkeypatch.setattr(sys, "argv", ["recipes/baseline_tfidf.py", "--config", str(config), "--select_on_validation",
                                      "false", "--train_file", train, "--text_column", "Consumer complaint narrative",
                                      "--label_taxonomy", "none", "--max_train_samples", "200", "--output_dir",
                                      str(tmp_path / "out")])  # fmt: skip
    recipe.main()
    assert "Not read" not in capsys.readouterr().err
    assert [r["C"] for r in json.loads((tmp_path / "out" / "run_config.json").read_text())["grid"]] == [1.0]
