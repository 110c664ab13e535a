"""Run bookkeeping shared by every recipe: the output-folder guard, the exact command, run files,
and pushing to the Hub. Nothing here prints or saves a Hub token."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from longtail.cli import UsageError
from longtail.refit import SELECTION_HEAD
from longtail.report import jsonable, redact_secrets

logger = logging.getLogger(__name__)

SECRET_FLAGS = ("--hub_token",)
# --hub_token, held here and not in TrainingArguments: Trainer pickles those into training_args.bin (the run folder
# and every checkpoint), and the push uploads the run folder's files (`take_hub_token`)
_hub_token: str | None = None
# Files a run writes; removed when a run is asked to overwrite a folder, so no stale result survives.
RUN_FILES = (
    "eval_results.json",
    "test_results.json",
    "train_results.json",
    "all_results.json",
    "per_class.csv",
    "report.md",
    "confusion.png",
    "reliability.png",
    "README.md",
    "labels.json",
    "splits.json",
    "run_config.json",
    "predictions_validation.npz",
    "predictions_test.npz",
    "predictions_train.npz",
    "temperature.json",
    "comparison.md",
    "reliability_comparison.png",
    "score.md",  # longtail.score's
    "score.json",
    "compare.md",  # longtail.compare's: a report, not a model (one alone read as someone else's model files)
    "compare.json",
    SELECTION_HEAD,  # a stale one would give LP-FT a head from another run
)


# What a run's model is made of. On overwrite these go too: a stale model.joblib or ensemble.json would make
# `predict` serve the old run (they decide the folder's kind), stale weights or an old export the old model.
# One of these makes a folder a tokenizer's; one of these a model's weights (safetensors only: never a pickle).
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spm.model",
    "sentencepiece.bpe.model",
)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
MODEL_FILES = (
    "model.joblib",
    "ensemble.json",
    "config.json",
    "generation_config.json",
    *WEIGHT_FILES,
    "model-*-of-*.safetensors",  # the shards of a large model
    "adapter_config.json",
    "adapter_model.safetensors",
    "training_args.bin",
    *TOKENIZER_FILES,
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
# Folders a run writes inside its output_dir: the merged adapter (served in place of a new adapter), ONNX
# exports, LP-FT's head warm-up, Trainer checkpoints (an old one would be "the newest" to a later
# --resume_from_checkpoint true), longtail.score's runs scored on a new file. Distill's `vanilla/` stays: it may be this run's --vanilla_run.
RUN_DIRS = ("merged", "onnx", "head_warmup", "checkpoint-*", "scored")
CHECKPOINT_NAME = re.compile(r"^checkpoint-\d+$")  # Trainer's `checkpoint-<global step>`


def spellings(folder: str | Path) -> tuple[Path, ...]:
    """`folder` as an absolute path, first as given (`..` folded), then with its links resolved, for the checks
    that read a folder's name or parent: `--model_dir .` (or `..`) from inside a run's merged/ has no name
    (`Path(".").name` is "") and its own folder for parent, and a link to merged/ has another name. Both, as a
    merged/ that is itself a link resolves elsewhere."""
    given = Path(os.path.abspath(folder))
    return tuple(dict.fromkeys((given, Path(folder).resolve())))


def adapter_run_above(folder: str | Path) -> Path | None:
    """The LoRA/QLoRA run whose merged model `folder` is: `<run>/merged` (the name every merge here writes:
    the recipes' --merge_adapter, `adapters.merge_adapter`'s default, `predict` merging an adapter run) with
    adapter_config.json in the run above it, which keeps the run's files (run_config.json, temperature.json,
    labels, predictions, reports). None for any other folder: a checkpoint or another model kept inside an adapter
    run is not the model the run reported on (export copied the run's temperature and run_config.json into its
    export, and `predict` gave it the run's QLoRA warning). The run comes back as an absolute path."""
    for path in spellings(folder):
        if path.name == "merged" and (path.parent / "adapter_config.json").is_file():
            return path.parent
    return None


def checkpoint_run_above(folder: str | Path) -> Path | None:
    """The run whose Trainer checkpoint `folder` is: `<run>/checkpoint-N` with the run's run_config.json above it
    (its data options: the length the run read texts at, its labels). None for any other folder. Only the run's
    record applies to a checkpoint, not its temperature.json: that was fitted on the run's final model."""
    for path in spellings(folder):
        if CHECKPOINT_NAME.match(path.name) and (path.parent / "run_config.json").is_file():
            return path.parent
    return None


def source_run(folder: Path) -> Path | None:
    """The run a serving form of it was made from: an ONNX export's variant (`<run>/onnx/fp32`: its parity.json's
    `model_dir`, else two folders up) or an adapter run's `merged/` (`adapter_run_above`); None for any other
    folder."""
    for path in spellings(folder):
        parity = path.parent / "parity.json"
        if parity.is_file() and any(path.glob("*.onnx")):
            try:
                source = json.loads(parity.read_text("utf-8")).get("model_dir")
            except (OSError, ValueError, AttributeError):
                source = None
            if isinstance(source, str) and source and Path(source).is_dir():
                return Path(source)
            return path.parent.parent
    return adapter_run_above(folder)


class OutputDirError(UsageError):
    pass


# Options through which a run reads files or folders: none may sit where an overwrite is about to delete.
INPUT_OPTIONS = (
    "model_name_or_path",
    "tokenizer_name",
    "head_init_from",
    "split_indices",
    "teacher_model_name_or_path",
    "teacher_logits",
    "vanilla_run",
    "train_file",
    "validation_file",
    "test_file",
)


def input_paths(*arg_groups) -> dict[str, str]:
    """{"--option": value} of a run's local inputs (INPUT_OPTIONS set in any of its argument dataclasses)."""
    found = {}
    for group in arg_groups:
        for name in INPUT_OPTIONS:
            value = getattr(group, name, None)
            if isinstance(value, str) and value and Path(value).exists():
                found[f"--{name}"] = value
    return found


# Files only our tools write: a folder with none of them that holds model files holds someone else's model
RUN_MARKERS = (
    "run_config.json",
    "ensemble.json",
    "compare.json",
    "score.json",
    "parity.json",
    "labels.json",
    "report.md",
)


def previous_run(path: Path) -> tuple[list[Path], list[Path]]:
    """(files, folders) an overwrite of `path` removes: our result and model files, and our run folders."""
    files = sorted({f for pattern in RUN_FILES + MODEL_FILES for f in path.glob(pattern) if f.is_file()})
    folders = sorted({d for pattern in RUN_DIRS for d in path.glob(pattern) if d.is_dir()})
    return files, folders


def prepare_output_dir(
    output_dir: str | Path,
    overwrite: bool,
    resuming: bool = False,
    inputs=None,
    clear: bool = True,
    also_refuse: Callable[[Path], None] | None = None,
) -> Path:
    """Refuse to write into a non-empty folder unless asked; when overwriting, clear the previous run's files,
    unless the new run reads one of them (`inputs`: {option: path}, or (what, path) pairs), refused instead.
    Every refusal an overwrite would meet comes first, asked or not (`also_refuse(path)`: the caller's own, e.g.
    `refuse_foreign_outputs`): "Pass --overwrite_output_dir" sent a user on to one of them.

    With clear=False only the checks run: the caller clears with `replace_previous_run` once its own inputs
    (data, model, options) are checked, so a run refused for a mistake leaves the previous results in place."""
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"output_dir '{path}' is a file, not a folder: choose another --output_dir.")
    # a file manager's hidden files (.DS_Store) alone leave a folder empty: nothing in it is a run's
    if path.is_dir() and any(not p.name.startswith(".") for p in path.iterdir()) and not resuming:
        files, folders = previous_run(path)
        doomed = [p.resolve() for p in files + folders]
        for option, value in inputs.items() if isinstance(inputs, dict) else inputs or ():
            read = Path(value).resolve()
            # the folder itself (a model or run folder), a file that goes, or anything inside a folder that goes
            if read == path.resolve() or any(read == d or d in read.parents for d in doomed):
                raise OutputDirError(
                    f"{option} {value} is read from {path}, which --overwrite_output_dir would clear first: "
                    "write this run to another --output_dir."
                )
        models = [f.name for f in files if f.name not in RUN_FILES]
        if models and not any((path / m).is_file() for m in RUN_MARKERS):
            # e.g. --output_dir a downloaded model's folder: overwriting our results must not delete its weights
            raise OutputDirError(
                f"output_dir '{path}' holds model files ({', '.join(sorted(models)[:4])}) but no run of these "
                "recipes (no run_config.json or report.md): --overwrite_output_dir only replaces our own runs. "
                "Choose another --output_dir (or, if it is a run of ours stopped before it wrote its results, "
                "delete the folder yourself)."
            )
        if also_refuse is not None:
            also_refuse(path)
        if not overwrite:
            raise OutputDirError(
                f"output_dir '{path}' exists and is not empty. Pass --overwrite_output_dir to replace its results, "
                "or choose another --output_dir."
            )
    return replace_previous_run(path, overwrite, resuming) if clear else path


