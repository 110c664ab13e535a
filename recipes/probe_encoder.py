"""Linear probe: a frozen encoder's pooled features + a multinomial logistic-regression head.

    python recipes/probe_encoder.py --config recipes/configs/probe_encoder.yaml [--key value ...]

Each split is embedded once (length-sorted batches, dynamic padding) and cached on disk under a fingerprint of
model + texts + max_length + pooling, so reruns (another grid, another seed) skip the encoder. The head is
fit with scikit-learn over a grid of C x class weighting (none / balanced / sqrt_inverse) on standardised
features (with `--posthoc_logit_adjustment auto`, each setting at its best post-hoc logit adjustment tau too)
and chosen by validation macro-F1 only; with `--refit_with_validation` the chosen setting is then fit again on
train + validation (`longtail.refit`). Test is scored once at the end. The saved folder is ONE
Transformers model (`longtail.probe.ProbeForSequenceClassification`: body + pooling + head, the
standardisation folded into the head), loadable with AutoModelForSequenceClassification after
`import longtail.probe`. A frozen body keeps the pretrained representation the rare classes depend on
(Kang et al. 2020); its head can seed fine-tuning (`--head_init_from`, LP-FT).
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from trl import TrlParser

from longtail.calibration import temperature_note
from longtail.cli import parse_config, run
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
from longtail.inference import LONG_TEXT, check_max_length
from longtail.losses import class_weights
from longtail.metrics import softmax
from longtail.posthoc import log_prior_array, parse_tau_option, select_tau
from longtail.probe import (
    POOLINGS,
    ProbeForSequenceClassification,
    cached_embeddings,
    check_layers,
    default_pooling,
    frozen_body_config,
    load_frozen_body,
    settle_tokenizer,
)
from longtail.refit import SELECTION_HEAD, RefitArguments, label_counts, refit_note, train_and_validation
from longtail.report import SplitResult, grid_table, save_predictions, summary_text, write_run_outputs
from longtail.runs import (
    command_line,
    input_paths,
    prepare_output_dir,
    public_model_name,
    replace_previous_run,
    source_description,
    write_run_files,
)
from longtail.training import ModelArguments, load_tokenizer, set_padding_side

logger = logging.getLogger("probe_encoder")
WEIGHTINGS = ("none", "balanced", "sqrt_inverse")


@dataclass
class ProbeArguments:
    output_dir: str = field(default="outputs/probe_encoder", metadata={"help": "Where results are written."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace results in a non-empty output_dir."}
    )
    do_predict: bool = field(default=False, metadata={"help": "Score the test split once, at the end."})
    pooling: str = field(
        default="auto",
        metadata={"help": "mean, cls or last (last non-pad token); auto: last for decoders, else mean."},
    )
    long_text: str = field(
        default="truncate",
        metadata={
            "help": "truncate: embed the first max_length tokens; windows: embed the whole text in consecutive "
            "max_length windows and average their features (token-weighted). predict serves it the same way."
        },
    )
    normalize: bool = field(
        default=False,
        metadata={
            "help": "L2-normalise each pooled feature (each window's, before they are averaged) ahead of the "
            "head, as sentence-transformers models (all-MiniLM-L6-v2) are trained to be compared (cosine). "
            "Saved in the model's config, so predict, export and LP-FT (--head_init_from) do the same."
        },
    )
    feature_layers: list[int] = field(
        default_factory=lambda: [-1],
        metadata={
            "help": "Hidden states whose pooled features the head reads, concatenated: -1 the body's output (the "
            "default), 0 its embedding output (a bag of the text's token embeddings), 1..L the layers between. "
            "Each is pooled and normalised on its own. Saved in the model's config (predict, export, LP-FT)."
        },
    )
    embedding_batch_size: int = field(default=64, metadata={"help": "Texts per forward pass when embedding."})
    embedding_cache_dir: str = field(
        default="outputs/cache/embeddings",
        metadata={
            "help": "Cached features, keyed by model (a Hub id with its commit)+tokenizer+data+length+pooling+"
            "long_text+normalize+layers+the torch and transformers versions."
        },
    )
    predict_train: bool = field(
        default=False,
        metadata={
            "help": "Also save predictions_train.npz (a teacher for recipes/distill.py --teacher_logits)."
        },
    )
    predict_train_folds: int = field(default=5, metadata={"help": FOLDS_HELP})
    grid_C: list[float] = field(default_factory=lambda: [0.1, 1.0, 10.0])
    grid_class_weight: list[str] = field(default_factory=lambda: list(WEIGHTINGS))
    posthoc_logit_adjustment: str = field(
        default="none",
        metadata={
            "help": "Post-hoc logit adjustment, chosen with C and the weighting: each setting's validation logits "
            "shifted by -tau*log(train prior); 'auto': tau in {0, .25, .5, .75, 1}; a fixed tau; 'none' (the "
            "default: the weighting grid already moves the head towards balanced error, and on CFPB re-splits "
            "the extra choice was a wash). The chosen shift is folded into the saved head's bias (Menon et al. "
            "2021: the post-hoc counterpart of class weighting)."
        },
    )
    max_iter: int = field(default=1000, metadata={"help": "Solver iterations."})
    tol: float = field(default=1e-4, metadata={"help": "Solver tolerance."})
    seed: int = field(default=42, metadata={"help": "Solver seed."})

    def __post_init__(self):
        if self.long_text not in LONG_TEXT:
            raise ValueError(f"--long_text must be one of {LONG_TEXT}, got '{self.long_text}'")
        if self.pooling not in ("auto", *POOLINGS):
            raise ValueError(f"--pooling must be auto or one of {POOLINGS}, got '{self.pooling}'")
        check_grid(self.grid_C, self.grid_class_weight, WEIGHTINGS)  # empty, repeated, unknown, C <= 0
        parse_tau_option(self.posthoc_logit_adjustment)  # a clear error now, not after the embedding
        check_solver_options(self.tol, self.max_iter)
        check_folds(self.predict_train_folds)
        if self.embedding_batch_size < 1:  # -1 embedded no text: a head fit on all-zero features, and cached
            raise ValueError(f"--embedding_batch_size must be >= 1, got {self.embedding_batch_size}")
        cache = Path(self.embedding_cache_dir)
        blocker = next((p for p in (cache, *cache.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():  # else a traceback once the first split was embedded
            raise ValueError(f"--embedding_cache_dir {cache}: {blocker} is a file, not a folder")
        if not self.feature_layers:  # the range needs the loaded body; emptiness is known now
            raise ValueError("--feature_layers needs at least one hidden-state index (-1: the body's output)")


PARSER_TYPES = (DataArguments, ModelArguments, ProbeArguments, RefitArguments)


def head_classifier(args: ProbeArguments, C: float, weighting: str, y: np.ndarray, num_labels: int):
    """One (unfitted) multinomial logistic regression; class weights (none / balanced / sqrt_inverse) from `y`."""
    if weighting in ("none", "balanced"):
        class_weight = None if weighting == "none" else "balanced"
    else:
        class_weight = dict(enumerate(class_weights(label_counts(y), num_labels, weighting).tolist()))
    return LogisticRegression(
        C=C, class_weight=class_weight, max_iter=args.max_iter, tol=args.tol, random_state=args.seed
    )


def fit_grid(args: ProbeArguments, x_train, y_train, x_val, y_val, num_labels):
    """Every C x weighting fit on train and scored on validation, each at its best post-hoc tau (ties: the
    smaller shift); returns (best model, grid rows, best row). Ties between settings go to the earlier one.

    One at a time: the solver's dense matrix products already use every core."""
    combos = list(itertools.product(args.grid_C, args.grid_class_weight))
    heads = [head_classifier(args, C, weight, y_train, num_labels) for C, weight in combos]
    log_prior = log_prior_array(label_counts(y_train), num_labels)
    taus = parse_tau_option(args.posthoc_logit_adjustment)
    rows, best, best_row = [], None, None
    for (C, weight), (logreg, _, seconds) in zip(
        combos, fit_settings(heads, x_train, y_train, x_val), strict=True
    ):
        w, b = full_head(
            logreg, logreg.classes_, num_labels, np.zeros(x_val.shape[1]), np.ones(x_val.shape[1])
        )  # logits over every label
        tau, by_tau = select_tau(x_val.astype(np.float64) @ w.T + b, y_val, log_prior, taus)
        shifted = next(r for r in by_tau if r["tau"] == tau)
        row = {
            "C": C,
            "class_weight": weight,
            "tau": tau,
            "val_macro_f1": shifted["val_macro_f1"],
            "val_accuracy": shifted["val_accuracy"],
            "val_macro_f1_unshifted": next((r["val_macro_f1"] for r in by_tau if r["tau"] == 0), None),
            "iterations": solver_iterations(logreg),
            "fit_s": seconds,
        }
        rows.append(row)
        logger.info(
            "C=%s class_weight=%s tau=%s: validation macro-F1 %.4f", C, weight, tau, row["val_macro_f1"]
        )
        if best_row is None or row["val_macro_f1"] > best_row["val_macro_f1"]:
            best, best_row = logreg, row
    return best, rows, best_row


