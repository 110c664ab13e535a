"""A frozen encoder + a linear head as ONE Transformers model (`model_type: longtail_probe`).

Why a custom class: the probe recipe fits its head with scikit-learn on pooled features, but serving
(`predict`, `make bench`, ONNX export) expects a folder that `AutoModelForSequenceClassification.from_pretrained`
loads. `ProbeForSequenceClassification` wraps any `AutoModel` body (encoder or decoder; its config is nested
in ours), the pooling, and a `Linear` head whose logits equal the sklearn head's `decision_function`.
Importing this module registers the classes with the Auto* factories, so no `trust_remote_code` is needed:

    import longtail.probe  # noqa: F401
    model = AutoModelForSequenceClassification.from_pretrained("outputs/probe_encoder")

Pooling: `mean` (mask-weighted mean of the last hidden states; what sentence-transformers uses), `cls` (first
token: BERT-style encoders), `last` (last non-pad token: decoders, whose causal attention only lets the last
token see the whole text). The probe pads on the right, where every pooling is exact. `feature_layers` picks
which hidden states are pooled (default: the body's output); several are concatenated, each normalised alone.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import uuid
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from longtail.cli import MissingInputError, UsageError, reading_model
from longtail.inference import LONG_TEXT, encode_batches, text_windows

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "cls", "last")
MODEL_TYPE = "longtail_probe"
# the first line of every quick start that loads a probe-architecture model (a probe, LP-FT, a LoRA run on a probe)
REGISTER_LINE = f"import longtail.probe  # registers model_type {MODEL_TYPE} (no trust_remote_code needed)"
LAST = (-1,)  # feature_layers default: the body's final output only


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden), ignoring padded positions."""
    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        # position of the last real token, whichever side the padding is on
        positions = torch.arange(mask.shape[1], device=hidden.device)
        last = (attention_mask.long() * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be one of {POOLINGS}, got '{pooling}'")


def pooled_features(
    hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str, normalize: bool = False
) -> torch.Tensor:
    """`pool`, then optionally L2-normalised per row (per window, when a text is read in windows: the head
    stays linear in the averaged features, so averaging window logits is still exact)."""
    features = pool(hidden, attention_mask, pooling)
    return nn.functional.normalize(features, dim=-1) if normalize else features


def check_layers(layers, num_hidden_layers: int) -> tuple[int, ...]:
    """`feature_layers` as a tuple of hidden-state indices, each in [-(L+1), L] for a body of L layers."""
    layers = tuple(int(i) for i in layers)
    bad = [i for i in layers if not -(num_hidden_layers + 1) <= i <= num_hidden_layers]
    distinct = {i % (num_hidden_layers + 1) for i in layers}  # -1 and L are the same layer
    if not layers or bad or len(distinct) != len(layers):
        raise UsageError(
            f"feature_layers must be distinct hidden-state indices in [-{num_hidden_layers + 1}, "
            f"{num_hidden_layers}] (0: the embedding output, -1: the last layer), got {list(layers)}"
        )
    return layers


def encoder_features(
    encoder, input_ids, attention_mask, pooling: str, normalize: bool, layers=LAST, **kwargs
) -> torch.Tensor:
    """The body's pooled features: of its final output (`last_hidden_state`, after any final norm) when
    `layers` is (-1,); else each listed hidden state (0: the embedding output; -1: the final output)
    pooled and normalised on its own, concatenated in the order given."""
    if tuple(layers) == LAST:
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        return pooled_features(hidden, attention_mask, pooling, normalize)
    out = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs)
    states = out.hidden_states
    # -1 is the model's output: some bodies (ModernBERT) record their last hidden state before the final norm
    pick = [out.last_hidden_state if i in (-1, len(states) - 1) else states[i] for i in layers]
    return torch.cat([pooled_features(h, attention_mask, pooling, normalize) for h in pick], dim=-1)


def default_pooling(config: PretrainedConfig) -> str:
    """`last` for decoder-only models, `mean` otherwise."""
    causal = {
        "qwen2",
        "qwen3",
        "llama",
        "mistral",
        "gemma",
        "gemma2",
        "gemma3_text",
        "phi3",
        "gpt2",
        "smollm3",
    }
    return "last" if config.model_type in causal or getattr(config, "is_decoder", False) else "mean"


