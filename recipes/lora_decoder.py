"""LoRA on a decoder classifier (default: Qwen2.5-0.5B with a classification head) on long-tail text.

    python recipes/lora_decoder.py --config recipes/configs/lora_decoder.yaml [--key value ...]
    accelerate launch recipes/lora_decoder.py --config recipes/configs/lora_decoder.yaml

The head (`score`) pools the last non-pad token; decoders without a pad token pad with eos, and
`config.pad_token_id` is set to match. LoRA adapts the attention projections (--lora_target_modules auto;
also ModernBERT/BERT encoders); the head is trained in full and saved with the adapter.
`--merge_adapter true` also writes output_dir/merged, a plain model for pipeline() and export.
Config precedence: dataclass defaults < YAML (--config) < command line.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainingArguments

from longtail.adapters import (
    AdapterArguments,
    adapter_info,
    add_lora,
    finish_adapter_run,
    peft_training_args,
    save_adapter,
)
from longtail.cli import run
from longtail.data import DataArguments, prepare_data
from longtail.distributed import end_training, parse_recipe_args
from longtail.inference import check_max_length
from longtail.losses import LossArguments
from longtail.lpft import LPFTArguments, load_model, model_config, selection_note
from longtail.lpft import train as lpft_train
from longtail.posthoc import adjust_on_validation
from longtail.refit import RefitArguments, refit_note
from longtail.refit_ft import refit_adapter
from longtail.report import summary_text
from longtail.runs import command_line, input_paths
from longtail.training import (
    ModelArguments,
    check_padding,
    evaluate_splits,
    load_tokenizer,
    long_tail_trainer,
    replace_previous_results,
    run_info,
    start_run,
    tokenize_splits,
)

logger = logging.getLogger("lora_decoder")
PARSER_TYPES = (
    DataArguments,
    ModelArguments,
    AdapterArguments,
    LossArguments,
    LPFTArguments,
    RefitArguments,
    TrainingArguments,
)


def main(argv: list[str] | None = None) -> dict:
    # ---- Parse config ------------------------------------------------------------------------
    data_args, model_args, adapter_args, loss_args, lpft_args, refit_args, training_args = parse_recipe_args(
        PARSER_TYPES, argv
    )
    inputs = input_paths(data_args, model_args, lpft_args)  # none may be cleared by an overwrite
    training_args, push = start_run(peft_training_args(training_args), model_args.mixed_precision, inputs)
    command = command_line("recipes/lora_decoder.py", argv)
    started = time.time()

    # ---- Load data ---------------------------------------------------------------------------
    with training_args.main_process_first(desc="data"):
        data = prepare_data(data_args)

    # ---- Build model: classifier (pad token = eos if none), padding check, LoRA ---------------
    tokenizer = load_tokenizer(model_args)
    # the length against the config's position table, before the weights load (minutes for a large model)
    config = model_config(model_args, lpft_args, data.label_names, tokenizer)
    check_max_length(config, data_args.max_length, model_args.model_name_or_path)
    model = load_model(
        model_args, lpft_args, data.label_names, tokenizer
    )  # probe's model with --head_init_from
    check_padding(model, tokenizer)  # a text scores the same alone and inside a padded batch
    model = add_lora(model, adapter_args)  # logs the trainable parameters and their share
    datasets = tokenize_splits(data, tokenizer, data_args.max_length, training_args)
    replace_previous_results(training_args)  # an overwrite clears only now, with the inputs checked

    # ---- Train -------------------------------------------------------------------------------
    trainer = long_tail_trainer(model, training_args, data, datasets, tokenizer, loss_args, model_args)
    # LP-FT: with --head_warmup_epochs, the head is trained alone first (body frozen)
    train_result, _ = lpft_train(trainer, lpft_args, training_args.resume_from_checkpoint)
    save_adapter(trainer)  # adapter + head + config.json (labels, pad token id) + tokenizer
    # post-hoc logit adjustment, chosen on validation (folded only into a head with a bias)
    tau, tau_section, tau_applied = adjust_on_validation(
        trainer, data, datasets, loss_args.posthoc_logit_adjustment
    )
    trainer.save_metrics("train", train_result.metrics)

    # ---- Optionally train the chosen run again on train + validation (2x cost) -----------------
    test_trainer, sections = None, [tau_section] if tau_section else []
    if refit_args.refit_with_validation:
        test_trainer, refit_report = refit_adapter(
            trainer,
            lambda: load_model(model_args, lpft_args, data.label_names, tokenizer, train_only_head=False),
            adapter_args,
            data,
            datasets,
            lpft_args,
            tau,
            train_result.metrics,
        )
        sections.append(refit_report)

    # ---- Evaluate (validation always; test only when asked, once, at the end) ----------------
    # validation by the selection model; test by the refit when there is one
    results = evaluate_splits(trainer, data, datasets, training_args.do_predict, test_trainer)

    # ---- Save, report, merge, push (main process only) ---------------------------------------
    if trainer.is_world_process_zero():
        info = run_info("lora_decoder", trainer, train_result, model_args, data_args, loss_args, started)
        info["selection"] = selection_note(
            info["selection"], lpft_args, tau, tau_applied, len(data.splits["validation"])
        )
        if refit_args.refit_with_validation:
            info["selection"] += f"; {refit_note(data)}"
        paths = finish_adapter_run(
            trainer,
            title=f"LoRA: {info['model']}",
            run_info={**info, **adapter_info(trainer.model), "posthoc_tau": tau},
            data=data,
            results=results,
            command=command,
            arguments=(data_args, model_args, adapter_args, loss_args, lpft_args, refit_args),
            push=push,
            sections=sections or None,
        )
        print(summary_text(results, paths))
    end_training(trainer, test_trainer)  # every process leaves the launch's process group
    return {r.split: r.metrics for r in results}


if __name__ == "__main__":
    run(main)  # a mistake in the input: one line, status 2