def fit_head(args: ProbeArguments, setting: dict, features: np.ndarray, y: np.ndarray, num_labels: int):
    """One setting (C, class weighting, post-hoc tau) fit on raw features: standardised on these rows, folded
    back into (weight, bias) over all `num_labels` classes (`full_head`), minus tau * log(prior of `y`).
    Returns ((weight, bias), the solver's iterations)."""
    mean, scale = features.mean(0), features.std(0) + 1e-6
    logreg = head_classifier(args, setting["C"], setting["class_weight"], y, num_labels).fit(
        (features - mean) / scale, y
    )
    head = full_head(logreg, logreg.classes_, num_labels, mean, scale)
    return shifted_head(head, y, setting.get("tau", 0.0)), solver_iterations(logreg)


def shifted_head(head: tuple[np.ndarray, np.ndarray], y: np.ndarray, tau: float):
    """(weight, bias - tau * log prior): the post-hoc logit adjustment folded into the head, prior from `y`."""
    weight, bias = head
    prior = log_prior_array(label_counts(y), len(bias))
    return weight, (bias.astype(np.float64) - tau * prior).astype(np.float32)


def full_head(logreg, classes: np.ndarray, num_labels: int, mean: np.ndarray, scale: np.ndarray):
    """(weight, bias) on RAW features for all `num_labels` classes: the standardisation folded in
    (w/s, b - w.m/s). Classes the solver never saw (a cross-fitting fold may miss a rare one) get -inf-ish bias.
    Two classes: scikit-learn keeps one row, the second class's logit minus the first's; split it in halves."""
    coef, intercept = logreg.coef_.astype(np.float64), logreg.intercept_.astype(np.float64)
    if len(classes) == 2:
        coef, intercept = np.stack([-coef[0], coef[0]]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    weight = np.zeros((num_labels, coef.shape[1]))
    bias = np.full(num_labels, -1e4)
    weight[classes] = coef / scale
    bias[classes] = intercept - (coef / scale) @ mean
    return weight.astype(np.float32), bias.astype(np.float32)


def tau_note(taus: tuple[float, ...]) -> str:
    """The selection line's words on the post-hoc shift."""
    if taus == (0.0,):
        return "; no post-hoc shift"
    if len(taus) == 1:
        return f", each with the fixed post-hoc tau {taus[0]:g}"
    return ", each at its best post-hoc tau (chosen with them, on validation)"


def grid_section(
    rows: list[dict],
    chosen: dict,
    pooling: str,
    reused: dict,
    long_text: str,
    max_length: int,
    normalize: bool = False,
    refit: str = "",
    posthoc: bool = False,
    layers=(-1,),
    solver: str = "",
) -> str:
    unit = "each window's feature" if long_text == "windows" else "each feature"
    read = (
        f"the whole text, as consecutive {max_length}-token windows whose features are averaged (token-weighted)"
        if long_text == "windows"
        else f"the first {max_length} tokens of each text"
    ) + (f" ({unit} L2-normalised first)" if normalize else "")
    states = (
        "last hidden states"
        if tuple(layers) == (-1,)
        else f"hidden states {', '.join(map(str, layers))} (0: embedding output, -1: last; each pooled and "
        "normalised on its own, concatenated)"
    )
    lines = [
        "## Validation grid (linear head on frozen features)",
        "",
        f"Features: `{pooling}`-pooled {states} of the frozen encoder over {read}, standardised on "
        "train. Every "
        "setting was fit on train and scored on validation; the best validation macro-F1 was kept (the chosen "
        "row's validation score is therefore optimistic). The test split played no part in any choice."
        + (f" {solver}" if solver else ""),
        "",
    ]
    columns = {"C": "C", "class weighting": "class_weight"} | ({"tau": "tau"} if posthoc else {})
    columns |= {"validation macro-F1": "val_macro_f1", "validation accuracy": "val_accuracy"}
    if posthoc and all(r.get("val_macro_f1_unshifted") is not None for r in rows):  # tau 0 was in the grid
        columns["validation macro-F1 at tau 0"] = "val_macro_f1_unshifted"
    columns["solver iterations"] = "iterations"
    columns["fit (s)"] = "fit_s"
    if posthoc:  # a post-hoc shift was chosen with each setting
        lines += [
            "Each setting's validation logits were also shifted by -tau * log(train class prior) (post-hoc logit "
            "adjustment, Menon et al. 2021) and scored at its best tau (of the grid given); the chosen tau is "
            "folded into the saved head's bias.",
            "",
        ]
    lines.append(grid_table(rows, columns, chosen))
    if refit:
        lines += ["", f"**Refit**: {refit}."]
    lines += [
        "",
        "Embedding cache: " + ", ".join(f"{s} {'reused' if v else 'computed'}" for s, v in reused.items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    # ---- Parse config ------------------------------------------------------------------------
    parser = TrlParser(PARSER_TYPES)
    data_args, model_args, args, refit_args = parse_config(parser, argv)
    # ModelArguments is shared with the Trainer recipes: two of its options mean nothing here, so say so
    ignored = [f"--{name}" for name, default in (("mixed_precision", "auto"), ("early_stopping_patience", None))
               if getattr(model_args, name) != default]  # fmt: skip
    if ignored:
        parser.error(
            f"{' and '.join(ignored)}: for the Trainer recipes only; the probe embeds in float32 and picks its "
            "head by a validation grid, with no epochs to stop early"
        )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, force=True
    )
    # checked now, cleared (an overwrite) once the data and the model are checked too
    output_dir = prepare_output_dir(
        args.output_dir, args.overwrite_output_dir, inputs=input_paths(data_args, model_args), clear=False
    )
    command = command_line("recipes/probe_encoder.py", argv)
    started = time.time()
    torch.manual_seed(args.seed)

    # ---- Load data ---------------------------------------------------------------------------
    data = prepare_data(data_args)
    require_usable_splits(data, args.do_predict)
    splits = ["train", "validation"] + ["test"] * args.do_predict
    if args.predict_train:  # before any fitting
        check_class_counts(data.splits["train"]["label_id"].to_numpy(), args.predict_train_folds)
    num_labels = len(data.label_names)

    # ---- Build the frozen encoder ------------------------------------------------------------
    tokenizer = load_tokenizer(model_args)
    # the length against the body's position table, read from its config before the weights load (minutes for a
    # large model); RoBERTa-style positions start after the config's own pad id, which the body is built with
    config = frozen_body_config(model_args.model_name_or_path, model_args.trust_remote_code)
    check_max_length(
        config,
        data_args.max_length,
        model_args.model_name_or_path,
        " (with --long_text windows, longer texts are still read whole, in windows)",
    )
    encoder = load_frozen_body(model_args.model_name_or_path, model_args.trust_remote_code)
    if encoder.config.model_type == "modernbert" and not torch.cuda.is_available():
        encoder.config.reference_compile = False  # its auto-compile breaks on CPU when triton is installed
    # the body keeps its config's pad id: a RoBERTa-style body counts its positions from it, and the saved probe's
    # body is built from this config (the tokenizer's id there served it with other positions than it embedded
    # with); padding is masked by the attention mask, and the probe's own config names the tokenizer's id
    if encoder.config.pad_token_id is None:  # a decoder's: nothing counts from it
        encoder.config.pad_token_id = tokenizer.pad_token_id
    encoder.requires_grad_(False)
    if torch.cuda.is_available():
        encoder.cuda()
    pooling = default_pooling(encoder.config) if args.pooling == "auto" else args.pooling
    layers = check_layers(args.feature_layers, encoder.config.num_hidden_layers)
    replace_previous_run(output_dir, args.overwrite_output_dir)

    # ---- Embed each split once (cached) ------------------------------------------------------
    features, reused, embed_s = {}, {}, {}
    for split in splits:
        t0 = time.time()
        features[split], _, reused[split] = cached_embeddings(
            args.embedding_cache_dir,
            model_args.model_name_or_path,
            encoder,
            tokenizer,
            data.splits[split]["text"].tolist(),
            data_args.max_length,
            pooling,
            long_text=args.long_text,
            normalize=args.normalize,
            layers=layers,
            tokenizer_name=model_args.tokenizer_name,
            batch_size=args.embedding_batch_size,
            desc=f"Embedding {split}",
        )
        embed_s[split] = round(time.time() - t0, 1)

    # ---- Fit the head: grid over C x class weighting, chosen on validation ------------------
    y = {s: data.splits[s]["label_id"].to_numpy() for s in splits}
    mean, scale = features["train"].mean(0), features["train"].std(0) + 1e-6
    standard = {s: (features[s] - mean) / scale for s in splits}
    t0 = time.time()
    logreg, grid, chosen = fit_grid(
        args,
        standard["train"],
        y["train"],
        standard["validation"],
        y["validation"],
        num_labels,
    )
    heads = {
        "validation": shifted_head(
            full_head(logreg, logreg.classes_, num_labels, mean, scale), y["train"], chosen["tau"]
        )
    }
    heads["test"] = heads["validation"]
    fits = [{k: r[k] for k in ("C", "class_weight", "iterations")} for r in grid]
    if refit_args.refit_with_validation:  # the chosen setting again, on every labelled row that is not test
        both = train_and_validation(data)["label_id"].to_numpy()
        heads["test"], iterations = fit_head(
            args, chosen, np.concatenate([features["train"], features["validation"]]), both, num_labels
        )
        fits.append(
            {
                "refit": True,
                "C": chosen["C"],
                "class_weight": chosen["class_weight"],
                "iterations": iterations,
            }
        )
    unconverged = warn_unconverged(fits, args.max_iter)
    weight, bias = heads["test"]  # the saved model
    fit_s = round(time.time() - t0, 1)

    # ---- Evaluate (validation always; test only when asked, once, at the end) ----------------
    results = [
        SplitResult(
            split,
            y[split],
            softmax(
                features[split].astype(np.float64) @ heads[split][0].T.astype(np.float64) + heads[split][1]
            ),
            data.splits[split]["text"],
            row_ids=data.splits[split]["row_id"].to_numpy(),
        )
        for split in splits
        if split != "train"
    ]

    if args.predict_train:  # a teacher for recipes/distill.py --teacher_logits <this folder>
        x, y_train, folds = features["train"].astype(np.float64), y["train"], args.predict_train_folds

        def fit_predict(fit_rows, scored):  # the chosen C, weighting and tau, fit on the other folds
            (w, b), _ = fit_head(args, chosen, features["train"][fit_rows], y_train[fit_rows], num_labels)
            return softmax(x[scored] @ w.T.astype(np.float64) + b)

        w, b = heads["test"]  # in-sample: the saved model's
        probs = (
            cross_fitted_probs(fit_predict, y_train, num_labels, folds, args.seed)
            if folds
            else softmax(x @ w.T.astype(np.float64) + b)
        )
        train_rows = data.splits["train"]
        save_predictions(
            output_dir,
            SplitResult("train", y_train, probs, train_rows["text"], row_ids=train_rows["row_id"].to_numpy()),
            data.label_names,
        )

    # ---- Save (one Transformers model folder), report ----------------------------------------
    model = ProbeForSequenceClassification.from_encoder(
        encoder.cpu(),
        pooling,
        weight,
        bias,
        data.label_names,
        normalize=args.normalize,
        feature_layers=layers,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(output_dir)  # safetensors
    if refit_args.refit_with_validation:  # LP-FT starts from this one, so its validation stays held out
        save_file(
            {
                "classifier.weight": torch.as_tensor(heads["validation"][0]).contiguous(),
                "classifier.bias": torch.as_tensor(heads["validation"][1]).contiguous(),
            },
            str(output_dir / SELECTION_HEAD),
        )
    set_padding_side(tokenizer, "right")  # every pooling is exact with right padding
    # the same tokenizer.json whether the features were embedded now or read from the cache
    settle_tokenizer(tokenizer, data_args.max_length)
    tokenizer.save_pretrained(output_dir)
    run_info = {
        "recipe": "probe_encoder",
        "model": public_model_name(model_args.model_name_or_path),
        "pooling": pooling,
        "max_length": data_args.max_length,
        "long_text": args.long_text,
        "normalize": args.normalize,
        "feature_layers": list(layers),
        "C": chosen["C"],
        "class_weight": chosen["class_weight"],
        "posthoc_tau": chosen["tau"],
        "refit_with_validation": refit_args.refit_with_validation,
        "embedding_s": embed_s,
        "head_grid_s": fit_s,
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
        "selection": f"C and class weighting: best validation macro-F1 over {len(grid)} settings"
        + tau_note(parse_tau_option(args.posthoc_logit_adjustment))
        + f"; no epochs; {temperature_note(len(data.splits['validation']))}"
        + f"; {refit_note(data)}" * refit_args.refit_with_validation
        + "; test scored once at the end" * args.do_predict,
    }
    paths = write_run_outputs(
        output_dir,
        title=f"Linear probe: {run_info['model']} ({pooling} pooling)",
        base_model=run_info["model"],
        run_info=run_info,
        data=data,
        results=results,
        command=command,
        data_description=source_description(data_args),
        sections=[
            grid_section(
                grid,
                chosen,
                pooling,
                reused,
                args.long_text,
                data_args.max_length,
                args.normalize,
                refit_note(data) if refit_args.refit_with_validation else "",
                posthoc=parse_tau_option(args.posthoc_logit_adjustment) != (0.0,),
                layers=layers,
                solver=solver_note(args.tol, args.max_iter, unconverged),
            )
        ],
    )  # the card's quick start imports longtail.probe first (a probe-architecture folder)
    write_run_files(
        output_dir,
        data,
        command,
        {
            "data": asdict(data_args),
            "model": asdict(model_args),
            "probe": asdict(args),
            "refit": asdict(refit_args),
            "grid": grid,
        },
    )
    print(summary_text(results, paths))
    return {r.split: r.metrics for r in results}


if __name__ == "__main__":
    run(main)  # a mistake in the input: one line, status 2
