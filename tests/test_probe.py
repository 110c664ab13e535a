"""The linear probe (one Transformers model whose logits equal sklearn's), its recipe, and LP-FT."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, needs_shared, quick_start, run_quick_start
from test_recipes import REQUIRED_KEYS, RUN_FILES, encoder_args, load_recipe, synthetic_files

from longtail.cli import UsageError
from longtail.probe import REGISTER_LINE

TEXTS = [
    "I was charged a late fee twice.",
    "The bank closed my checking account without notice and kept the balance for weeks.",
    "A debt collector keeps calling me about a debt I do not owe, even at work.",
    "My credit report shows an account that is not mine.",
    "The mortgage servicer lost my payment and reported me late.",
    "Fees.",
]


def fit_head(features: np.ndarray, n_classes: int = 3):
    from sklearn.linear_model import LogisticRegression

    y = np.arange(len(features)) % n_classes
    return LogisticRegression(C=10.0, max_iter=2000).fit(features, y)


@pytest.mark.parametrize(
    "fixture,pooling,normalize,layers",
    [
        ("tiny_modernbert", "mean", False, (-1,)),
        ("tiny_modernbert", "cls", False, (-1,)),
        ("tiny_qwen2", "last", False, (-1,)),
        ("tiny_modernbert", "mean", True, (-1,)),
        ("tiny_modernbert", "mean", True, (0, -1)),
        ("tiny_qwen2", "last", False, (1, -1)),
    ],
)
def test_probe_model_logits_equal_sklearn_decision_function(
    fixture, pooling, normalize, layers, request, tmp_path, one_torch_thread
):
    """Saved as one folder, reloaded through AutoModelForSequenceClassification, on a padded batch."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    import longtail.probe as probe
    from longtail.training import ModelArguments, load_tokenizer

    path = request.getfixturevalue(fixture)
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=path))
    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(path)
    encoder.config.pad_token_id = tokenizer.pad_token_id
    features = probe.embed_texts(
        encoder, tokenizer, TEXTS, max_length=32, pooling=pooling, batch_size=4, normalize=normalize,
        layers=layers,
    )  # fmt: skip
    if layers != (-1,):  # each hidden state's features side by side, the body's output (-1) as the default's
        size = encoder.config.hidden_size
        assert features.shape == (len(TEXTS), size * len(layers))
        last = probe.embed_texts(encoder, tokenizer, TEXTS, 32, pooling, batch_size=4, normalize=normalize)
        np.testing.assert_allclose(features[:, -size:], last, atol=1e-6)
        if layers[0] == 0:  # the embedding output, by hand: ModernBERT's embeddings module, mean over tokens
            with torch.no_grad():
                rows = [
                    encoder.embeddings(tokenizer(t, return_tensors="pt")["input_ids"])[0].mean(0)
                    for t in TEXTS
                ]
            by_hand = torch.nn.functional.normalize(torch.stack(rows), dim=-1).numpy()
            np.testing.assert_allclose(features[:, :size], by_hand, atol=1e-5)
        else:  # an inner layer: not the output's features
            assert np.abs(features[:, :size] - last).max() > 1e-3
    elif normalize:  # unit rows, and the same directions as the raw features
        raw = probe.embed_texts(encoder, tokenizer, TEXTS, max_length=32, pooling=pooling, batch_size=4)
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(features, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    logreg = fit_head(features)
    labels = ["a", "b", "c"]
    model = probe.ProbeForSequenceClassification.from_encoder(
        encoder, pooling, logreg.coef_, logreg.intercept_, labels, normalize=normalize, feature_layers=layers
    )
    model.save_pretrained(tmp_path)
    tokenizer.padding_side = "right"
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and not list(tmp_path.glob("*.bin"))

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is probe.ProbeForSequenceClassification
    assert reloaded.config.id2label == {0: "a", 1: "b", 2: "c"} and reloaded.config.pooling == pooling
    assert reloaded.config.normalize is normalize and reloaded.config.feature_layers == list(layers)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    batch = tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    np.testing.assert_allclose(logits.numpy(), logreg.decision_function(features), atol=1e-4)
    # a text alone scores as inside the padded batch (the pooling ignores padding)
    alone = tok(TEXTS[-1:], return_tensors="pt")
    with torch.no_grad():
        single = reloaded(**{k: alone[k] for k in ("input_ids", "attention_mask")}).logits
    np.testing.assert_allclose(single.numpy(), logits[-1:].numpy(), atol=1e-4)
    if fixture == "tiny_qwen2" and layers != (
        -1,
    ):  # a decoder-bodied probe reading an inner layer exports too
        from longtail.export import ExportArguments, export_onnx

        record = export_onnx(
            ExportArguments(model_dir=str(tmp_path), output_dir=str(tmp_path / "onnx"), parity_rows=8)
        )
        fp32 = record["variants"]["fp32"]
        assert fp32["status"] == "ok" and fp32["max_abs_logit_diff"] < 1e-4, fp32


def test_frozen_body_of_a_checkpoint_a_classifier_and_a_probe_run(tiny_modernbert, tmp_path):
    """What the probe embeds with: a checkpoint's body; a fine-tuned classifier folder's body (not the pretrained
    one); a probe-architecture folder's (LP-FT's output) body; an adapter folder is refused, naming merged/."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    import longtail.probe as probe

    def assert_body(body, reference):
        ref = reference.state_dict()
        assert body.state_dict().keys() == ref.keys()
        assert all(torch.equal(t, ref[k]) for k, t in body.state_dict().items())

    pretrained = AutoModel.from_pretrained(tiny_modernbert)
    assert_body(probe.load_frozen_body(tiny_modernbert), pretrained)
    torch.manual_seed(0)
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_modernbert, num_labels=3)
    with torch.no_grad():
        for p in classifier.model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "fine-tuned": its body is not the pretrained one
    classifier.save_pretrained(tmp_path / "ft")
    assert_body(probe.load_frozen_body(str(tmp_path / "ft")), classifier.model)
    prober = probe.ProbeForSequenceClassification.from_encoder(
        classifier.model, "mean", np.zeros((3, 32)), np.zeros(3), ["a", "b", "c"]
    )
    prober.save_pretrained(tmp_path / "lpft")
    assert_body(probe.load_frozen_body(str(tmp_path / "lpft")), classifier.model)
    (tmp_path / "ft" / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError) as info:
        probe.load_frozen_body(str(tmp_path / "ft"))
    assert str(info.value) == (  # the README's Bad input table: the error names the run's merged/ folder
        f"{tmp_path / 'ft'} is a LoRA/QLoRA adapter run (adapter_config.json): pass its merged model instead "
        f"({tmp_path / 'ft' / 'merged'}, written by --merge_adapter true or longtail.adapters.merge_adapter)"
    )


def test_pooling_ignores_padding_on_either_side():
    from longtail.probe import pool

    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "mean")[0].tolist() == [1.0, 2.0]  # mean of rows (0,1) and (2,3)
    assert pool(hidden, right, "last")[0].tolist() == [2.0, 3.0]
    assert pool(hidden, left, "last")[0].tolist() == [6.0, 7.0]
    assert pool(hidden, right, "cls")[1].tolist() == [8.0, 9.0]
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, right, "max")


def test_feature_layer_indices_name_hidden_states_and_the_last_is_the_output(
    tiny_modernbert, one_torch_thread
):
    """Of a 2-layer body: 2 and -1 are both the body's output (after ModernBERT's final norm, which its
    recorded last hidden state is not), 0 and -3 the embedding output; each mean-pooled by hand."""
    from transformers import AutoModel

    from longtail.probe import encoder_features

    encoder = AutoModel.from_pretrained(tiny_modernbert).eval()
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        out = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        output = torch.stack([out.last_hidden_state[0].mean(0), out.last_hidden_state[1, :2].mean(0)])
        embedded = torch.stack([out.hidden_states[0][0].mean(0), out.hidden_states[0][1, :2].mean(0)])
        assert (out.hidden_states[2] - out.last_hidden_state).abs().max() > 1e-3  # recorded before the norm
        for layers, expected in [((2,), output), ((-1,), output), ((0,), embedded), ((-3,), embedded)]:
            features = encoder_features(encoder, ids, mask, "mean", False, layers)
            torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)


def test_default_pooling_is_last_for_decoders_and_mean_otherwise():
    """`--pooling auto`: a decoder is read at its last token, whether its model type is a known causal LM or
    its config says `is_decoder` (a BERT built as a decoder); an encoder is mean-pooled."""
    from transformers import BertConfig, LlamaConfig, ModernBertConfig, Qwen2Config

    from longtail.probe import default_pooling

    assert default_pooling(Qwen2Config()) == default_pooling(LlamaConfig()) == "last"
    assert default_pooling(BertConfig(is_decoder=True)) == "last"
    assert default_pooling(BertConfig()) == default_pooling(ModernBertConfig()) == "mean"


def test_embedding_cache_reused_and_keyed(tiny_modernbert, tmp_path, one_torch_thread):
    from transformers import AutoModel

    from longtail.probe import cached_embeddings
    from longtail.training import ModelArguments, load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    encoder = AutoModel.from_pretrained(tiny_modernbert)
    args = (tmp_path, tiny_modernbert, encoder, tokenizer)
    first, key, reused = cached_embeddings(*args, TEXTS, 32, "mean")
    again, key2, reused2 = cached_embeddings(*args, TEXTS, 32, "mean")
    assert not reused and reused2 and key == key2
    np.testing.assert_array_equal(first, again)
    # order of rows follows the texts, even though batches are length-sorted
    np.testing.assert_allclose(cached_embeddings(*args, TEXTS[::-1], 32, "mean")[0], first[::-1], atol=1e-5)
    settings = [
        (32, "mean", "truncate"),
        (16, "mean", "truncate"),
        (32, "cls", "truncate"),
        (32, "mean", "windows"),
    ]
    keys = {cached_embeddings(*args, TEXTS, n, p, long_text)[1] for n, p, long_text in settings}
    assert len(keys) == 4 and len(list(tmp_path.glob("*.npy"))) == 5
    unit, key_unit, _ = cached_embeddings(*args, TEXTS, 32, "mean", normalize=True)  # its own cache entry
    assert key_unit not in keys and len(list(tmp_path.glob("*.npy"))) == 6
    both, key_layers, _ = cached_embeddings(*args, TEXTS, 32, "mean", layers=(0, -1))  # and the layers
    assert key_layers not in keys | {key_unit} and len(list(tmp_path.glob("*.npy"))) == 7
    np.testing.assert_allclose(both[:, -first.shape[1] :], first, atol=1e-6)
    # the default layers leave the key as it was before the option (caches made then stay valid)
    assert cached_embeddings(*args, TEXTS, 32, "mean", layers=[-1])[1:] == (key, True)
    np.testing.assert_allclose(unit, first / np.linalg.norm(first, axis=1, keepdims=True), atol=1e-6)


def test_embedding_cache_key_follows_another_tokenizer(tiny_modernbert, tmp_path, one_torch_thread):
    """`--tokenizer_name` other than the model: other token ids, other features, so its own cache entry (the key
    covered only the model folder, so a rerun with another tokenizer was served the first one's features)."""
    from conftest import train_wordpiece
    from transformers import AutoModel

    from longtail.probe import cached_embeddings
    from longtail.training import ModelArguments, load_tokenizer

    other = tmp_path / "other_tokenizer"
    train_wordpiece([t.upper() + " zz" for t in TEXTS], vocab_size=120).save_pretrained(other)
    encoder = AutoModel.from_pretrained(tiny_modernbert)
    own = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    swapped = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert, tokenizer_name=str(other)))
    cache = tmp_path / "cache"
    first, key, _ = cached_embeddings(cache, tiny_modernbert, encoder, own, TEXTS, 32, "mean")
    second, key2, reused = cached_embeddings(
        cache, tiny_modernbert, encoder, swapped, TEXTS, 32, "mean", tokenizer_name=str(other)
    )
    assert not reused and key2 != key and not np.allclose(first, second)
    # the model's own folder named as its tokenizer is the same key (caches made before stay valid)
    assert cached_embeddings(
        cache, tiny_modernbert, encoder, own, TEXTS, 32, "mean", tokenizer_name=tiny_modernbert
    )[1:] == (key, True)


def test_embedding_cache_key_follows_the_weights_content_not_only_their_size(tmp_path):
    """A model retrained in the same folder (weights of the same size, other bytes) gets a new cache key; the
    signature is each weight/config file's size and the SHA-256 of its first MiB; other files do not count."""
    import hashlib

    from longtail.probe import embedding_fingerprint, model_signature

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "model.safetensors").write_bytes(b"\x01" * 100)
    (folder / "README.md").write_text("card")
    assert model_signature(str(folder)) == {
        "model": str(folder.resolve()),
        "files": {
            "config.json": [8, hashlib.sha256(b'{"a": 1}').hexdigest()],
            "model.safetensors": [100, hashlib.sha256(b"\x01" * 100).hexdigest()],
        },
    }
    assert model_signature("org/some-model") == {"model": "org/some-model"}
    key = embedding_fingerprint(str(folder), TEXTS, 32, "mean")
    (folder / "README.md").write_text("another card")
    assert embedding_fingerprint(str(folder), TEXTS, 32, "mean") == key
    (folder / "model.safetensors").write_bytes(b"\x02" * 100)  # retrained: same size, other weights
    assert embedding_fingerprint(str(folder), TEXTS, 32, "mean") != key


def test_embedding_cache_key_follows_the_torch_and_transformers_versions(monkeypatch, tmp_path):
    """Features computed under another torch or transformers (other kernels, other model code) are not reused: both
    versions are in the key (it had neither, so an upgrade was served the old version's features)."""
    import longtail.probe as probe

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    key = probe.embedding_fingerprint(str(folder), TEXTS, 32, "mean")
    # the modules the key reads (loading ModernBERT can put another `transformers` module object in sys.modules)
    monkeypatch.setattr(probe.torch, "__version__", "1.0.0")
    assert probe.embedding_fingerprint(str(folder), TEXTS, 32, "mean") != key
    monkeypatch.undo()
    assert probe.embedding_fingerprint(str(folder), TEXTS, 32, "mean") == key
    monkeypatch.setattr(probe.transformers, "__version__", "4.0.0")
    assert probe.embedding_fingerprint(str(folder), TEXTS, 32, "mean") != key


def fake_hub_download(hub: Path, repo_id: str, source: str, commit: str) -> None:
    """`source`'s files as commit `commit` of Hub model `repo_id`, the `main` of the Hub cache `hub`: what
    downloading the model at that commit leaves (as copies where the Hub writes links to blobs)."""
    import shutil

    repo = hub / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def fake_hub_cache(monkeypatch, tmp_path: Path) -> Path:
    """An empty Hub cache in tmp_path, where huggingface_hub and Transformers look (offline, as in every test)."""
    import huggingface_hub.constants
    import transformers.utils.hub

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(transformers.utils.hub, "TRANSFORMERS_CACHE", str(hub))
    return hub


