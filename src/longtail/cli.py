"""Parse a recipe's options (dataclass defaults < YAML `--config` < command line, by TRL's `TrlParser`), with the
user's mistakes in the options themselves as one-line usage errors instead of tracebacks from TRL or
Transformers: a missing or unreadable config file, a YAML key or a command-line option the recipe does not take."""

from __future__ import annotations

import re

UNKNOWN_YAML = re.compile(r"Unknown arguments from config file: (.*)\. Please remove them")
UNKNOWN_CLI = re.compile(r"Some specified arguments are not used by the HfArgumentParser: (.*)")


def config_path(argv: list[str]) -> str | None:
    return argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None


def parse_config(parser, argv: list[str] | None):
    """`parser.parse_args_and_config(argv)`; mistakes in the options exit with `parser.error` (status 2)."""
    import sys

    import yaml

    argv = list(argv) if argv is not None else sys.argv[1:]
    if argv[-1:] == ["--config"]:
        parser.error("--config needs a YAML file")
    config = config_path(argv)
    try:
        return parser.parse_args_and_config(argv)
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
        raise
