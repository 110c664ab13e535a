"""LoRA and QLoRA on sequence classifiers: what `recipes/lora_decoder.py` and `recipes/qlora_decoder.py` share.

- `AdapterArguments` / `QuantizationArguments`: the LoRA and 4-bit options of the two recipes.
- `resolve_target_modules`: "auto" picks the attention projections per architecture (q/k/v/o_proj for
  Llama/Qwen-style decoders, attn.Wqkv/attn.Wo for ModernBERT, query/key/value/... for BERT); explicit
  names are checked against the model's linear layers, with a clear error listing them.
- `add_lora`: peft `task_type=SEQ_CLS`; everything outside the backbone (the classification head:
  `score`, `classifier`, ModernBERT's `head`) is trained in full and saved with the adapter
  (`modules_to_save`), so a reloaded adapter never meets a random head (peft#310, #577, #876).
- `load_quantized_classifier`: the base in 4-bit NF4 with double quantisation, compute dtype by hardware,
  the head never quantized and kept in float32, `prepare_model_for_kbit_training`.
- `save_adapter`, `load_adapter_classifier`, `merge_adapter`: the adapter plus the classifier's
  `config.json` (labels, pad token id) in the run folder; reload onto a fresh base; merge into a plain
  full-precision model that `pipeline("text-classification")` and exporters can read.
- `finish_adapter_run`: reports, model card with a peft quick start, merge and Hub push.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from longtail.cli import MissingDependencyError, MissingInputError, UsageError
from longtail.training import auto_precision, classifier_config, load_classifier

logger = logging.getLogger(__name__)

ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# "auto" target modules: the attention projections of each architecture (peft suffix match).
AUTO_TARGETS: dict[str, list[str]] = {
    **{
        t: ATTENTION_PROJECTIONS
        for t in (
            "llama",
            "qwen2",
            "qwen3",
            "mistral",
            "mixtral",
            "gemma",
            "gemma2",
            "gemma3_text",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "phi",
        )
    },
    "phi3": ["qkv_proj", "o_proj"],
    "modernbert": ["attn.Wqkv", "attn.Wo"],  # attn.Wo, not Wo: the MLP's output layer is also called Wo
    **{t: ["query", "key", "value", "attention.output.dense"] for t in ("bert", "roberta", "xlm-roberta")},
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "attention.output.dense"],
    "gpt2": ["attn.c_attn", "attn.c_proj"],
}
# For an architecture not listed: the first of these sets the model fully has.
AUTO_TARGET_FALLBACKS = list({tuple(v): v for v in AUTO_TARGETS.values()}.values())
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class AdapterArguments:
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str = field(
        default="auto",
        metadata={
            "help": "Comma-separated module names to adapt (peft suffix match, e.g. q_proj,v_proj), 'auto' "
            "(the attention projections of the architecture: q/k/v/o_proj for Llama/Qwen, attn.Wqkv/attn.Wo "
            "for ModernBERT) or 'all-linear' (every linear layer outside the head)."
        },
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "Also write output_dir/merged: base + adapter merged into a plain full model."},
    )
    push_merged: bool = field(
        default=False,
        metadata={"help": "With --push_to_hub, also push the merged model (implies --merge_adapter)."},
    )
    hub_merged_model_id: str | None = field(
        default=None, metadata={"help": "Hub repo of the merged model (default: <hub_model_id>-merged)."}
    )

    def __post_init__(self):
        if isinstance(self.lora_target_modules, list | tuple):  # a YAML list
            self.lora_target_modules = ",".join(map(str, self.lora_target_modules))
        if self.lora_r < 1:
            raise ValueError(f"--lora_r must be >= 1, got {self.lora_r}")
        if (
            self.lora_alpha <= 0
        ):  # the adapter's scale alpha / r would be 0 (it never learns) or flip its sign
            raise ValueError(f"--lora_alpha must be > 0, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not target_list(self.lora_target_modules):
            raise ValueError("--lora_target_modules is empty: use 'auto', 'all-linear' or module names")
        if self.push_merged:
            self.merge_adapter = True


@dataclass
class QuantizationArguments:
    bnb_4bit_quant_type: str = field(default="nf4", metadata={"help": "4-bit data type: nf4 or fp4."})
    bnb_4bit_use_double_quant: bool = field(
        default=True, metadata={"help": "Quantize the quantization constants too (~0.4 bit/param saved)."}
    )
    bnb_4bit_compute_dtype: str = field(
        default="auto",
        metadata={
            "help": "Matmul dtype of the 4-bit layers: auto (bfloat16 on GPUs with compute capability >= 8, "
            "float16 on older GPUs, float32 on CPU), float32, bfloat16 or float16."
        },
    )

    def __post_init__(self):
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ValueError(f"--bnb_4bit_quant_type must be nf4 or fp4, got '{self.bnb_4bit_quant_type}'")
        if self.bnb_4bit_compute_dtype not in ("auto", *COMPUTE_DTYPES):
            raise ValueError(
                f"--bnb_4bit_compute_dtype must be auto or one of {list(COMPUTE_DTYPES)}, "
                f"got '{self.bnb_4bit_compute_dtype}'"
            )


def peft_training_args(training_args):
    """`label_names=["labels"]`: a PeftModel hides the labels argument from Trainer, which then computes
    no eval loss and no metrics (peft#1120); non-reentrant gradient checkpointing (peft#313)."""
    training_args.label_names = ["labels"]
    if training_args.gradient_checkpointing and not training_args.gradient_checkpointing_kwargs:
        training_args.gradient_checkpointing_kwargs = {"use_reentrant": False}
    return training_args


# ---------------------------------------------------------------------------------------------
# Target modules and the head
# ---------------------------------------------------------------------------------------------


def target_list(spec: str) -> list[str]:
    return [t.strip() for t in str(spec).split(",") if t.strip()]


def head_modules(model) -> list[str]:
    """Top-level modules with parameters outside the backbone: the classification head (score, classifier,
    ModernBERT's head + classifier). They start untrained, so they are trained in full and saved."""
    backbone = model.base_model_prefix
    return [
        name
        for name, child in model.named_children()
        if name != backbone and any(True for _ in child.parameters())
    ]


def _is_linear(module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, torch.nn.Linear | Conv1D)  # bnb's Linear4bit/Linear8bitLt subclass Linear


def _in_head(name: str, heads: list[str]) -> bool:
    return any(name == h or name.startswith(h + ".") for h in heads)


def backbone_linear_names(model) -> list[str]:
    """Full names of the linear layers outside the head."""
    heads = head_modules(model)
    return [n for n, m in model.named_modules() if _is_linear(m) and not _in_head(n, heads)]


def linear_layer_names(model) -> list[str]:
    """The distinct linear layers outside the head, named relative to their repeated block
    (model.layers.3.self_attn.q_proj -> self_attn.q_proj): what --lora_target_modules can name."""
    names = []
    for full in backbone_linear_names(model):
        parts = full.split(".")
        numeric = [i for i, p in enumerate(parts) if p.isdigit()]
        names.append(".".join(parts[numeric[-1] + 1 :]) if numeric else full)
    return list(dict.fromkeys(names))


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def resolve_target_modules(model, spec: str = "auto") -> list[str]:
    """The module names LoRA adapts; unknown names raise a ValueError that lists the linear layers."""
    linears = backbone_linear_names(model)
    model_type = getattr(model.config, "model_type", type(model).__name__)

    def present(targets):
        return all(any(_matches(n, t) for n in linears) for t in targets)

    targets = target_list(spec)
    if targets == ["auto"]:
        for candidate in [AUTO_TARGETS.get(model_type), *AUTO_TARGET_FALLBACKS]:
            if candidate and present(candidate):
                return list(candidate)
        raise UsageError(
            f"--lora_target_modules auto: no known attention projections in {type(model).__name__} "
            f"(model_type {model_type}). Name them with --lora_target_modules; its linear layers: "
            + ", ".join(linear_layer_names(model))
        )
    if targets == ["all-linear"]:
        return linear_layer_names(model)
    missing = [t for t in targets if not any(_matches(n, t) for n in linears)]
    if missing:
        raise UsageError(
            f"--lora_target_modules {', '.join(missing)}: no such linear layer in {type(model).__name__} "
            f"(model_type {model_type}; the head is trained in full, not adapted). Its linear layers: "
            + ", ".join(linear_layer_names(model))
        )
    return targets


def lora_config(adapter_args: AdapterArguments, target_modules: list[str], heads: list[str]):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=adapter_args.lora_r,
        lora_alpha=adapter_args.lora_alpha,
        lora_dropout=adapter_args.lora_dropout,
        target_modules=target_modules,
        bias="none",
        modules_to_save=list(heads),  # a copy: peft appends its default head names in place
    )