def test_embedding_cache_key_follows_the_hub_commit(tiny_modernbert, tmp_path, monkeypatch, one_torch_thread):
    """A Hub id is keyed with the commit it was loaded at (the key had the id alone, so a model updated on the Hub
    was served its old weights' features). Offline, on a Hub cache faked in tmp_path: the commit the key reads is
    the one Transformers loaded; a second run at that commit reuses the features, the model updated (a new commit
    in the cache) embeds again."""

    from longtail.probe import cached_embeddings, load_frozen_body
    from longtail.training import ModelArguments, load_tokenizer

    hub = fake_hub_cache(monkeypatch, tmp_path)
    old, new = "a" * 40, "b" * 40
    fake_hub_download(hub, "org/tiny", tiny_modernbert, old)
    tokenizer = load_tokenizer(ModelArguments(model_name_or_path="org/tiny"))
    encoder = load_frozen_body("org/tiny")
    assert encoder.config._commit_hash == old
    args = (tmp_path / "cache", "org/tiny", encoder, tokenizer, TEXTS, 32, "mean")
    first, key, reused = cached_embeddings(*args)
    assert not reused and cached_embeddings(*args)[1:] == (key, True)  # the same commit: reused
    # updated on the Hub, downloaded again by the next load
    fake_hub_download(hub, "org/tiny", tiny_modernbert, new)
    assert load_frozen_body("org/tiny").config._commit_hash == new
    _, key_new, reused_new = cached_embeddings(*args)
    assert key_new != key and not reused_new
    # a --tokenizer_name on the Hub is keyed with its commit too
    fake_hub_download(hub, "org/tok", tiny_modernbert, old)
    with_tok = cached_embeddings(*args, tokenizer_name="org/tok")[1]
    fake_hub_download(hub, "org/tok", tiny_modernbert, new)
    assert cached_embeddings(*args, tokenizer_name="org/tok")[1] not in (with_tok, key_new)

    from longtail.probe import hub_commit, model_signature

    # the commit the key reads is the one Transformers loaded
    assert hub_commit("org/tiny") == new
    assert model_signature("org/tiny") == {"model": "org/tiny", "commit": new}
    # nothing cached, or not a repo id: no commit (loading such a model fails first)
    assert hub_commit("org/not-cached") is None and hub_commit(str(tmp_path / "no" / "such" / "dir")) is None
    assert model_signature("org/not-cached") == {"model": "org/not-cached"}


def test_embedding_cache_key_of_a_hub_id_is_its_commits(monkeypatch, tmp_path):
    """Through the function the key reads (`hub_commit`, faked): two commits of one Hub id give two keys, the same
    commit the same key; a local folder's key never asks for one."""
    import longtail.probe as probe

    commit = {"value": "a" * 40}
    monkeypatch.setattr(probe, "hub_commit", lambda name: commit["value"])
    key = probe.embedding_fingerprint("org/m", TEXTS, 32, "mean")
    assert probe.embedding_fingerprint("org/m", TEXTS, 32, "mean") == key
    commit["value"] = "b" * 40
    assert probe.embedding_fingerprint("org/m", TEXTS, 32, "mean") != key
    commit["value"] = "a" * 40
    assert probe.embedding_fingerprint("org/m", TEXTS, 32, "mean") == key

    def no_hub(name):
        raise AssertionError(f"a local folder asked the Hub cache for {name}")

    monkeypatch.setattr(probe, "hub_commit", no_hub)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    assert set(probe.model_signature(str(folder))) == {"model", "files"}
    probe.embedding_fingerprint(str(folder), TEXTS, 32, "mean", tokenizer_name=str(folder))


def test_hub_commit_of_a_repo_with_no_config_json(tmp_path, monkeypatch):
    """A tokenizer's Hub repo has no config.json: its commit is read off tokenizer_config.json, also once the Hub
    cache has recorded config.json as absent (`.no_exist/<commit>/config.json`, which `try_to_load_from_cache`
    answers with a marker object, not a path)."""
    import huggingface_hub.constants

    from longtail.probe import hub_commit, model_signature

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    files = tmp_path / "tokenizer"
    files.mkdir()
    (files / "tokenizer_config.json").write_text("{}")
    commit = "c" * 40
    fake_hub_download(hub, "org/tokenizer", files, commit)
    assert hub_commit("org/tokenizer") == commit
    absent = hub / "models--org--tokenizer" / ".no_exist" / commit
    absent.mkdir(parents=True)
    (absent / "config.json").write_text("")
    assert hub_commit("org/tokenizer") == commit
    assert model_signature("org/tokenizer") == {"model": "org/tokenizer", "commit": commit}


def test_embedding_pads_on_the_right_whatever_the_tokenizer_says(tiny_modernbert, one_torch_thread):
    """A left-padding tokenizer: `cls` still reads each text's first token (each text embedded alone, by
    hand), and the tokenizer's own padding side is left as it was."""
    from transformers import AutoModel

    from longtail.probe import embed_texts
    from longtail.training import ModelArguments, load_tokenizer

    tok = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    encoder = AutoModel.from_pretrained(tiny_modernbert).eval()
    tok.padding_side = "left"
    features = embed_texts(encoder, tok, TEXTS, 32, "cls", batch_size=len(TEXTS))
    assert tok.padding_side == "left"
    with torch.no_grad():
        ids = [tok(t, return_tensors="pt")["input_ids"] for t in TEXTS]
        alone = [encoder(input_ids=i).last_hidden_state[0, 0].numpy() for i in ids]
    np.testing.assert_allclose(features, np.stack(alone), atol=1e-5)


def test_probe_run_config_checks_the_labels_and_their_order(tmp_path):
    from longtail.probe import probe_run_config

    config = {"model_type": "longtail_probe", "id2label": {"0": "a", "1": "b"}, "pooling": "cls"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert probe_run_config(tmp_path, ["a", "b"]) == config  # read before any weight: there is none here
    with pytest.raises(ValueError, match="same labels in another order"):  # the head's rows would be swapped
        probe_run_config(tmp_path, ["b", "a"])
    with pytest.raises(ValueError, match=r"missing from the probe: \['c'\]"):
        probe_run_config(tmp_path, ["a", "b", "c"])
    # a run capped by --max_train_samples loses classes: only the list that holds something, and the cap named
    with pytest.raises(ValueError) as err:
        probe_run_config(tmp_path, ["a"])
    assert str(err.value) == (
        f"--head_init_from {tmp_path}: the probe's labels differ from this run's (2 vs 1; only in the probe: ['b']). "
        "Train both on the same data options, row caps such as --max_train_samples included (--split_indices with "
        "the probe's splits.json reproduces its split)."
    )


def test_settle_tokenizer_leaves_truncation_at_max_length_and_no_padding(tiny_modernbert):
    """all-MiniLM-L6-v2's tokenizer.json pads to 128 and truncates at 128: the saved probe's says neither."""
    from longtail.probe import settle_tokenizer
    from longtail.training import ModelArguments, load_tokenizer

    tok = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    backend = tok.backend_tokenizer
    backend.enable_padding(length=128, pad_id=tok.pad_token_id, pad_token=tok.pad_token)
    backend.enable_truncation(max_length=128)
    settle_tokenizer(tok, 16)
    assert backend.padding is None
    assert backend.truncation == {
        "max_length": 16,
        "stride": 0,
        "strategy": "longest_first",
        "direction": "right",
    }


def test_text_windows_cover_the_whole_text(tiny_modernbert):
    from longtail.inference import text_windows
    from longtail.training import ModelArguments, load_tokenizer

    tok = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    long, short = TEXTS[2], TEXTS[-1]
    windows = text_windows(tok, [long, short], max_length=8)
    content = tok(long, add_special_tokens=False)["input_ids"]
    n_long = -(-len(content) // 6)  # 8 tokens = [CLS] + 6 + [SEP]
    assert n_long >= 3 and windows.owner.tolist() == [0] * n_long + [1]
    assert all(
        w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id and len(w) <= 8 for w in windows.input_ids
    )
    assert sum((w[1:-1] for w in windows.input_ids[:n_long]), []) == content  # every token, once, in order
    # a text that fits is one window: exactly its truncated encoding
    assert windows.input_ids[-1] == tok(short, truncation=True, max_length=8)["input_ids"]
    # per_row: the token-weighted mean of the windows' values
    values = np.arange(len(windows.owner), dtype=float)[:, None]
    weights = windows.tokens
    expected = (values[:n_long, 0] * weights[:n_long]).sum() / weights[:n_long].sum()
    np.testing.assert_allclose(windows.per_row(values)[:, 0], [expected, n_long], rtol=1e-12)
    with pytest.raises(ValueError, match="max_length 2 leaves no room"):
        text_windows(tok, [long], max_length=2)


def test_windowed_embedding_is_the_token_weighted_mean_of_window_embeddings(
    tiny_modernbert, one_torch_thread
):
    from transformers import AutoModel

    from longtail.probe import embed_texts
    from longtail.training import ModelArguments, load_tokenizer

    tok = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    encoder = AutoModel.from_pretrained(tiny_modernbert)
    long = TEXTS[2]
    features = embed_texts(encoder, tok, [long, TEXTS[-1]], 8, "mean", batch_size=2, long_text="windows")
    ids = tok(long, add_special_tokens=False)["input_ids"]
    parts, sizes = [], []
    for start in range(0, len(ids), 6):  # each window embedded on its own, unpadded
        window = torch.tensor([[tok.cls_token_id, *ids[start : start + 6], tok.sep_token_id]])
        with torch.no_grad():
            parts.append(encoder(input_ids=window).last_hidden_state.mean(1)[0].numpy())
        sizes.append(window.shape[1])
    np.testing.assert_allclose(features[0], np.average(parts, axis=0, weights=sizes), atol=1e-5)
    # normalize: each window's feature is made unit-length before the average (so a linear head's logits
    # are still the average of the windows' logits: what predict computes)
    unit = embed_texts(encoder, tok, [long], 8, "mean", batch_size=2, long_text="windows", normalize=True)
    units = [x / np.linalg.norm(x) for x in parts]
    np.testing.assert_allclose(unit[0], np.average(units, axis=0, weights=sizes), atol=1e-5)
    assert np.linalg.norm(unit[0]) < 1 - 1e-3  # the average of unit windows is not itself renormalised
    truncated = embed_texts(encoder, tok, [long, TEXTS[-1]], 8, "mean", batch_size=2)
    np.testing.assert_allclose(features[1], truncated[1], atol=1e-6)  # a text that fits: the same either way
    assert np.abs(features[0] - truncated[0]).max() > 1e-3  # and a long one reads more than its first window
    with pytest.raises(ValueError, match="long_text"):
        embed_texts(encoder, tok, [long], 8, "mean", long_text="chunks")


@pytest.fixture(scope="module")
def probe_run(tiny_modernbert, tmp_path_factory):
    """One probe_encoder run on the synthetic CSVs (shared by the tests below)."""
    import functools

    import longtail.report as report

    tmp = tmp_path_factory.mktemp("probe")
    train, test = synthetic_files(tmp)
    out = tmp / "probe"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:  # the module-scoped twin of the fast_bootstrap fixture
            patch.setattr(report, "score_split", functools.partial(report.score_split, n_resamples=100))
            # truncate: the tests below feed the saved model truncated batches (windows have their own test)
            # a fixed post-hoc tau (the YAML has none): the saved heads and the refit below carry a real shift
            args = probe_args(
                tiny_modernbert, train, test, out, tmp / "cache", "--long_text", "truncate",
                "--posthoc_logit_adjustment", "0.5",
            )  # fmt: skip
            metrics = load_recipe("probe_encoder").main(args)
    finally:
        torch.set_num_threads(threads)
    return {"out": out, "metrics": metrics, "train": train, "test": test, "tmp": tmp}


def probe_args(model, train, test, out, cache, *extra):
    return [
        "--config", str(REPO / "recipes/configs/probe_encoder.yaml"),
        "--model_name_or_path", model, "--train_file", train, "--test_file", test,
        "--text_column", "Consumer complaint narrative", "--label_taxonomy", "none",
        "--output_dir", str(out), "--do_predict", "--max_length", "64",
        "--embedding_cache_dir", str(cache), "--grid_C", "0.1", "10", *extra,
    ]  # fmt: skip


def test_probe_recipe_end_to_end(probe_run, fast_bootstrap, one_torch_thread):
    out, metrics = probe_run["out"], probe_run["metrics"]
    for name in ["eval_results.json", "test_results.json", "predictions_test.npz", "config.json", *RUN_FILES]:
        assert (out / name).is_file(), name
    for split in ("eval", "test"):
        assert REQUIRED_KEYS <= json.loads((out / f"{split}_results.json").read_text()).keys()
    # the chosen setting is the grid's best on validation, and the report says so
    config = json.loads((out / "run_config.json").read_text())
    grid = config["grid"]
    assert len(grid) == 2 * 3
    best = max(grid, key=lambda r: r["val_macro_f1"])
    assert metrics["validation"]["macro_f1"] == pytest.approx(best["val_macro_f1"], abs=1e-12)
    report = (out / "report.md").read_text()
    assert "Validation grid" in report and "test scored once" in report and "sqrt_inverse" in report
    assert "each with the fixed post-hoc tau 0.5" in report
    row = f"| {best['C']} | {best['class_weight']} | 0.5 | {best['val_macro_f1']:.4f} **(chosen)**"
    assert row in report and "validation macro-F1 at tau 0" not in report  # no tau 0 in a fixed-tau grid
    assert {r["tau"] for r in grid} == {0.5} and config["probe"]["posthoc_logit_adjustment"] == "0.5"

    # the saved folder is one model whose softmax reproduces the reported validation probabilities
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import longtail.probe  # noqa: F401
    from longtail.data import DataArguments, prepare_data
    from longtail.report import load_predictions

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    data = prepare_data(
        DataArguments(
            train_file=probe_run["train"],
            test_file=probe_run["test"],
            text_column="Consumer complaint narrative",
            label_taxonomy="none",
        )
    )

    def probs_of(split):
        texts = data.splits[split]["text"].tolist()[:40]
        batch = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            return model(**batch).logits.softmax(-1).numpy()

    # the config refits the chosen head on train + validation: the saved model is the one that scored test;
    # validation was scored by the train-only head, kept beside it for LP-FT
    np.testing.assert_allclose(
        probs_of("test"), load_predictions(out / "predictions_test.npz")["probs"][:40], atol=1e-4
    )
    assert "Refit" in report and config["refit"]["refit_with_validation"]
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(out / "selection_head.safetensors")), strict=False)
    saved = load_predictions(out / "predictions_validation.npz")
    np.testing.assert_allclose(probs_of("validation"), saved["probs"][:40], atol=1e-4)
    assert model.config.id2label[0] == data.label_names[0]
    assert quick_start(out / "README.md").startswith(REGISTER_LINE + "\nfrom transformers import pipeline\n")
    assert (out / "README.md").read_text().count("## Quick start") == 1


def test_refit_helpers_by_hand():
    """label_counts keys the counts by class id (a class with no rows is absent, not a shift of the later ids);
    train_and_validation puts train first; refit_note says how many rows of each."""
    from types import SimpleNamespace

    import pandas as pd

    from longtail.refit import label_counts, refit_note, train_and_validation

    assert label_counts(np.array([5, 0, 5, 3, 5])) == {0: 1, 3: 1, 5: 3}
    splits = {
        "train": pd.DataFrame({"label_id": [0, 1, 1]}, index=[7, 8, 9]),
        "validation": pd.DataFrame({"label_id": [2, 0]}, index=[0, 1]),
        "test": pd.DataFrame({"label_id": [1]}),
    }
    data = SimpleNamespace(splits=splits)
    both = train_and_validation(data)
    assert both["label_id"].tolist() == [0, 1, 1, 2, 0] and both.index.tolist() == [0, 1, 2, 3, 4]
    assert refit_note(data).startswith("the chosen setting was refit on train + validation (3 + 2 rows)")


