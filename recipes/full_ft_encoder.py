"""Full fine-tuning of an encoder classifier on long-tail text (default: ModernBERT-base on CFPB issues).

    python recipes/full_ft_encoder.py --config recipes/configs/full_ft_encoder.yaml [--key value ...]
    accelerate launch recipes/full_ft_encoder.py --config recipes/configs/full_ft_encoder.yaml

Config precedence: dataclass defaults < YAML (--config) < command line.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainingArguments

from longtail.cli import run
from longtail.data import DataArguments, prepare_data
from longtail.distributed import end_training, parse_recipe_args
from longtail.inference import check_max_length
from longtail.losses import LossArguments
from longtail.lpft import LPFTArguments, load_model, model_config, selection_note
from longtail.lpft import train as lpft_train
from longtail.posthoc import adjust_on_validation
from longtail.refit import RefitArguments, refit_note
from longtail.refit_ft import refit
from longtail.report import summary_text
from longtail.runs import command_line, input_paths
from longtail.training import (
    ModelArguments,
    evaluate_splits,
    finish_run,
    load_tokenizer,
    long_tail_trainer,
    replace_previous_results,
    run_info,
    start_run,
    tokenize_splits,
)
from longtail.wise_ft import WiseFTArguments, check_start, choose_alpha, report_section, snapshot_start
from longtail.wise_ft import finish as wise_finish

logger = logging.getLogger("full_ft_encoder")
PARSER_TYPES = (
    DataArguments,
    ModelArguments,
    LossArguments,
    LPFTArguments,
    WiseFTArguments,
    RefitArguments,
    TrainingArguments,
)


def main(argv: list[str] | None = None) -> dict:
    # ---- Parse config ------------------------------------------------------------------------
    data_args, model_args, loss_args, lpft_args, wise_args, refit_args, training_args = parse_recipe_args(
        PARSER_TYPES, argv
    )
    check_start(wise_args, lpft_args)
    inputs = input_paths(data_args, model_args, lpft_args)  # none may be cleared by an overwrite
    training_args, push = start_run(training_args, model_args.mixed_precision, inputs)
    command = command_line("recipes/full_ft_encoder.py", argv)
    started = time.time()

    # ---- Load data ---------------------------------------------------------------------------
    with training_args.main_process_first(desc="data"):
        data = prepare_data(data_args)

    # ---- Build model -------------------------------------------------------------------------
    tokenizer = load_tokenizer(model_args)
    # the length against the config's position table, before the weights load (minutes for a large model)
    config = model_config(model_args, lpft_args, data.label_names, tokenizer)
    check_max_length(config, data_args.max_length, model_args.model_name_or_path)
    model = load_model(
        model_args, lpft_args, data.label_names, tokenizer
    )  # probe's model with --head_init_from
    datasets = tokenize_splits(data, tokenizer, data_args.max_length, training_args)
    replace_previous_results(training_args)  # an overwrite clears only now, with the inputs checked

    # ---- Train, then pick WiSE-FT's alpha and the post-hoc logit adjustment on validation -------
    trainer = long_tail_trainer(model, training_args, data, datasets, tokenizer, loss_args, model_args)
    resuming = bool(training_args.resume_from_checkpoint)
    start = {}

    def keep_start(m):  # WiSE-FT: the weights the main run starts from (after any head warm-up)
        start.update(snapshot_start(m, training_args.output_dir, resuming, trainer.is_world_process_zero()))

    # LP-FT: with --head_warmup_epochs, the head is trained alone first (body frozen)
    train_result, _ = lpft_train(
        trainer, lpft_args, training_args.resume_from_checkpoint, keep_start if wise_args.enabled else None
    )
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)
    sections, alpha = [], None
    if wise_args.enabled:
        y_val = data.splits["validation"]["label_id"].to_numpy()
        alpha, rows = choose_alpha(trainer, datasets, y_val, start, wise_args.grid())
        sections.append(report_section(rows, alpha))
        wise_finish(training_args.output_dir, trainer.is_world_process_zero())
    tau, tau_section, tau_applied = adjust_on_validation(
        trainer, data, datasets, loss_args.posthoc_logit_adjustment
    )
    sections += [tau_section] if tau_section else []

    # ---- Optionally train the chosen run again on train + validation (2x cost) -----------------
    test_trainer = None
    if refit_args.refit_with_validation:
        test_trainer, refit_report = refit(
            trainer,
            lambda: load_model(model_args, lpft_args, data.label_names, tokenizer, train_only_head=False),
            data,
            datasets,
            lpft_args,
            alpha,
            tau,
            train_result.metrics,
        )
        sections.append(refit_report)

    # ---- Evaluate (validation always; test only when asked, once, at the end) ----------------
    # validation by the selection model; test by the refit when there is one
    results = evaluate_splits(trainer, data, datasets, training_args.do_predict, test_trainer)

    # ---- Save, report, push (main process only) ----------------------------------------------
    if trainer.is_world_process_zero():
        info = run_info("full_ft_encoder", trainer, train_result, model_args, data_args, loss_args, started)
        info["selection"] = selection_note(
            info["selection"], lpft_args, tau, tau_applied, len(data.splits["validation"]), alpha
        )
        if refit_args.refit_with_validation:
            info["selection"] += f"; {refit_note(data)}"
        paths = finish_run(
            trainer,
            title=f"Full fine-tuning: {info['model']}",
            run_info={**info, "posthoc_tau": tau, "wise_ft_alpha": alpha},
            data=data,
            results=results,
            command=command,
            config={
                "data": data_args,
                "model": model_args,
                "loss": loss_args,
                "lpft": lpft_args,
                "wise_ft": wise_args,
                "refit": refit_args,
            },
            push=push,
            sections=sections or None,
        )
        print(summary_text(results, paths))
    end_training(trainer, test_trainer)  # every process leaves the launch's process group
    return {r.split: r.metrics for r in results}


if __name__ == "__main__":
    run(main)  # a mistake in the input: one line, status 2