def trainable_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as the parameters they stand for."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def add_lora(model, adapter_args: AdapterArguments):
    """Wrap a sequence classifier in LoRA adapters; the head is trained in full and saved with them."""
    from peft import get_peft_model
    from peft.utils import ModulesToSaveWrapper

    targets = resolve_target_modules(model, adapter_args.lora_target_modules)
    heads = head_modules(model)
    if not heads:
        raise UsageError(f"{type(model).__name__} has no module outside its backbone: no classification head")
    # peft matches modules_to_save by plain suffix: a head name must not also end a backbone module's name
    clashes = [n for n, _ in model.named_modules() if not _in_head(n, heads) and n.endswith(tuple(heads))]
    if clashes:
        raise UsageError(f"Head modules {heads} would also match backbone modules {clashes[:5]} in peft")
    model = get_peft_model(model, lora_config(adapter_args, targets, heads))
    inner = model.get_base_model()
    for head in heads:
        if not isinstance(inner.get_submodule(head), ModulesToSaveWrapper):
            raise RuntimeError(
                f"peft did not wrap the head module '{head}': it would be neither trained nor saved"
            )
    trainable, total = trainable_parameters(model)
    logger.info(
        "LoRA r=%d alpha=%d dropout=%.2f on %s; head trained in full and saved with the adapter: %s",
        adapter_args.lora_r,
        adapter_args.lora_alpha,
        adapter_args.lora_dropout,
        ", ".join(targets),
        ", ".join(heads),
    )
    logger.info(
        "Trainable parameters: %s of %s (%.3f %%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
    )
    return model