def test_probe_rerun_reuses_cached_embeddings(probe_run, tiny_modernbert, fast_bootstrap, one_torch_thread):
    """A rerun without the refit: cached features; same validation; its saved head is the first run's
    train-only head; and the first run's saved head is that setting fit again on train + validation."""
    from safetensors.torch import load_file
    from sklearn.linear_model import LogisticRegression

    from longtail.data import DataArguments, prepare_data
    from longtail.losses import class_weights
    from longtail.report import load_predictions

    out, out2 = probe_run["out"], probe_run["tmp"] / "probe2"
    metrics = load_recipe("probe_encoder").main(
        probe_args(tiny_modernbert, probe_run["train"], probe_run["test"], out2, probe_run["tmp"] / "cache",
                   "--long_text", "truncate", "--refit_with_validation", "false", "--posthoc_logit_adjustment", "0.5")
    )  # fmt: skip
    assert "train reused, validation reused, test reused" in (out2 / "report.md").read_text()
    for key in ("macro_f1", "accuracy", "nll"):
        assert metrics["validation"][key] == probe_run["metrics"]["validation"][key]
    head = load_file(str(out / "selection_head.safetensors"))
    plain, refit = load_file(str(out2 / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert not (out2 / "selection_head.safetensors").exists()
    for name in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(plain[name], head[name])
        assert not torch.allclose(refit[name], head[name], atol=1e-3)

    # the refit, by hand: sklearn on the train + validation features with the chosen C and weighting
    config = json.loads((out / "run_config.json").read_text())
    chosen = max(config["grid"], key=lambda r: r["val_macro_f1"])
    data = prepare_data(
        DataArguments(train_file=probe_run["train"], test_file=probe_run["test"],
                      text_column="Consumer complaint narrative", label_taxonomy="none")
    )  # fmt: skip
    cache = {p.stat().st_size: np.load(p) for p in (probe_run["tmp"] / "cache").glob("*.npy")}
    feats = {s: next(f for f in cache.values() if len(f) == len(data.splits[s])) for s in data.splits}
    assert len({len(d) for d in data.splits.values()}) == 3  # the split sizes tell the cache files apart
    x = np.concatenate([feats["train"], feats["validation"]])
    y = np.concatenate([data.splits[s]["label_id"].to_numpy() for s in ("train", "validation")])
    ids, counts = np.unique(y, return_counts=True)
    scheme = chosen["class_weight"]  # whichever the grid chose: the tiny encoder's weights are random
    if scheme in ("none", "balanced"):
        weight = None if scheme == "none" else "balanced"
    else:
        counts_by_id = dict(zip(ids.tolist(), counts.tolist()))
        weight = dict(enumerate(class_weights(counts_by_id, len(data.label_names), scheme).tolist()))
    mean, scale = x.mean(0), x.std(0) + 1e-6
    logreg = LogisticRegression(C=chosen["C"], class_weight=weight, max_iter=1000, tol=1e-4, random_state=42)
    logreg.fit((x - mean) / scale, y)
    # the chosen post-hoc tau, with the prior of the rows the refit saw (every label has some: no gaps)
    assert list(logreg.classes_) == list(range(len(data.label_names)))
    prior = np.log(counts / counts.sum())
    logits = logreg.decision_function((feats["test"] - mean) / scale) - chosen["tau"] * prior
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    saved = load_predictions(out / "predictions_test.npz")["probs"]
    np.testing.assert_allclose(saved, expected, atol=1e-5)


def test_probe_rerun_on_cached_features_writes_the_same_run(
    probe_run, tiny_modernbert, fast_bootstrap, one_torch_thread
):
    """The same command again, every split's features read from the cache: the same model folder and results,
    byte for byte (tokenizer.json included: it used to keep the original tokenizer's truncation and padding when
    nothing was embedded, and the embedding call's max_length otherwise). Only timings and the folder name differ."""
    out, again = probe_run["out"], probe_run["tmp"] / "probe_again"
    load_recipe("probe_encoder").main(
        probe_args(tiny_modernbert, probe_run["train"], probe_run["test"], again, probe_run["tmp"] / "cache",
                   "--long_text", "truncate", "--posthoc_logit_adjustment", "0.5")
    )  # fmt: skip
    assert "train reused, validation reused, test reused" in (again / "report.md").read_text()
    timed = {"README.md", "report.md", "run_config.json"}  # runtimes, the output folder
    files = sorted(p.name for p in out.iterdir() if p.is_file() and p.name not in timed)
    assert {"tokenizer.json", "model.safetensors", "predictions_test.npz", "temperature.json"} <= set(files)
    assert sorted(p.name for p in again.iterdir() if p.is_file() and p.name not in timed) == files
    assert [f for f in files if (out / f).read_bytes() != (again / f).read_bytes()] == []
    saved = json.loads((again / "tokenizer.json").read_text())
    assert saved["padding"] is None and saved["truncation"]["max_length"] == 64  # the run's --max_length


def test_probe_rejects_bad_options(tiny_modernbert, tiny_bert, tmp_path, capsys):
    recipe = load_recipe("probe_encoder")
    train, test = synthetic_files(tmp_path)
    with pytest.raises(ValueError, match="grid_class_weight.*inverse"):
        recipe.main(
            probe_args(
                tiny_modernbert, train, test, tmp_path / "o", tmp_path, "--grid_class_weight", "inverse"
            )
        )
    with pytest.raises(ValueError, match="pooling"):
        recipe.main(probe_args(tiny_modernbert, train, test, tmp_path / "o", tmp_path, "--pooling", "max"))
    with pytest.raises(ValueError, match=f"max_length 65 exceeds the 64 positions of {tiny_bert}"):
        recipe.main(probe_args(tiny_bert, train, test, tmp_path / "o", tmp_path, "--max_length", "65"))
    with pytest.raises(ValueError) as info:  # the allowed values named
        recipe.main(probe_args(tiny_modernbert, train, test, tmp_path / "o", tmp_path, "--long_text", "all"))
    assert str(info.value) == "--long_text must be one of ('truncate', 'windows'), got 'all'"
    # the tiny body has 2 layers: hidden states 0..2, or -3..-1; -1 and 2 are the same one
    with pytest.raises(ValueError, match="feature_layers needs at least one"):  # e.g. `feature_layers: []`
        recipe.ProbeArguments(feature_layers=[])
    # -1 embedded no text (a head fit on all-zero features, which were cached), 0 was a range() traceback
    for size in (0, -1):
        with pytest.raises(ValueError, match=f"--embedding_batch_size must be >= 1, got {size}"):
            recipe.ProbeArguments(embedding_batch_size=size)
    # a cache "folder" that is a file (or under one): FileExistsError once the train split was embedded
    (tmp_path / "a_file").write_text("x")
    for cache in ("a_file", "a_file/sub"):
        with pytest.raises(ValueError, match=r"--embedding_cache_dir .*: .*a_file is a file, not a folder"):
            recipe.ProbeArguments(embedding_cache_dir=str(tmp_path / cache))
    for bad in ({"tol": -1e-4}, {"max_iter": 0}):  # before any embedding; max_iter 0 would fit nothing
        with pytest.raises(ValueError, match="--tol must be >= 0 and --max_iter >= 1, got tol="):
            recipe.ProbeArguments(**bad)
    for layers in (["0", "3"], ["-1", "2"], ["-4"]):
        with pytest.raises(
            ValueError, match=r"feature_layers must be distinct hidden-state indices in \[-3, 2\]"
        ):
            recipe.main(
                probe_args(
                    tiny_modernbert, train, test, tmp_path / "o", tmp_path, "--feature_layers", *layers
                )
            )
    with pytest.raises(ValueError, match="posthoc_logit_adjustment.*'some'"):
        recipe.main(
            probe_args(
                tiny_modernbert, train, test, tmp_path / "o", tmp_path, "--posthoc_logit_adjustment", "some"
            )
        )
    # Trainer options the probe shares through ModelArguments but has no use for: refused, not ignored
    for extra in (["--early_stopping_patience", "2"], ["--mixed_precision", "no"]):
        with pytest.raises(SystemExit):
            recipe.main(probe_args(tiny_modernbert, train, test, tmp_path / "refused", tmp_path, *extra))
        assert f"{extra[0]}: for the Trainer recipes only" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()  # refused before the output folder is made


def test_probe_grid_options_empty_or_repeated_are_refused_before_any_embedding():
    """`grid_class_weight: []` in a YAML passed every check and stopped the run once every split was embedded
    (AttributeError: 'NoneType' object has no attribute 'classes_'); a repeated C or weighting was fit twice and
    listed twice in the report's grid. Both are one-line errors when the options are read."""
    recipe = load_recipe("probe_encoder")
    with pytest.raises(ValueError, match=r"grid_class_weight needs at least one of \('none', 'balanced'"):
        recipe.ProbeArguments(grid_class_weight=[])
    with pytest.raises(ValueError, match=r"grid_C lists 0.1 more than once: \[0.1, 1.0, 0.1\]"):
        recipe.ProbeArguments(grid_C=[0.1, 1.0, 0.1])
    with pytest.raises(ValueError, match=r"grid_class_weight lists none more than once: \['none', 'none'\]"):
        recipe.ProbeArguments(grid_class_weight=["none", "none"])
    assert recipe.ProbeArguments(grid_C=[0.1, 1.0], grid_class_weight=["balanced"]).grid_C == [0.1, 1.0]


def imbalanced_blobs(seed: int = 0):
    """Three 2-D classes: 300 / 300 / 12 training rows, the rare one overlapping class 0; a balanced validation."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [4.0, 0.0], [1.2, 0.0]])

    def draw(sizes):
        y = np.repeat(np.arange(3), sizes)
        return centres[y] + rng.normal(size=(len(y), 2)), y

    return draw([300, 300, 12]), draw([60, 60, 60])


def test_probe_grid_chooses_tau_with_each_setting_and_folds_it_into_the_head():
    """Each C x weighting row is scored at its best tau (recomputed here by hand from sklearn's logits); with
    no weighting the rare class needs the shift (tau > 0 wins), and the folded head gives exactly those logits.
    'none' keeps tau at 0."""
    from longtail.metrics import macro_f1

    recipe = load_recipe("probe_encoder")
    (x_train, y_train), (x_val, y_val) = imbalanced_blobs()
    args = recipe.ProbeArguments(grid_C=[1.0], grid_class_weight=["none"], posthoc_logit_adjustment="auto")
    logreg, rows, chosen = recipe.fit_grid(args, x_train, y_train, x_val, y_val, 3)
    prior = np.log(np.array([300, 300, 12]) / 612)
    by_tau = {
        t: macro_f1(y_val, (logreg.decision_function(x_val) - t * prior).argmax(1))
        for t in (0, 0.25, 0.5, 0.75, 1)
    }
    assert by_tau[0] < max(by_tau.values())  # the case needs a shift
    best_tau = min(t for t, f in by_tau.items() if f == max(by_tau.values()))
    assert chosen["tau"] == best_tau > 0 and chosen["val_macro_f1"] == pytest.approx(
        by_tau[best_tau], abs=1e-12
    )
    assert chosen["val_macro_f1_unshifted"] == pytest.approx(by_tau[0], abs=1e-12)
    section = recipe.grid_section(rows, chosen, "mean", {}, "truncate", 64, posthoc=True)
    header = "| C | class weighting | tau | validation macro-F1 | validation accuracy | validation macro-F1 at tau 0 |"
    assert header in section
    assert f"| 1.0 | none | {chosen['tau']} | {by_tau[best_tau]:.4f} **(chosen)** |" in section

    (weight, bias), _ = recipe.fit_head(
        args, {**chosen}, x_train, y_train, 3
    )  # raw features, shift folded in
    mean, scale = x_train.mean(0), x_train.std(0) + 1e-6
    refit = recipe.head_classifier(args, 1.0, "none", y_train, 3).fit((x_train - mean) / scale, y_train)
    expected = refit.decision_function((x_val - mean) / scale) - best_tau * prior
    np.testing.assert_allclose(x_val @ weight.T + bias, expected, atol=1e-4)

    args = recipe.ProbeArguments(grid_C=[1.0], grid_class_weight=["none"], posthoc_logit_adjustment="none")
    _, rows, chosen = recipe.fit_grid(args, x_train, y_train, x_val, y_val, 3)
    assert chosen["tau"] == 0 and chosen["val_macro_f1"] == pytest.approx(by_tau[0], abs=1e-12)


def test_probe_grid_records_solver_iterations_and_reports_fits_that_stop_at_max_iter(
    tiny_modernbert, tmp_path, capsys, fast_bootstrap, one_torch_thread
):
    """Each grid row (and the report's table) carries the solver's iterations, equal to scikit-learn's own count;
    a fit that ran out of them, the grid's or the refit's, is named in the log and the report, since its scores
    depend on where lbfgs stopped."""
    recipe = load_recipe("probe_encoder")
    (x_train, y_train), (x_val, y_val) = imbalanced_blobs()
    args = recipe.ProbeArguments(grid_C=[0.1, 1.0], grid_class_weight=["balanced"])
    _, rows, chosen = recipe.fit_grid(args, x_train, y_train, x_val, y_val, 3)
    assert [r["iterations"] for r in rows] == [  # the solver's own count, fit again by hand
        recipe.head_classifier(args, C, "balanced", y_train, 3).fit(x_train, y_train).n_iter_[0]
        for C in (0.1, 1.0)
    ]
    assert all(0 < r["iterations"] < args.max_iter for r in rows)
    section = recipe.grid_section(rows, chosen, "mean", {}, "truncate", 64)
    assert "| solver iterations |" in section and f"| {chosen['iterations']} |" in section

    out = tmp_path / "short"
    train, test = synthetic_files(tmp_path)
    run = probe_args(
        tiny_modernbert, train, test, out, tmp_path / "cache", "--long_text", "truncate",
        "--grid_class_weight", "balanced", "--max_iter", "2",
    )  # fmt: skip
    recipe.main(run)
    log, report = capsys.readouterr().err, (out / "report.md").read_text()
    stopped = "C=0.1, class_weight=balanced; C=10.0, class_weight=balanced; refit=True, C="
    assert "3 of 3 fits stopped at max_iter 2 before the solver's tolerance was met (" + stopped in log
    assert "**3 fit(s) stopped at max_iter** before meeting it (" + stopped in report
    assert [r["iterations"] for r in json.loads((out / "run_config.json").read_text())["grid"]] == [2, 2]
    recipe.main([*run, "--output_dir", str(tmp_path / "long"), "--max_iter", "1000"])
    assert "stopped at max_iter" not in capsys.readouterr().err
    assert (
        "at most 1000 iterations; every fit met the tolerance."
        in (tmp_path / "long" / "report.md").read_text()
    )


# ---------------------------------------------------------------------------------------------
# LP-FT
# ---------------------------------------------------------------------------------------------


def test_head_warmup_freezes_the_body_then_trains_everything(tiny_modernbert, tmp_path, one_torch_thread):
    from transformers import TrainingArguments

    from longtail.data import DataArguments, prepare_data
    from longtail.losses import LossArguments
    from longtail.lpft import head_parameters, warm_up_head
    from longtail.training import (
        ModelArguments,
        load_classifier,
        load_tokenizer,
        long_tail_trainer,
        tokenize_splits,
    )

    train, test = synthetic_files(tmp_path)
    data = prepare_data(
        DataArguments(
            train_file=train,
            text_column="Consumer complaint narrative",
            label_taxonomy="none",
            max_train_samples=96,
        )
    )
    model_args = ModelArguments(model_name_or_path=tiny_modernbert)
    tokenizer = load_tokenizer(model_args)
    model = load_classifier(model_args, data.label_names, tokenizer)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), num_train_epochs=1, learning_rate=5e-3, per_device_train_batch_size=16,
        report_to=[], save_strategy="no", eval_strategy="no", logging_steps=50, seed=0,
    )  # fmt: skip
    datasets = tokenize_splits(data, tokenizer, 32, args)
    trainer = long_tail_trainer(model, args, data, datasets, tokenizer, LossArguments(), model_args)
    head = head_parameters(model)
    assert set(head) == {"head.dense.weight", "head.norm.weight", "classifier.weight", "classifier.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    metrics = warm_up_head(trainer, epochs=1, learning_rate=1e-2)
    assert metrics["head_warmup_loss"] > 0
    after = dict(model.named_parameters())
    body = [n for n in before if n not in head]
    assert body and all(torch.equal(before[n], after[n]) for n in body)  # frozen during the warm-up
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])  # the head learned
    assert all(p.requires_grad for p in model.parameters())  # everything trainable again

    warmed = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    moved = [n for n in body if not torch.equal(warmed[n], dict(model.named_parameters())[n])]
    assert len(moved) == len(body)  # then the whole body fine-tunes


def test_lpft_train_warms_the_head_up_at_its_own_epochs_and_rate_and_not_on_resume(tmp_path):
    """`lpft.train` with a stand-in Trainer (no training): the warm-up is a second Trainer of the same class on
    the same rows, for --head_warmup_epochs at --head_warmup_learning_rate with only the head trainable, in its
    own folder; then `on_start`, then the configured run with everything trainable. A resume skips the warm-up."""
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from longtail.lpft import LPFTArguments, train

    class Net(torch.nn.Module):
        base_model_prefix = "body"

        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(2, 2)
            self.classifier = torch.nn.Linear(2, 3)

    events, made = [], []

    class StandIn:
        def __init__(self, model, args, **parts):
            self.model, self.args, self.parts = model, args, parts
            self.__dict__.update(parts)  # train_dataset, loss_args, ... as Trainer attributes
            made.append(self)

        def train(self, resume_from_checkpoint=None):
            a = self.args
            trainable = sorted(n for n, p in self.model.named_parameters() if p.requires_grad)
            events.append((a.output_dir, a.num_train_epochs, a.learning_rate, a.max_steps, a.warmup_steps,
                           trainable, resume_from_checkpoint))  # fmt: skip
            return SimpleNamespace(metrics={"train_loss": 0.5, "epoch": float(a.num_train_epochs)})

    run = str(tmp_path / "run")
    args = TrainingArguments(
        output_dir=run, num_train_epochs=3, max_steps=10, learning_rate=5e-5, warmup_steps=4, report_to=[]
    )
    parts = dict(
        train_dataset="rows", processing_class="tok", data_collator="pad", loss_args="ce", train_counts={0: 1}
    )
    trainer = StandIn(Net(), args, **parts)
    lpft = LPFTArguments(head_warmup_epochs=2.0, head_warmup_learning_rate=1e-2, layer_lr_decay=0.5)
    result, warm = train(trainer, lpft, on_start=lambda model: events.append(("start", model)))
    everything = ["body.bias", "body.weight", "classifier.bias", "classifier.weight"]
    assert events == [
        (
            str(tmp_path / "run" / "head_warmup"),
            2.0,
            1e-2,
            -1,
            0,
            ["classifier.bias", "classifier.weight"],
            None,
        ),
        ("start", trainer.model),
        (run, 3, 5e-5, 10, 4, everything, None),
    ]
    assert len(made) == 2 and made[1].model is trainer.model and made[1].parts == parts
    assert warm == {"head_warmup_loss": 0.5, "head_warmup_epoch": 2.0}
    assert result.metrics == {"train_loss": 0.5, "epoch": 3.0, **warm} and trainer.layer_lr_decay == 0.5
    events.clear()
    result, warm = train(trainer, lpft, resume_from_checkpoint="run/checkpoint-5")
    assert events == [(run, 3, 5e-5, 10, 4, everything, "run/checkpoint-5")] and warm == {}
    for bad in ({"head_warmup_epochs": -1.0}, {"head_warmup_learning_rate": 0.0}):
        with pytest.raises(ValueError, match="must be"):
            LPFTArguments(**bad)


def test_selection_note_names_everything_validation_chose():
    from longtail.lpft import LPFTArguments, selection_note

    lpft = LPFTArguments(head_init_from="/runs/probe_a", head_warmup_epochs=2, layer_lr_decay=0.8)
    note = selection_note(
        "best checkpoint by validation macro-F1; test scored once at the end", lpft, 0.5, True, 30, 0.75
    )
    assert note == (
        "best checkpoint by validation macro-F1; head: the probe's (probe_a; its settings chosen on validation); "
        "head warm-up: 2 fixed epoch(s), body frozen; layer-wise lr decay 0.8: fixed; "
        "WiSE-FT alpha 0.75: best validation macro-F1; post-hoc tau 0.5: best validation macro-F1; "
        "temperature: fitted on half of validation, kept only if it lowers NLL on the other half "
        "(temperature.json, see Temperature scaling); test scored once at the end"
    )
    bare = selection_note("last epoch", LPFTArguments(), 0.5, None, 5)
    assert bare == "last epoch; temperature: none fitted (5 validation rows, 20 needed)"


def test_full_ft_from_probe_with_warmup_end_to_end(
    probe_run, tiny_modernbert, tmp_path, fast_bootstrap, one_torch_thread
):
    """LP-FT through the recipe: the probe's model (its fitted head) + one warm-up epoch + fine-tuning."""
    out = tmp_path / "lpft"
    recipe = load_recipe("full_ft_encoder")
    args = encoder_args(
        tiny_modernbert, probe_run["train"], probe_run["test"], out, "--head_init_from", str(probe_run["out"])
    )
    metrics = recipe.main([*args, "--head_warmup_epochs", "1", "--num_train_epochs", "1"])
    assert REQUIRED_KEYS <= metrics["test"].keys()
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "longtail_probe" and config["pooling"] == "mean"
    report = (out / "report.md").read_text()
    assert (
        "head: the probe's" in report and "head warm-up: 1 fixed epoch" in report and "temperature" in report
    )
    train_results = json.loads((out / "train_results.json").read_text())
    assert train_results["head_warmup_loss"] > 0
    # the warm-up saves nothing: its folder is not left empty in the run
    assert not (out / "head_warmup").exists()
    # its card's quick start runs as written in a fresh Python: it imports longtail.probe first (it did not, and
    # Transformers did not know model_type longtail_probe)
    assert quick_start(out / "README.md").startswith(REGISTER_LINE)
    assert "'label': " in run_quick_start(out / "README.md", tmp_path)

    # a new probe on the fine-tuned body (classifier re-training): the recipe embeds with LP-FT's body
    from safetensors.torch import load_file

    again = tmp_path / "reprobe"
    args = probe_args(
        str(out), probe_run["train"], probe_run["test"], again, tmp_path / "cache", "--long_text", "truncate"
    )
    load_recipe("probe_encoder").main([*args, "--refit_with_validation", "false"])
    weights = {d: load_file(str(d / "model.safetensors")) for d in (probe_run["out"], out, again)}
    body = [n for n in weights[out] if n.startswith("encoder.")]
    assert body and all(torch.equal(weights[again][n], weights[out][n]) for n in body)
    assert not all(torch.equal(weights[again][n], weights[probe_run["out"]][n]) for n in body)
    assert json.loads((again / "config.json").read_text())["encoder_config"]["model_type"] == "modernbert"


def test_wise_ft_interpolates_start_and_fine_tuned_weights():
    from longtail.wise_ft import WiseFTArguments, interpolate

    start = {"w": torch.tensor([0.0, 2.0]), "b": torch.tensor([4.0])}
    end = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([8.0])}
    mid = interpolate(start, end, 0.25)
    assert torch.equal(mid["w"], torch.tensor([0.25, 1.5])) and torch.equal(mid["b"], torch.tensor([5.0]))
    assert torch.equal(interpolate(start, end, 1.0)["w"], end["w"])
    with pytest.raises(ValueError, match="lack"):
        interpolate({"w": start["w"]}, end, 0.5)
    assert WiseFTArguments(wise_ft_alphas=[0.5, 0.25, 0.5]).grid() == (0.25, 0.5, 1.0)  # 1 always tried
    assert not WiseFTArguments().enabled and not WiseFTArguments(wise_ft_alphas=[1.0]).enabled  # 1 = off
    with pytest.raises(ValueError, match=r"\[0, 1\], got \[1.5\]"):
        WiseFTArguments(wise_ft_alphas=[0.5, 1.5])
    # both ends of [0, 1] are allowed: alpha 0 is the start itself
    assert WiseFTArguments(wise_ft_alphas=[0.0]).grid() == (0.0, 1.0) and WiseFTArguments([0.0]).enabled
    with pytest.raises(ValueError, match=r"got \[-0.1\]"):
        WiseFTArguments(wise_ft_alphas=[-0.1, 0.5])


def test_wise_ft_chooses_alpha_on_validation_and_loads_those_weights():
    """A start that errs on x > 0 and an end that errs on x = -3: only the midpoint (a bias-only rule,
    class 1 everywhere) gets every validation row right, so alpha 0.5 is chosen and loaded."""
    from types import SimpleNamespace

    from longtail.wise_ft import choose_alpha

    model = torch.nn.Linear(1, 2)
    x = torch.tensor([[-3.0], [1.0], [2.0]])
    y = np.array([1, 1, 1])
    saved = []

    class Trainer:
        def predict(self, dataset, metric_key_prefix):
            assert dataset == "val-rows" and metric_key_prefix == "wise_ft"
            return SimpleNamespace(predictions=self.model(x).detach().numpy())

        def save_model(self):
            saved.append({k: v.clone() for k, v in self.model.state_dict().items()})

    trainer = Trainer()
    trainer.model = model
    start = {"weight": torch.tensor([[1.0], [-1.0]]), "bias": torch.tensor([0.0, 0.0])}
    with torch.no_grad():
        model.weight.copy_(-start["weight"])
        model.bias.copy_(torch.tensor([0.0, 2.0]))
    alpha, rows = choose_alpha(trainer, {"validation": "val-rows"}, y, start, (0.0, 0.25, 0.5, 0.75, 1.0))
    assert alpha == 0.5
    assert [r["val_accuracy"] for r in rows] == pytest.approx([1 / 3, 1 / 3, 1.0, 2 / 3, 2 / 3])
    assert torch.equal(model.weight, torch.zeros(2, 1)) and torch.equal(model.bias, torch.tensor([0.0, 1.0]))
    assert len(saved) == 1 and torch.equal(saved[0]["bias"], torch.tensor([0.0, 1.0]))


def test_wise_ft_ties_go_to_the_larger_alpha():
    """Every alpha predicts class 1 on every row (only the bias moves, and class 1 always leads): the tie goes
    to the largest alpha, the fine-tuned model itself."""
    from types import SimpleNamespace

    from longtail.wise_ft import choose_alpha

    model = torch.nn.Linear(1, 2)
    x = torch.tensor([[-1.0], [1.0]])

    class Trainer:
        def predict(self, dataset, metric_key_prefix):
            return SimpleNamespace(predictions=self.model(x).detach().numpy())

        def save_model(self):
            pass

    trainer = Trainer()
    trainer.model = model
    start = {"weight": torch.zeros(2, 1), "bias": torch.tensor([0.0, 1.0])}
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 3.0]))
    alpha, rows = choose_alpha(trainer, {"validation": None}, np.array([1, 0]), start, (0.0, 0.5, 1.0))
    assert [r["val_accuracy"] for r in rows] == [0.5, 0.5, 0.5]
    assert alpha == 1.0 and torch.equal(model.bias, torch.tensor([0.0, 3.0]))