class ProbeConfig(PretrainedConfig):
    model_type = MODEL_TYPE
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(
        self,
        encoder_config=None,
        pooling: str = "mean",
        normalize: bool = False,
        feature_layers=LAST,
        **kwargs,
    ):
        if isinstance(encoder_config, dict):
            encoder_config = dict(encoder_config)
            encoder_config = AutoConfig.for_model(encoder_config.pop("model_type"), **encoder_config)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got '{pooling}'")
        self.encoder_config = encoder_config
        self.pooling = pooling
        self.normalize = bool(normalize)  # L2-normalise pooled features (per window) before the head
        self.feature_layers = list(feature_layers)  # hidden states pooled and concatenated for the head
        super().__init__(**kwargs)
        if encoder_config is not None:  # what tools read off a classifier's config (sizes, input limit)
            self.hidden_size = encoder_config.hidden_size
            if getattr(encoder_config, "num_hidden_layers", None) is not None:
                # the bench's FLOPs estimate (attention term) reads it, as off any classifier's config
                self.num_hidden_layers = encoder_config.num_hidden_layers
                check_layers(self.feature_layers, encoder_config.num_hidden_layers)
            if hasattr(encoder_config, "max_position_embeddings"):
                self.max_position_embeddings = encoder_config.max_position_embeddings