def prepare_results_dir(
    output_dir: str | Path,
    overwrite: bool,
    reads,
    own_files,
    own_dirs=(),
    what: str = "result",
    marker: str = "",
) -> Path:
    """The output folder of a tool that writes results about runs (compare, score, ensemble), checked and not yet
    cleared (`replace_previous_run` clears it once the results are ready): never inside a folder it reads (`reads`:
    (what, path) pairs), never one of them, never another run's folder (`refuse_foreign_outputs` with the tool's
    `own_files`, `own_dirs`, `what` and `marker`)."""
    refuse_output_inside(output_dir, reads)
    return prepare_output_dir(
        output_dir,
        overwrite,
        inputs=reads,
        clear=False,
        also_refuse=lambda path: refuse_foreign_outputs(path, own_files, own_dirs, what, marker),
    )


def refuse_output_inside(output_dir: str | Path, reads) -> None:
    """For the tools that write results about runs (compare, score, ensemble): an OutputDirError for an
    --output_dir inside a run folder they read (`reads`: (what, path) pairs). It was written there without a word:
    results about several runs filed in one of them go wherever that folder is copied or served from, and a rerun
    of that run with --overwrite_output_dir keeps them (folders not its own) beside a model they no longer describe
    (an ensemble there then mixes the new run at the old one's temperature)."""
    outs = spellings(output_dir)
    for what, folder in reads:
        if Path(folder).is_dir() and any(f in o.parents for o in outs for f in spellings(folder)):
            raise OutputDirError(
                f"--output_dir {output_dir} is inside {what} {folder}: write it beside the runs, not in one of "
                "their folders (a rerun of that run would keep it among results it no longer describes)"
            )


