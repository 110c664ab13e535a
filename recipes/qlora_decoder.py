"""QLoRA on a decoder classifier (default: Qwen2.5-0.5B with a classification head) on long-tail text.

    python recipes/qlora_decoder.py --config recipes/configs/qlora_decoder.yaml [--key value ...]

The base is loaded in 4-bit NF4 with double quantisation (bitsandbytes; it also runs on CPU), compute
dtype by hardware (bf16 on GPUs with compute capability >= 8, fp16 on older GPUs, fp32 on CPU), then
`prepare_model_for_kbit_training` with non-reentrant gradient checkpointing. The head is never quantized:
it stays in float32, is trained in full and saved with the adapter. `--merge_adapter true` merges the
adapter into the full-precision base (output_dir/merged). Otherwise as recipes/lora_decoder.py.
Config precedence: dataclass defaults < YAML (--config) < command line.
"""

from __future__ import annotations

import logging
import time

from transformers import TrainingArguments

from longtail.adapters import (
    AdapterArguments,
    QuantizationArguments,
    adapter_info,
    add_lora,
    finish_adapter_run,
    load_quantized_classifier,
    peft_training_args,
    require_bitsandbytes,
    save_adapter,
)
from longtail.cli import run
from longtail.data import DataArguments, prepare_data
from longtail.distributed import end_training, parse_recipe_args
from longtail.inference import check_max_length
from longtail.losses import LossArguments
from longtail.lpft import LPFTArguments, selection_note
from longtail.posthoc import adjust_on_validation
from longtail.refit import RefitArguments, refit_note
from longtail.refit_ft import refit_adapter
from longtail.report import summary_text
from longtail.runs import command_line, input_paths
from longtail.training import (
    ModelArguments,
    check_padding,
    classifier_config,
    evaluate_splits,
    load_tokenizer,
    long_tail_trainer,
    replace_previous_results,
    run_info,
    start_run,
    tokenize_splits,
)

logger = logging.getLogger("qlora_decoder")
PARSER_TYPES = (
    DataArguments,
    ModelArguments,
    AdapterArguments,
    QuantizationArguments,
    LossArguments,
    RefitArguments,
    TrainingArguments,
)


def main(argv: list[str] | None = None) -> dict:
    # ---- Parse config (and fail before loading data when bitsandbytes is missing) -------------
    parsed = parse_recipe_args(PARSER_TYPES, argv)
    data_args, model_args, adapter_args, quant_args, loss_args, refit_args, training_args = parsed
    require_bitsandbytes()
    inputs = input_paths(data_args, model_args)  # none may be cleared by an overwrite
    training_args, push = start_run(peft_training_args(training_args), model_args.mixed_precision, inputs)
    command = command_line("recipes/qlora_decoder.py", argv)
    started = time.time()
    lpft_args = LPFTArguments()  # no LP-FT in this recipe: no probe head, head warm-up or layer-wise decay

    # ---- Load data ---------------------------------------------------------------------------
    with training_args.main_process_first(desc="data"):
        data = prepare_data(data_args)

    # ---- Build model: 4-bit classifier (head in fp32), padding check, LoRA -------------------
    tokenizer = load_tokenizer(model_args)
    # the length against the config's position table, before the weights load (minutes for a large model)
    config = classifier_config(model_args, data.label_names, tokenizer)
    check_max_length(config, data_args.max_length, model_args.model_name_or_path)
    model = load_quantized_classifier(model_args, quant_args, data.label_names, tokenizer, training_args)
    check_padding(model, tokenizer)  # a text scores the same alone and inside a padded batch
    model = add_lora(model, adapter_args)  # logs the trainable parameters and their share
    datasets = tokenize_splits(data, tokenizer, data_args.max_length, training_args)
    replace_previous_results(training_args)  # an overwrite clears only now, with the inputs checked

    # ---- Train -------------------------------------------------------------------------------
    trainer = long_tail_trainer(model, training_args, data, datasets, tokenizer, loss_args, model_args)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_adapter(trainer)  # adapter + fp32 head + config.json (labels, pad token id) + tokenizer
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
            lambda: load_quantized_classifier(
                model_args, quant_args, data.label_names, tokenizer, training_args
            ),
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
        info = run_info("qlora_decoder", trainer, train_result, model_args, data_args, loss_args, started)
        info["selection"] = selection_note(
            info["selection"], lpft_args, tau, tau_applied, len(data.splits["validation"])
        )
        if refit_args.refit_with_validation:
            info["selection"] += f"; {refit_note(data)}"
        paths = finish_adapter_run(
            trainer,
            title=f"QLoRA (4-bit {quant_args.bnb_4bit_quant_type.upper()}): {info['model']}",
            run_info={**info, **adapter_info(trainer.model, quant_args), "posthoc_tau": tau},
            data=data,
            results=results,
            command=command,
            arguments=(data_args, model_args, adapter_args, quant_args, loss_args, refit_args),
            push=push,
            tags=("peft", "lora", "qlora"),
            sections=sections or None,
        )
        print(summary_text(results, paths))
    end_training(trainer, test_trainer)  # every process leaves the launch's process group
    return {r.split: r.metrics for r in results}


if __name__ == "__main__":
    run(main)  # a mistake in the input: one line, status 2
