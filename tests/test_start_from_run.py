"""`--model_name_or_path` a finished classifier run: its head is kept, reordered or replaced by label name.

Transformers alone stopped with a size mismatch deep in `load_state_dict` for a run over another number of
labels, read the old rows as this run's labels for as many labels under other names, and could not read a
probe or LP-FT run (model_type longtail_probe) at all."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_seeded

LABELS = ["billing", "fraud", "late fee"]


def saved_classifier(base: str, out: Path, labels: list[str]) -> Path:
    """`base`'s architecture as a sequence classifier over `labels` (seeded random weights), saved to `out`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    config = AutoConfig.from_pretrained(
        base,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
    )
    config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    return save_seeded(AutoModelForSequenceClassification.from_config, config, tokenizer, out)


def load(folder: Path, labels: list[str]):
    from longtail.training import ModelArguments, load_classifier, load_tokenizer

    args = ModelArguments(model_name_or_path=str(folder))
    return load_classifier(args, labels, load_tokenizer(args))


def head_and_body(model):
    from longtail.training import output_layer

    layer = output_layer(model, model.config.num_labels)
    body = {n: p for n, p in model.base_model.named_parameters()}
    return layer, body


@pytest.fixture(params=["modernbert", "qwen2"])
def classifier(request, tmp_path, tiny_modernbert, tiny_qwen2) -> Path:
    base = tiny_modernbert if request.param == "modernbert" else tiny_qwen2
    return saved_classifier(base, tmp_path / "run", LABELS)