def adapter_info(model, quant_args: QuantizationArguments | None = None) -> dict:
    """Rows of the report's Run table describing the adapter (and the quantization)."""
    config = model.peft_config[model.active_adapter]
    trainable, total = trainable_parameters(model)
    info = {
        "adapter": f"LoRA r={config.r}, alpha={config.lora_alpha}, dropout={config.lora_dropout} on "
        + ", ".join(sorted(config.target_modules)),
        "trained_in_full": ", ".join(
            sorted(set(config.modules_to_save or []) & set(head_modules(model.get_base_model())))
        )
        + " (classification head, saved with the adapter)",
        "trainable_params": f"{trainable:,} of {total:,} ({100 * trainable / total:.3f} %)",
    }
    if quant_args is not None:
        dtype = str(compute_dtype(quant_args.bnb_4bit_compute_dtype)).removeprefix("torch.")
        info["quantization"] = (
            f"base in 4-bit {quant_args.bnb_4bit_quant_type.upper()}"
            + ", double quantisation" * quant_args.bnb_4bit_use_double_quant
            + f", compute {dtype}; head in float32"
        )
    return info


# ---------------------------------------------------------------------------------------------
# QLoRA: the base in 4-bit
# ---------------------------------------------------------------------------------------------


def bitsandbytes_available() -> bool:
    if importlib.util.find_spec("bitsandbytes") is None:
        return False
    from transformers.utils import is_bitsandbytes_available

    return is_bitsandbytes_available()