def refuse_foreign_outputs(
    output_dir: str | Path, own_files, own_dirs=(), what: str = "result", marker: str = ""
) -> None:
    """For tools that write results about runs (score, compare, ensemble), as prepare_output_dir's `also_refuse`
    (with or without --overwrite_output_dir): an OutputDirError when the folder holds anything an overwrite would
    delete (`previous_run`) other than the tool's own `own_files` and `own_dirs`: a run folder given as --output_dir
    by mistake lost its model, labels and predictions; a README.md kept beside earlier results went too. And when
    what it would delete, all of the tool's kinds, comes without the tool's `marker` (what it always writes:
    ensemble.json, compare.json, score.json): a folder of hand-made predictions_*.npz and a report.md read as an
    earlier ensemble, and went. Files of the user's own, which an overwrite leaves (a data file beside the score),
    are no reason to refuse. The recipes replace a whole previous run in their folder and do not call this."""
    path = Path(output_dir)
    if not path.is_dir():
        return
    files, folders = previous_run(path)
    others = [f.name for f in files if f.name not in own_files] + [
        f"{d.name}/" for d in folders if d.name not in own_dirs
    ]
    if others:
        own = [*own_files, *(f"{d}/" for d in own_dirs)]
        own = " and ".join(filter(None, [", ".join(own[:-1]), own[-1]]))  # "a, b and c"
        raise OutputDirError(
            f"output_dir '{path}' holds files that are not an earlier {what}'s ({', '.join(others[:5])}"
            f"{', ...' if len(others) > 5 else ''}: a run's?), which --overwrite_output_dir would delete: it "
            f"replaces only {own}. Choose another --output_dir."
        )
    doomed = sorted(f.name for f in files) + sorted(f"{d.name}/" for d in folders)  # all the tool's own now
    if marker and doomed and not (path / marker).is_file():
        raise OutputDirError(
            f"output_dir '{path}' holds {', '.join(doomed[:5])}{', ...' if len(doomed) > 5 else ''} but no "
            f"{marker}, so {'they are' if len(doomed) > 1 else 'it is'} not an earlier {what}'s, which is all "
            "--overwrite_output_dir replaces. Choose "
            f"another --output_dir (or, if {'an' if what[0] in 'aeiou' else 'a'} {what} stopped before it wrote "
            f"{marker}, delete {'them' if len(doomed) > 1 else 'it'} yourself)."
        )