class ProbeForSequenceClassification(PreTrainedModel):
    """`encoder` (the body, any AutoModel) -> pooling -> `classifier` (Linear hidden -> num_labels)."""

    config_class = ProbeConfig
    base_model_prefix = "encoder"
    _supports_sdpa = True

    def __init__(self, config: ProbeConfig):
        super().__init__(config)
        enc = config.encoder_config
        if enc.model_type == "modernbert" and not torch.cuda.is_available():
            enc.reference_compile = False  # its auto-compile breaks on CPU when triton is installed
        self.encoder = AutoModel.from_config(enc)
        self.classifier = nn.Linear(enc.hidden_size * len(config.feature_layers), config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        if module is self.classifier:
            module.weight.data.normal_(0.0, 0.02)
            module.bias.data.zero_()

    def features(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {}
        if (
            token_type_ids is not None
            and "token_type_ids" in inspect.signature(self.encoder.forward).parameters
        ):
            kwargs["token_type_ids"] = token_type_ids  # BERT uses them; ModernBERT and decoders take none
        config = self.config
        return encoder_features(
            self.encoder,
            input_ids,
            attention_mask,
            config.pooling,
            config.normalize,
            config.feature_layers,
            **kwargs,
        )

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        logits = self.classifier(self.features(input_ids, attention_mask, token_type_ids))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)

    @classmethod
    def from_encoder(
        cls,
        encoder: PreTrainedModel,
        pooling: str,
        weight: np.ndarray,
        bias: np.ndarray,
        label_names: list[str],
        normalize: bool = False,
        feature_layers=LAST,
        pad_token_id: int | None = None,
    ) -> ProbeForSequenceClassification:
        """Wrap a loaded body and a fitted linear head (weight: (num_labels, hidden * len(feature_layers)),
        bias: (num_labels,)). `pad_token_id`: the tokenizer's, what the probe is padded with (default: the body's);
        the body keeps its config's, which RoBERTa-style positions count from."""
        config = ProbeConfig(
            encoder_config=encoder.config,
            pooling=pooling,
            normalize=normalize,
            feature_layers=feature_layers,
            num_labels=len(label_names),
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
            problem_type="single_label_classification",
            pad_token_id=encoder.config.pad_token_id if pad_token_id is None else pad_token_id,
        )
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        with torch.no_grad():
            model.classifier.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
            model.classifier.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return model.eval()


AutoConfig.register(MODEL_TYPE, ProbeConfig, exist_ok=True)
AutoModelForSequenceClassification.register(ProbeConfig, ProbeForSequenceClassification, exist_ok=True)


def _checkpoint_config(name: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of a checkpoint to embed with; a LoRA/QLoRA adapter folder refused."""
    if (Path(name) / "adapter_config.json").is_file():  # its folder holds no body weights: a deep load error
        raise UsageError(
            f"{name} is a LoRA/QLoRA adapter run (adapter_config.json): pass its merged model instead "
            f"({Path(name) / 'merged'}, written by --merge_adapter true or longtail.adapters.merge_adapter)"
        )
    with reading_model("--model_name_or_path", name):
        return AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)


def frozen_body_config(name: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The config of the body `load_frozen_body(name)` returns (a probe-architecture run's: its body's), read without
    any weight, so options are checked against it (--max_length) before a load that takes minutes for a large model."""
    config = _checkpoint_config(name, trust_remote_code)
    return config.encoder_config if config.model_type == MODEL_TYPE else config


def load_frozen_body(name: str, trust_remote_code: bool = False) -> PreTrainedModel:
    """The body to embed with: `AutoModel` of a checkpoint (a classifier's folder gives its body), or the body of
    a probe-architecture run, e.g. LP-FT's output, whose fine-tuned body a new probe can read ("classifier
    re-training", Kang et al. 2020). `longtail_probe` has no `AutoModel` class; its head is not wanted here."""
    config = _checkpoint_config(name, trust_remote_code)
    kwargs = dict(trust_remote_code=trust_remote_code, use_safetensors=True, dtype=torch.float32)
    if config.model_type == MODEL_TYPE:
        body = ProbeForSequenceClassification.from_pretrained(name, **kwargs).encoder
        logger.info("%s is a probe-architecture model: embedding with its body, not its head", name)
        return body
    return AutoModel.from_pretrained(name, **kwargs)  # use_safetensors: never unpickle weights


# ---------------------------------------------------------------------------------------------
# Embedding with a frozen body, cached on disk
# ---------------------------------------------------------------------------------------------


def embed_texts(
    encoder,
    tokenizer,
    texts,
    max_length: int,
    pooling: str,
    batch_size: int = 64,
    desc: str = "Embedding",
    long_text: str = "truncate",
    normalize: bool = False,
    layers=LAST,
) -> np.ndarray:
    """Pooled features (float32, one row per text, in order; `encoder_features` of `layers`).

    long_text `truncate`: the first `max_length` tokens of each text. `windows`: the whole text, cut into
    consecutive `max_length` windows (`longtail.inference.text_windows`), each embedded, then averaged
    weighted by tokens; a text that fits is one window, identical to truncating it. normalize: each pooled
    feature (each window's) L2-normalised before that average, as `ProbeForSequenceClassification` does."""
    if long_text not in LONG_TEXT:
        raise ValueError(f"long_text must be one of {LONG_TEXT}, got '{long_text}'")
    texts = [str(t) for t in texts]
    # every pooling is exact with right padding
    saved_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        if long_text == "windows":
            windows = text_windows(tokenizer, texts, max_length)
            features = embed_batches(
                encoder,
                windows.batches(tokenizer, batch_size),
                len(windows.owner),
                pooling,
                desc,
                normalize,
                layers,
            )
            return windows.per_row(features).astype(np.float32)
        batches = encode_batches(tokenizer, texts, batch_size, max_length)  # longest first: OOM shows early
        return embed_batches(encoder, batches, len(texts), pooling, desc, normalize, layers)
    finally:
        tokenizer.padding_side = saved_side


@torch.inference_mode()
def embed_batches(
    encoder, batches, num_rows: int, pooling: str, desc: str, normalize: bool = False, layers=LAST
) -> np.ndarray:
    """Pooled features of `longtail.inference` batches (length-sorted, dynamic padding), in row order."""
    from tqdm.auto import tqdm

    out = np.zeros((num_rows, encoder.config.hidden_size * len(layers)), dtype=np.float32)
    encoder.eval()
    device = next(encoder.parameters()).device
    for batch in tqdm(batches, desc=desc, unit="batch"):
        ids, mask = (torch.from_numpy(batch.inputs[k]).to(device) for k in ("input_ids", "attention_mask"))
        features = encoder_features(encoder, ids, mask, pooling, normalize, layers)
        out[batch.rows] = features.float().cpu().numpy()
    return out


def hub_commit(repo_id: str) -> str | None:
    """The commit of Hub model `repo_id` that the local Hub cache holds as its `main` (what loading it by that id just
    resolved and read), found without the network; None when the cache has no config or tokenizer file of it."""
    from huggingface_hub import try_to_load_from_cache
    from transformers.utils.hub import extract_commit_hash

    for filename in ("config.json", "tokenizer_config.json"):  # a tokenizer repo may have no config.json
        try:
            path = try_to_load_from_cache(repo_id, filename)
        except ValueError:  # not a repo id (HFValidationError): loading it failed first
            return None
        if isinstance(path, str):
            return extract_commit_hash(path, None)
    return None


TOKENIZER_VOCABULARIES = ("vocab.txt", "merges.txt")  # WordPiece's; BPE's merges (its vocab.json is a .json)


def model_signature(name_or_path: str) -> dict:
    """What identifies a checkpoint: its Hub id and the commit it was loaded at (`hub_commit`: a model updated on
    the Hub is another model), or for a local folder its config and weight files (name, size, SHA-256 of the whole
    file), so a retrained model in the same folder is not mistaken. The hash covered the first MiB alone, which in a
    body's safetensors is its embeddings: a body retrained above them kept its key and was served the old features.
    A file of at most 1 MiB has the signature it had. Hashing reads the weights once per split (0.1 s for
    all-MiniLM-L6-v2's 90 MB), as distill's teacher cache does."""
    path = Path(name_or_path)
    if not path.is_dir():
        commit = hub_commit(name_or_path)
        return {"model": name_or_path} | ({"commit": commit} if commit else {})
    files = {}
    for f in sorted(path.glob("*")):
        # the vocabularies too (SentencePiece's: tokenizer.model, spiece.model, ...): a folder without tokenizer.json
        # builds its tokenizer from them, and an edited vocab.txt (other token ids, other features) kept the key
        vocabulary = f.name in TOKENIZER_VOCABULARIES or f.suffix == ".model"
        if (f.suffix in {".safetensors", ".json", ".bin", ".gguf"} or vocabulary) and f.is_file():
            digest = hashlib.sha256()
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            files[f.name] = [f.stat().st_size, digest.hexdigest()]
    return {"model": str(path.resolve()), "files": files}


def embedding_fingerprint(
    model_name_or_path: str,
    texts,
    max_length: int,
    pooling: str,
    long_text: str = "truncate",
    normalize: bool = False,
    layers=LAST,
    tokenizer_name: str | None = None,
) -> str:
    digest = hashlib.sha256()
    for t in texts:
        digest.update(str(t).encode("utf-8") + b"\0")
    key = {
        "signature": model_signature(model_name_or_path),
        "texts": digest.hexdigest(),
        "n": len(texts),
        "max_length": max_length,
        "pooling": pooling,
        # features computed under another torch or transformers (kernels, model code) are computed again
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if long_text != "truncate":  # keyed only when set, so caches made before the option stay valid
        key["long_text"] = long_text
    if normalize:
        key["normalize"] = True
    if tuple(layers) != LAST:
        key["layers"] = list(layers)
    if tokenizer_name and tokenizer_name != model_name_or_path:  # another tokenizer: other tokens, features
        key["tokenizer"] = model_signature(tokenizer_name)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def cached_embeddings(
    cache_dir,
    model_name_or_path: str,
    encoder,
    tokenizer,
    texts,
    max_length,
    pooling,
    long_text: str = "truncate",
    normalize: bool = False,
    layers=LAST,
    tokenizer_name: str | None = None,
    **kw,
):
    """embed_texts, reusing `<cache_dir>/<fingerprint>.npy` when the model (and `tokenizer_name`, when it is
    another; a Hub id at the same commit), texts, max_length, pooling, long_text, normalize, layers and the torch and
    transformers versions match and the file holds a row of the encoder's width per text, finite floats (else, with a
    warning, embedded again and replaced). Returns (features, fingerprint, reused)."""
    fingerprint = embedding_fingerprint(
        model_name_or_path, texts, max_length, pooling, long_text, normalize, layers, tokenizer_name
    )
    path = Path(cache_dir) / f"{fingerprint}.npy"
    if path.is_file():
        expected = (len(texts), encoder.config.hidden_size * len(layers))
        try:
            features = np.load(path, allow_pickle=False)
            problem = None if features.shape == expected else f"shape {features.shape}, not {expected}"
            # the header can be whole and the values not (a damaged copy): scikit-learn's NaN traceback otherwise
            if problem is None and features.dtype.kind != "f":
                problem = f"of dtype {features.dtype}, not floating point"
            elif problem is None and not np.isfinite(features).all():
                problem = f"not finite in {int((~np.isfinite(features)).any(axis=1).sum())} row(s)"
        except (OSError, ValueError, EOFError) as err:  # cut short or not a .npy: numpy's own error
            problem = f"unreadable ({' '.join(str(err).split())})"
        if problem is None:
            logger.info("Reusing cached embeddings %s (%d rows)", path, len(texts))
            return features, fingerprint, True
        # a copied-in or damaged file, never ours (written atomically): embed again and replace it
        logger.warning("Cached embeddings %s are %s: embedding again", path, problem)
    features = embed_texts(
        encoder,
        tokenizer,
        texts,
        max_length,
        pooling,
        long_text=long_text,
        normalize=normalize,
        layers=layers,
        **kw,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # written under a name of this call's own, then renamed (atomic): an interrupted run leaves no half-written
    # cache, and two runs embedding the same split at once (two grids started together) do not share one temporary
    # file, whose rename the second run then found gone (FileNotFoundError once its split was embedded)
    tmp = path.with_name(f"{fingerprint}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
    try:
        np.save(tmp, features)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no temporary file behind
    return features, fingerprint, False


def settle_tokenizer(tokenizer, max_length: int) -> None:
    """Put a fast tokenizer's backend in one state before it is saved: truncation at `max_length`, no padding.

    The backend keeps the truncation and padding of its last call, and `tokenizer.json` saves them: a probe that
    embedded its texts saved its own max_length, one that reused cached features saved the model's original state
    (all-MiniLM-L6-v2's: padding to 128 and truncation at 128), so the same run gave two different folders, and
    anything reading `tokenizer.json` directly (the `tokenizers` library) cut texts at another length. Transformers
    sets both on every call, so its own use of the tokenizer is the same either way."""
    if not getattr(tokenizer, "is_fast", False):
        return
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.enable_truncation(
        max_length=max_length, stride=0, strategy="longest_first", direction=tokenizer.truncation_side
    )


def probe_run_config(run_dir, label_names: list[str]) -> dict:
    """The config.json of a saved probe run, checked (a probe's folder, this run's labels in its order) before any of
    its weights are read."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise MissingInputError(
            f"--head_init_from {run_dir}: no config.json (expected a probe_encoder run folder)"
        )
    config = json.loads(config_path.read_text("utf-8"))
    if config.get("model_type") != MODEL_TYPE:
        raise UsageError(
            f"--head_init_from {run_dir}: model_type is '{config.get('model_type')}', expected '{MODEL_TYPE}' "
            "(a probe_encoder run folder)"
        )
    probe_labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    if probe_labels != list(label_names):
        missing = sorted(set(label_names) - set(probe_labels))
        extra = sorted(set(probe_labels) - set(label_names))
        # only the lists that hold something ("missing from the probe: []" beside a capped run's 10 lost classes)
        parts = [f"{len(probe_labels)} vs {len(label_names)}"]
        parts += [f"missing from the probe: {missing[:5]}"] * bool(missing)
        parts += [f"only in the probe: {extra[:5]}"] * bool(extra)
        parts += ["same labels in another order"] * (not missing and not extra)
        raise UsageError(
            f"--head_init_from {run_dir}: the probe's labels differ from this run's ({'; '.join(parts)}). Train both "
            "on the same data options, row caps such as --max_train_samples included (--split_indices with the "
            "probe's splits.json reproduces its split)."
        )
    return config


def is_probe_folder(folder) -> bool:
    """Whether `folder` holds a probe-architecture model (a probe, LP-FT's output, a LoRA run on a probe), which
    loads only once this module is imported."""
    config = Path(folder) / "config.json"
    return config.is_file() and json.loads(config.read_text("utf-8")).get("model_type") == MODEL_TYPE
