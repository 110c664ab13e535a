"""`python -m longtail.from_gguf`: a GGUF file written here from a tiny Llama (as llama.cpp's converter writes
one: q/k rows permuted, a byte-level BPE vocabulary with its merges) comes back as that model, weight for weight,
with the tokenizer the file describes."""

from __future__ import annotations

import hashlib
import json
import re

import gguf
import numpy as np
import pytest
import torch
from conftest import decoder_args, refused
from test_recipes import load_recipe, synthetic_files
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from longtail import from_gguf
from longtail.cli import UsageError

TEXT = "My credit report shows a loan I never took."
LAYER_PARTS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}  # fmt: skip
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py reorders q and k rows for its rotary layout; Transformers undoes it."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(model_dir: str, path, add_bos: bool, arch: str | None = None, pad: bool = True):
    """Llama's q/k rows permuted as llama.cpp does; Qwen2's biases as they are, its tied output left out; `pad`:
    the eos as padding_token_id (a file may name none)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    c = model.config
    w = gguf.GGUFWriter(str(path), arch or c.model_type)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(c.rope_theta)
    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in tok.all_special_tokens else 1 for t in tokens])  # 3: control
    w.add_token_merges([" ".join(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    if pad:
        w.add_pad_token_id(tok.eos_token_id)
    w.add_add_bos_token(add_bos)
    for name, tensor in model.state_dict().items():
        array = tensor.numpy().astype(np.float32)
        if name == "lm_head.weight":
            if not c.tie_word_embeddings:
                w.add_tensor("output.weight", array)
        elif name in TOP:
            w.add_tensor(TOP[name], array)
        else:
            layer, part, kind = name.split(".")[2], ".".join(name.split(".")[3:-1]), name.split(".")[-1]
            if c.model_type == "llama" and part in ("self_attn.q_proj", "self_attn.k_proj"):
                heads = c.num_attention_heads if "q_proj" in part else c.num_key_value_heads
                array = llama_cpp_permute(array, heads)
            w.add_tensor(f"blk.{layer}.{LAYER_PARTS[part]}.{kind}", array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory):
    return write_gguf(tiny_llama, tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf", add_bos=True)


def test_a_gguf_file_becomes_the_model_it_was_written_from(tiny_llama, tiny_gguf, tmp_path, capsys):
    out = tmp_path / "converted"
    record = from_gguf.main([str(tiny_gguf), "--output_dir", str(out)])
    original, converted = (
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        AutoModelForCausalLM.from_pretrained(out),
    )
    want, got = original.state_dict(), converted.state_dict()
    assert sorted(got) == sorted(want)
    for name in want:  # q and k un-permuted, every tensor exact (float32 in, float32 out)
        assert torch.equal(got[name], want[name]), name

    tok, theirs = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_llama)
    assert tok(TEXT).input_ids == theirs(TEXT).input_ids  # the file says add a bos; so did the original
    # Transformers 4.57 reads the file's eos as its bos, and leaves out the pad token it names
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "</s>")
    eos = theirs.eos_token_id
    assert record["tokenizer_fixes"] == [
        f"eos_token '<s>' -> '</s>' (id {eos})",
        f"pad_token None -> '</s>' (id {eos})",
    ]
    assert AutoConfig.from_pretrained(out).pad_token_id == eos
    assert record["tensor_types"] == {"F32": len(want)}
    assert record["parameters"] == sum(p.numel() for p in original.parameters())
    assert record["sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    size = tiny_gguf.stat().st_size
    assert (record["bytes"], record["architecture"], record["name"]) == (size, "llama", None)
    assert record["max_abs_logit_diff_after_save"] == 0.0
    assert json.loads((out / from_gguf.RECORD).read_text()) == record
    card = (out / "README.md").read_text()
    # the file has no general.name: the card is headed by its stem
    assert card.startswith("# tiny-llama.F32 (converted from GGUF)\n")
    assert f"F32 × {len(want)}" in card and "- eos_token '<s>' -> '</s>'" in card
    assert f"-> {out} (float32)" in capsys.readouterr().out


def test_a_qwen2_gguf_file_becomes_its_model(tiny_qwen2, tmp_path):
    source = write_gguf(tiny_qwen2, tmp_path / "qwen2.gguf", add_bos=False)
    record = from_gguf.main([str(source), "--output_dir", str(tmp_path / "out")])
    want = AutoModelForCausalLM.from_pretrained(tiny_qwen2).state_dict()
    got = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[name], want[name]) for name in want)  # biases, tied output included
    tok, theirs = AutoTokenizer.from_pretrained(tmp_path / "out"), AutoTokenizer.from_pretrained(tiny_qwen2)
    assert tok(TEXT).input_ids == theirs(TEXT).input_ids
    assert (tok.eos_token, tok.pad_token) == ("<|endoftext|>", "<|endoftext|>")
    # Qwen2's GGUF tokenizer keeps the file's eos and pad; the bos the file names (the original's, = eos) is set
    assert record["tokenizer_fixes"] == ["bos_token None -> '<|endoftext|>' (id 0)"]
    # a file naming no pad: Qwen2's tokenizer pads with <|endoftext|> all the same, and the config must say so
    # (Transformers reads the config's pad_token_id from the file alone: None)
    source = write_gguf(tiny_qwen2, tmp_path / "nopad.gguf", add_bos=False, pad=False)
    from_gguf.main([str(source), "--output_dir", str(tmp_path / "nopad")])
    assert AutoTokenizer.from_pretrained(tmp_path / "nopad").pad_token_id == 0
    assert AutoConfig.from_pretrained(tmp_path / "nopad").pad_token_id == 0


def test_the_files_add_bos_token_false_is_kept(tiny_llama, tmp_path):
    source = write_gguf(tiny_llama, tmp_path / "nobos.gguf", add_bos=False)
    record = from_gguf.main([str(source), "--output_dir", str(tmp_path / "out")])
    assert "add_bos_token -> False" in record["tokenizer_fixes"]
    with_bos = AutoTokenizer.from_pretrained(tiny_llama)(TEXT).input_ids
    assert AutoTokenizer.from_pretrained(tmp_path / "out")(TEXT).input_ids == with_bos[1:]


def test_a_converted_folder_trains_with_lora_and_a_gguf_file_is_pointed_to_the_converter(
    tiny_gguf, tmp_path, fast_bootstrap
):
    out = tmp_path / "converted"
    from_gguf.main([str(tiny_gguf), "--output_dir", str(out)])
    train, test = synthetic_files(tmp_path)
    recipe = load_recipe("lora_decoder")
    extra = ("--max_steps", "3", "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false")  # fmt: skip
    metrics = recipe.main(decoder_args("lora_decoder", str(out), train, test, tmp_path / "run", *extra))
    assert (
        metrics["test"]["num_examples"]
        == json.loads((tmp_path / "run" / "test_results.json").read_text())["num_examples"]
    )
    with pytest.raises(UsageError) as err:
        recipe.main(decoder_args("lora_decoder", str(tiny_gguf), train, test, tmp_path / "r2"))
    assert str(err.value) == (
        f"--model_name_or_path {tiny_gguf} is a GGUF file: convert it once to a model folder with python -m "
        f"longtail.from_gguf {tiny_gguf} --output_dir <folder>, and pass that folder"
    )


def test_an_overwrite_replaces_only_an_earlier_conversion(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "converted"
    from_gguf.main([str(tiny_gguf), "--output_dir", str(out)])
    stale = out / "model-00001-of-00002.safetensors"  # an earlier, sharded conversion's
    stale.write_text("x")
    # and a sentencepiece file of an earlier one (save_pretrained replaces stale shards itself, not this)
    (out / "tokenizer.model").write_text("x")
    mine = out / "notes.txt"
    mine.write_text("mine")
    line = refused(from_gguf.main, [str(tiny_gguf), "--output_dir", str(out)], capsys)
    assert line.endswith(f"--output_dir {out} holds an earlier conversion; pass --overwrite to replace it")
    from_gguf.main([str(tiny_gguf), "--output_dir", str(out), "--overwrite"])
    assert not stale.exists() and mine.read_text() == "mine" and (out / "model.safetensors").is_file()
    assert not (out / "tokenizer.model").exists()

    # a conversion that stops while saving (it saves beside the folder) leaves the earlier one whole
    def fails(*args, **kwargs):
        raise OSError("disk full")

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            PreTrainedTokenizerBase, "save_pretrained", fails
        )  # the model's weights are written by then
        with pytest.raises(OSError, match="disk full"):
            from_gguf.main([str(tiny_gguf), "--output_dir", str(out), "--overwrite"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [
        p.name for p in out.parent.iterdir() if p.name.startswith(".")
    ] == []  # no half-written folder beside

    other = tmp_path / "someone_elses"
    other.mkdir()
    (other / "config.json").write_text("{}")
    (other / "README.md").write_text("theirs")  # a card is no record of a conversion
    for overwrite in (["--overwrite"], []):  # the true reason first, with or without --overwrite
        line = refused(from_gguf.main, [str(tiny_gguf), "--output_dir", str(other), *overwrite], capsys)
        assert line.endswith(
            f"--output_dir {other} holds README.md, config.json but no gguf_source.json: it is not a finished "
            "conversion, which is all --overwrite replaces. Choose another --output_dir (or, if a conversion "
            "stopped there, delete the folder yourself)."
        )
    assert (other / "config.json").read_text() == "{}" and (other / "README.md").read_text() == "theirs"


def test_bad_inputs_are_one_line(tiny_llama, tiny_gguf, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    assert refused(from_gguf.main, [str(tmp_path / "no.gguf"), "--output_dir", out], capsys).endswith(
        f"{tmp_path / 'no.gguf'} is not a file"
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ is the user's folder, as a shell would expand it
    assert refused(from_gguf.main, ["~/no.gguf", "--output_dir", out], capsys).endswith(
        f"{tmp_path / 'no.gguf'} is not a file"
    )
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04not a gguf")
    assert refused(from_gguf.main, [str(fake), "--output_dir", out], capsys).endswith(
        f"{fake} is not a GGUF file (it does not start with the GGUF magic)"
    )
    for cut in (4 + 4 + 7, 5000):  # a download cut short: in the header, in the metadata
        short = tmp_path / f"short{cut}.gguf"
        short.write_bytes(tiny_gguf.read_bytes()[:cut])
        assert (
            f"error: {short} starts as a GGUF file but cannot be read as one (cut short or damaged?): "
            in refused(from_gguf.main, [str(short), "--output_dir", out], capsys)
        )
    line = refused(from_gguf.main, [str(tiny_gguf), "--output_dir", str(tiny_gguf.parent)], capsys)
    assert line.endswith(
        f"--output_dir {tiny_gguf.parent} is the folder of the GGUF file itself: choose another --output_dir"
    )
    # an architecture Transformers cannot read from GGUF: its own words, after ours, in one line
    odd = write_gguf(tiny_llama, tmp_path / "odd.gguf", add_bos=True, arch="llama9")
    line = refused(from_gguf.main, [str(odd), "--output_dir", out], capsys)
    assert f" error: {odd} (architecture 'llama9') cannot be loaded by Transformers: " in line
    assert "llama9" in line.split("Transformers: ", 1)[1]
    assert not (tmp_path / "out" / "config.json").exists()

    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # not installed
    fresh = tmp_path / "fresh"
    assert refused(from_gguf.main, [str(tiny_gguf), "--output_dir", str(fresh)], capsys).endswith(
        'reading a GGUF file needs the gguf package: pip install gguf==0.19.0 (the tested version; or pip install -e ".[gguf]")'
    )
    assert not fresh.exists()  # refused before the output folder is made


def test_fix_tokenizer_skips_an_id_outside_the_vocabulary_and_sets_add_eos(tiny_gguf):
    """An id past the vocabulary names no token (convert_ids_to_tokens gives None): nothing is set from it, and
    the record says so. A file's add_eos_token is set as its add_bos_token is."""
    tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    eos, ids = tok.eos_token, tok(TEXT).input_ids
    meta = {"special_ids": {"eos": len(tok)}, "add_bos_token": None, "add_eos_token": True}
    assert from_gguf.fix_tokenizer(tok, meta) == [
        f"eos id {len(tok)} outside the vocabulary ({len(tok)}): kept {eos!r}",
        "add_eos_token -> True",
    ]
    assert tok.eos_token == eos and tok(TEXT).input_ids == [*ids, tok.eos_token_id]