def test_wise_ft_after_lpft_end_to_end(
    probe_run, tiny_modernbert, tmp_path, fast_bootstrap, one_torch_thread
):
    """LP-FT from the probe, then WiSE-FT: the saved model is exactly (1-alpha)*probe + alpha*fine-tuned for the
    alpha with the best validation macro-F1, the report lists the grid, and the start copy is gone."""
    from safetensors.torch import load_file

    from longtail.refit import SELECTION_HEAD

    out = tmp_path / "wise"
    recipe = load_recipe("full_ft_encoder")
    args = encoder_args(
        tiny_modernbert, probe_run["train"], probe_run["test"], out, "--head_init_from", str(probe_run["out"])
    )
    # no post-hoc shift, so the saved head is the interpolation itself
    recipe.main([*args, "--wise_ft_alphas", "0", "0.5", "--posthoc_logit_adjustment", "none"])
    report = (out / "report.md").read_text()
    assert "## WiSE-FT weight interpolation" in report and "(chosen)" in report
    section = report.split("## WiSE-FT")[1].split("\n## ")[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith(("| 0", "| 1"))]
    scores = {float(r[1]): float(r[2].replace("**(chosen)**", "")) for r in rows}
    assert set(scores) == {0.0, 0.5, 1.0}
    chosen = next(float(r[1]) for r in rows if "(chosen)" in r[2])
    assert scores[chosen] == max(scores.values())
    assert chosen == max(a for a, f in scores.items() if f == max(scores.values()))  # ties: larger alpha
    assert f"WiSE-FT alpha {chosen:g}: best validation macro-F1" in report
    # validation is scored with the saved (interpolated) model: the chosen row's score
    assert json.loads((out / "eval_results.json").read_text())["macro_f1"] == pytest.approx(
        scores[chosen], abs=5e-5
    )
    assert json.loads((out / "run_config.json").read_text())["wise_ft"]["wise_ft_alphas"] == [0.0, 0.5]
    assert not (out / "wise_ft_start.safetensors").exists()

    start = load_file(str(probe_run["out"] / "model.safetensors"))
    start.update(load_file(str(probe_run["out"] / SELECTION_HEAD)))  # LP-FT starts from the train-only head
    last = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    best = json.loads((last / "trainer_state.json").read_text())["best_model_checkpoint"]
    end = load_file(str(Path(best) / "model.safetensors"))  # the fine-tuned end point (best epoch)
    saved = load_file(str(out / "model.safetensors"))
    float_keys = [k for k in end if end[k].is_floating_point()]
    assert float_keys and set(float_keys) <= set(start)
    for k in float_keys:
        torch.testing.assert_close(saved[k], torch.lerp(start[k], end[k], chosen), rtol=1e-6, atol=1e-6)
    if chosen not in (0.0, 1.0):
        assert any(not torch.equal(saved[k], end[k]) for k in float_keys)


def refit_by_hand(recipe, argv, model_for, output_dir):
    """The refit rebuilt from the recipe's own parser and the library's public pieces. Returns (parsed options,
    data, label counts of train + validation, the model `model_for(model_args, data, tokenizer)` gives once the
    seed is set, and `trainer(epochs)`: a LongTailTrainer of that model on train + validation, weighted by
    those counts)."""
    import dataclasses

    from datasets import concatenate_datasets
    from transformers import set_seed
    from trl import TrlParser

    from longtail.data import prepare_data
    from longtail.losses import LongTailTrainer
    from longtail.training import load_tokenizer, padding_collator, tokenize_splits

    parsed = TrlParser(recipe.PARSER_TYPES).parse_args_and_config(argv)
    data_args, model_args, loss_args, training_args = parsed[0], parsed[1], parsed[2], parsed[-1]
    data = prepare_data(data_args)
    tokenizer = load_tokenizer(model_args)
    tokenised = tokenize_splits(data, tokenizer, data_args.max_length, training_args)
    rows = concatenate_datasets([tokenised["train"], tokenised["validation"]])
    labels = np.concatenate([data.splits[s]["label_id"].to_numpy() for s in ("train", "validation")])
    counts = dict(zip(*(v.tolist() for v in np.unique(labels, return_counts=True))))
    set_seed(training_args.seed)
    model = model_for(model_args, data, tokenizer)

    def trainer(epochs):
        args = dataclasses.replace(
            training_args, output_dir=str(output_dir), num_train_epochs=epochs, eval_strategy="no",
            save_strategy="no", load_best_model_at_end=False,
        )  # fmt: skip
        return LongTailTrainer(
            model=model, args=args, train_dataset=rows, processing_class=tokenizer,
            data_collator=padding_collator(tokenizer), loss_args=loss_args, train_counts=counts,
        )  # fmt: skip

    return parsed, data, counts, model, trainer


