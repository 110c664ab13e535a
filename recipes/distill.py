"""Knowledge distillation of a trained teacher into an encoder student, with the calibration comparison.

    python recipes/distill.py --config recipes/configs/distill.yaml --teacher_model_name_or_path RUN_DIR
    python recipes/distill.py --config recipes/configs/distill.yaml --teacher_logits FILE_RUN_OR_ENSEMBLE_DIR

1. Teacher logits for the train and validation rows: computed by the teacher (its own tokenizer) and
   cached in <output_dir>/teacher_logits.parquet, or read from --teacher_logits (a file, or a run or ensemble
   folder with cross-fitted train predictions). Its arg-max is scored on both splits: a teacher far surer of
   the training rows than of validation was fit on them, and is warned about.
2. The student trains on alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE (DistillationTrainer).
3. The vanilla arm, the same student trained with CE alone, comes from --vanilla_run (a finished run's
   predictions_validation.npz) or is trained here, same seed and schedule, into <output_dir>/vanilla.
4. comparison.md: vanilla, vanilla+T, distilled, distilled+T (T fitted on half of validation, all scored
   on the other half) with paired-bootstrap CIs, a confidence-gating table and reliability_comparison.png.
Config precedence: dataclass defaults < YAML (--config) < command line.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import transformers
from transformers import TrainingArguments

from longtail.calibration import compare_arms
from longtail.checkpoints import TRUE, checkpoint_problem, checkpoints, resolve_resume
from longtail.cli import run
from longtail.data import DataArguments, DataError, prepare_data, require_usable_splits
from longtail.distill import (
    DistillArguments,
    DistillationCollator,
    DistillationTrainer,
    add_teacher_column,
    align_rows,
    fit_text,
    label_columns,
    read_run_predictions,
    teacher_fit,
    teacher_logits,
)
from longtail.distributed import end_training, parse_recipe_args
from longtail.inference import check_max_length
from longtail.losses import LossArguments
from longtail.lpft import LPFTArguments, selection_note
from longtail.metrics import softmax
from longtail.posthoc import adjust_on_validation
from longtail.predict import not_transformers
from longtail.report import SplitResult, plot_reliability, save_predictions, summary_text
from longtail.runs import command_line, input_paths
from longtail.training import (
    ModelArguments,
    classifier_config,
    evaluate_splits,
    finish_run,
    load_classifier,
    load_tokenizer,
    long_tail_trainer,
    predict_probs,
    replace_previous_results,
    resuming_in_place,
    run_info,
    start_run,
    tokenize_splits,
)

logger = logging.getLogger("distill")
VANILLA_DIR = "vanilla"
VANILLA_PREDICTIONS = "predictions_validation.npz"  # written once the vanilla arm has finished
PARSER_TYPES = (DataArguments, ModelArguments, DistillArguments, LossArguments, TrainingArguments)


def vanilla_probs(run_dir: str, data) -> np.ndarray:
    """Validation probabilities of a finished run of the plain student, in the order of our rows."""
    # the teacher's TF-IDF or ensemble folder given here by mistake matches the student's labels and rows, and
    # comparison.md then named it 'vanilla' (the student trained with the hard loss alone)
    if what := not_transformers(Path(run_dir)):
        raise DataError(
            f"--vanilla_run {run_dir} is {what}, not a run of this student: pass a run of the same student with "
            "the hard loss alone (e.g. an earlier distill run's vanilla/), or leave --vanilla_run out to train one"
        )
    path = Path(run_dir) / "predictions_validation.npz"
    if not path.is_file():
        raise DataError(f"--vanilla_run {run_dir} has no predictions_validation.npz")
    pred = read_run_predictions(path)
    names = np.asarray([str(x) for x in pred["label_names"]])
    theirs, ours = set(names.tolist()), set(map(str, data.label_names))
    # label_columns' error would call it the teacher and suggest --teacher_drop_extra_labels
    if theirs != ours:
        raise DataError(
            f"--vanilla_run {run_dir} has other labels than this run's student ({len(theirs)} against "
            f"{len(ours)}; only its: {sorted(theirs - ours)[:5]}, only ours: {sorted(ours - theirs)[:5]}): "
            "pass a run of the same student on the same data and label options"
        )
    cols = label_columns(names, data.label_names, run_dir)
    probs, gold = (
        align_rows({"validation": (pred["row_id"], v)}, data, str(path), splits=("validation",))["validation"]
        for v in (pred["probs"], pred["y_true"])
    )
    if (names[gold.astype(int)] != data.splits["validation"]["label"].to_numpy()).any():
        raise DataError(f"--vanilla_run {run_dir}: its validation rows carry other gold labels (other data?)")
    return probs[:, cols]


def resume_in_vanilla(resume, output_dir) -> bool:
    """--resume_from_checkpoint true where the distilled arm left no complete checkpoint but the vanilla arm, trained
    first, left a checkpoint or its finished predictions in vanilla/: a run stopped before the distilled arm's first
    checkpoint. Such a folder was refused as another run's (not empty, nothing to resume), and the rerun asked for
    with --overwrite_output_dir trained the vanilla arm again whole."""
    if resume is None or str(resume).strip().lower() not in TRUE:
        return False
    out = Path(output_dir)
    if any(checkpoint_problem(c) is None for c in checkpoints(out)):
        return False  # the distilled arm resumes in place, as in every recipe
    # a finished run (saved without checkpoints): nothing to resume, and not to be retrained over
    if (out / "report.md").is_file():
        return False
    folder = out / VANILLA_DIR
    return (folder / VANILLA_PREDICTIONS).is_file() or any(
        checkpoint_problem(c) is None for c in checkpoints(folder)
    )


def vanilla_arm(
    training_args, data, datasets, model_args, loss_args, resuming: bool
) -> tuple[np.ndarray, str]:
    """The vanilla arm trained in this run: (validation probabilities, where they come from). A resumed run reads
    the arm it finished before the interruption, or resumes it from its newest complete checkpoint (it trained
    again whole on every resume, as long as the distilled arm's own training)."""
    folder = Path(training_args.output_dir) / VANILLA_DIR
    if resuming and (folder / VANILLA_PREDICTIONS).is_file():
        logger.info(
            "Resuming: the vanilla arm finished before; its validation predictions are read from %s", folder
        )
        return vanilla_probs(str(folder), data), "trained in this run before it was resumed, `vanilla/`"
    checkpoint = resolve_resume("true", folder) if resuming else None
    probs = train_vanilla(training_args, data, datasets, model_args, loss_args, checkpoint)
    return probs, "trained in this run, `vanilla/`"


def clear_vanilla(folder: Path) -> None:
    """An earlier run's vanilla arm (vanilla/ outlives --overwrite_output_dir: it may be the run's --vanilla_run), before
    a new one trains there: a resume takes its predictions for this arm finished, and its checkpoints past the new
    arm's last one for the newest to resume from."""
    predictions = folder / VANILLA_PREDICTIONS
    stale = [*checkpoints(folder), *([predictions] if predictions.is_file() else [])]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if stale:
        logger.info(
            "Vanilla arm: removed %s of an earlier run in %s", ", ".join(p.name for p in stale), folder
        )


def train_vanilla(training_args, data, datasets, model_args, loss_args, checkpoint=None) -> np.ndarray:
    """The same student, seed and schedule with the hard loss alone; returns its validation probabilities."""
    args = dataclasses.replace(training_args, output_dir=str(Path(training_args.output_dir) / VANILLA_DIR))
    transformers.set_seed(args.seed)
    tokenizer = load_tokenizer(model_args)
    model = load_classifier(model_args, data.label_names, tokenizer)
    trainer = long_tail_trainer(model, args, data, datasets, tokenizer, loss_args, model_args)
    if checkpoint is None and trainer.is_world_process_zero():
        clear_vanilla(Path(args.output_dir))
    logger.info(
        "Vanilla arm (the hard loss alone) into %s%s",
        args.output_dir,
        f", from {checkpoint}" if checkpoint else "",
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    adjust_on_validation(trainer, data, datasets, loss_args.posthoc_logit_adjustment)
    val = data.splits["validation"]
    probs = predict_probs(trainer, datasets["validation"])
    if trainer.is_world_process_zero():  # reusable later as --vanilla_run <output_dir>/vanilla
        result = SplitResult(
            "validation", val["label_id"].to_numpy(), probs, val["text"], row_ids=val["row_id"]
        )
        save_predictions(args.output_dir, result, data.label_names)
    return probs


def comparison_markdown(comparison, info: dict, vanilla_source: str, distill_args) -> str:
    return "\n".join(
        [
            "# Distillation and temperature scaling: comparison",
            "",
            f"Teacher: {info['teacher']}. Student trained with alpha={distill_args.kd_alpha}, "
            f"T={distill_args.kd_temperature} (KD) vs the same student with the hard loss alone ({vanilla_source}).",
            "",
            f"Teacher's arg-max on the student's rows: {fit_text(info['fit'])}"
            + (
                ". Far higher on train: it was fit on those rows, so its soft targets there sit closer to the labels "
                "than on unseen text."
                if info["fit"]["in_sample"]
                else "."
            ),
            "",
            f"All rows: the validation scoring half ({len(comparison.y_true)} rows). Each '+T' arm uses one "
            "temperature fitted by LBFGS on the NLL of the other half of validation; temperature scaling does not "
            "change predictions, so its macro-F1 delta is 0 by construction.",
            "",
            comparison.markdown,
            "![Reliability, all arms](reliability_comparison.png)",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    # ---- Parse config ------------------------------------------------------------------------
    data_args, model_args, distill_args, loss_args, training_args = parse_recipe_args(PARSER_TYPES, argv)
    inputs = input_paths(data_args, model_args, distill_args)  # none may be cleared by an overwrite
    # a run stopped before the distilled arm's first checkpoint resumes its vanilla arm (trained first)
    resume_vanilla = (
        distill_args.train_vanilla
        and not distill_args.vanilla_run
        and resume_in_vanilla(training_args.resume_from_checkpoint, training_args.output_dir)
    )
    if resume_vanilla:
        training_args.resume_from_checkpoint = None  # the distilled arm starts from scratch
    training_args, push = start_run(training_args, model_args.mixed_precision, inputs, resume_vanilla)
    if resume_vanilla:
        logger.info("Resuming: no checkpoint of the distilled arm yet; the vanilla arm resumes in vanilla/")
    resuming = resume_vanilla or resuming_in_place(training_args)
    command = command_line("recipes/distill.py", argv)
    started = time.time()
    out = Path(training_args.output_dir)

    # ---- Load data and the teacher's logits (cached) -----------------------------------------
    with training_args.main_process_first(desc="data and teacher logits"):
        data = prepare_data(data_args)
        require_usable_splits(data, training_args.do_predict)  # before the teacher's pass
        # a finished vanilla arm is read now: a wrong one once waited for the teacher's pass and an overwrite's clearing
        vanilla = vanilla_probs(distill_args.vanilla_run, data) if distill_args.vanilla_run else None
        # the student's tokenizer and length too: a mistake there should not wait for the teacher's pass
        tokenizer = load_tokenizer(model_args)
        student = classifier_config(model_args, data.label_names, tokenizer)
        check_max_length(student, data_args.max_length, model_args.model_name_or_path)
        logits, teacher_info = teacher_logits(distill_args, data, out, data_args.max_length)
        # an overwrite clears only now (it keeps the teacher's cache)
        replace_previous_results(training_args, resume_vanilla)
        # an earlier vanilla arm goes with the results: a resume would read it as this run's
        overwriting = training_args.overwrite_output_dir and not resuming
        if (
            overwriting
            and vanilla is None
            and distill_args.train_vanilla
            and training_args.process_index == 0
        ):
            clear_vanilla(out / VANILLA_DIR)
    # warns when the teacher was fit on the student's rows
    teacher_info["fit"] = teacher_fit(logits, data, teacher_info.get("seen"))

    # ---- Build the student (its own tokenizer) -----------------------------------------------
    datasets = tokenize_splits(data, tokenizer, data_args.max_length, training_args)
    kd_datasets = add_teacher_column(datasets, logits)

    # ---- Vanilla arm: a finished run, or the same student trained with the hard loss ----------
    if distill_args.vanilla_run:
        vanilla_source = "from --vanilla_run"
    elif distill_args.train_vanilla:
        vanilla, vanilla_source = vanilla_arm(training_args, data, datasets, model_args, loss_args, resuming)
    else:
        vanilla, vanilla_source = None, None

    # ---- Train the student on the teacher's logits -------------------------------------------
    transformers.set_seed(training_args.seed)  # same initial head as the vanilla arm
    model = load_classifier(model_args, data.label_names, tokenizer)
    trainer = long_tail_trainer(
        model,
        training_args,
        data,
        kd_datasets,
        tokenizer,
        loss_args,
        model_args,
        trainer_class=DistillationTrainer,
        data_collator=DistillationCollator(tokenizer),
        temperature=distill_args.kd_temperature,
        alpha=distill_args.kd_alpha,
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_metrics("train", train_result.metrics)
    tau, tau_section, tau_applied = adjust_on_validation(
        trainer, data, kd_datasets, loss_args.posthoc_logit_adjustment
    )

    # ---- Evaluate (validation always; test only when asked, once, at the end) ----------------
    results = evaluate_splits(trainer, data, kd_datasets, training_args.do_predict)

    # ---- Compare, save, report, push (main process only) -------------------------------------
    extras = {}
    if trainer.is_world_process_zero():
        sections = [tau_section] if tau_section else []
        distilled = next(r for r in results if r.split == "validation").probs
        y_val = data.splits["validation"]["label_id"].to_numpy()
        comparison = None
        if vanilla is not None:
            comparison = compare_arms(
                {"vanilla": vanilla, "distilled": distilled},
                y_val,
                deltas=[
                    ("distilled", "vanilla"),
                    ("vanilla+T", "vanilla"),
                    ("distilled+T", "vanilla"),
                    ("distilled+T", "vanilla+T"),
                ],
                reference={"teacher": softmax(logits["validation"].astype(np.float64))},
            )
            plot_reliability(
                out / "reliability_comparison.png",
                {k: (v, comparison.y_true) for k, v in comparison.arms.items()},
            )
            text = comparison_markdown(comparison, teacher_info, vanilla_source, distill_args)
            (out / "comparison.md").write_text(text, "utf-8")
            sections.append(
                "## Distillation comparison\n\nSee `comparison.md` and `reliability_comparison.png`.\n"
            )
        info = run_info("distill", trainer, train_result, model_args, data_args, loss_args, started)
        # the same line as the other Trainer recipes (no LP-FT here); the teacher, alpha and T are fixed
        info["selection"] = selection_note(
            info["selection"], LPFTArguments(), tau, tau_applied, len(data.splits["validation"])
        )
        info.update(
            {
                "teacher": teacher_info["teacher"],
                "teacher_logits": teacher_info.get("cache_status", "precomputed"),
                "teacher_on_student_rows": fit_text(teacher_info["fit"]),
                "kd": f"alpha={distill_args.kd_alpha}, T={distill_args.kd_temperature}",
                "vanilla_arm": vanilla_source or "none",
                "posthoc_tau": tau,
            }
        )
        paths = finish_run(
            trainer,
            title=f"Distillation: {info['teacher']} → {info['model']}",
            run_info=info,
            data=data,
            results=results,
            command=command,
            config={"data": data_args, "model": model_args, "distill": distill_args, "loss": loss_args},
            push=push,
            sections=sections,
        )
        print(summary_text(results, paths))
        if comparison is not None:
            print("\n" + comparison.markdown.split("\n\n### Confidence gating")[0])
        extras = {"teacher": teacher_info, "comparison": None if comparison is None else comparison.scores}
    end_training(trainer)  # every process leaves the launch's process group
    # after finish_run: it scores each split into r.metrics (main process only)
    return {**{r.split: r.metrics for r in results}, **extras}


if __name__ == "__main__":
    run(main)  # a mistake in the input: one line, status 2
