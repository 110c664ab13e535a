"""The floor every other recipe must beat: TF-IDF (50k 1-2-grams) + logistic regression.

    python recipes/baseline_tfidf.py --config recipes/configs/baseline_tfidf.yaml [--key value ...]

Defaults are the course baseline (C=1, no class weighting, raw tf). `--select_on_validation` fits a
grid over C x class weighting x sublinear tf and keeps the setting with the best validation
macro-F1, because an untuned floor flatters everything above it; `--refit_with_validation` then fits the
chosen setting again on train + validation (`longtail.refit`). Same data pipeline, splits, metrics and
report as the Trainer recipes.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline
from trl import TrlParser

from longtail.calibration import temperature_note
from longtail.cli import config_path, parse_config, run, typed_options
from longtail.crossfit import (
    FOLDS_HELP,
    check_class_counts,
    check_folds,
    cross_fitted_probs,
    train_prediction_note,
)
from longtail.data import DataArguments, prepare_data, require_usable_splits
from longtail.grid import (
    check_grid,
    check_solver_options,
    fit_settings,
    solver_iterations,
    solver_note,
    warn_unconverged,
)
from longtail.metrics import macro_f1
from longtail.refit import RefitArguments, refit_note, train_and_validation
from longtail.report import SplitResult, grid_table, save_predictions, summary_text, write_run_outputs
from longtail.runs import (
    command_line,
    input_paths,
    prepare_output_dir,
    replace_previous_run,
    source_description,
    write_run_files,
)

logger = logging.getLogger("baseline_tfidf")
WEIGHTINGS = ("none", "balanced")  # LogisticRegression's class_weight (none: None)
SUBLINEAR = {"both": [False, True], "true": [True], "false": [False]}


@dataclass
class BaselineArguments:
    output_dir: str = field(default="outputs/baseline_tfidf", metadata={"help": "Where results are written."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace results in a non-empty output_dir."}
    )
    do_predict: bool = field(default=False, metadata={"help": "Score the test split once, at the end."})
    predict_train: bool = field(
        default=False,
        metadata={"help": "Also save predictions_train.npz (e.g. to serve as a distillation teacher)."},
    )
    predict_train_folds: int = field(default=5, metadata={"help": FOLDS_HELP})
    max_features: int = field(default=50_000, metadata={"help": "TF-IDF vocabulary size."})
    ngram_max: int = field(default=2, metadata={"help": "Use 1..ngram_max word n-grams."})
    sublinear_tf: bool = field(default=False, metadata={"help": "1 + log(tf) instead of raw counts."})
    char_ngram_max: int = field(
        default=0,
        metadata={
            "help": "Also use character 2..N-grams inside word boundaries (char_wb), a second TF-IDF block "
            "beside the words: spelling variants, redactions (XXXX) and rare words share features. 0 = off."
        },
    )
    char_max_features: int = field(default=100_000, metadata={"help": "Character n-gram vocabulary size."})
    C: float = field(
        default=1.0, metadata={"help": "Inverse regularisation strength of the logistic regression."}
    )
    class_weight: str = field(default="none", metadata={"help": "none or balanced."})
    max_iter: int = field(
        default=1000, metadata={"help": "Solver iterations at most (a fit that reaches it is logged)."}
    )
    tol: float = field(
        default=1e-4,
        metadata={
            "help": "Solver tolerance (scikit-learn's default). On sparse TF-IDF features lbfgs stops short of "
            "the optimum at 1e-3 or 1e-4, so where it stops, and the scores, follow the library version; "
            "baseline_tfidf.yaml uses 1e-6."
        },
    )
    select_on_validation: bool = field(
        default=False,
        metadata={"help": "Grid over grid_C x grid_class_weight x grid_sublinear_tf on validation."},
    )
    grid_C: list[float] = field(default_factory=lambda: [1.0, 3.0, 10.0])
    grid_class_weight: list[str] = field(default_factory=lambda: ["none", "balanced"])
    grid_sublinear_tf: str = field(
        default="both", metadata={"help": "Sublinear tf in the grid: both, true or false."}
    )
    seed: int = field(default=42, metadata={"help": "Solver seed."})
    n_jobs: int = field(
        default=1,
        metadata={
            "help": "Grid settings fitted at once (joblib processes; -1 = one per core). The solver is "
            "single-threaded on sparse features, so the grid is what uses the other cores."
        },
    )

    def __post_init__(self):
        self.grid_sublinear_tf = str(self.grid_sublinear_tf).lower()  # YAML may hand us a bool
        if self.grid_sublinear_tf not in ("both", "true", "false"):
            raise ValueError(f"grid_sublinear_tf must be both, true or false, got '{self.grid_sublinear_tf}'")
        if self.char_ngram_max == 1 or self.char_ngram_max < 0:
            raise ValueError(f"char_ngram_max must be 0 (off) or at least 2, got {self.char_ngram_max}")
        # scikit-learn's own errors came as tracebacks, after the data was read
        small = {
            k: getattr(self, k)
            for k in ("ngram_max", "max_features", "char_max_features")
            if getattr(self, k) < 1
        }
        if small:
            raise ValueError(f"{', '.join(f'{k} {v}' for k, v in small.items())}: must be at least 1")
        # before any vectorising; the grid as the probe's: an empty grid_class_weight fit nothing ("max() arg is
        # an empty sequence" once every tf setting was vectorised), and a repeat was fit and reported twice
        if not self.C > 0:
            raise ValueError(f"C must be a positive number, got {self.C}")
        if self.class_weight not in WEIGHTINGS:
            raise ValueError(f"class_weight must be one of {WEIGHTINGS}, got '{self.class_weight}'")
        check_grid(self.grid_C, self.grid_class_weight, WEIGHTINGS)
        check_solver_options(self.tol, self.max_iter)
        check_folds(self.predict_train_folds)
        if self.n_jobs == 0:  # fail at parse time, not after the vectoriser has run
            raise ValueError("n_jobs must be a number of processes (1, 2, ...) or -1 for one per core, got 0")


PARSER_TYPES = (DataArguments, BaselineArguments, RefitArguments)
# the options each mode reads: the grid with --select_on_validation true, the one fixed setting without
GRID_OPTIONS = ("grid_C", "grid_class_weight", "grid_sublinear_tf")
FIXED_OPTIONS = ("C", "class_weight", "sublinear_tf")


def unread_options(
    args: BaselineArguments, typed: set[str] | None = None, config: str | None = None
) -> list[str]:
    """The setting options given other than their defaults that this mode does not read (`--grid_C 3 10` without
    --select_on_validation fitted C=1 alone; `--C 10` with it was replaced by the grid's choice; both silently).
    Those the command line set (`typed`; None: all) are named as typed; those the `config` file set, as its, and
    only when the mode is the config's too: a mode typed other than the config's (`--select_on_validation false`
    under baseline_tfidf.yaml) leaves the config's other mode unread by choice (its grid was named as if typed);
    typed as the config has it, the config's unread options are still the config's mistake."""
    defaults = BaselineArguments()
    config_mode = defaults.select_on_validation
    if config and "select_on_validation" in (typed or ()):
        import yaml

        config_mode = bool(
            (yaml.safe_load(Path(config).read_text("utf-8")) or {}).get("select_on_validation")
        )
    mode_chosen = "select_on_validation" in (typed or ()) and args.select_on_validation != config_mode
    unread = []
    for name in FIXED_OPTIONS if args.select_on_validation else GRID_OPTIONS:
        if (value := getattr(args, name)) == getattr(defaults, name):
            continue
        shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
        if typed is None or name in typed:
            unread.append(f"--{name} {shown}")
        elif not mode_chosen:
            unread.append(f"{name} {shown} (from {config})")
    return unread


def build_vectorizer(args: BaselineArguments, sublinear: bool):
    """Word 1..ngram_max-grams; with char_ngram_max, a character n-gram block beside them (FeatureUnion)."""
    words = TfidfVectorizer(
        max_features=args.max_features,
        ngram_range=(1, args.ngram_max),
        sublinear_tf=sublinear,
        dtype=np.float32,
    )
    if not args.char_ngram_max:
        return words
    chars = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=(2, args.char_ngram_max),
        max_features=args.char_max_features,
        sublinear_tf=sublinear,
        dtype=np.float32,
    )
    return FeatureUnion([("words", words), ("chars", chars)])


def logreg(args: BaselineArguments, C: float, weight: str) -> LogisticRegression:
    return LogisticRegression(
        C=C,
        class_weight=None if weight == "none" else weight,
        max_iter=args.max_iter,
        tol=args.tol,
        random_state=args.seed,
    )


def fit_grid(args: BaselineArguments, train, validation) -> tuple[Pipeline, list[dict]]:
    """Fit every grid setting on train, score it on validation; return the best pipeline and the grid.

    The vectoriser is fit once per tf setting and shared by the classifiers that use it; those are fit
    `n_jobs` at a time. Ties keep the earlier setting in grid order, whatever the parallelism.
    """
    settings = (
        {
            "C": args.grid_C,
            "class_weight": args.grid_class_weight,
            "sublinear_tf": SUBLINEAR[args.grid_sublinear_tf],
        }
        if args.select_on_validation
        else {"C": [args.C], "class_weight": [args.class_weight], "sublinear_tf": [args.sublinear_tf]}
    )
    y_train, y_val = train["label_id"].to_numpy(), validation["label_id"].to_numpy()
    rows, best, best_score = [], None, -1.0
    for sublinear in settings["sublinear_tf"]:
        tfidf = build_vectorizer(args, sublinear)
        x_train = tfidf.fit_transform(train["text"])
        x_val = tfidf.transform(validation["text"])
        combos = list(itertools.product(settings["C"], settings["class_weight"]))
        fitted = fit_settings([logreg(args, C, w) for C, w in combos], x_train, y_train, x_val, args.n_jobs)
        for (C, weight), (classifier, pred, seconds) in zip(combos, fitted, strict=True):
            score = macro_f1(y_val, pred)
            rows.append(
                {
                    "C": C,
                    "class_weight": weight,
                    "sublinear_tf": sublinear,
                    "val_macro_f1": score,
                    "iterations": solver_iterations(classifier),
                    "fit_s": seconds,
                }
            )
            logger.info(
                "C=%s class_weight=%s sublinear_tf=%s: validation macro-F1 %.4f", C, weight, sublinear, score
            )
            if score > best_score:
                best, best_score = Pipeline([("tfidf", tfidf), ("logreg", classifier)]), score
    return best, rows


def grid_section(rows: list[dict], chosen: dict, refit: str = "", solver: str = "") -> str:
    lines = [
        "## Validation grid",
        "",
        "Every setting was fit on train and scored on validation; the best "
        "validation macro-F1 was kept. The test split played no part in the choice."
        + (f" {solver}" if solver else ""),
        "",
    ]
    columns = {"C": "C", "class_weight": "class_weight", "sublinear_tf": "sublinear_tf",
               "validation macro-F1": "val_macro_f1", "solver iterations": "iterations",
               "fit (s)": "fit_s"}  # fmt: skip
    lines.append(grid_table(rows, columns, chosen))
    if refit:
        lines += ["", f"**Refit**: {refit}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    # ---- Parse config ------------------------------------------------------------------------
    parser = TrlParser(PARSER_TYPES)
    data_args, args, refit_args = parse_config(parser, argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, force=True
    )
    # checked now, cleared (an overwrite) once the data is checked too
    output_dir = prepare_output_dir(
        args.output_dir, args.overwrite_output_dir, inputs=input_paths(data_args), clear=False
    )
    command = command_line("recipes/baseline_tfidf.py", argv)
    started = time.time()
    argv = sys.argv[1:] if argv is None else list(argv)
    if unread := unread_options(args, typed_options(parser, argv), config_path(argv)):
        logger.warning(
            "Not read %s: %s",
            "with --select_on_validation true (the grid chooses C, class weighting and sublinear tf)"
            if args.select_on_validation
            else "without --select_on_validation true (the fixed --C, --class_weight, --sublinear_tf are fitted)",
            ", ".join(unread),
        )

    # ---- Load data ---------------------------------------------------------------------------
    data = prepare_data(data_args)
    require_usable_splits(data, args.do_predict)
    train, validation = data.splits["train"], data.splits["validation"]
    if args.predict_train:  # before any fitting
        check_class_counts(data.splits["train"]["label_id"].to_numpy(), args.predict_train_folds)
    replace_previous_run(output_dir, args.overwrite_output_dir)

    # ---- Fit (and select on validation) ------------------------------------------------------
    selected, grid = fit_grid(args, train, validation)
    chosen = max(grid, key=lambda r: r["val_macro_f1"])
    model = selected  # what is saved and scores test
    if refit_args.refit_with_validation:  # the chosen setting again (vocabulary too) on train + validation
        both = train_and_validation(data)
        model = clone(selected).fit(both["text"], both["label_id"])
    model_iterations = solver_iterations(model)
    setting_keys = ("C", "class_weight", "sublinear_tf")
    fits = [{k: r[k] for k in (*setting_keys, "iterations")} for r in grid]
    if refit_args.refit_with_validation:
        fits.append({"refit": True, **{k: chosen[k] for k in setting_keys}, "iterations": model_iterations})
    unconverged = warn_unconverged(fits, args.max_iter)

    # ---- Evaluate (validation always; test only when asked, once, at the end) ----------------
    def result(split, probs=None):
        df = data.splits[split]
        if probs is None:
            probs = (selected if split == "validation" else model).predict_proba(df["text"])
        return SplitResult(
            split, df["label_id"].to_numpy(), probs, df["text"], row_ids=df["row_id"].to_numpy()
        )

    results = [result("validation")]
    if args.do_predict:
        results.append(result("test"))

    # ---- Save and report ---------------------------------------------------------------------
    joblib.dump(model, output_dir / "model.joblib")
    if args.predict_train:  # a teacher for recipes/distill.py --teacher_logits <this folder>
        num_labels, texts, labels = len(data.label_names), train["text"], train["label_id"].to_numpy()

        def fit_predict(fit_rows, scored):  # the chosen setting, vocabulary included, fit on the other folds
            fold = clone(selected).fit(texts.iloc[fit_rows], labels[fit_rows])
            probs = np.zeros((len(scored), num_labels))  # a class the fold never saw: probability 0
            probs[:, fold.classes_] = fold.predict_proba(texts.iloc[scored])
            return probs

        folds = args.predict_train_folds
        probs = cross_fitted_probs(fit_predict, labels, num_labels, folds, args.seed) if folds else None
        save_predictions(output_dir, result("train", probs), data.label_names)
    run_info = {
        "recipe": "baseline_tfidf",
        "model": f"TF-IDF ({args.max_features // 1000}k, 1-{args.ngram_max}-grams"
        + (
            f"; {args.char_max_features // 1000}k char 2-{args.char_ngram_max}-grams"
            if args.char_ngram_max
            else ""
        )
        + ") + LogReg",
        "C": chosen["C"],
        "class_weight": chosen["class_weight"],
        "sublinear_tf": chosen["sublinear_tf"],
        "refit_with_validation": refit_args.refit_with_validation,
        "solver_iterations": model_iterations,
        "unconverged_fits": len(unconverged),
        "total_runtime_s": round(time.time() - started, 1),
        **(
            {
                "train_predictions": train_prediction_note(
                    args.predict_train_folds, refit_args.refit_with_validation
                )
            }
            if args.predict_train
            else {}
        ),
        "selection": (
            f"C, class weighting and sublinear tf: best validation macro-F1 over {len(grid)} settings"
            if args.select_on_validation
            else "fixed settings (no selection)"
        )
        + f"; {temperature_note(len(data.splits['validation']))}"
        + f"; {refit_note(data)}" * refit_args.refit_with_validation
        + "; test scored once at the end" * args.do_predict,
    }
    paths = write_run_outputs(
        output_dir,
        title="Baseline: TF-IDF + logistic regression",
        base_model=run_info["model"],
        run_info={**run_info, "library_name": "sklearn"},  # the card's front matter said transformers
        data=data,
        results=results,
        command=command,
        data_description=source_description(data_args),
        sections=[
            grid_section(
                grid,
                chosen,
                refit_note(data) if refit_args.refit_with_validation else "",
                solver_note(args.tol, args.max_iter, unconverged),
            )
        ],
        pipeline_example=False,
    )
    write_run_files(
        output_dir,
        data,
        command,
        {"data": asdict(data_args), "baseline": asdict(args), "refit": asdict(refit_args), "grid": grid},
    )
    print(summary_text(results, paths))
    return {r.split: r.metrics for r in results}


if __name__ == "__main__":
    run(main)  # a mistake in the input: one line, status 2