def test_same_labels_keep_the_trained_head(classifier, caplog):
    saved = load(classifier, LABELS)  # reference: the folder as saved
    with caplog.at_level(logging.INFO, logger="longtail.training"):
        model = load(classifier, LABELS)
    assert "is a classifier over this run's labels: starting from its head" in caplog.text
    for a, b in zip(model.state_dict().values(), saved.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_same_labels_in_another_order_reorder_the_rows(classifier, caplog):
    from transformers import AutoModelForSequenceClassification

    from longtail.training import output_layer

    saved = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    bias = output_layer(saved, len(LABELS)).bias
    # ModernBERT's head has a bias, drawn as zeros: give each label its own, so that a row left behind shows
    if bias is not None:
        with torch.no_grad():
            bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        saved.save_pretrained(classifier)
    order = ["late fee", "billing", "fraud"]
    with caplog.at_level(logging.INFO, logger="longtail.training"):
        model = load(classifier, order).eval()
    assert "this run's labels in another order: its head rows reordered" in caplog.text
    assert model.config.id2label == dict(enumerate(order))
    ids = torch.tensor([[5, 9, 14, 22, 7, 3]])
    with torch.no_grad():
        before, after = saved(input_ids=ids).logits, model(input_ids=ids).logits
    # each label's logit is its own, whichever row now holds it
    torch.testing.assert_close(after, before[:, [2, 0, 1]], rtol=0, atol=1e-6)


def test_other_labels_get_a_fresh_output_layer(classifier, caplog):
    """As many labels under other names: Transformers loads the old rows; they are drawn again. Fewer labels: it
    stopped with a size mismatch. More labels, all the run's among them: not a reordering. Either way the body is
    the run's, and a warning counts the labels."""
    saved_layer, saved_body = head_and_body(load(classifier, LABELS))
    for labels, shared in (
        (["billing", "fraud", "debt"], 2),
        (["billing", "fraud"], 2),
        ([*LABELS, "debt"], 3),
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longtail.training"):
            model = load(classifier, labels)
        assert f"classifier over other labels (3 there, {len(labels)} here, {shared} shared)" in caplog.text
        layer, body = head_and_body(model)
        assert layer.weight.shape[0] == len(labels)
        assert not torch.equal(layer.weight[:2], saved_layer.weight[:2])  # not the old rows
        # drawn as the model draws a fresh head: ModernBERT at hidden**-0.5 (truncated), Qwen2 at initializer_range
        config = model.config
        std = config.hidden_size**-0.5 if config.model_type == "modernbert" else config.initializer_range
        assert 0.6 * std < layer.weight.std().item() < 1.4 * std
        for name, p in saved_body.items():
            assert torch.equal(body[name], p), name


def test_a_refit_run_warns_its_validation_rows_were_fit(tmp_path, tiny_modernbert, caplog):
    run = saved_classifier(tiny_modernbert, tmp_path / "run", LABELS)
    (run / "run_config.json").write_text(json.dumps({"refit": {"refit_with_validation": True}}))
    with caplog.at_level(logging.WARNING, logger="longtail.training"):
        load(run, LABELS)
    assert "was refit on train + validation" in caplog.text
    (run / "run_config.json").write_text(json.dumps({"refit": {"refit_with_validation": False}}))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longtail.training"):
        load(run, LABELS)
    assert "refit" not in caplog.text
    # a run without refit options (a probe's run_config.json has no "refit"), or an unreadable one: no warning
    for content in ({"model": {"model_name_or_path": "x"}}, {"refit": None}, [1, 2]):
        (run / "run_config.json").write_text(json.dumps(content))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="longtail.training"):
            load(run, LABELS)
        assert "refit" not in caplog.text, content


def test_more_than_ten_labels_keep_their_row_order(tmp_path, tiny_modernbert, caplog):
    """A config.json whose id2label keys are in text order (0, 1, 10, 11, 2, ...: json.dumps(sort_keys=True) of
    text keys, a hand-edited file): the labels are taken in row order (by id), not in the file's order, which
    would scramble a kept head as a reordering."""
    from transformers import AutoConfig

    from longtail.training import trained_labels

    labels = [f"class {i:02d}" for i in range(12)]
    run = saved_classifier(tiny_modernbert, tmp_path / "run", labels)
    config = json.loads((run / "config.json").read_text())
    for key in ("id2label", "label2id"):
        config[key] = dict(sorted((str(k), v) for k, v in config[key].items()))
    (run / "config.json").write_text(json.dumps(config))
    assert list(config["id2label"])[:3] == ["0", "1", "10"]
    assert trained_labels(AutoConfig.from_pretrained(run)) == labels
    saved = load(run, labels)
    with caplog.at_level(logging.INFO, logger="longtail.training"):
        model = load(run, labels)
    assert "is a classifier over this run's labels" in caplog.text
    for a, b in zip(model.state_dict().values(), saved.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_output_layer_is_the_heads_last_with_one_row_per_label(tiny_modernbert):
    """As many labels as the hidden size: ModernBERT's head.dense (hidden -> hidden) also has that many rows; the
    output layer is the classifier after it."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from longtail.training import output_layer

    config = AutoConfig.from_pretrained(tiny_modernbert)
    config.num_labels = config.hidden_size
    model = AutoModelForSequenceClassification.from_config(config)
    assert model.head.dense.out_features == config.hidden_size
    assert output_layer(model, config.hidden_size) is model.classifier


def test_a_base_model_gets_a_head_without_a_note(tiny_modernbert, caplog):
    with caplog.at_level(logging.INFO, logger="longtail.training"):
        model = load(Path(tiny_modernbert), LABELS)
    assert model.config.num_labels == 3
    assert "--model_name_or_path" not in caplog.text


def test_a_probe_run_is_read_in_a_fresh_python(tmp_path, tiny_modernbert):
    """A probe or LP-FT run's folder (model_type longtail_probe) in a Python that never imported longtail.probe:
    it was Transformers' 'does not recognize this architecture', in the load and then in the recipes' config read
    before it (for --max_length)."""
    from transformers import AutoConfig, AutoTokenizer

    from longtail.probe import ProbeConfig, ProbeForSequenceClassification

    config = ProbeConfig(
        AutoConfig.from_pretrained(tiny_modernbert),
        num_labels=3,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    run = save_seeded(
        ProbeForSequenceClassification, config, AutoTokenizer.from_pretrained(tiny_modernbert), tmp_path
    )
    code = (
        "import sys, torch\n"
        "from safetensors.torch import load_file\n"
        "from longtail.lpft import LPFTArguments, model_config\n"
        "from longtail.training import ModelArguments, load_classifier, load_tokenizer\n"
        f"args = ModelArguments(model_name_or_path={str(run)!r})\n"
        f"labels = {['fraud', 'billing', 'late fee']!r}\n"
        # the recipes read the config first, for --max_length, before any weight: the probe's type unknown there
        "assert model_config(args, LPFTArguments(), labels, load_tokenizer(args)).model_type == 'longtail_probe'\n"
        "model = load_classifier(args, labels, load_tokenizer(args))\n"
        f"saved = load_file({str(run / 'model.safetensors')!r})['classifier.weight']\n"
        "assert torch.equal(model.classifier.weight, saved[[1, 0, 2]])\n"
        "print(type(model).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ProbeForSequenceClassification"


def test_other_labels_without_an_output_layer_to_replace_is_one_error(tmp_path, tiny_modernbert, monkeypatch):
    """As many labels under other names, and no linear layer of that many rows in the head: the old rows cannot be
    replaced, so the run stops with one line rather than train on them as this run's labels."""
    import longtail.training
    from longtail.cli import UsageError

    run = saved_classifier(tiny_modernbert, tmp_path / "run", LABELS)
    monkeypatch.setattr(longtail.training, "output_layer", lambda model, n: None)
    with pytest.raises(
        UsageError, match="classifier over other labels than this run's, and its output layer"
    ):
        load(run, ["billing", "fraud", "debt"])
    load(run, ["billing", "fraud"])  # another number of labels: Transformers draws that layer itself


def sharded_copy(run: Path, out: Path) -> Path:
    """`run`'s classifier saved again in shards of at most 20 KB, as Transformers saves a model past its shard size:
    model.safetensors.index.json and several model-0000k-of-0000n.safetensors, no model.safetensors."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    AutoModelForSequenceClassification.from_pretrained(run).save_pretrained(out, max_shard_size="20KB")
    AutoTokenizer.from_pretrained(run).save_pretrained(out)
    assert (out / "model.safetensors.index.json").is_file() and not (out / "model.safetensors").exists()
    assert len(list(out.glob("model-*-of-*.safetensors"))) >= 3
    return out


@pytest.mark.parametrize(
    "labels",
    [
        LABELS,  # kept
        ["late fee", "billing", "fraud"],  # reordered
        ["billing", "fraud", "debt"],  # as many, other names: drawn again
        ["billing", "fraud"],  # fewer: Transformers draws the mismatched layer
        [*LABELS, "debt"],  # more
    ],
    ids=["same", "reordered", "renamed", "fewer", "more"],
)
def test_a_sharded_run_is_started_from_as_the_same_run_in_one_file(classifier, labels, tmp_path, caplog):
    """A run saved in shards (an index json + several safetensors, as a large model is) gives the very model its
    single-file folder gives, parameter for parameter with the same seed: its head kept, reordered or drawn fresh
    by label name, with the same log line, and its body loaded."""
    from transformers import AutoModelForSequenceClassification

    from longtail.training import output_layer

    saved = AutoModelForSequenceClassification.from_pretrained(classifier)
    bias = output_layer(saved, len(LABELS)).bias
    if bias is not None:  # ModernBERT's head bias is drawn as zeros: give each label its own
        with torch.no_grad():
            bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        saved.save_pretrained(classifier)
    shards = sharded_copy(classifier, tmp_path / "sharded")
    models, logs = [], []
    for folder in (classifier, shards):
        caplog.clear()
        torch.manual_seed(1)  # a fresh output layer is drawn alike from both
        with caplog.at_level(logging.INFO, logger="longtail.training"):
            models.append(load(folder, labels))
        logs.append([r.getMessage().replace(str(folder), "<run>") for r in caplog.records])
    one_file, sharded = models
    assert logs[1] == logs[0] and logs[0]  # kept / reordered / other labels: said alike
    assert sharded.config.id2label == dict(enumerate(labels))
    assert list(sharded.state_dict()) == list(one_file.state_dict())
    for (name, a), b in zip(sharded.state_dict().items(), one_file.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # and, on its own: the head kept, its rows moved with their labels, or new; the body the run's, from the shards
    layer, body = head_and_body(sharded)
    old = output_layer(saved, len(LABELS))
    if set(labels) == set(LABELS):
        rows = [LABELS.index(name) for name in labels]
        assert torch.equal(layer.weight, old.weight[rows])
        assert layer.bias is None or torch.equal(layer.bias, old.bias[rows])
    else:
        assert not torch.equal(layer.weight[:2], old.weight[:2])
    for name, p in saved.base_model.named_parameters():
        assert torch.equal(body[name], p), name