def replace_previous_run(output_dir: str | Path, overwrite: bool, resuming: bool = False) -> Path:
    """The second half of prepare_output_dir(..., clear=False), with the same arguments: remove the previous run's
    result and model files and run folders (only when overwriting, never for a run resumed in the folder), then
    make the folder."""
    path = Path(output_dir)
    if overwrite and not resuming and path.is_dir():
        files, folders = previous_run(path)
        for file in files:
            file.unlink()
        for folder in folders:
            shutil.rmtree(folder)
        if files or folders:
            logger.warning(
                "Overwriting %s: removed %d files and %d folders of the previous run%s",
                path,
                len(files),
                len(folders),
                f" ({', '.join(d.name for d in folders)})" if folders else "",
            )
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_line(script: str, argv: list[str] | None) -> str:
    """The exact command that ran, shell-quoted, with secrets removed."""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg in SECRET_FLAGS and i + 1 < len(args):
            args[i + 1] = "<redacted>"
        elif arg.split("=", 1)[0] in SECRET_FLAGS:
            args[i] = arg.split("=", 1)[0] + "=<redacted>"
    return redact_secrets(" ".join(["python", shlex.quote(script), *map(shlex.quote, args)]))


def write_report(out: Path, tool: str, markdown: str, result: dict, argv: list[str] | None) -> None:
    """`<tool>.md` and `<tool>.json` of a tool that reports on runs (`longtail.compare`, `longtail.score`), the JSON
    with the exact command and the environment, as a run's run_config.json records them."""
    from longtail.provenance import environment

    result["command"] = command_line("-m", [f"longtail.{tool}", *(sys.argv[1:] if argv is None else argv)])
    result["environment"] = environment()
    (out / f"{tool}.md").unlink(missing_ok=True)
    (out / f"{tool}.md").write_text(markdown, "utf-8")
    write_json(out / f"{tool}.json", result)


def write_json(path: str | Path, obj) -> Path:
    """Valid JSON (NaN -> null), secrets scrubbed."""
    path = Path(path)
    path.write_text(
        redact_secrets(json.dumps(jsonable(obj), indent=2, ensure_ascii=False, default=str)) + "\n", "utf-8"
    )
    return path


