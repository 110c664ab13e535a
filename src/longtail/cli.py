"""Parse a recipe's options (dataclass defaults < YAML `--config` < command line, by TRL's `TrlParser`), with the
user's mistakes in the options themselves as one-line usage errors instead of tracebacks from TRL or
Transformers: a missing or unreadable config file, a YAML key or a command-line option the recipe does not take.

`UsageError` marks a mistake in what the user gave (options, data, folders, models); `run` is a recipe's command-line
entry and prints such an error as one line (status 2), while anything else, a bug, keeps its traceback."""

from __future__ import annotations

import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path


class UsageError(ValueError):
    """A mistake in a recipe's input, worded for the user. A ValueError, so library callers catch it as one."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file or folder the user named is not there (also a FileNotFoundError, for callers that catch those)."""


class MissingDependencyError(UsageError, ImportError):
    """An optional library the chosen recipe needs is not installed or not usable here (also an ImportError)."""


class LaunchError(UsageError, RuntimeError):
    """The processes were launched in a way the run cannot use (also a RuntimeError)."""


def run(main, argv: list[str] | None = None) -> None:
    """`main(argv)` from the command line: a UsageError ends the process with `<script>: error: <message>` on
    stderr and status 2, as argparse does for a bad option; any other exception keeps its traceback."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        # LONGTAIL_TRACEBACK=1: the whole traceback, to see where a check fired (or one that is really a bug)
        if os.environ.get("LONGTAIL_TRACEBACK"):
            raise
        print(error_line(str(err)), file=sys.stderr)
        raise SystemExit(2) from None


def error_line(message: str) -> str:
    """`<program>: error: <message>`, the program named as argparse names it in its own errors (the file name of
    sys.argv[0]: `predict.py` for `python -m longtail.predict`, `longtail-predict` for the console script), so
    every error of one tool starts alike."""
    return f"{Path(sys.argv[0]).name}: error: {message}"


class UsageExit(SystemExit):
    """A command-line tool's one-line error, ended as argparse ends one: status 2 (its `code`), the line already on
    stderr. Its str() is that line, for callers (and tests) that read the message."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def usage_exit(message: str) -> UsageExit:
    """Print `message` as `<program>: error: <message>` (`error_line`) on stderr and return the UsageExit to raise:
    status 2, no traceback, as `run` and argparse end on a mistake in the input (a SystemExit with a message would
    exit with status 1)."""
    line = error_line(message)
    print(line, file=sys.stderr)
    return UsageExit(line)


def model_source_error(option: str, name: str, err: Exception | None, needs=("config.json",)) -> UsageError:
    """Why `name` (a local model folder or a Hub repo id) could not be read, in one line naming the option."""
    from huggingface_hub import constants

    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return UsageError(
            f"{option} {name} is a GGUF file: convert it once to a model folder with python -m longtail.from_gguf "
            f"{name} --output_dir <folder>, and pass that folder"
        )
    if path.is_file():
        return UsageError(f"{option} {name} is a file: pass a model folder or a Hugging Face Hub repo id")
    if path.is_dir() and not any((path / f).is_file() for f in needs):
        from longtail.predict import not_transformers

        # a run of the recipes that holds no Transformers model: named for what it is, as predict and distill do
        if kind := not_transformers(path):
            return UsageError(
                f"{option} {name} is {kind}, not a Transformers model: pass a model folder or a Hugging Face Hub "
                "repo id (such a run serves with python -m longtail.predict, and teaches through distill.py "
                "--teacher_logits)"
            )
        what = "not a model folder"
        if list(path.glob("pytorch_model*.bin")):  # pickles can run code when loaded: never read
            what = "its weights are only a pickle (pytorch_model.bin), which is never loaded; save them as safetensors"
        return UsageError(f"{option} {name} has no {' or '.join(needs)}: {what}")
    if path.is_dir():
        return UsageError(f"{option} {name} cannot be read as a model folder: {' '.join(str(err).split())}")
    from huggingface_hub.errors import HFValidationError

    if isinstance(err, HFValidationError) or (isinstance(err, OSError) and constants.HF_HUB_OFFLINE):
        where = (
            "available in the Hugging Face cache, and the Hub is offline (HF_HUB_OFFLINE)"
            if constants.HF_HUB_OFFLINE
            else "a valid Hugging Face Hub repo id"  # a name that cannot be one: a mistyped path
        )
        return MissingInputError(f"{option} {name} is neither a local folder nor {where}")
    # a Hub repo id, online: gated, missing, remote code not allowed...; Transformers' own words say which
    return UsageError(f"{option} {name} cannot be loaded: {' '.join(str(err).split())}")


