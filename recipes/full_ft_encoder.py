"""Full fine-tuning of an encoder classifier on long-tail text (default: ModernBERT-base on CFPB issues).

    python recipes/full_ft_encoder.py --config recipes/configs/full_ft_encoder.yaml [--key value ...]
    accelerate launch recipes/full_ft_encoder.py --config recipes/configs/full_ft_encoder.yaml

Config precedence: dataclass defaults < YAML (--config) < command line.
"""

from __future__ import annotations

import logging
import sys
import time

import transformers
from transformers import TrainingArguments, set_seed
from trl import TrlParser

from longtail.data import DataArguments, prepare_data
from longtail.losses import LongTailTrainer, LossArguments
from longtail.metrics import assign_tiers, trainer_compute_metrics
from longtail.report import SplitResult, summary_text, write_run_outputs
from longtail.runs import (
    command_line,
    prepare_output_dir,
    public_model_name,
    push_folder,
    source_description,
    write_run_files,
)
from longtail.training import (
    ModelArguments,
    apply_precision,
    callbacks,
    load_classifier,
    load_tokenizer,
    padding_collator,
    predict_probs,
    tokenize_splits,
)

logger = logging.getLogger("full_ft_encoder")
PARSER_TYPES = (DataArguments, ModelArguments, LossArguments, TrainingArguments)


def main(argv: list[str] | None = None) -> dict:
    # ---- Parse config ------------------------------------------------------------------------
    parser = TrlParser(PARSER_TYPES)
    data_args, model_args, loss_args, training_args = parser.parse_args_and_config(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, force=True
    )
    transformers.utils.logging.set_verbosity_warning()
    push = training_args.push_to_hub  # we push once at the end, not on every checkpoint
    training_args = apply_precision(training_args, model_args.mixed_precision)
    training_args.push_to_hub = False
    if training_args.process_index == 0:
        prepare_output_dir(
            training_args.output_dir,
            training_args.overwrite_output_dir,
            bool(training_args.resume_from_checkpoint),
        )
    set_seed(training_args.seed)
    command = command_line("recipes/full_ft_encoder.py", argv)
    started = time.time()

    # ---- Load data ---------------------------------------------------------------------------
    with training_args.main_process_first(desc="data"):
        data = prepare_data(data_args)
    tiers = assign_tiers(data.train_counts)

    # ---- Build model -------------------------------------------------------------------------
    tokenizer = load_tokenizer(model_args)
    model = load_classifier(model_args, data.label_names, tokenizer)
    datasets = tokenize_splits(data, tokenizer, data_args.max_length, training_args)

    # ---- Train -------------------------------------------------------------------------------
    trainer = LongTailTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["validation"],
        processing_class=tokenizer,
        data_collator=padding_collator(tokenizer),
        compute_metrics=trainer_compute_metrics(tiers),
        callbacks=callbacks(model_args),
        loss_args=loss_args,
        train_counts=data.train_counts,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)

    # ---- Evaluate (validation always; test only when asked, once, at the end) ----------------
    results = [
        SplitResult(
            "validation",
            data.splits["validation"]["label_id"].to_numpy(),
            predict_probs(trainer, datasets["validation"]),
            data.splits["validation"]["text"],
        )
    ]
    if training_args.do_predict:
        if "test" not in data.splits:
            raise ValueError(
                "--do_predict needs a test split: pass --test_file or use a data set with a test split"
            )
        results.append(
            SplitResult(
                "test",
                data.splits["test"]["label_id"].to_numpy(),
                predict_probs(trainer, datasets["test"]),
                data.splits["test"]["text"],
            )
        )

    # ---- Save, report, push (main process only) ----------------------------------------------
    if trainer.is_world_process_zero():
        best = trainer.state.best_model_checkpoint
        run_info = {
            "recipe": "full_ft_encoder",
            "model": public_model_name(model_args.model_name_or_path),
            "loss": loss_args.loss,
            "class_weighting": loss_args.class_weighting,
            "learning_rate": training_args.learning_rate,
            "epochs": training_args.num_train_epochs,
            "batch_size": training_args.per_device_train_batch_size * training_args.world_size,
            "max_length": data_args.max_length,
            "seed": training_args.seed,
            "train_runtime_s": round(train_result.metrics.get("train_runtime", 0.0), 1),
            "total_runtime_s": round(time.time() - started, 1),
            "selection": (
                f"checkpoint: best validation {training_args.metric_for_best_model} ({best.rsplit('/', 1)[-1]})"
                if best and training_args.load_best_model_at_end
                else "checkpoint: last epoch (no model selection)"
            )
            + "; test scored once at the end" * training_args.do_predict,
        }
        paths = write_run_outputs(
            training_args.output_dir,
            title=f"Full fine-tuning: {run_info['model']}",
            base_model=run_info["model"],
            run_info=run_info,
            data=data,
            results=results,
            command=command,
            data_description=source_description(data_args),
        )
        write_run_files(
            training_args.output_dir,
            data,
            command,
            {
                "data": vars(data_args),
                "model": vars(model_args),
                "loss": vars(loss_args),
                "training": training_args.to_dict(),
            },
        )
        if push:
            push_folder(
                training_args.output_dir,
                training_args.hub_model_id,
                training_args.hub_token,
                training_args.hub_private_repo,
            )
        print(summary_text(results, paths))
    return {r.split: r.metrics for r in results}


if __name__ == "__main__":
    main(sys.argv[1:])
