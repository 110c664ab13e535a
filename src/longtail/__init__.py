"""Long-tail text classification recipes: data, losses, metrics, reports."""

import logging

__version__ = "0.1.0"


def _not_the_kernels_hint(record: logging.LogRecord) -> bool:
    # bitsandbytes, imported with peft whenever Trainer is, warns at import on CPUs with AVX512-BF16 that its fused
    # 4-bit CPU kernel (fetched from the Hub by the `kernels` package) is not installed. Only QLoRA on a CPU could
    # use it, it falls back to its own kernel, and nothing is fetched from the Hub here: in every recipe's and
    # test's log it read as a missing dependency. bitsandbytes' other messages pass.
    return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_not_the_kernels_hint)