def source_description(data_args) -> str:
    """Where the data came from, without local absolute paths."""
    files = [f for f in (data_args.train_file, data_args.validation_file, data_args.test_file) if f]
    if files:
        return "local files " + ", ".join(f"`{Path(f).name}`" for f in files)
    if data_args.dataset_name == "synthetic":
        return "the built-in synthetic CFPB-shaped demo set (not real complaints)"
    return f"`{data_args.dataset_name}`"


def public_model_name(name_or_path: str) -> str:
    """A Hub id stays as is; a local folder is named by its last component only."""
    path = Path(name_or_path)
    if not path.exists():
        return name_or_path
    # packaged models often live in a folder literally called "model": keep the parent for context
    return f"{path.parent.name}/{path.name}" if path.name in {"model", "models", "weights"} else path.name


def take_hub_token(training_args) -> None:
    """Move --hub_token out of `training_args` (before any Trainer saves them) to where `push_folder` reads it."""
    global _hub_token
    _hub_token, training_args.hub_token = training_args.hub_token, None  # None: not the last run's


def check_hub_push() -> None:
    """Before anything is read or trained: can this process push to the Hub as a user (--hub_token, HF_TOKEN or a
    stored login; not HF_HUB_OFFLINE)? A push that cannot succeed failed only at the end, after the whole run
    (Trainer, kept from pushing every checkpoint, would have failed at its start creating the repo). Read-only,
    so every process of a launch asks (a refusal on the main process alone left the others in a barrier)."""
    import huggingface_hub

    try:
        huggingface_hub.whoami(token=_hub_token)
    # offline (OfflineModeIsEnabled), no token (LocalTokenNotFoundError), a refused token (401, HTTPError)
    except OSError as err:
        reason = redact_secrets(" ".join(str(err).split()))
        status = getattr(getattr(err, "response", None), "status_code", None)
        # whoami's strict rate limit, or the Hub down: nothing said of the token
        if status == 429 or (status or 0) >= 500:
            logger.warning(
                "--push_to_hub: the Hub did not say who this is (%s); the push is tried at the end", reason
            )
            return
        raise UsageError(
            f"--push_to_hub: the Hugging Face Hub cannot be reached as a user here ({reason}): pass --hub_token, "
            "set HF_TOKEN or log in (`hf auth login`), and unset HF_HUB_OFFLINE; or drop --push_to_hub and push "
            "the run folder later"
        ) from None


def push_folder(
    output_dir: str | Path, repo_id: str | None, token: str | None = None, private: bool | None = None
):
    """Push the run folder (model, tokenizer, card, reports) once; checkpoints stay local.

    The token comes from --hub_token, HF_TOKEN or a stored login; it is passed through, never logged.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token or _hub_token)
    repo_id = repo_id or Path(output_dir).name
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        folder_path=str(output_dir),
        repo_id=url.repo_id,
        ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "*.pt", "*.pth"],
        commit_message="Upload long-tail classifier",
    )
    logger.info("Pushed %s to https://huggingface.co/%s", output_dir, url.repo_id)
    return url.repo_id


def write_run_files(output_dir: str | Path, data, command: str, config: dict) -> None:
    """labels.json (taxonomy, counts, tiers, data log), splits.json (row ids), run_config.json (the command,
    every resolved option, the environment: versions and source revision, and a fingerprint of each split's rows)."""
    from longtail.data import split_ids
    from longtail.metrics import assign_tiers

    output_dir = Path(output_dir)
    tiers = assign_tiers(data.train_counts)
    names = data.label_names
    write_json(
        output_dir / "labels.json",
        {
            "id2label": data.id2label,
            "train_counts": {names[i]: n for i, n in sorted(data.train_counts.items())},
            "tiers": {names[i]: t for i, t in sorted(tiers.items())},
            "data_log": data.log,
        },
    )
    write_json(output_dir / "splits.json", split_ids(data))
    from longtail.provenance import data_fingerprint, environment

    write_json(
        output_dir / "run_config.json",
        {
            "command": command,
            **config,
            "environment": environment(),
            "data_fingerprint": data_fingerprint(data),
        },
    )
