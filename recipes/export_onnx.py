"""Export a trained classifier folder to ONNX: fp32, ORT-optimised and dynamic int8, with a parity check.

    python recipes/export_onnx.py --config recipes/configs/export_onnx.yaml --model_dir outputs/demo/full_ft_encoder

An adapter run folder is merged first (or refused with --merge_adapter false). The fp32 export must match
PyTorch to --atol (1e-3) on the parity sample or the script fails; parity.json sits next to the export.
"""

from __future__ import annotations

import json
import logging

from trl import TrlParser

from longtail.cli import parse_config, run
from longtail.export import ExportArguments, export_onnx

PARSER_TYPES = (ExportArguments,)


def main(argv: list[str] | None = None) -> dict:
    # ---- Parse config ------------------------------------------------------------------------
    (args,) = parse_config(TrlParser(PARSER_TYPES), argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING, force=True
    )
    logging.getLogger("longtail").setLevel(logging.INFO)  # the quantizer logs every tensor at INFO on root

    # ---- Export, optimise, quantise, check parity --------------------------------------------
    record = export_onnx(args)
    print(
        json.dumps(
            {
                k: {f: v.get(f) for f in ("status", "max_abs_logit_diff", "argmax_agreement")}
                for k, v in record["variants"].items()
            },
            indent=2,
        )
    )
    return record


if __name__ == "__main__":
    run(main)  # a mistake in the input: one line, status 2