def test_refit_trains_the_chosen_epochs_again_on_train_and_validation(
    probe_run, tiny_modernbert, tmp_path, fast_bootstrap, one_torch_thread
):
    """--refit_with_validation after LP-FT + WiSE-FT + a fixed tau: validation is still the selection model's
    (identical to the same run without the refit); the saved model equals, by hand, the probe's saved (refit)
    model trained on train + validation for the best checkpoint's epochs, interpolated with that start at the
    chosen alpha, its bias shifted by tau * log(train + validation prior); test is scored with it."""
    from safetensors.torch import load_file

    from longtail.posthoc import log_prior_array
    from longtail.probe import ProbeForSequenceClassification

    recipe = load_recipe("full_ft_encoder")
    extra = [
        "--head_init_from", str(probe_run["out"]), "--wise_ft_alphas", "0.5", "--posthoc_logit_adjustment", "0.5",
        "--loss", "weighted_ce", "--class_weighting", "sqrt_inverse",  # the refit's weights: train + validation
    ]  # fmt: skip
    selection, refitted = tmp_path / "selection", tmp_path / "refit"
    args = encoder_args(tiny_modernbert, probe_run["train"], probe_run["test"], refitted, *extra)
    recipe.main(encoder_args(tiny_modernbert, probe_run["train"], probe_run["test"], selection, *extra))
    metrics = recipe.main([*args, "--refit_with_validation", "true"])
    assert REQUIRED_KEYS <= metrics["test"].keys()

    val = [np.load(d / "predictions_validation.npz") for d in (selection, refitted)]
    np.testing.assert_array_equal(val[0]["probs"], val[1]["probs"])  # validation: the selection model
    tests = [np.load(d / "predictions_test.npz") for d in (selection, refitted)]
    assert not np.allclose(tests[0]["probs"], tests[1]["probs"])  # test: the refit
    report = (refitted / "report.md").read_text()
    alpha = float(report.split("WiSE-FT alpha ")[1].split(":")[0])
    assert "## Refit on train + validation" in report and "refit on train + validation" in report

    last = max(refitted.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((last / "trainer_state.json").read_text())
    best_step = int(state["best_model_checkpoint"].rsplit("-", 1)[1])
    epochs = next(e["epoch"] for e in state["log_history"] if e["step"] == best_step and "eval_macro_f1" in e)
    train_results = json.loads((refitted / "train_results.json").read_text())
    splits = json.loads((refitted / "splits.json").read_text())
    assert train_results["refit_epochs"] == epochs
    assert train_results["refit_rows"] == len(splits["train"]) + len(splits["validation"])

    # the refit by hand, from the library's public pieces
    def probe_model(model_args, data, tokenizer):  # the probe's saved model: its head is the refit one
        model = ProbeForSequenceClassification.from_pretrained(probe_run["out"])
        model.config.pad_token_id = tokenizer.pad_token_id
        return model

    _, data, counts, model, trainer = refit_by_hand(
        recipe, [*args, "--refit_with_validation", "true"], probe_model, tmp_path / "hand"
    )
    start = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    trainer(epochs).train()
    end = model.state_dict()
    saved = load_file(str(refitted / "model.safetensors"))
    assert set(start) <= set(saved)
    for k in start:
        expected = torch.lerp(start[k], end[k], alpha)
        if k == "classifier.bias":
            expected = (
                expected - 0.5 * torch.as_tensor(log_prior_array(counts, len(data.label_names))).float()
            )
        torch.testing.assert_close(saved[k], expected, rtol=1e-5, atol=1e-5)
    selected = load_file(str(selection / "model.safetensors"))
    assert not torch.equal(saved["classifier.weight"], selected["classifier.weight"])


def test_refit_of_a_fresh_head_repeats_the_seeded_init_and_the_head_warmup(
    tiny_modernbert, tmp_path, fast_bootstrap, one_torch_thread
):
    """--refit_with_validation without a probe: a fresh head + --head_warmup_epochs. The refit draws the
    selection run's seeded head again, warms it up and trains the chosen epochs on train + validation: equal,
    by hand, to the library's pieces in that order."""
    from safetensors.torch import load_file

    from longtail.lpft import warm_up_head
    from longtail.training import load_classifier
    from longtail.wise_ft import float_state

    train, test = synthetic_files(tmp_path)
    recipe = load_recipe("full_ft_encoder")
    out = tmp_path / "refit"
    args = encoder_args(
        tiny_modernbert, train, test, out, "--head_warmup_epochs", "1", "--refit_with_validation", "true"
    )
    args += ["--posthoc_logit_adjustment", "none"]  # tau and WiSE-FT's alpha: the test above
    recipe.main(args)
    train_results = json.loads((out / "train_results.json").read_text())
    assert train_results["refit_head_warmup_loss"] > 0  # the refit warmed its head up too
    epochs = train_results["refit_epochs"]

    parsed, data, _, model, make_trainer = refit_by_hand(
        recipe, args, lambda m, d, t: load_classifier(m, d.label_names, t), tmp_path / "hand"
    )  # the seeded fresh head
    lpft_args = parsed[3]
    trainer = make_trainer(epochs)
    warm_up_head(trainer, lpft_args.head_warmup_epochs, lpft_args.head_warmup_learning_rate)
    trainer.train()
    saved = load_file(str(out / "model.safetensors"))
    expected = float_state(model)
    assert set(expected) <= set(saved) and "classifier.weight" in expected
    for k in expected:
        torch.testing.assert_close(saved[k], expected[k], rtol=1e-5, atol=1e-5)


def test_chosen_epochs_reads_the_best_checkpoint():
    from types import SimpleNamespace

    from longtail.refit_ft import chosen_epochs

    log = [{"loss": 1.0, "step": 5, "epoch": 0.5}, {"eval_macro_f1": 0.4, "step": 10, "epoch": 1.0}]
    log += [{"eval_macro_f1": 0.3, "step": 20, "epoch": 2.0}]
    state = SimpleNamespace(best_model_checkpoint="out/checkpoint-10", log_history=log, epoch=2.0)
    best = SimpleNamespace(state=state, args=SimpleNamespace(load_best_model_at_end=True))
    assert chosen_epochs(best) == 1.0
    assert (
        chosen_epochs(SimpleNamespace(state=state, args=SimpleNamespace(load_best_model_at_end=False))) == 2.0
    )
    state.best_model_checkpoint = "out/checkpoint-7"
    with pytest.raises(ValueError, match="checkpoint-7"):
        chosen_epochs(best)
    # a folder name with dashes, a trailing slash; an entry at that step without an epoch (skipped)
    state.best_model_checkpoint = "runs/run-2-b/checkpoint-10/"
    state.log_history = [{"step": 10, "total_flos": 1.0}, *log]
    assert chosen_epochs(best) == 1.0


class FakeRefitTrainer:
    """A stand-in for LongTailTrainer in refit(): keeps what it was built with; its train() adds 1 to every
    weight and 2 to every bias (so the start, the trained model and WiSE-FT's mix are known by hand)."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)
        self.saved_by = None

    def train(self, resume_from_checkpoint=None):
        with torch.no_grad():
            self.model.weight.add_(1.0)
            self.model.bias.add_(2.0)
        return SimpleNamespace(metrics={"train_loss": 0.25, "train_runtime": 3.0, "epoch": 1.5})

    def save_model(self):
        self.saved_by = "save_model"

    def save_metrics(self, split, metrics):
        self.saved_metrics = (split, metrics)


def refit_case(tmp_path):
    """A selection run (its best checkpoint at step 20, epoch 1.5; 5 epochs planned, 40 steps), its data
    (train: labels b, b, a; validation: c, b) and tokenised splits."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from longtail.data import PreparedData

    args = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=5, max_steps=40, eval_strategy="steps", save_strategy="steps",
        eval_steps=10, save_steps=10, load_best_model_at_end=True, metric_for_best_model="macro_f1", seed=7,
        learning_rate=3e-5, resume_from_checkpoint=str(tmp_path / "checkpoint-10"), report_to="none", use_cpu=True,
    )  # fmt: skip
    log = [{"eval_macro_f1": 0.5, "step": 20, "epoch": 1.5}, {"eval_macro_f1": 0.4, "step": 40, "epoch": 3.0}]
    state = SimpleNamespace(best_model_checkpoint=str(tmp_path / "checkpoint-20"), log_history=log, epoch=3.0)
    selection = FakeRefitTrainer(args=args, state=state, processing_class="tokenizer", data_collator="collator",
                                 loss_args="loss options", train_counts={0: 1, 1: 2})  # fmt: skip

    def frame(labels):
        return pd.DataFrame({"text": ["t"] * len(labels), "label_id": labels, "row_id": range(len(labels))})

    splits = {"train": frame([1, 1, 0]), "validation": frame([2, 1]), "test": frame([0])}
    data = PreparedData(splits, ["a", "b", "c"], {0: 1, 1: 2})
    datasets = {"train": Dataset.from_dict({"input_ids": [[1], [2], [3]]}),
                "validation": Dataset.from_dict({"input_ids": [[4], [5]]})}  # fmt: skip
    return selection, data, datasets


def test_refit_builds_trains_mixes_shifts_and_saves_as_the_selection_run_chose(tmp_path, monkeypatch):
    """refit() on stand-ins, every expected value by hand: the selection's arguments with the chosen 1.5 epochs
    (no step cap, no evaluation, saving or best-model reload, no resume), the same seed, train + validation rows
    in order with their counts (a: 1, b: 3, c: 1), WiSE-FT's alpha against the refit's own start, tau with the
    train + validation prior, the save, the metrics beside the selection's and the report's section."""
    from longtail import refit_ft
    from longtail.lpft import LPFTArguments

    selection, data, datasets = refit_case(tmp_path)
    built = []

    def build_model():
        built.append(torch.initial_seed())  # transformers.set_seed(7) seeds torch with 7
        model = torch.nn.Linear(4, 3)
        built.append({k: v.clone() for k, v in model.state_dict().items()})
        return model

    clock = iter([100.0, 112.4])
    monkeypatch.setattr(refit_ft, "time", SimpleNamespace(time=lambda: next(clock)))
    trainer, section = refit_ft.refit(
        selection, build_model, data, datasets, LPFTArguments(), 0.25, 0.5, {"train_loss": 0.9}
    )
    seed, start = built
    assert seed == 7 and type(trainer) is FakeRefitTrainer
    args = trainer.args
    assert (args.num_train_epochs, args.max_steps, args.eval_strategy, args.save_strategy) == (
        1.5,
        -1,
        "no",
        "no",
    )
    assert args.load_best_model_at_end is False and args.resume_from_checkpoint is None
    assert (args.seed, args.learning_rate, args.output_dir) == (7, 3e-5, str(tmp_path))
    assert trainer.train_dataset["input_ids"] == [[1], [2], [3], [4], [5]]
    assert (trainer.processing_class, trainer.data_collator, trainer.loss_args) == (
        "tokenizer",
        "collator",
        "loss options",
    )
    assert trainer.train_counts == {0: 1, 1: 3, 2: 1}
    # trained: start + 1 (weights), start + 2 (bias); alpha 0.25 -> start + 0.25, start + 0.5; tau 0.5 shifts the
    # bias by -0.5 * log([1, 3, 1] / 5)
    torch.testing.assert_close(trainer.model.weight.detach(), start["weight"] + 0.25)
    shift = -0.5 * torch.log(torch.tensor([0.2, 0.6, 0.2]))
    torch.testing.assert_close(trainer.model.bias.detach(), start["bias"] + 0.5 + shift)
    assert trainer.saved_by == "save_model" and selection.saved_by is None
    assert selection.saved_metrics == (
        "train",
        {"train_loss": 0.9, "refit_loss": 0.25, "refit_runtime": 3.0, "refit_epoch": 1.5, "refit_rows": 5,
         "refit_epochs": 1.5, "refit_total_runtime": 12.4},
    )  # fmt: skip
    assert section == (
        "## Refit on train + validation\n\nAfter validation chose everything, the model was trained again from "
        "the same start on train + validation (3 + 2 rows) with 1.5 epoch(s) (as many as the kept model had "
        "trained), WiSE-FT alpha 0.25, post-hoc tau 0.5 (with the train + validation prior), in 12 s. The saved "
        "model and test use the refit; the validation predictions, metrics and temperature are the selection "
        "run's (held out)."
    )

    # alpha 0 (WiSE-FT kept the start itself), no tau: the refit's own start, its bias unshifted
    built.clear()
    clock = iter([0.0, 7.0])
    trainer, section = refit_ft.refit(selection, build_model, data, datasets, LPFTArguments(), 0.0, 0.0, {})
    torch.testing.assert_close(trainer.model.state_dict(), built[1])
    assert "with 1.5 epoch(s) (as many as the kept model had trained), WiSE-FT alpha 0, in 7 s." in section


def test_refit_adapter_trains_a_new_adapter_without_wise_ft_and_saves_it_as_an_adapter(tmp_path, monkeypatch):
    import longtail.adapters
    from longtail import refit_ft
    from longtail.lpft import LPFTArguments

    selection, data, datasets = refit_case(tmp_path)
    saved = []

    def add_lora(model, adapter_args):
        model.adapter = adapter_args
        return model

    monkeypatch.setattr(longtail.adapters, "add_lora", add_lora)
    monkeypatch.setattr(longtail.adapters, "save_adapter", saved.append)
    bases = []

    def build_base():
        bases.append(torch.nn.Linear(4, 3))
        bases.append(bases[0].weight.detach().clone())
        return bases[0]

    trainer, section = refit_ft.refit_adapter(
        selection, build_base, "lora options", data, datasets, LPFTArguments(), 0.5, {}
    )
    assert trainer.model is bases[0] and trainer.model.adapter == "lora options"
    assert saved == [trainer] and trainer.saved_by is None  # save_adapter, not the whole model
    assert "WiSE-FT" not in section and "post-hoc tau 0.5 (with the train + validation prior)" in section
    torch.testing.assert_close(
        trainer.model.weight.detach(), bases[1] + 1.0
    )  # trained, not mixed with its start


def test_wise_ft_start_weights_survive_a_resume(tmp_path):
    """The start is saved beside the checkpoints; a resumed run reads it back (the live model is then the
    checkpoint's, not the start), and a resume without it is a clear error."""
    from longtail.wise_ft import START_WEIGHTS, finish, snapshot_start

    model = torch.nn.Linear(2, 3)
    start = snapshot_start(model, str(tmp_path), resuming=False, is_main=True)
    assert (tmp_path / START_WEIGHTS).is_file()
    with torch.no_grad():
        model.weight.add_(1.0)  # training moved the model
    again = snapshot_start(model, str(tmp_path), resuming=True, is_main=True)
    assert torch.equal(again["weight"], start["weight"]) and not torch.equal(again["weight"], model.weight)
    finish(str(tmp_path), is_main=True)
    assert not (tmp_path / START_WEIGHTS).exists()
    with pytest.raises(FileNotFoundError, match="wise_ft_start.safetensors.*missing"):
        snapshot_start(model, str(tmp_path), resuming=True, is_main=True)
    # only the main process writes and removes the file; the others keep the start in memory
    other = snapshot_start(model, str(tmp_path), resuming=False, is_main=False)
    assert torch.equal(other["weight"], model.weight) and not (tmp_path / START_WEIGHTS).exists()
    snapshot_start(model, str(tmp_path), resuming=False, is_main=True)
    finish(str(tmp_path), is_main=False)
    assert (tmp_path / START_WEIGHTS).is_file()