@contextmanager
def reading_model(option: str, name: str, needs=("config.json",)):
    """Turn Transformers' and huggingface_hub's load failures for a model the user named (no such folder, a bad
    repo id, not cached offline, a folder without any of the files in `needs`) into a UsageError naming
    `option`. Wrap only the `from_pretrained` calls: any ValueError inside is read as the model's."""
    path = Path(name).expanduser()
    if path.is_file() or (path.is_dir() and not any((path / f).is_file() for f in needs)):
        # checked first: Transformers reads an empty folder as a tokenizer to convert, and fails inside that
        raise model_source_error(option, name, None, needs)
    try:
        yield
    except UsageError:
        raise
    # ValueError: huggingface_hub's HFValidationError, Transformers' "Unrecognized model"; TypeError: a folder
    # with config.json but no tokenizer files (Transformers' own failure)
    except (OSError, ValueError, TypeError) as err:
        raise model_source_error(option, name, err, needs) from err


UNKNOWN_YAML = re.compile(r"Unknown arguments from config file: (.*)\. Please remove them")
UNKNOWN_CLI = re.compile(r"Some specified arguments are not used by the HfArgumentParser: (.*)")


def config_path(argv: list[str]) -> str | None:
    return argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None


def typed_options(parser, argv: list[str]) -> set[str]:
    """The options (dests) the command line itself sets, in any form argparse takes (`--grid-C`, `--C=3`, an
    abbreviation), as against those the `--config` YAML set: argparse fills in only what its namespace lacks."""
    import argparse

    if config_path(argv) is not None:  # trl's option, not the parser's
        at = argv.index("--config")
        argv = argv[:at] + argv[at + 2 :]
    unset = object()
    parsed, _ = parser.parse_known_args(argv, argparse.Namespace(**{a.dest: unset for a in parser._actions}))
    return {dest for dest, value in vars(parsed).items() if value is not unset}


def parse_config(parser, argv: list[str] | None):
    """`parser.parse_args_and_config(argv)`; mistakes in the options exit with `parser.error` (status 2)."""
    import yaml

    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[-1:] == ["--config"]:
        parser.error("--config needs a YAML file")
    config = config_path(argv)
    if config is not None and (problems := config_value_problems(parser, config, argv)):
        parser.error(f"--config {config}: {'; '.join(problems)}")
    try:
        parsed = parser.parse_args_and_config(argv)
    except FileNotFoundError as err:
        if config is None or err.filename != config:
            raise
        parser.error(f"--config {config}: no such file")
    except OSError as err:  # a folder, a file we may not read
        if config is None or err.filename != config:
            raise
        parser.error(f"--config {config} cannot be read: {err.strerror}")
    except UnicodeDecodeError:
        parser.error(f"--config {config} is not UTF-8 text")
    except yaml.YAMLError as err:
        parser.error(f"--config {config} is not valid YAML: {' '.join(str(err).split())}")
    except ValueError as err:
        message = str(err)
        for pattern, where in ((UNKNOWN_YAML, f"keys in {config}"), (UNKNOWN_CLI, "options")):
            found = pattern.search(message)
            if found:
                # keys and options start with "--"; a value such as -1 does not
                names = re.findall(r"'(--[\w.-]+)'", found.group(1))
                parser.error(
                    f"{where} this recipe does not take: {', '.join(n.lstrip('-') for n in names) or found.group(1)}"
                    " (`--help` lists its options)"
                )
        if config is not None and message.startswith(f"Config file {config} must contain a YAML mapping"):
            parser.error(message)
        # the dataclasses' own checks (ours and TrainingArguments'): the options are wrong, not the code
        if isinstance(err, UsageError):
            raise
        raise UsageError(message) from err
    if nan := not_a_number(parsed):
        parser.error(f"{', '.join(nan)}: not a finite number (nan or inf)")
    for args in parsed:
        for name in SEED_OPTIONS:
            if (problem := seed_problem(name, getattr(args, name, None))) is not None:
                parser.error(problem)
    return parsed


