"""Every command the README, the study log and the Makefile show passes options its tool takes.

Docs drift from code when nothing reads them (the alignment-handbook's YAMLs kept a key TRL had renamed): each
`python recipes/X.py`, `python -m longtail.X` and `python bench/X.py` invocation, in a code block or an inline
code span, is parsed here, and each of its `--options` must appear in that tool's own `--help`."""

import importlib
import re

import pytest
from conftest import REPO, load_bench
from test_recipes import load_recipe

DOCS = ["README.md", "docs/cfpb_long_tail_study.md", "Makefile"]
# a tool named as a script or a module, then its arguments up to the end of the command
TOOL = re.compile(r"(?:(recipes|bench)/(\w+)\.py|-m (longtail)\.(\w+))((?:[^`&;|#)\n]|\\\n)*)")
OPTION = re.compile(r"(?<![\w-])--([A-Za-z_][\w-]*)")


def invocations(text: str) -> list[tuple[str, str, str]]:
    """(kind, tool, arguments) of every invocation in `text`, line continuations joined."""
    text = text.replace("\\\n", " ")
    return [(m[1] or m[3], m[2] or m[4], m[5]) for m in TOOL.finditer(text)]


def documented() -> list[tuple[str, str, str, str]]:
    found = []
    for doc in DOCS:
        for kind, tool, args in invocations((REPO / doc).read_text("utf-8")):
            found.extend((doc, kind, tool, option) for option in OPTION.findall(args))
    return found


def tool_main(kind: str, tool: str):
    if kind == "recipes":
        return load_recipe(tool).main
    if kind == "bench":
        return load_bench(tool, f"readme_bench_{tool}").main
    return importlib.import_module(f"longtail.{tool}").main


_HELP: dict[tuple[str, str], frozenset[str]] = {}


def accepted(kind: str, tool: str, capsys) -> frozenset[str]:
    """The options in the tool's own --help (argparse or TrlParser: every dataclass field is listed)."""
    if (kind, tool) not in _HELP:
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            tool_main(kind, tool)(["--help"])
        assert done.value.code in (0, None), f"{kind}/{tool} --help exited with {done.value.code}"
        options = set(OPTION.findall(capsys.readouterr().out))
        if kind == "recipes":
            options.add("config")  # TrlParser reads --config before its dataclasses' options
        _HELP[kind, tool] = frozenset(options)
    return _HELP[kind, tool]


def test_the_docs_show_commands_to_check():
    tools = {(kind, tool) for _, kind, tool, _ in documented()}
    # the recipes, the library's tools and the benches all appear with options
    assert {("recipes", "full_ft_encoder"), ("recipes", "probe_encoder"), ("longtail", "predict")} <= tools
    assert any(kind == "bench" for kind, _ in tools)


def test_every_documented_option_is_taken_by_its_tool(capsys):
    unknown = sorted(
        {
            f"{doc}: {kind}/{tool} --{option}"
            for doc, kind, tool, option in documented()
            if option not in accepted(kind, tool, capsys)
        }
    )
    assert not unknown, "options the docs show but the tool does not take:\n" + "\n".join(unknown)


def test_an_option_the_tool_does_not_take_is_caught(capsys):
    """The check itself: a misspelt option in a command is found, a real one is not."""
    text = "```bash\npython recipes/full_ft_encoder.py --config c.yaml \\\n    --head_warmup_epoch 1 --seed 3\n```\n"
    options = [o for _, tool, args in invocations(text) for o in OPTION.findall(args)]
    assert options == ["config", "head_warmup_epoch", "seed"]
    taken = accepted("recipes", "full_ft_encoder", capsys)
    assert [o for o in options if o not in taken] == ["head_warmup_epoch"]


# options of other programs the docs show (accelerate launch, torchrun, pip, ruff) and placeholders
# (`--key value`, `--option`, `--max_*_samples`)
FOREIGN = {"config_file", "machine_rank", "main_process_ip", "nproc_per_node", "num_processes", "no-deps", "check",
           "fix", "key", "option", "max_"}  # fmt: skip


def test_every_option_the_docs_name_is_some_tools(capsys):
    """Prose too: an option named anywhere in the docs (`--head_init_from`, a table's `--long_text`) is taken by
    one of the tools, so a renamed option cannot live on in a sentence."""
    taken = set(FOREIGN)
    for kind, tool in sorted({(kind, tool) for _, kind, tool, _ in documented()}):
        taken |= accepted(kind, tool, capsys)
    named = {
        f"{doc}: --{o}"
        for doc in DOCS
        for o in OPTION.findall((REPO / doc).read_text("utf-8"))
        if o not in taken
    }
    assert not named, "options the docs name that no tool takes:\n" + "\n".join(sorted(named))