def test_minilm_yaml_runs_wise_ft_with_lpft_and_plain_ft_with_alpha_1(tmp_path):
    """The study's YAML turns WiSE-FT on; its plain-FT arm (Makefile: --wise_ft_alphas 1) passes the start
    check, the same YAML without a start does not."""
    from trl import TrlParser

    from longtail.wise_ft import check_start

    module = load_recipe("full_ft_encoder")
    base = [
        "--config",
        str(REPO / "recipes/configs/full_ft_encoder_minilm.yaml"),
        "--output_dir",
        str(tmp_path),
    ]
    *_, lpft_args, wise_args, _, _ = TrlParser(module.PARSER_TYPES).parse_args_and_config(base)
    assert wise_args.grid() == (0.25, 0.5, 0.75, 1.0)
    with pytest.raises(ValueError, match="--wise_ft_alphas 1"):
        check_start(wise_args, lpft_args)
    *_, lpft_args, wise_args, _, _ = TrlParser(module.PARSER_TYPES).parse_args_and_config(
        [*base, "--wise_ft_alphas", "1"]
    )
    assert not wise_args.enabled
    check_start(wise_args, lpft_args)
    assert "--wise_ft_alphas 1" in (REPO / "Makefile").read_text()


def test_wise_ft_needs_a_classifying_start(tiny_modernbert, tmp_path):
    train, test = synthetic_files(tmp_path)
    recipe = load_recipe("full_ft_encoder")
    with pytest.raises(ValueError, match="--head_init_from <probe run> or --head_warmup_epochs"):
        recipe.main([*encoder_args(tiny_modernbert, train, test, tmp_path / "o"), "--wise_ft_alphas", "0.5"])
    assert not (tmp_path / "o").exists()


def test_head_init_from_rejects_other_labels(probe_run, tiny_modernbert, tmp_path):
    recipe = load_recipe("full_ft_encoder")
    args = encoder_args(
        tiny_modernbert,
        probe_run["train"],
        probe_run["test"],
        tmp_path / "x",
        "--head_init_from",
        str(probe_run["out"]),
    )
    with pytest.raises(ValueError, match="probe's labels differ"):
        recipe.main([*args, "--min_class_count", "40"])
    with pytest.raises(ValueError, match="expected 'longtail_probe'"):
        recipe.main(
            [
                *encoder_args(tiny_modernbert, probe_run["train"], probe_run["test"], tmp_path / "y"),
                "--head_init_from",
                tiny_modernbert,
            ]
        )


def test_head_init_from_rejects_another_body_or_tokenizer(
    probe_run, tiny_modernbert, tiny_bert, tiny_qwen2, tmp_path
):
    """LP-FT fine-tunes the probe's body but tokenises with --model_name_or_path's (or --tokenizer_name's)
    tokenizer: another body (tiny BERT, same vocabulary) was fine-tuned as ModernBERT with a warning, another
    tokenizer (byte BPE) fed the body ids it never saw. Both are one line, before any output is written."""
    recipe = load_recipe("full_ft_encoder")
    probe = str(probe_run["out"])

    def refused(model, *extra):
        out = tmp_path / f"x{len(list(tmp_path.iterdir()))}"
        args = encoder_args(
            model, probe_run["train"], probe_run["test"], out, "--head_init_from", probe, *extra
        )
        with pytest.raises(UsageError) as err:
            recipe.main(args)
        assert not out.exists()
        return str(err.value)

    message = refused(tiny_bert)
    assert (
        f"--head_init_from {probe} was fit on another body than --model_name_or_path {tiny_bert}" in message
    )
    assert "model_type modernbert vs bert" in message
    assert f"('{tiny_modernbert}')" in message
    message = refused(tiny_modernbert, "--tokenizer_name", tiny_qwen2)
    assert message == (
        f"--head_init_from {probe} embedded its texts with another tokenizer than --tokenizer_name {tiny_qwen2}'s "
        f"(other token ids): pass the probe's ({probe})"
    )


def test_head_warmup_with_lora_on_a_decoder_probe(tiny_qwen2, tmp_path, one_torch_thread):
    """LP-FT with LoRA: a probe on a decoder (last-token pooling) wrapped in LoRA; the warm-up trains only
    the saved head copy, not the adapter."""
    from transformers import AutoModel, TrainingArguments

    from longtail.adapters import AdapterArguments, add_lora
    from longtail.data import DataArguments, prepare_data
    from longtail.losses import LossArguments
    from longtail.lpft import head_parameters, warm_up_head
    from longtail.probe import ProbeForSequenceClassification
    from longtail.training import ModelArguments, load_tokenizer, long_tail_trainer, tokenize_splits

    train, _ = synthetic_files(tmp_path)
    data = prepare_data(
        DataArguments(
            train_file=train,
            text_column="Consumer complaint narrative",
            label_taxonomy="none",
            max_train_samples=64,
        )
    )
    model_args = ModelArguments(model_name_or_path=tiny_qwen2)
    tokenizer = load_tokenizer(model_args)
    encoder = AutoModel.from_pretrained(tiny_qwen2)
    encoder.config.pad_token_id = tokenizer.pad_token_id
    n, hidden = len(data.label_names), encoder.config.hidden_size
    probe = ProbeForSequenceClassification.from_encoder(
        encoder, "last", np.zeros((n, hidden)), np.zeros(n), data.label_names
    )
    model = add_lora(probe, AdapterArguments())
    head = head_parameters(model)
    assert head and all("modules_to_save" in name for name in head)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), num_train_epochs=1, per_device_train_batch_size=16, report_to=[],
        save_strategy="no", eval_strategy="no", label_names=["labels"],
    )  # fmt: skip
    datasets = tokenize_splits(data, tokenizer, 32, args)
    trainer = long_tail_trainer(model, args, data, datasets, tokenizer, LossArguments(), model_args)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert lora
    warm_up_head(trainer, epochs=1, learning_rate=1e-2)
    params = dict(model.named_parameters())
    assert all(torch.equal(lora[n], params[n]) for n in lora)  # adapter frozen during the warm-up
    assert any(p.abs().sum() > 0 for p in head.values())  # the zero-initialised head learned
    assert all(params[n].requires_grad for n in lora)


def test_predict_serves_the_probe_folder(probe_run, tmp_path):
    """The cross-module contract: `predict` loads a probe run folder through the Auto classes and returns
    the run's own test probabilities (the saved model is the refit one that scored test), calibrated
    with the folder's temperature.json."""
    import pandas as pd

    from longtail.calibration import load_temperature
    from longtail.data import DataArguments, prepare_data
    from longtail.predict import main as predict
    from longtail.report import load_predictions

    out = probe_run["out"]
    data = prepare_data(
        DataArguments(
            train_file=probe_run["train"],
            test_file=probe_run["test"],
            text_column="Consumer complaint narrative",
            label_taxonomy="none",
        )
    )
    texts = data.splits["test"]["text"].tolist()[:12]
    src, dst = tmp_path / "in.csv", tmp_path / "out.jsonl"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    summary = predict(["--model_dir", str(out), "--input", str(src), "--output", str(dst), "--top_k", "1",
                       "--max_length", "64", "--no_progress", "--device", "cpu"])  # fmt: skip
    temperature = load_temperature(out)
    assert summary["backend"] == "pytorch" and summary["temperature"] == pytest.approx(temperature)
    rows = pd.read_json(dst, lines=True)
    saved = load_predictions(out / "predictions_test.npz")["probs"][:12]
    logits = np.log(saved)  # softmax(log p / T) is what temperature scaling gives
    calibrated = np.exp(logits / temperature) / np.exp(logits / temperature).sum(1, keepdims=True)
    assert rows["label"].tolist() == [data.label_names[i] for i in saved.argmax(1)]
    np.testing.assert_allclose(rows["confidence"].to_numpy(), calibrated.max(1), atol=1e-4)


@pytest.mark.parametrize(
    "fixture,layers", [("tiny_qwen2", ["1", "-1"]), ("tiny_llama", []), ("tiny_gpt2", [])]
)
def test_probe_recipe_on_a_decoder_body(fixture, layers, request, tmp_path, fast_bootstrap, one_torch_thread):
    """The recipe on a decoder checkpoint without a pad token (Llama's and this GPT-2's tokenizers pad on the left;
    the recipe embeds with right padding, and saves the tokenizer padding on the right, as it must be served: GPT-2's
    learned positions would move under left padding, a padded text scoring otherwise than alone): `auto` pools the
    last non-pad token, the chosen hidden states are recorded, and `predict` on the folder, in padded batches,
    returns the run's own test predictions."""

    train, test = synthetic_files(tmp_path)
    out = tmp_path / "probe"
    args = probe_args(request.getfixturevalue(fixture), train, test, out, tmp_path / "cache")
    load_recipe("probe_encoder").main(args + (["--feature_layers", *layers] if layers else []))
    config = json.loads((out / "config.json").read_text())
    assert config["pooling"] == "last" and config["feature_layers"] == [int(i) for i in layers or ["-1"]]
    assert config["encoder_config"]["model_type"] == fixture.removeprefix("tiny_")
    assert (
        json.loads((out / "run_config.json").read_text())["probe"]["feature_layers"]
        == config["feature_layers"]
    )
    assert "`last`-pooled" in (out / "report.md").read_text()
    shipped = json.loads((Path(request.getfixturevalue(fixture)) / "tokenizer_config.json").read_text())
    assert shipped["padding_side"] == ("right" if fixture == "tiny_qwen2" else "left")
    assert json.loads((out / "tokenizer_config.json").read_text())["padding_side"] == "right"
    assert_served_in_padded_batches_as_test(out, train, test, tmp_path)


def test_probe_saves_right_padding_for_a_tokenizer_whose_folder_names_no_side(
    tiny_gpt2, tmp_path, fast_bootstrap, one_torch_thread
):
    """SmolLM2's tokenizer folder names no padding side: its class, LlamaTokenizerFast, pads left by default, and
    `save_pretrained` writes only the options a tokenizer was loaded with, so the recipe's right padding was not
    saved and the folder was served padding on the left. Here on GPT-2's learned positions, where that moves the
    scores: `predict` in padded batches returns the run's test predictions only with the side saved."""
    import shutil

    from transformers import AutoTokenizer

    body = tmp_path / "body"
    shutil.copytree(tiny_gpt2, body)
    config_path = body / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    del config["padding_side"]
    config.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=False, add_eos_token=False)
    config_path.write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(body).padding_side == "left"
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "probe"
    load_recipe("probe_encoder").main(probe_args(str(body), train, test, out, tmp_path / "cache"))
    assert AutoTokenizer.from_pretrained(out).padding_side == "right"
    assert_served_in_padded_batches_as_test(out, train, test, tmp_path)


def assert_served_in_padded_batches_as_test(
    out: Path, train: str, test: str, tmp_path: Path, *extra: str
) -> None:
    """`predict` on a probe run folder, in padded batches of 5, returns the labels and calibrated confidences the
    run saved for its first 12 test rows."""
    import pandas as pd

    from longtail.calibration import load_temperature
    from longtail.data import DataArguments, prepare_data
    from longtail.predict import main as predict
    from longtail.report import load_predictions

    data = prepare_data(
        DataArguments(train_file=train, test_file=test, text_column="Consumer complaint narrative",
                      label_taxonomy="none")
    )  # fmt: skip
    texts = data.splits["test"]["text"].tolist()[:12]
    assert len({len(t.split()) for t in texts}) > 3  # batches of 5 are padded
    src, dst = tmp_path / "in.csv", tmp_path / "out.jsonl"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    predict(["--model_dir", str(out), "--input", str(src), "--output", str(dst), "--top_k", "1",
             "--batch_size", "5", "--no_progress", "--device", "cpu", *extra])  # fmt: skip
    saved = load_predictions(out / "predictions_test.npz")["probs"][:12]
    calibrated = np.exp(np.log(saved) / load_temperature(out))
    calibrated /= calibrated.sum(1, keepdims=True)
    rows = pd.read_json(dst, lines=True)
    np.testing.assert_allclose(rows["confidence"].to_numpy(), calibrated.max(1), atol=1e-4)
    assert rows["label"].tolist() == [data.label_names[i] for i in saved.argmax(1)]


def test_probe_on_a_roberta_body_whose_tokenizer_pads_with_another_id_is_served_as_it_embedded(
    tmp_path, fast_bootstrap, one_torch_thread
):
    """A RoBERTa-style body numbers its positions from its config's pad id (+ 1), which the body's embeddings are
    built with; here the tokenizer pads with another id ([PAD] 0; the config's is [MASK], 4). The recipe set the
    tokenizer's id on the body's config before saving, so the served probe, built from that config, numbered its
    positions from 0 while the embedding had counted from 4: `predict` on the folder, in padded batches, scored
    otherwise than the run scored test. Now the saved body keeps the config's id (the probe's own config names the
    tokenizer's, what it is padded with; padding is masked by the attention mask either way), and `predict`
    returns the run's own test predictions."""
    from conftest import corpus, save_seeded, train_wordpiece
    from transformers import RobertaConfig, RobertaModel

    from longtail.probe import ProbeForSequenceClassification

    tokenizer = train_wordpiece(corpus())
    pad = tokenizer.mask_token_id  # never produced by tokenizing a text
    assert tokenizer.pad_token_id == 0 and pad == 4
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=64 + pad + 1, pad_token_id=pad, type_vocab_size=1,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    )  # fmt: skip
    body = str(save_seeded(RobertaModel, config, tokenizer, tmp_path / "roberta"))
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "probe"
    load_recipe("probe_encoder").main(probe_args(body, train, test, out, tmp_path / "cache"))
    assert_served_in_padded_batches_as_test(out, train, test, tmp_path, "--max_length", "64")
    saved_config = json.loads((out / "config.json").read_text())
    assert saved_config["encoder_config"]["pad_token_id"] == pad  # what its positions count from
    assert saved_config["pad_token_id"] == tokenizer.pad_token_id  # what it is padded with
    probe = ProbeForSequenceClassification.from_pretrained(out)
    assert probe.encoder.embeddings.padding_idx == pad