def test_the_output_dir_checks(tmp_path):
    source = tmp_path / "models" / "m.gguf"  # only its folder is compared
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UsageError, match=f"^--output_dir {re.escape(str(afile))} is a file, not a folder$"):
        from_gguf.check_output_dir(afile, source, overwrite=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / ".DS_Store").write_text("")  # a file manager's hidden file: the folder is empty all the same
    from_gguf.check_output_dir(out, source, overwrite=False)
    for name in "abcde":
        (out / name).write_text("")
    with pytest.raises(UsageError, match=f"^--output_dir {re.escape(str(out))} holds a, b, c, d, e but no "):
        from_gguf.check_output_dir(out, source, overwrite=True)
    (out / "f").write_text("")  # more than five: the first five, and an ellipsis
    with pytest.raises(
        UsageError, match=f"^--output_dir {re.escape(str(out))} holds a, b, c, d, e, ... but no "
    ):
        from_gguf.check_output_dir(out, source, overwrite=True)


def test_a_card_with_no_tokenizer_fix_says_so():
    record = {"name": "m", "source": "/x/m.gguf", "sha256": "0" * 64, "tensor_types": {"Q8_0": 2},
              "tokenizer_fixes": []}  # fmt: skip
    assert from_gguf.card(record).endswith("`tokenizer.ggml.*` values:\n- none needed\n")


def test_a_saved_folder_that_scores_otherwise_is_refused_and_a_small_difference_recorded(
    tiny_gguf, tmp_path, monkeypatch
):
    """The saved folder is read back and scored on SAMPLE: logits moved (here by a hook on the reloaded model) by
    more than 1e-5 are an error; by less, the record says by how much."""
    import transformers

    real, shift = transformers.AutoModelForCausalLM.from_pretrained, [1e-3]

    def shifted(module, inputs, output):
        output.logits.add_(shift[0])

    def from_pretrained(*args, **kwargs):
        model = real(*args, **kwargs)
        if "gguf_file" not in kwargs:  # the saved folder, read back
            model.register_forward_hook(shifted)
        return model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(
        RuntimeError, match="^the saved folder's logits differ from the GGUF model's by 0.001$"
    ):
        from_gguf.main([str(tiny_gguf), "--output_dir", str(tmp_path / "a")])
    shift[0] = 2.0**-20
    record = from_gguf.main([str(tiny_gguf), "--output_dir", str(tmp_path / "b")])
    assert record["max_abs_logit_diff_after_save"] == pytest.approx(2.0**-20, rel=0.05)