# seeds numpy reads (np.random.seed, scikit-learn's random_state, default_rng): 0 .. 2**32 - 1. A negative one was
# numpy's or scikit-learn's traceback (Trainer's set_seed; the TF-IDF fit, after the features; the data split).
SEED_OPTIONS = ("seed", "split_seed")
MAX_SEED = 2**32 - 1


def seed_problem(name: str, value) -> str | None:
    """Why `--<name> <value>` cannot seed numpy, or None (also None for an unset or non-integer value)."""
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_SEED:
        return f"--{name} must be a whole number from 0 to {MAX_SEED} (2**32 - 1), got {value}"
    return None


# options a library reads null for: Trainer clips no gradient when max_grad_norm is None
NULLABLE = frozenset({"max_grad_norm"})


def config_value_problems(parser, config: str, argv: list[str] = ()) -> list[str]:
    """The YAML values of number and list options that argparse would take as they are (it converts only a
    text default): a list, a boolean or a fraction for an integer, text inside a list (YAML reads 1e-4 as text),
    one value for a list, null for an option that has a value. Each once failed later, deep inside a library or
    our checks (or iterated a word's letters); an unreadable file or YAML is left to the parser's own errors. A key
    the command line sets again is not read (the command line wins)."""
    import yaml

    try:
        values = yaml.safe_load(Path(config).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    if not isinstance(values, dict):
        return []
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    problems = []
    for action in parser._actions:
        kind_of = option_type(action.type)
        if action.dest not in values or kind_of is None or given & set(action.option_strings):
            continue
        value, many = values[action.dest], action.nargs in ("+", "*")
        kind = {int: "an integer", float: "a number", str: "text"}[kind_of]
        if value is None:  # null for a text option may mean none (label_merge_map: null)
            if (
                action.default is not None
                and action.type is kind_of  # not a `T | None` field, which takes null
                and (many or kind_of is not str)
                and action.dest not in NULLABLE
            ):
                problems.append(f"{action.dest} is null: it takes {'a list' if many else kind}")
        elif many and not isinstance(value, list):
            problems.append(f"{action.dest} takes a list, e.g. [{value}], got {value!r}")
        elif kind_of is not str:
            for item in value if many else [value]:
                if isinstance(item, str) and not many:
                    continue  # argparse converts a text value, and names one that is not a number
                if isinstance(item, str):
                    hint = (
                        (
                            " (YAML reads 1e-4 as text: write 1.0e-4)"
                            if "e" in item.lower()
                            else " (drop the quotes)"
                        )
                        if looks_like(kind_of, item)
                        else ""
                    )
                    problems.append(f"{action.dest}: {item!r} is text, not a number{hint}")
                elif isinstance(item, bool) or not isinstance(
                    item, (int, float) if kind_of is float else int
                ):
                    problems.append(f"{action.dest} takes {kind}, got {item!r}")
    return problems


def option_type(converter):
    """int, float or str: an option's type, also where trl wraps it to read "none" and "null" as None (a `T | None`
    field, such as --max_train_samples: its `_accept_none` keeps the type's name); None for any other converter."""
    if converter in (int, float, str):
        return converter
    if getattr(converter, "__qualname__", "").startswith("_accept_none."):
        return {"int": int, "float": float, "str": str}.get(getattr(converter, "__name__", None))
    return None


def looks_like(kind, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def not_a_number(parsed) -> list[str]:
    """Options set to NaN or infinity (`--C nan`, `--learning_rate inf`, `.nan` in a YAML): NaN passes every
    `x <= 0` check, and an infinite rate passes `> 0`, to turn the weights into NaN at the first step. A field whose
    default is itself infinite may stay so."""
    import math
    from dataclasses import fields, is_dataclass

    def infinite(value) -> bool:
        items = value if isinstance(value, (list, tuple)) else [value]
        return any(isinstance(v, float) and not math.isfinite(v) for v in items)

    return [
        f"--{f.name}"
        for args in parsed
        if is_dataclass(args)
        for f in fields(args)
        if infinite(getattr(args, f.name, None)) and not infinite(f.default)
    ]