def test_predict_serves_tfidf_and_ensemble_runs_as_they_scored_test(probe_run, tmp_path, fast_bootstrap):
    """`predict` on a TF-IDF run folder and on an ensemble folder (probe + TF-IDF) reads the raw test CSV (empty
    narratives included) and returns, row for row, the probabilities the runs saved for their test split:
    so a model chosen on validation, ensemble or not, can be scored on complaints nobody has seen yet."""
    import pandas as pd

    from longtail.calibration import load_temperature
    from longtail.ensemble import main as ensemble
    from longtail.predict import describe, parse_args, score_texts
    from longtail.predict import main as predict
    from longtail.report import load_predictions

    tfidf = tmp_path / "tfidf"
    load_recipe("baseline_tfidf").main([
        "--config", str(REPO / "recipes/configs/baseline_tfidf.yaml"), "--train_file", probe_run["train"],
        "--test_file", probe_run["test"], "--text_column", "Consumer complaint narrative",
        "--label_taxonomy", "none", "--output_dir", str(tfidf), "--do_predict", "--grid_C", "10",
        "--grid_sublinear_tf", "false", "--char_ngram_max", "3", "--n_jobs", "1",
    ])  # fmt: skip
    ens = tmp_path / "ensemble"
    record = ensemble([str(probe_run["out"]), str(tfidf), "--output_dir", str(ens), "--n_resamples", "50"])
    assert record["serving"]["members"] == [str(probe_run["out"].resolve()), str(tfidf.resolve())]

    raw = pd.read_csv(probe_run["test"])
    assert raw["Consumer complaint narrative"].isna().any()  # the file has rows no model can score
    summaries = []
    for run, temperature in ((ens, 1.0), (tfidf, load_temperature(tfidf))):
        saved = load_predictions(run / "predictions_test.npz")
        dst = tmp_path / f"{run.name}.csv"
        summary = predict(["--model_dir", str(run), "--input", probe_run["test"], "--output", str(dst),
                           "--text_column", "Consumer complaint narrative", "--top_k", "2", "--no_progress"])  # fmt: skip
        rows = pd.read_csv(dst).set_index("row").loc[saved["row_id"]]
        expected = saved["probs"].astype(np.float64)
        if temperature != 1.0:  # a single run is served calibrated; the ensemble saved its calibrated mix
            expected = np.exp(np.log(expected) / temperature)
            expected /= expected.sum(1, keepdims=True)
        names = [str(x) for x in saved["label_names"]]
        assert rows["label"].tolist() == [names[i] for i in expected.argmax(1)]
        np.testing.assert_allclose(rows["prob_1"], expected.max(1), atol=1e-5)
        np.testing.assert_allclose(rows["prob_2"], np.sort(expected, 1)[:, -2], atol=1e-5)
        assert summary["bad_rows"] == raw["Consumer complaint narrative"].isna().sum()
        summaries.append(summary)
    assert summaries[1]["backend"] == "scikit-learn"
    # the log line says how each member read the texts, at the temperature the ensemble gives it (not T = 1)
    member_t = record["serving"]["temperatures"]
    assert [m["temperature"] for m in summaries[0]["members"]] == member_t and member_t[0] != 1.0
    assert describe(summaries[0]).startswith(
        f"ensemble of 2: probe: pytorch, temperature {member_t[0]:.3f}, max_length 64"
    )
    texts = raw["Consumer complaint narrative"].dropna().str.strip().tolist()[:20]
    args = parse_args(["--model_dir", str(ens), "--input", "x.csv", "--output", "y.csv", "--no_progress"])
    mix = score_texts(args, ens, texts)
    assert mix.info["backend"] == "ensemble (pytorch, scikit-learn)" and len(mix.info["members"]) == 2
    np.testing.assert_allclose(mix.probs.sum(1), 1.0, atol=1e-9)

    # mistakes are one line: reading options an ensemble fixes, a member that moved, an ensemble.json
    # written before serving existed
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    base = ["--input", str(src), "--output", str(tmp_path / "o.csv"), "--no_progress"]
    with pytest.raises(
        SystemExit, match="--max_length sets how a Transformers model reads text; .* an ensemble"
    ):
        predict(["--model_dir", str(ens), "--max_length", "32", *base])
    with pytest.raises(SystemExit, match="--long_text sets how .* a scikit-learn run"):
        predict(["--model_dir", str(tfidf), "--long_text", "windows", *base])
    spec = json.loads((ens / "ensemble.json").read_text())
    relabelled = json.loads(json.dumps(spec))
    relabelled["serving"]["label_names"][0] = "renamed"
    (ens / "ensemble.json").write_text(json.dumps(relabelled))
    with pytest.raises(SystemExit, match=r"ensemble member .*probe now has other labels"):
        predict(["--model_dir", str(ens), *base])
    (ens / "ensemble.json").write_text("{not json")
    with pytest.raises(SystemExit, match=r"ensemble.json is not valid JSON"):
        predict(["--model_dir", str(ens), *base])
    spec["serving"]["members"][1] = str(tmp_path / "moved")
    (ens / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(
        SystemExit, match=r"ensemble member .*moved \(listed in .*ensemble.json\) is not a folder"
    ):
        predict(["--model_dir", str(ens), *base])
    del spec["serving"]
    (ens / "ensemble.json").write_text(json.dumps(spec))
    with pytest.raises(
        SystemExit, match=r"no 'serving' entry \(it predates serving\): rerun `python -m longtail"
    ):
        predict(["--model_dir", str(ens), *base])
    for edited in ([1, 2], {"serving": ["a"]}):  # a traceback (AttributeError, TypeError) before
        (ens / "ensemble.json").write_text(json.dumps(edited))
        with pytest.raises(SystemExit, match=r"has no 'serving' entry \(it holds a list\): rerun `python -m"):
            predict(["--model_dir", str(ens), *base])


def test_probe_exports_to_onnx_and_predict_serves_the_export(probe_run, tmp_path):
    """The probe (body + pooling + head) exports as one ONNX graph through its body's Optimum config; the
    export's logits match PyTorch's, and `predict` on the export returns what it returns on the run folder."""
    import pandas as pd

    from longtail.export import ExportArguments, export_onnx
    from longtail.predict import main as predict

    out = tmp_path / "onnx"
    record = export_onnx(
        ExportArguments(model_dir=str(probe_run["out"]), output_dir=str(out), parity_rows=16)
    )
    fp32 = record["variants"]["fp32"]
    assert fp32["status"] == "ok" and fp32["max_abs_logit_diff"] < 1e-4 and fp32["argmax_agreement"] == 1.0
    assert json.loads((out / "fp32" / "config.json").read_text())["model_type"] == "longtail_probe"
    # ORT's fusions know no 'longtail_probe': skipped and said why; int8 kept or removed by its quality gate
    assert record["variants"]["optimized"]["status"] == "skipped"
    assert "longtail_probe" in record["variants"]["optimized"]["reason"]
    assert record["variants"]["int8"]["status"] in {"ok", "rejected"}
    src = tmp_path / "in.csv"
    pd.DataFrame(
        {"text": ["my card was charged twice", "a collector calls about a debt I do not owe"]}
    ).to_csv(src, index=False)
    results = {}
    for name, model_dir in {"onnx": out / "fp32", "torch": probe_run["out"]}.items():
        dst = tmp_path / f"{name}.jsonl"
        summary = predict(["--model_dir", str(model_dir), "--input", str(src), "--output", str(dst),
                           "--top_k", "1", "--max_length", "64", "--no_progress", "--device", "cpu"])  # fmt: skip
        assert summary["backend"] == ("onnxruntime" if name == "onnx" else "pytorch")
        results[name] = pd.read_json(dst, lines=True)
    assert results["onnx"]["label"].tolist() == results["torch"]["label"].tolist()
    np.testing.assert_allclose(results["onnx"]["confidence"], results["torch"]["confidence"], atol=1e-4)


@pytest.mark.parametrize("layers", [None, ["0", "-1"]], ids=["last", "embeddings+last"])
def test_windowed_probe_is_served_the_way_it_was_trained(
    probe_run, tiny_modernbert, tmp_path, one_torch_thread, layers
):
    """`--long_text windows`: the run records it, and `predict` (on the run folder and on its ONNX export,
    with no serving flags) reads whole texts in the same windows and returns the run's own probabilities.
    With `--feature_layers 0 -1` too (the embedding output's features beside the output's), and LP-FT
    fine-tunes that model."""
    import pandas as pd

    from longtail.calibration import load_temperature
    from longtail.data import DataArguments, prepare_data
    from longtail.export import ExportArguments, export_onnx
    from longtail.predict import main as predict
    from longtail.report import load_predictions

    train, test = probe_run["train"], probe_run["test"]
    out = tmp_path / "windows"
    args = probe_args(tiny_modernbert, train, test, out, tmp_path / "cache", "--long_text", "windows")
    args[args.index("--max_length") + 1] = "12"  # most synthetic texts span several windows
    load_recipe("probe_encoder").main(args + (["--feature_layers", *layers] if layers else []))
    config = json.loads((out / "config.json").read_text())
    assert config["feature_layers"] == [int(i) for i in layers or ["-1"]]
    head = 32 * len(layers or ["-1"])  # the tiny body's hidden size, per hidden state read
    assert (
        json.loads((out / "run_config.json").read_text())["probe"]["feature_layers"]
        == config["feature_layers"]
    )
    # the YAML normalises each window's feature: recorded in the report and in the saved model's config, so
    # predict and the ONNX export below do the same
    read = "consecutive 12-token windows whose features are averaged (token-weighted) (each window's feature"
    assert f"{read} L2-normalised first)" in (out / "report.md").read_text()
    assert json.loads((out / "config.json").read_text())["normalize"] is True
    data = prepare_data(
        DataArguments(train_file=train, test_file=test, text_column="Consumer complaint narrative",
                      label_taxonomy="none", max_length=12)
    )  # fmt: skip
    texts = data.splits["test"]["text"].tolist()[:12]
    src = tmp_path / "in.csv"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    export_onnx(ExportArguments(model_dir=str(out), output_dir=str(tmp_path / "onnx"), parity_rows=8))
    saved = load_predictions(out / "predictions_test.npz")["probs"][:12]
    temperature = load_temperature(out)
    calibrated = np.exp(np.log(saved) / temperature)
    calibrated /= calibrated.sum(1, keepdims=True)
    for name, model_dir in {"torch": out, "onnx": tmp_path / "onnx" / "fp32"}.items():
        dst = tmp_path / f"{name}.jsonl"
        summary = predict(["--model_dir", str(model_dir), "--input", str(src), "--output", str(dst),
                           "--top_k", "1", "--no_progress", "--device", "cpu"])  # fmt: skip
        assert summary["long_text"] == "windows" and summary["max_length"] == 12, name
        assert summary["windows"] > 2 * len(texts), name
        rows = pd.read_json(dst, lines=True)
        assert rows["label"].tolist() == [data.label_names[i] for i in saved.argmax(1)], name
        np.testing.assert_allclose(rows["confidence"].to_numpy(), calibrated.max(1), atol=1e-4)
    # truncating instead (an explicit override) reads less of each text and scores differently
    dst = tmp_path / "truncated.jsonl"
    predict(["--model_dir", str(out), "--input", str(src), "--output", str(dst), "--top_k", "1",
             "--long_text", "truncate", "--no_progress", "--device", "cpu"])  # fmt: skip
    assert np.abs(pd.read_json(dst, lines=True)["confidence"].to_numpy() - calibrated.max(1)).max() > 1e-3
    if layers:  # the report says which hidden states; LP-FT fine-tunes this model, reading the same ones
        assert "hidden states 0, -1 (0: embedding output" in (out / "report.md").read_text()
        lpft = tmp_path / "lpft"
        args = encoder_args(
            tiny_modernbert, train, test, lpft, "--head_init_from", str(out), "--max_length", "12"
        )
        load_recipe("full_ft_encoder").main([*args, "--num_train_epochs", "1"])
        from safetensors.torch import load_file

        weights = {d: load_file(str(d / "model.safetensors"))["classifier.weight"] for d in (out, lpft)}
        assert weights[out].shape == weights[lpft].shape == (len(data.label_names), head)
        assert json.loads((lpft / "config.json").read_text())["feature_layers"] == [0, -1]
        start = load_file(str(out / "selection_head.safetensors"))["classifier.weight"]  # LP-FT's start
        assert start.shape == weights[lpft].shape and not torch.allclose(start, weights[lpft])  # trained


def test_probe_card_quick_start_reads_a_text_longer_than_the_body(tiny_bert, tmp_path, fast_bootstrap):
    """The card's pipeline call truncates at the run's max_length: the pipeline itself does not, so a complaint
    longer than the body's positions (64 here; 512 for MiniLM, which CFPB narratives pass) was a traceback. A
    windowed probe's card says that only `predict` reads the whole text."""
    train, test = synthetic_files(tmp_path)
    out = tmp_path / "probe"
    load_recipe("probe_encoder").main(
        probe_args(tiny_bert, train, test, out, tmp_path / "cache", "--max_length", "32", "--grid_C", "1")
    )
    card = out / "README.md"
    code = quick_start(card)
    assert "truncation=True, max_length=32" in code
    assert "`longtail.predict` reads the whole text in 32-token windows" in card.read_text("utf-8")
    card.write_text(card.read_text("utf-8").replace("I was charged a late fee", "late fee " * 100))
    assert "score" in run_quick_start(card, REPO)


def test_probe_config_carries_the_body_input_limit(probe_run):
    """Tools that size inputs from a classifier's config (`make bench`'s padding study, truncation) read the
    probe's like any other: its body's max_position_embeddings, hidden size and layer count."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(probe_run["out"])
    assert config.model_type == "longtail_probe"
    assert config.max_position_embeddings == config.encoder_config.max_position_embeddings
    assert config.hidden_size == config.encoder_config.hidden_size
    assert config.num_hidden_layers == config.encoder_config.num_hidden_layers == 2  # FLOPs' attention term


@needs_shared
@pytest.mark.parametrize("model", ["ModernBERT-base", "Qwen2.5-0.5B"])
def test_windows_cover_real_cfpb_narratives(model):
    """Real narratives with the real tokenizers: every token of every narrative lands in exactly one window,
    in order, windows never exceed max_length, and long narratives really span several windows."""
    import pandas as pd
    from conftest import CFPB_CSV, SHARED
    from transformers import AutoTokenizer

    from longtail.inference import text_windows

    texts = pd.read_csv(CFPB_CSV, usecols=["Consumer complaint narrative"]).dropna().iloc[:300, 0].tolist()
    tok = AutoTokenizer.from_pretrained(SHARED / "models" / model)
    windows = text_windows(tok, texts, 256)
    specials = tok.num_special_tokens_to_add(pair=False)
    content = tok(texts, add_special_tokens=False)["input_ids"]
    assert max(len(w) for w in windows.input_ids) <= 256
    for row in (0, *np.flatnonzero(np.bincount(windows.owner) > 2)[:5]):
        parts = [windows.input_ids[i] for i in np.flatnonzero(windows.owner == row)]
        inner = [p[1:-1] if specials == 2 else p[specials:] for p in parts]
        assert sum(inner, []) == content[row]
    lengths = np.array([len(c) for c in content])
    expected = np.maximum(1, -(-lengths // (256 - specials)))
    np.testing.assert_array_equal(np.bincount(windows.owner, minlength=len(texts)), expected)
    assert (expected > 1).sum() > 30  # a real share of narratives is longer than one window


def test_lpft_starts_from_the_train_only_head_of_a_refit_probe(probe_run, tiny_modernbert, tmp_path, caplog):
    """The probe's saved head saw validation (refit); LP-FT is selected on validation, so it starts from the
    train-only head instead, and says so. A probe without a refit is loaded as saved."""
    from safetensors.torch import load_file

    from longtail.lpft import LPFTArguments, load_model
    from longtail.training import ModelArguments, load_tokenizer

    out = probe_run["out"]
    id2label = json.loads((out / "config.json").read_text())["id2label"]
    labels = [id2label[str(i)] for i in range(len(id2label))]
    model_args = ModelArguments(model_name_or_path=tiny_modernbert)
    tokenizer = load_tokenizer(model_args)
    with caplog.at_level("INFO", logger="longtail.lpft"):
        model = load_model(model_args, LPFTArguments(head_init_from=str(out)), labels, tokenizer)
    head, saved = (
        load_file(str(out / "selection_head.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    torch.testing.assert_close(model.classifier.weight.data, head["classifier.weight"])
    torch.testing.assert_close(model.classifier.bias.data, head["classifier.bias"])
    assert "train-only head" in caplog.text
    body = "encoder.embeddings.tok_embeddings.weight"
    torch.testing.assert_close(model.state_dict()[body], saved[body])  # the body is the probe's

    import shutil

    shutil.copytree(out, tmp_path / "plain")
    (tmp_path / "plain" / "selection_head.safetensors").unlink()
    plain = load_model(model_args, LPFTArguments(head_init_from=str(tmp_path / "plain")), labels, tokenizer)
    torch.testing.assert_close(plain.classifier.weight.data, saved["classifier.weight"])


def test_embedding_cache_signature_hashes_the_whole_weight_files(tmp_path):
    """The signature covers .safetensors, .json, .bin and .gguf files (not a folder named like one, nor other
    files), each with its size and the SHA-256 of the whole file: a byte past the first MiB counts. It hashed the
    first MiB alone, which in a body's safetensors is its embeddings (all-MiniLM-L6-v2: the embeddings' LayerNorm,
    position table and the start of the word table), so a body retrained above them in the same folder kept its
    key and was served its old features."""
    import hashlib

    from longtail.probe import embedding_fingerprint, model_signature

    folder = tmp_path / "model"
    folder.mkdir()
    mib = 1 << 20
    weights = bytearray(b"\x00" * (2 * mib + 10))
    weights[5000] = 1  # inside the first MiB, past its first KiB
    (folder / "model.safetensors").write_bytes(bytes(weights))
    (folder / "pytorch_model.bin").write_bytes(b"bin")
    (folder / "model.gguf").write_bytes(b"gguf")
    (folder / "notes.txt").write_text("not a weight")
    (folder / "sub.json").mkdir()
    files = model_signature(str(folder))["files"]
    assert files == {
        "model.safetensors": [2 * mib + 10, hashlib.sha256(bytes(weights)).hexdigest()],
        "pytorch_model.bin": [3, hashlib.sha256(b"bin").hexdigest()],
        "model.gguf": [4, hashlib.sha256(b"gguf").hexdigest()],
    }
    key = embedding_fingerprint(str(folder), TEXTS, 32, "mean")
    # an upper layer retrained: the same size, the first MiB unchanged
    for position in (mib + 1, 2 * mib + 9):
        weights[position] = 7
        (folder / "model.safetensors").write_bytes(bytes(weights))
        assert embedding_fingerprint(str(folder), TEXTS, 32, "mean") != key
        key = embedding_fingerprint(str(folder), TEXTS, 32, "mean")


def test_embedding_cache_signature_covers_the_tokenizer_vocabularies(tmp_path):
    """A local folder's vocab.txt, merges.txt and SentencePiece .model files are in its signature: without a
    tokenizer.json, its tokenizer is built from them (all-MiniLM-L6-v2's folder without tokenizer.json, `card` and
    `charged` swapped in vocab.txt: other token ids, the same key, the old features served). Other .txt files are
    not; a folder without them has the signature it had."""
    import hashlib

    from longtail.probe import embedding_fingerprint, model_signature

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    key = embedding_fingerprint(str(folder), TEXTS, 32, "mean")
    (folder / "notes.txt").write_text("not a vocabulary")
    assert embedding_fingerprint(str(folder), TEXTS, 32, "mean") == key
    files = {"vocab.txt": "[PAD]\ncard\ncharged\n", "merges.txt": "c a\n", "spiece.model": "sp"}
    for name, text in files.items():
        (folder / name).write_text(text)
        assert embedding_fingerprint(str(folder), TEXTS, 32, "mean") != key
        key = embedding_fingerprint(str(folder), TEXTS, 32, "mean")
    assert model_signature(str(folder))["files"] == {
        "config.json": [8, hashlib.sha256(b'{"a": 1}').hexdigest()],
        **{name: [len(text), hashlib.sha256(text.encode()).hexdigest()] for name, text in files.items()},
    }
    (folder / "vocab.txt").write_text("[PAD]\ncharged\ncard\n")  # two tokens swapped: other ids
    assert embedding_fingerprint(str(folder), TEXTS, 32, "mean") != key


def test_embedding_cache_with_the_wrong_number_of_rows_is_recomputed(
    tiny_modernbert, tmp_path, one_torch_thread
):
    """A cache file under the right key but holding another number of rows (a damaged or foreign file) is not
    reused: the features are computed again and the file replaced."""
    from transformers import AutoModel

    from longtail.probe import cached_embeddings, embedding_fingerprint
    from longtail.training import ModelArguments, load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    encoder = AutoModel.from_pretrained(tiny_modernbert)
    stale = tmp_path / f"{embedding_fingerprint(tiny_modernbert, TEXTS, 32, 'mean')}.npy"
    np.save(stale, np.ones((len(TEXTS) - 1, 32), dtype=np.float32))
    features, _, reused = cached_embeddings(tmp_path, tiny_modernbert, encoder, tokenizer, TEXTS, 32, "mean")
    assert not reused and features.shape == (len(TEXTS), 32) and not np.all(features == 1.0)
    np.testing.assert_array_equal(np.load(stale), features)


def test_frozen_body_is_never_unpickled(tiny_modernbert, tmp_path):
    """A checkpoint with only pickled weights (pytorch_model.bin) is refused, not loaded (use_safetensors)."""
    from transformers import AutoModel

    from longtail.probe import load_frozen_body

    AutoModel.from_pretrained(tiny_modernbert).save_pretrained(tmp_path / "pickled", safe_serialization=False)
    assert not (tmp_path / "pickled" / "model.safetensors").exists()
    with pytest.raises(OSError, match="safetensors"):
        load_frozen_body(str(tmp_path / "pickled"))


def test_embedding_cache_key_separates_the_texts():
    """["ab", "c"] and ["a", "bc"] are other texts (the same characters): other keys."""
    from longtail.probe import embedding_fingerprint

    assert embedding_fingerprint("org/m", ["ab", "c"], 32, "mean") != embedding_fingerprint(
        "org/m", ["a", "bc"], 32, "mean"
    )


def test_probe_run_config_refuses_a_folder_that_is_not_a_probe(tmp_path):
    """--head_init_from a fine-tuned classifier (model_type bert): refused by name, before any weight is read."""
    from longtail.probe import probe_run_config

    with pytest.raises(FileNotFoundError, match="no config.json"):
        probe_run_config(tmp_path, ["a", "b"])
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "id2label": {"0": "a", "1": "b"}})
    )
    with pytest.raises(ValueError, match="model_type is 'bert', expected 'longtail_probe'"):
        probe_run_config(tmp_path, ["a", "b"])


def test_probe_config_carries_its_bodys_sizes():
    """What tools read off any classifier's config: the bench's padding study its position table, its FLOPs
    estimate the layers; a probe's are its body's (without them, a padding study on a probe fails)."""
    from transformers import BertConfig

    from longtail.probe import ProbeConfig

    config = ProbeConfig(
        BertConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=64)
    )
    assert (config.hidden_size, config.num_hidden_layers, config.max_position_embeddings) == (48, 3, 64)
    again = ProbeConfig.from_dict(config.to_dict())
    assert (again.hidden_size, again.num_hidden_layers, again.max_position_embeddings) == (48, 3, 64)


def test_frozen_body_config_of_a_probe_folder_is_its_bodys(tmp_path):
    """What the probe recipe checks --max_length against: a checkpoint's config, or for a probe-architecture
    folder (a probe, LP-FT's output) the config of the body `load_frozen_body` embeds with, not the probe's own."""
    from transformers import BertConfig

    from longtail.probe import ProbeConfig, frozen_body_config

    body = BertConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=2, max_position_embeddings=64)
    body.save_pretrained(tmp_path / "body")
    ProbeConfig(body.to_dict(), num_labels=2).save_pretrained(tmp_path / "probe")
    for folder in ("body", "probe"):
        config = frozen_body_config(str(tmp_path / folder))
        assert type(config) is BertConfig and config.max_position_embeddings == 64, folder


def test_embedding_cache_of_the_wrong_shape_or_damaged_is_embedded_again(
    tiny_modernbert, tmp_path, one_torch_thread, caplog
):
    """A cache file under the right key whose rows are not the encoder's width (or too few, or not a .npy) is
    not served: the features are embedded again, with a warning, and the file replaced. A file of another width
    used to be returned as it was, and a damaged one stopped the run with numpy's error."""
    from transformers import AutoModel

    from longtail.probe import cached_embeddings
    from longtail.training import ModelArguments, load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    encoder = AutoModel.from_pretrained(tiny_modernbert)
    args = (tmp_path, tiny_modernbert, encoder, tokenizer, TEXTS, 32, "mean")
    first, key, _ = cached_embeddings(*args)
    path = tmp_path / f"{key}.npy"
    width = encoder.config.hidden_size
    for content, problem in (
        (np.zeros((len(TEXTS), width + 1), np.float32), f"shape ({len(TEXTS)}, {width + 1}), not"),
        (np.zeros((len(TEXTS) - 1, width), np.float32), f"shape ({len(TEXTS) - 1}, {width}), not"),
        (b"\x93NUMPY cut short", "unreadable ("),
    ):
        assert_embedded_again(path, content, problem, args, first, key, caplog)
    assert cached_embeddings(*args)[2] is True  # and served again once whole


def assert_embedded_again(path, content, problem, args, first, key, caplog):
    """The cache file at `path` replaced by `content` (an array saved, or raw bytes) is embedded again, with the
    warning naming `problem`, and written back whole."""
    from longtail.probe import cached_embeddings

    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.save(path, content)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longtail.probe"):
        features, again, reused = cached_embeddings(*args)
    assert (again, reused) == (key, False)
    np.testing.assert_array_equal(features, first)
    np.testing.assert_array_equal(np.load(path), first)  # replaced
    assert f"Cached embeddings {path} are {problem}" in caplog.text and "embedding again" in caplog.text


def test_embedding_cache_whose_values_are_damaged_is_embedded_again(
    tiny_modernbert, tmp_path, one_torch_thread, caplog
):
    """A cache file of the right shape whose values are not finite floats (a damaged copy: its header whole, its data
    not) is embedded again with a warning, as a file of the wrong shape is; NaN rows were served, and the head's fit
    stopped with scikit-learn's "Input X contains NaN" traceback. A file cut short inside its data is unreadable."""
    from transformers import AutoModel

    from longtail.probe import cached_embeddings
    from longtail.training import ModelArguments, load_tokenizer

    tokenizer = load_tokenizer(ModelArguments(model_name_or_path=tiny_modernbert))
    encoder = AutoModel.from_pretrained(tiny_modernbert)
    args = (tmp_path, tiny_modernbert, encoder, tokenizer, TEXTS, 32, "mean")
    first, key, _ = cached_embeddings(*args)
    path = tmp_path / f"{key}.npy"
    nan_row, inf_rows = first.copy(), first.copy()
    nan_row[1, 0] = np.nan
    inf_rows[0, 3], inf_rows[2, :] = np.inf, -np.inf
    whole = path.read_bytes()
    for content, problem in (
        (nan_row, "not finite in 1 row(s)"),
        (inf_rows, "not finite in 2 row(s)"),
        (np.zeros(first.shape, np.int64), "of dtype int64, not floating point"),
        (whole[: len(whole) - 8], "unreadable ("),  # the header whole, the last values cut off
    ):
        assert_embedded_again(path, content, problem, args, first, key, caplog)
    assert cached_embeddings(*args)[2] is True


def test_two_runs_writing_one_cache_entry_at_once_both_finish(tmp_path, monkeypatch):
    """Two probe runs that embed the same split at the same time (two grids started together on one cache) both
    write its cache entry: each through a temporary file of its own, so both renames succeed and the entry is
    whole. They shared one temporary name, and the second rename found the file gone (FileNotFoundError, after
    the embedding). Here two threads both write before either renames; no temporary file is left."""
    import pathlib
    import threading
    from types import SimpleNamespace

    import longtail.probe as probe

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    features = np.arange(len(TEXTS) * 4, dtype=np.float32).reshape(len(TEXTS), 4)
    monkeypatch.setattr(probe, "embed_texts", lambda *a, **k: features.copy())
    both_written, rename = threading.Barrier(2, timeout=30), pathlib.Path.replace

    def replace_once_both_wrote(self, target):
        both_written.wait()
        return rename(self, target)

    monkeypatch.setattr(pathlib.Path, "replace", replace_once_both_wrote)
    encoder = SimpleNamespace(config=SimpleNamespace(hidden_size=4))
    cache, results, errors = tmp_path / "cache", [], []

    def one_run():
        try:
            results.append(probe.cached_embeddings(cache, str(folder), encoder, None, TEXTS, 32, "mean"))
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(repr(err))

    threads = [threading.Thread(target=one_run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and [r[2] for r in results] == [False, False]
    key = results[0][1]
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.npy"]
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(cache / f"{key}.npy"), features)


def test_a_probe_run_is_a_teacher_in_a_fresh_python(probe_run, tmp_path):
    """distill's --teacher_model_name_or_path reads a probe (or LP-FT) run: in a process that has not imported
    longtail.probe (the distill recipe does not), its config was "model type `longtail_probe` but Transformers does
    not recognize this architecture", refused as unreadable. Its logits are the probe's own."""
    import subprocess
    import sys

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = [
        "I was charged a late fee although I paid on time.",
        "They keep calling about a debt I do not owe.",
    ]
    script = (
        "import json, sys\n"
        "from longtail.distill import load_teacher, teacher_config, teacher_forward\n"
        "assert teacher_config(sys.argv[1]).model_type == 'longtail_probe'\n"
        "model, tokenizer, labels = load_teacher(sys.argv[1])\n"
        "print(json.dumps(teacher_forward(model, tokenizer, json.loads(sys.argv[2]), 64, 8).tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", script, str(probe_run["out"]), json.dumps(texts)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    model = AutoModelForSequenceClassification.from_pretrained(probe_run["out"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(probe_run["out"])
    with torch.no_grad():
        expected = torch.cat([model(**tokenizer([t], truncation=True, max_length=64, return_tensors="pt")).logits
                              for t in texts])  # fmt: skip
    np.testing.assert_allclose(
        np.array(json.loads(done.stdout.strip().splitlines()[-1])), expected, atol=1e-5
    )


def test_probe_grid_options_repeated_twice_name_each_repeat_in_order():
    recipe = load_recipe("probe_encoder")
    with pytest.raises(
        ValueError, match=r"^grid_C lists 0\.1, 1\.0 more than once: \[1\.0, 0\.1, 1\.0, 0\.1\]$"
    ):
        recipe.ProbeArguments(grid_C=[1.0, 0.1, 1.0, 0.1])
    with pytest.raises(ValueError, match=r"^grid_class_weight lists balanced, none more than once: "):
        recipe.ProbeArguments(grid_class_weight=["none", "balanced", "none", "balanced"])


def test_embedding_cache_of_the_wrong_shape_is_named_by_its_shape_whatever_it_holds(
    tmp_path, monkeypatch, caplog
):
    """A file of the wrong shape is named by its shape, NaN or text in it (text has no `isfinite`), and replaced;
    a write that fails leaves neither the entry nor its temporary file."""
    from types import SimpleNamespace

    import longtail.probe as probe

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    features = np.arange(len(TEXTS) * 4, dtype=np.float32).reshape(len(TEXTS), 4)
    monkeypatch.setattr(probe, "embed_texts", lambda *a, **k: features.copy())
    encoder = SimpleNamespace(config=SimpleNamespace(hidden_size=4))
    cache = tmp_path / "cache"
    args = (cache, str(folder), encoder, None, TEXTS, 32, "mean")
    _, key, _ = probe.cached_embeddings(*args)
    path = cache / f"{key}.npy"
    for content, shape in (
        (np.full((len(TEXTS) - 1, 4), np.nan, np.float32), f"({len(TEXTS) - 1}, 4)"),
        (np.array(["a", "b"]), "(2,)"),
    ):
        np.save(path, content)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longtail.probe"):
            out, _, reused = probe.cached_embeddings(*args)
        assert (
            reused is False
            and f"Cached embeddings {path} are shape {shape}, not ({len(TEXTS)}, 4)" in caplog.text
        )
        np.testing.assert_array_equal(np.load(path), features)

    def full_disk(file, array, **kwargs):
        Path(file).write_bytes(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    path.unlink()
    monkeypatch.setattr(probe.np, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        probe.cached_embeddings(*args)
    assert list(cache.iterdir()) == []