def require_bitsandbytes() -> None:
    if not bitsandbytes_available():
        raise MissingDependencyError(
            "QLoRA loads the base model in 4-bit with bitsandbytes, which is not installed or not usable here. "
            "Install it (pip install bitsandbytes==0.50.2, the tested version; it also runs on CPU), or train "
            "the unquantized adapter with recipes/lora_decoder.py."
        )


def compute_dtype(choice: str = "auto") -> torch.dtype:
    """auto: bfloat16 on GPUs with compute capability >= 8, float16 on older GPUs, float32 on CPU."""
    if choice == "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(auto_precision(), torch.float32)
    return COMPUTE_DTYPES[choice]


def _upcast_output(module, inputs, output):
    return output.to(torch.float32)


def keep_4bit_training_layout(model) -> None:
    """bitsandbytes (0.50) on a CPU with AVX512-BF16 repacks each 4-bit layer in place for its inference kernel at
    the layer's first no-grad eval forward, and keeps it so. Training evaluates every epoch, and the steps after an
    evaluation then run that kernel: Qwen2's biased projections fail ("a view of a leaf Variable ... in-place"),
    and layers narrower than its 64-value block cannot be repacked at all. Turn the repacking off for training,
    and for a reload that must score as the run did (the repacked layout keeps the block scales in bf16)."""
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def load_quantized_classifier(
    model_args, quant_args: QuantizationArguments, label_names, tokenizer, training_args
):
    """The classifier with its backbone's linear layers in 4-bit; the head unquantized and in float32."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    require_bitsandbytes()
    dtype = compute_dtype(quant_args.bnb_4bit_compute_dtype)
    with torch.device("meta"):  # the head's module names, without materialising any weight
        skeleton = AutoModelForSequenceClassification.from_config(
            classifier_config(model_args, label_names, tokenizer),
            trust_remote_code=model_args.trust_remote_code,
        )
    heads = head_modules(skeleton)
    bnb_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant_args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant_args.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=heads,  # never quantize the head (peft#1720, transformers#24037)
    )
    model = load_classifier(
        model_args,
        label_names,
        tokenizer,
        quantization_config=bnb_config,
        # the unquantized modules in the checkpoint's own dtype (bf16 for Qwen2.5): a float32 load would
        # materialise the whole model in fp32 before quantizing it, doubling the load peak for nothing
        dtype="auto",
        device_map={"": training_args.local_process_index} if torch.cuda.is_available() else None,
    )
    keep_4bit_training_layout(model)
    embedding_dtype = model.get_input_embeddings().weight.dtype
    # freezes the base, casts every non-4-bit parameter (norms, embeddings, the head) to float32
    model = prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=training_args.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    # The frozen embedding table is the largest unquantized tensor (136M of Qwen2.5-0.5B's 494M
    # parameters). Kept in the checkpoint's dtype it holds the same values at half the memory; its output
    # is upcast, so the network sees exactly what the float32 table would give (bf16 -> fp32 is exact).
    embeddings = model.get_input_embeddings()
    if embedding_dtype != embeddings.weight.dtype:
        embeddings.to(embedding_dtype)
        embeddings.register_forward_hook(_upcast_output)
    logger.info(
        "Base in 4-bit %s (double quantisation %s), compute dtype %s; head %s unquantized in float32",
        quant_args.bnb_4bit_quant_type,
        quant_args.bnb_4bit_use_double_quant,
        dtype,
        ", ".join(heads),
    )
    return model


# ---------------------------------------------------------------------------------------------
# Save, reload, merge
# ---------------------------------------------------------------------------------------------


def save_adapter(trainer) -> Path:
    """adapter_model.safetensors + adapter_config.json + tokenizer (Trainer), and the classifier's
    config.json (labels, pad token id, no quantization settings): what reload and merge read."""
    trainer.save_model()
    out = Path(trainer.args.output_dir)
    if trainer.is_world_process_zero():
        config = copy.deepcopy(trainer.model.get_base_model().config)
        for attr in ("quantization_config", "_pre_quantization_dtype"):
            if hasattr(config, attr):
                delattr(config, attr)
        config.save_pretrained(out)
    return out


def base_model_of(adapter_dir: str | Path) -> str:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise MissingInputError(f"{adapter_dir} holds no adapter_config.json: not a LoRA/QLoRA run folder")
    base = json.loads(path.read_text("utf-8")).get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{path} names no base model (base_model_name_or_path): not a complete adapter save")
    return base


def ensure_base_available(base: str, adapter_dir: str | Path) -> None:
    """Fail early, naming the base model, when it is neither a local folder nor loadable (cache or Hub)."""
    if Path(base).is_dir():
        return
    from huggingface_hub import constants
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as e:
        offline = ", and the Hub is offline (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else ""
        raise MissingInputError(
            f"The adapter in {adapter_dir} was trained on the base model '{base}', which is not available "
            f"here (not a local folder, not in the Hugging Face cache{offline}). Download it "
            f"(huggingface-cli download {base}) or pass the base model's local folder as base_model."
        ) from e


class _DropNewlyInitialized(logging.Filter):
    def filter(self, record) -> bool:
        return "newly initialized: " not in record.getMessage()


def load_adapter_classifier(adapter_dir: str | Path, base_model: str | None = None, **from_pretrained_kwargs):
    """A fresh base classifier (labels and pad token id from the run folder's config.json) with the saved
    adapter and head loaded onto it, in eval mode. Pass `quantization_config` to reload a QLoRA run in 4-bit."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import longtail.probe  # noqa: F401  (registers longtail_probe: an LP-FT run's base may be a probe)

    base = base_model or base_model_of(adapter_dir)
    ensure_base_available(base, adapter_dir)
    if not (Path(adapter_dir) / "config.json").is_file():
        raise MissingInputError(
            f"{adapter_dir} has no config.json: the label maps are missing (see save_adapter)"
        )
    config = AutoConfig.from_pretrained(adapter_dir)
    # the base has no trained head, which the adapter holds: Transformers' "newly initialized: ['score.weight'] ...
    # You should probably TRAIN this model" met every reload of a trained run (predict, merge, a teacher); a
    # weight missing outside the head is still warned about, below
    drop = _DropNewlyInitialized()
    loading_logger = logging.getLogger("transformers.modeling_utils")
    loading_logger.addFilter(drop)
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(
            base, config=config, use_safetensors=True, output_loading_info=True, **from_pretrained_kwargs
        )
    finally:
        loading_logger.removeFilter(drop)
    # only a head the adapter saves (modules_to_save) comes back trained: a third-party adapter without it (a
    # teacher, say) leaves the head random, which the dropped message was the only sign of
    saved = (
        json.loads((Path(adapter_dir) / "adapter_config.json").read_text("utf-8")).get("modules_to_save")
        or []
    )
    held = [h for h in head_modules(model) if h in saved]
    if missing := [k for k in loading["missing_keys"] if not _in_head(k, held)]:
        logger.warning(
            "%s holds no weights for %s, nor does the adapter: initialised at random", base, missing
        )
    # a 4-bit reload scores as the run did (the CPU repack would round its block scales to bf16)
    keep_4bit_training_layout(model)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()


def merge_adapter(
    adapter_dir: str | Path, output_dir: str | Path | None = None, base_model: str | None = None
) -> Path:
    """Base (full precision, float32) + adapter merged into a plain classifier with the tokenizer: ready for
    pipeline() and export (merge before ONNX export, peft#901). A QLoRA adapter merges into the unquantized
    base, so the merged model differs from the 4-bit one by the quantization error only."""
    from transformers import AutoTokenizer

    out = Path(output_dir) if output_dir else Path(adapter_dir) / "merged"
    merged = load_adapter_classifier(adapter_dir, base_model, dtype=torch.float32).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if merged.config.pad_token_id != tokenizer.pad_token_id:
        raise ValueError(
            f"merged config.pad_token_id {merged.config.pad_token_id} != tokenizer pad id {tokenizer.pad_token_id}"
        )
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    logger.info("Merged model (base + adapter) written to %s", out)
    return out


# ---------------------------------------------------------------------------------------------
# Reports, card, push
# ---------------------------------------------------------------------------------------------


def usage_section(
    base_model: str, model_ref: str, merged: bool, probe: bool = False, max_length: int | None = None
) -> str:
    """The card's quick start: the base loaded with the run's config, then the adapter. `probe`: the adapter was
    trained on a probe run (LoRA with --head_init_from), whose architecture `import longtail.probe` registers.
    `max_length`: the run's, where the pipeline truncates (it does not by itself: a longer text was a traceback
    past a learned position table, and read at lengths the run never saw past a rotary one)."""
    from longtail.probe import REGISTER_LINE

    lines = [
        "## Quick start",
        "",
        f"This repository holds a LoRA adapter for `{base_model}` plus the classification head, trained in full "
        "and saved with the adapter. `config.json` carries the label maps and the pad token id; load the base "
        "with it, then the adapter:",
        "",
        "```python",
        *([REGISTER_LINE] if probe else []),
        "from peft import PeftModel",
        "from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline",
        "",
        f'adapter = "{model_ref}"',
        "config = AutoConfig.from_pretrained(adapter)  # id2label, pad_token_id",
        f'base = AutoModelForSequenceClassification.from_pretrained("{base_model}", config=config)',
        "model = PeftModel.from_pretrained(base, adapter).merge_and_unload()",
        'clf = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(adapter))',
        'print(clf("I was charged a late fee although I paid on time.", top_k=3'
        + (f", truncation=True, max_length={max_length}))" if max_length else "))"),
        "```",
    ]
    if merged:
        lines += [
            "",
            "The run also wrote `merged/`: base and adapter merged into a plain model (no peft needed), the one "
            'to serve or export: `pipeline("text-classification", model="<run folder>/merged")`.',
        ]
    return "\n".join(lines) + "\n"


def _add_card_section(card: Path, section: str) -> None:
    text = card.read_text("utf-8")
    marker = "\n## Versions"
    text = text.replace(marker, "\n" + section + marker, 1) if marker in text else text + "\n" + section
    card.write_text(text, "utf-8")


def hub_repo_ids(output_dir, training_args, adapter_args: AdapterArguments) -> tuple[str, str]:
    """(adapter repo, merged-model repo): --hub_model_id (default: the output folder's name) and
    --hub_merged_model_id (default: <adapter repo>-merged)."""
    repo_id = training_args.hub_model_id or Path(output_dir).name
    return repo_id, adapter_args.hub_merged_model_id or f"{repo_id}-merged"


def push_adapter_run(
    output_dir, training_args, adapter_args: AdapterArguments, merged_dir: Path | None
) -> None:
    """Push the run folder's own files (adapter, head, config, tokenizer, card, reports), not its
    checkpoints or merged/; push merged/ to its own repo only when asked (--push_merged)."""
    from longtail.runs import push_folder

    repo_id, merged_repo_id = hub_repo_ids(output_dir, training_args, adapter_args)
    with tempfile.TemporaryDirectory() as stage:
        for path in Path(output_dir).iterdir():
            if path.is_file():
                shutil.copy2(path, Path(stage) / path.name)
        push_folder(stage, repo_id, training_args.hub_token, training_args.hub_private_repo)
    if adapter_args.push_merged and merged_dir is not None:
        push_folder(merged_dir, merged_repo_id, training_args.hub_token, training_args.hub_private_repo)


def config_record(*arguments) -> dict:
    """run_config.json's sections, one per argument dataclass (TrainingArguments via to_dict)."""
    record = {}
    for args in arguments:
        name = re.sub(r"(Training)?Arguments$", "", type(args).__name__).lower() or "training"
        record[name] = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
    return record


def finish_adapter_run(
    trainer,
    *,
    title: str,
    run_info: dict,
    data,
    results,
    command: str,
    arguments: tuple,
    push: bool,
    tags: tuple[str, ...] = ("peft", "lora"),
    sections: list[str] | None = None,
) -> dict[str, Path]:
    """Main process only: metrics, report, plots, card (with a peft quick start) and run files; then the
    merged model when asked (--merge_adapter), then the Hub push (--push_to_hub)."""
    from longtail.probe import is_probe_folder
    from longtail.report import write_model_card, write_run_outputs
    from longtail.runs import public_model_name, source_description, write_run_files

    by_type = {type(a).__name__: a for a in arguments}
    data_args = by_type["DataArguments"]
    adapter_args, training_args = by_type["AdapterArguments"], trainer.args
    out = Path(training_args.output_dir)
    description = source_description(data_args)
    info = {**run_info, "library_name": "peft"}
    paths = write_run_outputs(
        out,
        title=title,
        base_model=run_info["model"],
        run_info=info,
        data=data,
        results=results,
        command=command,
        data_description=description,
        tags=list(tags),
        pipeline_example=False,
        sections=sections,
    )
    repo_id, merged_repo_id = hub_repo_ids(out, training_args, adapter_args)
    ref = repo_id if push else str(out)
    # the base the adapter was trained on (adapter_config.json): with --head_init_from, the probe run, not
    # --model_name_or_path, whose checkpoint the probe's architecture would load with a random body
    probe = is_probe_folder(out)
    base = public_model_name(base_model_of(out)) if probe else run_info["model"]
    quick_start = usage_section(base, ref, adapter_args.merge_adapter, probe, data_args.max_length)
    _add_card_section(paths["card"], quick_start)
    write_run_files(out, data, command, config_record(*arguments, training_args))
    merged = None
    if (out / "merged").is_dir():  # from an earlier run into this (overwritten) folder: never leave it stale
        logger.warning("Removing %s, left by an earlier run", out / "merged")
        shutil.rmtree(out / "merged")
    if adapter_args.merge_adapter:
        # onto the base the adapter was trained on (adapter_config.json): with --head_init_from, the probe run's
        # model, not --model_name_or_path (the probe's architecture would leave that checkpoint's weights unread)
        merged = paths["merged"] = merge_adapter(out, out / "merged")
        if (out / "temperature.json").is_file():  # the merged model predicts with the same temperature
            shutil.copy2(out / "temperature.json", merged / "temperature.json")
        write_model_card(
            merged,
            base_model=run_info["model"],
            run_info={
                **run_info,
                "adapter": f"{run_info.get('adapter', 'LoRA')} (merged into the base)",
                **({"hub_model_id": merged_repo_id} if push and adapter_args.push_merged else {}),
            },
            label_names=data.label_names,
            results=results,
            data_description=f"Source: {description}. See the adapter run's `report.md` for the data log.",
            command=command,
            tags=[*tags, "merged"],
            title=f"{title} (merged)",
        )
        if "quantization" in run_info:  # QLoRA: the adapter was trained and scored on the 4-bit base
            note = (
                "The adapter was trained and scored on the 4-bit base; merged into the full-precision base, this "
                "model's scores differ from those by the quantization error, so the metrics above are the 4-bit "
                "run's, not this model's."
            )
            logger.warning("%s: %s", merged, note)
            _add_card_section(merged / "README.md", f"## Merged from a 4-bit run\n\n{note}\n")
    if push:
        push_adapter_run(out, training_args, adapter_args, merged)
    return paths
