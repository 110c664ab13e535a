"""The numbers the bench scripts report, on fixed timings: each script's arithmetic (ratios, medians, units,
thresholds) and what reaches its .md/.json, with the clocks and the measurements replaced by known values, so
every expected value is worked out by hand. Also the option boundaries each script accepts."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import corpus, memory_markdown, save_bert_classifier, train_wordpiece

MIB, GIB = 1024**2, 1024**3


# the bench scripts as modules: the inference, scaling, kd_step and train_memory fixtures (conftest)


def error_line(parse, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece(corpus(200), vocab_size=300)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tokenizer, eval_csv):
    """A 1-layer BERT classifier over eval_csv's issues with 40 positions and no run_config.json (so the bench
    falls back to its own max_length, 128, capped by nothing here: check_max_length only checks what is asked)."""
    labels = sorted(pd.read_csv(eval_csv)["Issue"].unique())
    return save_bert_classifier(tmp_path_factory.mktemp("bert") / "clf", tokenizer, labels, max_positions=40)


# ---------------------------------------------------------------------------------------------- inference

INFERENCE_AT_LEAST = {"max_rows": 1, "max_length": 1, "batch_size": 1, "latency_rows": 1, "repeats": 1,
                      "warmup": 0, "gemm_size": 1, "threads": 1, "bootstrap_resamples": 2, "padding_rows": 1,
                      "padding_max_length": 1}  # fmt: skip


@pytest.mark.parametrize("name, least", INFERENCE_AT_LEAST.items())
def test_inference_option_boundaries(inference, capsys, name, least):
    """Each option's least value is accepted, one below it refused in one line naming both."""
    assert getattr(inference.parse_args([f"--{name}", str(least)]), name) == least
    line = error_line(inference.parse_args, [f"--{name}", str(least - 1)], capsys)
    assert line.endswith(f"--{name} must be >= {least} (got {least - 1})")


def test_inference_device_names(inference, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("cpu", "cuda", "cuda:1"):
        assert inference.parse_args(["--device", device]).device == device
    assert "this machine has 2 CUDA device(s)" in error_line(
        inference.parse_args, ["--device", "cuda:2"], capsys
    )
    for device in ("cuda:", "cuda:x", "cuda1", "gpu", "mps"):
        assert "--device must be cpu, cuda or cuda:N" in error_line(
            inference.parse_args, ["--device", device], capsys
        )


def test_inference_output_dir_in_the_merged_model_is_refused(inference, tmp_path, capsys):
    """An adapter run's merged/ is a model folder too (its onnx/ export is what `predict` serves)."""
    model = tmp_path / "run"
    model.mkdir()
    (model / "config.json").write_text("{}")
    argv = ["--model_dir", str(model), "--output_dir", str(model / "merged"), "--overwrite"]
    line = error_line(lambda a: inference.parse_args(a, check_paths=True), argv, capsys)
    assert f"--output_dir {model / 'merged'} would write the bench's ungated ONNX export" in line
    for inside in (
        model / "merged" / "onnx",
        model / "merged" / "onnx" / "bench",
    ):  # the merged model's export
        line = error_line(
            lambda a: inference.parse_args(a, check_paths=True), [*argv[:3], str(inside)], capsys
        )
        assert f"--output_dir {inside} would write the bench's ungated ONNX export" in line
    beside = inference.parse_args([*argv[:3], str(tmp_path / "bench")], check_paths=True)
    assert beside.output_dir == str(tmp_path / "bench")


def test_inference_evaluation_rows_count_each_drop_once(inference, tmp_path):
    """5 rows: 2 without text (one of them with an unknown label too: counted as without text only), 1 with a
    label the model never saw, 2 scored; --max_rows 1 keeps one of them."""
    data = tmp_path / "rows.csv"
    pd.DataFrame(
        {"text": ["", "late fee", " ", "fraud", "closed"], "issue": ["A", "Z", "Z", "A", "B"]}
    ).to_csv(data, index=False)
    args = SimpleNamespace(
        data=str(data), text_column="text", label_column="issue", max_rows=2, model_dir=str(tmp_path)
    )
    texts, labels, log = inference.evaluation_rows(args, {"A": 0, "B": 1})
    assert texts == ["fraud", "closed"] and labels.tolist() == [0, 1]
    assert log == {
        "source": "rows.csv",
        "labels_read_with": "no merge map or taxonomy: the run records no data options (run_config.json), labels read "
        "as written",
        "labels_merged": 0,
        "rows": 5,
        "dropped_empty_text": 2,
        "dropped_missing_label": 0,
        "dropped_unknown_label": 1,
        "scored": 2,
    }
    # results.md words it itself: the bench has no --label_merge_map / --label_taxonomy to give (it read "merge map
    # none, taxonomy none: <dir> records no data options (run_config.json): a merge map and taxonomy only as given")
    report = {"model": "m", "machine_text": "m", "rows": log, "max_length": 8, "padded_to_real_tokens": 1.0,
              "repeats": 1, "warmup": 0, "gemm": {"gflops": 1.0, "size": 8, "threads": 1}, "results": [],
              "skipped": {}, "recommendation": ""}  # fmt: skip
    md = inference.markdown(report)
    assert (
        "Rows: 2 from rows.csv (labels read with no merge map or taxonomy: the run records no data options "
        "(run_config.json), labels read as written; 0 merged), max_length 8," in md
    )
    assert str(tmp_path) not in md and "as given" not in md


def test_inference_evaluation_rows_of_the_runs_own_split(inference, tmp_path):
    """Without --data: the test split the run's run_config.json describes (4 rows, 2 with a label the model
    lacks); `rows` counts the split's rows, as it counts --data's."""
    pd.DataFrame({"text": [f"complaint {i}" for i in range(20)], "label": ["A", "B"] * 10}).to_csv(
        tmp_path / "train.csv", index=False
    )
    pd.DataFrame({"text": ["a fee", "a debt", "a loan", "a card"], "label": ["A", "B", "A", "B"]}).to_csv(
        tmp_path / "test.csv", index=False
    )
    run = tmp_path / "run"
    run.mkdir()
    data = {"train_file": str(tmp_path / "train.csv"), "test_file": str(tmp_path / "test.csv"),
            "text_column": "text", "label_column": "label", "label_taxonomy": "none"}  # fmt: skip
    (run / "run_config.json").write_text(json.dumps({"data": data}), "utf-8")
    texts, labels, log = inference.evaluation_rows(
        SimpleNamespace(data=None, model_dir=str(run), max_rows=10), {"A": 0}
    )
    assert texts == ["a fee", "a loan"] and labels.tolist() == [0, 0]
    assert log == {"source": "the run's test split (None)", "rows": 4, "dropped_empty_text": 0,
                   "dropped_unknown_label": 2, "scored": 2}  # fmt: skip


def test_inference_data_labels_are_read_with_the_runs_merge_map(inference, tmp_path):
    """A run trained with a merge map knows its old wordings by their new label: --data's rows were read raw, so
    "Old A" (2 rows) counted as a label the model never saw and was not scored, where `score` and the export's
    parity sample (both through score.labelled_rows) score it as A. 5 rows: 2 "Old A", 1 "A", 1 "B", 1 "Z"."""
    merge = tmp_path / "merge.json"
    merge.write_text(json.dumps({"Old A": "A"}), "utf-8")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_config.json").write_text(json.dumps({"data": {"label_merge_map": str(merge)}}), "utf-8")
    data = tmp_path / "rows.csv"
    texts = ["late fee", "fraud", "closed", "stolen card", "escrow"]
    pd.DataFrame({"text": texts, "issue": ["Old A", "A", "B", "Old A", "Z"]}).to_csv(data, index=False)
    args = SimpleNamespace(
        data=str(data), text_column="text", label_column="issue", max_rows=10, model_dir=str(run)
    )
    scored, labels, log = inference.evaluation_rows(args, {"A": 0, "B": 1})
    assert sorted(zip(scored, labels.tolist())) == [
        ("closed", 1),
        ("fraud", 0),
        ("late fee", 0),
        ("stolen card", 0),
    ]
    assert (log["labels_merged"], log["dropped_unknown_label"], log["scored"]) == (2, 1, 4)
    assert log["labels_read_with"] == (
        f"merge map {merge}, taxonomy none: given: --text_column, --label_column; as 1 trained runs recorded them "
        "in run_config.json"
    )
    # results.md says how the labels were read, and how many were merged
    report = {"model": "m", "machine_text": "m", "rows": log, "max_length": 8, "padded_to_real_tokens": 1.0,
              "repeats": 1, "warmup": 0, "gemm": {"gflops": 1.0, "size": 8, "threads": 1}, "results": [],
              "skipped": {}, "recommendation": ""}  # fmt: skip
    assert (
        f"Rows: 4 from rows.csv (labels read with {log['labels_read_with']}; 2 merged), max_length 8,"
        in inference.markdown(report)
    )
    texts, labels, log = inference.evaluation_rows(
        SimpleNamespace(**{**vars(args), "max_rows": 1}), {"A": 0, "B": 1}
    )
    assert len(texts) == len(labels) == 1 and log["scored"] == 1 and texts[0] in ("fraud", "closed")


def test_inference_bf16_needs_compute_capability_8(inference, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    assert (
        inference.variant_available("pytorch_bf16", "cuda") == "bf16 is emulated below compute capability 8"
    )
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert inference.variant_available("pytorch_bf16", "cuda") is None
    assert inference.variant_available("pytorch_bf16", "cpu") == "needs a GPU"


def test_inference_variant_measures_on_a_fixed_clock(inference, tokenizer, monkeypatch):
    """8 rows, one batch pass of median 2.0 s (runs 1.8, 2.0, 2.6); 5 rows timed alone at 10, 20, 30, 40 and
    100 ms: 250 ms/example, 4 rows/s, p50 30 ms, p95 40 + 0.8 x 60 = 88 ms (numpy's linear interpolation)."""
    import longtail.benchmark as benchmark

    class Backend:
        def logits(self, batch):
            return np.ones((len(batch.rows), 3), dtype=np.float32)

    medians = iter([2.0, 0.010, 0.020, 0.030, 0.040, 0.100])
    calls = []

    def timed(fn, repeats, warmup, device):
        calls.append((repeats, warmup))
        fn()
        median = next(medians)
        return {"median_s": median, "runs_s": [1.8, 2.0, 2.6] if median == 2.0 else [median]}

    monkeypatch.setattr(inference, "load_variant", lambda *a: (Backend(), tokenizer, 12345))
    monkeypatch.setattr(benchmark, "timed", timed)
    monkeypatch.setattr(benchmark, "gemm_peak_gflops", lambda *a: {"gflops": 50.0})
    monkeypatch.setattr(benchmark, "reset_peak_memory", lambda device: None)
    monkeypatch.setattr(benchmark, "peak_memory_bytes", lambda device: 7 * MIB)
    texts = [" ".join(["late fee"] * i) for i in range(1, 9)]
    spec = {"device": "cpu", "threads": 1, "model_dir": "m", "onnx_dir": "o", "texts": texts, "batch_size": 4,
            "max_length": 32, "latency_rows": 5, "num_labels": 3, "gemm_size": 8, "repeats": 3, "warmup": 1}  # fmt: skip
    result, logits = inference.measure_variant("pytorch_fp32", spec)
    assert next(medians, None) is None and calls == [(3, 1)] * 6  # one batch pass, then each of the 5 rows
    assert logits.shape == (8, 3)
    assert result["ms_per_example_b32"] == pytest.approx(250.0) and result[
        "throughput_rows_s"
    ] == pytest.approx(4.0)
    assert result["latency_b1_p50_ms"] == pytest.approx(30.0) and result[
        "latency_b1_p95_ms"
    ] == pytest.approx(88.0)
    assert result["batch32_pass_s"] == 2.0 and result["batch32_runs_s"] == [1.8, 2.0, 2.6]
    assert (result["size_bytes"], result["peak_memory_bytes"], result["gemm_gflops_at_run"]) == (
        12345,
        7 * MIB,
        50.0,
    )
    assert result["memory_kind"] == "process peak RSS"


def test_inference_peak_memory_leaves_out_the_gemm_reference(inference, tokenizer, monkeypatch):
    """The worker's GEMM reference holds 3 n x n fp32 buffers (48 MiB at the default 2048): measured before the
    timings, they sat in the variant's peak RSS (measured: +49 MiB for the demo's int8, +32 MiB for fp32), so
    the memory column compared the bench's buffers as much as the models. The peak is read first, the GEMM
    measured right after the timings (fake: the process's peak is 7 MiB, 55 MiB once the GEMM ran)."""
    import longtail.benchmark as benchmark

    class Backend:
        def logits(self, batch):
            return np.ones((len(batch.rows), 3), dtype=np.float32)

    events = []

    def gemm_peak_gflops(*a):
        events.append("gemm")
        return {"gflops": 50.0}

    def timed(fn, repeats, warmup, device):
        events.append("timed")
        fn()
        return {"median_s": 1.0, "runs_s": [1.0]}

    monkeypatch.setattr(inference, "load_variant", lambda *a: (Backend(), tokenizer, 1))
    monkeypatch.setattr(benchmark, "timed", timed)
    monkeypatch.setattr(benchmark, "gemm_peak_gflops", gemm_peak_gflops)
    monkeypatch.setattr(benchmark, "reset_peak_memory", lambda device: None)
    monkeypatch.setattr(benchmark, "peak_memory_bytes", lambda device: (55 if "gemm" in events else 7) * MIB)
    spec = {"device": "cpu", "threads": 1, "model_dir": "m", "onnx_dir": "o", "texts": ["late fee", "fraud"],
            "batch_size": 2, "max_length": 8, "latency_rows": 2, "num_labels": 3, "gemm_size": 8, "repeats": 1,
            "warmup": 0}  # fmt: skip
    result, _ = inference.measure_variant("onnx_int8", spec)
    assert result["peak_memory_bytes"] == 7 * MIB and result["gemm_gflops_at_run"] == 50.0
    # the batch pass, the 2 rows alone, then the reference
    assert events == ["timed", "timed", "timed", "gemm"]


def test_inference_in_process_reports_no_peak_memory(inference, monkeypatch, tmp_path):
    """One process for every variant: its peak is not one variant's, so none is reported."""
    monkeypatch.setattr(
        inference, "measure_variant", lambda v, s: ({"peak_memory_bytes": 5 * MIB}, np.zeros(1))
    )
    result, _ = inference.run_variant("pytorch_fp32", {}, tmp_path, in_process=True)
    assert result["peak_memory_bytes"] is None


def test_inference_report_numbers_from_known_measurements(
    inference, bert_dir, eval_csv, tmp_path, monkeypatch
):
    """Two variants with known timings and logits (fp32 right on every row, bf16 wrong on the first 4): speed-up,
    model GFLOP/s (4 GFLOP per pass), share of the peak measured with each variant, MiB, the spread of the
    repeats, agreement and accuracy, the max_length fallback (128), and the stability warning (spread 30 %,
    peaks 40-100 GFLOP/s: drift 60 %, the larger of the two is the noise level)."""
    import longtail.benchmark as benchmark

    seen = {}
    real_rows = inference.evaluation_rows

    def evaluation_rows(args, label2id):
        seen["texts"], seen["labels"], log = real_rows(args, label2id)
        return seen["texts"], seen["labels"], log

    measured = {
        "pytorch_fp32": {"ms_per_example_b32": 10.0, "batch32_pass_s": 0.2, "batch32_runs_s": [0.2, 0.19, 0.25],
                         "gemm_gflops_at_run": 50.0, "peak_memory_bytes": 3 * MIB, "size_bytes": 2 * MIB,
                         "padded_to_real_tokens": 1.25, "memory_kind": "process peak RSS", "baseline_rss_bytes": MIB},
        "pytorch_bf16": {"ms_per_example_b32": 4.0, "batch32_pass_s": 0.08, "batch32_runs_s": [0.08, 0.08, 0.08],
                         "gemm_gflops_at_run": 40.0, "peak_memory_bytes": None, "size_bytes": MIB,
                         "padded_to_real_tokens": 1.5},
    }  # fmt: skip

    def run_variant(variant, spec, workdir, in_process):
        assert spec["max_length"] == 128 and spec["texts"] == seen["texts"]
        logits = np.eye(spec["num_labels"])[seen["labels"]] * 5.0
        if variant == "pytorch_bf16":
            logits[:4] = np.roll(logits[:4], 1, axis=1)  # another class on the first 4 rows
        return {"variant": variant, **measured[variant]}, logits.astype(np.float32)

    monkeypatch.setattr(inference, "evaluation_rows", evaluation_rows)
    monkeypatch.setattr(inference, "variant_available", lambda v, d: None)
    monkeypatch.setattr(inference, "run_variant", run_variant)
    monkeypatch.setattr(benchmark, "gemm_peak_gflops", lambda *a: {"gflops": 100.0, "size": 8, "threads": 1})
    monkeypatch.setattr(benchmark, "forward_flops", lambda *a: 4e9)
    out = tmp_path / "bench"
    report = inference.main(["--model_dir", str(bert_dir), "--data", str(eval_csv), "--output_dir", str(out),
                             "--smoke", "--in_process", "--padding_data", "", "--max_rows", "20",
                             "--variants", "pytorch_fp32", "pytorch_bf16"])  # fmt: skip
    n = len(seen["labels"])
    assert n == 20 and report["max_length"] == 128 and report["forward_gflops_all_rows"] == pytest.approx(4.0)
    fp32, bf16 = report["results"]
    assert fp32["speedup_vs_fp32"] == 1.0 and bf16["speedup_vs_fp32"] == pytest.approx(2.5)
    assert fp32["model_gflops_per_s"] == pytest.approx(20.0) and bf16["model_gflops_per_s"] == pytest.approx(
        50.0
    )
    assert fp32["gemm_peak_share"] == pytest.approx(0.4) and bf16["gemm_peak_share"] == pytest.approx(1.25)
    assert fp32["peak_memory_mib"] == 3.0 and bf16["peak_memory_mib"] is None
    assert (fp32["size_mib"], bf16["size_mib"]) == (2.0, 1.0)
    assert (fp32["batch32_min_s"], fp32["batch32_max_s"]) == (0.19, 0.25)
    assert fp32["batch32_spread"] == pytest.approx(0.3) and bf16["batch32_spread"] == 0.0
    assert fp32["agreement_with_fp32"] == 1.0 and bf16["agreement_with_fp32"] == pytest.approx((n - 4) / n)
    assert fp32["accuracy"] == 1.0 and bf16["accuracy"] == pytest.approx((n - 4) / n)
    assert report["padded_to_real_tokens"] == 1.25
    assert report["recommendation"].startswith("Recommended: **pytorch_fp32**")
    stable = report["stability"]
    assert stable["max_spread_variant"] == "pytorch_fp32" and stable["gemm_drift"] == pytest.approx(0.6)
    assert (stable["gemm_gflops_min"], stable["gemm_gflops_max"]) == (40.0, 100.0)
    assert (
        "pytorch_fp32 spread 30% of their median, and the GEMM peak measured with each variant moved between "
        "40.0 and 100.0 GFLOP/s (60%). Speed-ups, latencies and shares of the GEMM peak that differ by less than "
        "about 60% are within noise" in stable["warning"]
    )
    md = (out / "results.md").read_text("utf-8")
    assert "| pytorch_bf16 | 4.00 | – | 0% | – | – | 2.50x | 125% | – | 1.0 |" in md
    assert json.loads((out / "results.json").read_text("utf-8"))["results"][1]["speedup_vs_fp32"] == 2.5


def test_inference_memory_column_says_what_it_holds(inference):
    """On CPU each variant's peak RSS holds the interpreter and libraries (220-230 MiB of the demo's ~600): results.md
    said "peak memory MiB" only. On a GPU it is CUDA max allocated; in one process (--in_process) none is given."""

    def report(*rows):
        return {"model": "m", "machine_text": "m", "rows": {"scored": 1, "source": "s"}, "max_length": 8,
                "padded_to_real_tokens": 1.0, "repeats": 1, "warmup": 0, "gemm": {"gflops": 1.0, "size": 8, "threads": 1},
                "results": list(rows), "skipped": {}, "recommendation": ""}  # fmt: skip

    cpu = [{"variant": v, "peak_memory_mib": 600.0, "memory_kind": "process peak RSS", "baseline_rss_bytes": b * MIB}
           for v, b in (("pytorch_fp32", 221), ("onnx_int8", 230))]  # fmt: skip
    assert (
        "Peak memory: the peak RSS of each variant's own process, the interpreter and libraries included "
        "(221-230 MiB of it before the model loaded)." in inference.markdown(report(*cpu))
    )
    gpu = {**cpu[0], "memory_kind": "CUDA max allocated"}
    assert (
        "Peak memory: CUDA max allocated in each variant's own process, reset before the model loaded."
        in (inference.markdown(report(gpu)))
    )
    assert "Peak memory" not in inference.markdown(report({**cpu[0], "peak_memory_mib": None}))


def test_inference_a_variant_better_than_fp32_is_no_quality_loss(inference):
    """The 0.5-point rule is a loss below fp32: int8 one point above it (and agreeing) is recommended."""
    rows = [
        {"variant": "pytorch_fp32", "macro_f1": 0.50, "ms_per_example_b32": 10.0, "speedup_vs_fp32": 1.0,
         "agreement_with_fp32": 1.0},
        {"variant": "onnx_int8", "macro_f1": 0.51, "ms_per_example_b32": 4.0, "speedup_vs_fp32": 2.5,
         "agreement_with_fp32": 0.98},
    ]  # fmt: skip
    assert inference.verdicts(rows, 8).startswith("Recommended: **onnx_int8** — the fastest at batch 8")
    assert [r["verdict"] for r in rows] == ["within 0.5 pt", "recommended"]


def test_inference_stability_thresholds_are_exceeded_not_reached(inference):
    """A spread of exactly 10 % and a drift of exactly 10 % (peaks 90 and 100) are not flagged; above, each is."""

    def row(spread, peak):
        return {"variant": "pytorch_fp32", "batch32_spread": spread, "gemm_gflops_at_run": peak}

    assert inference.stability([row(0.10, 100.0)], 100.0)["unstable"] is False
    assert inference.stability([row(0.0, 90.0)], 100.0)["unstable"] is False
    assert inference.stability([row(0.11, 100.0)], 100.0)["unstable"] is True
    assert inference.stability([row(0.0, 89.0)], 100.0)["unstable"] is True


def test_inference_padding_study_on_a_fixed_clock(inference, bert_dir, tokenizer, tmp_path, monkeypatch):
    """4 texts (one far past the 40 positions), --padding_rows 96, batches of 2, --padding_max_length 64 capped
    at the model's 40 positions; passes of 3.0 s (fixed), 2.5 s (unsorted), 2.0 s (sorted): 1.5x, exactly the
    target, which is met; a quarter of the texts truncated."""
    import longtail.benchmark as benchmark
    from longtail.inference import load_model_dir

    texts = [
        "late fee",
        "the bank closed my account",
        "fraud",
        " ".join(["the bank charged a late fee"] * 30),
    ]
    data = tmp_path / "texts.csv"
    pd.DataFrame({"narrative": texts}).to_csv(data, index=False)
    passes = iter([3.0, 2.5, 2.0])
    monkeypatch.setattr(benchmark, "timed", lambda fn, repeats, warmup, device: {"median_s": next(passes)})
    args = inference.parse_args(["--padding_data", str(data), "--text_column", "narrative", "--padding_rows", "96",
                                 "--padding_max_length", "64", "--batch_size", "2"])  # fmt: skip
    model, _, _ = load_model_dir(bert_dir)
    pad = inference.padding_study(args, model, tokenizer, "cpu")
    lengths = [min(len(tokenizer(t)["input_ids"]), 40) for t in texts]
    assert lengths[3] == 40 and max(lengths[:3]) < 40
    assert pad["max_length"] == 40 and pad["rows"] == 4 and pad["batch_size"] == 2
    assert pad["truncated_share"] == 0.25 and pad["real_length_mean"] == pytest.approx(np.mean(lengths))
    assert pad["fixed_max_length"]["padded_to_real_tokens"] == pytest.approx(4 * 40 / sum(lengths))
    ordered = sorted(lengths, reverse=True)  # sorted batches: each padded to its longest row
    assert pad["dynamic_sorted"]["padded_to_real_tokens"] == pytest.approx(
        2 * (ordered[0] + ordered[2]) / sum(lengths)
    )
    assert [pad[k]["throughput_rows_s"] for k in ("fixed_max_length", "dynamic_unsorted", "dynamic_sorted")] == [
        pytest.approx(4 / 3.0), pytest.approx(4 / 2.5), pytest.approx(4 / 2.0)
    ]  # fmt: skip
    assert pad["speedup_sorted_vs_fixed"] == 1.5 and pad["speedup_sorted_vs_unsorted"] == pytest.approx(1.25)
    report = {"model": "m", "machine_text": "m", "rows": {"scored": 1, "source": "s"}, "max_length": 40,
              "padded_to_real_tokens": 1.0, "repeats": 1, "warmup": 0, "gemm": {"gflops": 1.0, "size": 8, "threads": 1},
              "results": [], "skipped": {}, "recommendation": "", "padding": pad}  # fmt: skip
    md = inference.markdown(report)
    # the batch the passes were timed at and the backend (it said neither: its timings depend on both)
    assert "## Padding at max_length 40 (PyTorch fp32, batch 2; 4 real texts from texts.csv" in md
    assert "25% truncated" in md
    assert "Sorted dynamic padding vs fixed max_length: 1.50x throughput (target >= 1.5x: met)." in md


def test_inference_padding_study_reads_the_cfpb_column_and_says_when_skipped(
    inference, bert_dir, tokenizer, tmp_path, monkeypatch
):
    """`make bench DATA=x TEXT_COLUMN=text`: --text_column names --data's column, which the CFPB export (the
    default --padding_data) lacks, so the study was skipped with a log line and no word in results.md. It reads
    the export's narrative column then; a study that cannot run is a line in results.md."""
    import longtail.benchmark as benchmark
    from longtail.inference import load_model_dir

    monkeypatch.setattr(benchmark, "timed", lambda fn, repeats, warmup, device: {"median_s": 1.0})
    export = tmp_path / "complaints.csv"
    pd.DataFrame({"Consumer complaint narrative": ["late fee", "fraud on my card"]}).to_csv(
        export, index=False
    )
    model, _, _ = load_model_dir(bert_dir)
    args = inference.parse_args(["--padding_data", str(export), "--text_column", "text", "--batch_size", "2"])
    pad = inference.padding_study(args, model, tokenizer, "cpu")
    assert pad["rows"] == 2 and pad["column"] == "Consumer complaint narrative"
    args = inference.parse_args(["--padding_data", str(tmp_path / "absent.csv")])
    pad = inference.padding_study(args, model, tokenizer, "cpu")
    assert pad == {"skipped": "--padding_data absent.csv not found"}
    report = {"model": "m", "machine_text": "m", "rows": {"scored": 1, "source": "s"}, "max_length": 40,
              "padded_to_real_tokens": 1.0, "repeats": 1, "warmup": 0, "gemm": {"gflops": 1.0, "size": 8, "threads": 1},
              "results": [], "skipped": {}, "recommendation": "", "padding": pad}  # fmt: skip
    assert "Padding study not run: --padding_data absent.csv not found." in inference.markdown(report)
    # the default file absent (any machine without ../shared): said without this machine's absolute path to it
    monkeypatch.setattr(inference, "CFPB", tmp_path / "shared" / "data" / "cfpb" / "complaints_dev.csv")
    pad = inference.padding_study(inference.parse_args([]), model, tokenizer, "cpu")
    md = inference.markdown({**report, "padding": pad})
    assert (
        "Padding study not run: the default --padding_data (../shared/data/cfpb/complaints_dev.csv) is absent."
        in md
    )
    assert str(tmp_path) not in md
    # --text_column wins where the file has both; the export's column is the fallback only
    both = tmp_path / "both.csv"
    pd.DataFrame(
        {"Consumer complaint narrative": ["a"] * 3, "text": ["late fee", "fraud", "stolen card"]}
    ).to_csv(both, index=False)
    args = inference.parse_args(["--padding_data", str(both), "--text_column", "text", "--batch_size", "2"])
    assert inference.padding_study(args, model, tokenizer, "cpu")["column"] == "text"
    # the skips before any timing (no model needed): the column read is the one checked for repeats
    twice = tmp_path / "twice.csv"
    twice.write_text("Consumer complaint narrative,Consumer complaint narrative\nlate fee,fraud\n", "utf-8")
    neither = tmp_path / "neither.csv"
    neither.write_text("body\nlate fee\n", "utf-8")
    for path, why in (
        (twice, "twice.csv has more than one column named 'Consumer complaint narrative'"),
        (neither, "neither.csv has no column 'text'"),
    ):
        args = inference.parse_args(["--padding_data", str(path), "--text_column", "text"])
        assert inference.padding_study(args, None, None, "cpu") == {"skipped": why}
    # --padding_data '' asks for no study: none, and no "not run" line
    assert inference.padding_study(inference.parse_args(["--padding_data", ""]), None, None, "cpu") is None


# ------------------------------------------------------------------------------------------------ scaling

SCALING_AT_LEAST = {"batch_size": 1, "seq_len": 1, "repeats": 1, "warmup": 0, "num_labels": 2, "gemm_size": 1,
                    "mfu_batch_size": 0, "onnx_batch_size": 1, "threads": 1}  # fmt: skip


@pytest.mark.parametrize("name, least", SCALING_AT_LEAST.items())
def test_scaling_option_boundaries(scaling, capsys, name, least):
    base = ["--shared_dir", "/nonexistent"]
    assert getattr(scaling.parse_args([*base, f"--{name}", str(least)]), name) == least
    line = error_line(scaling.parse_args, [*base, f"--{name}", str(least - 1)], capsys)
    assert line.endswith(f"--{name} must be >= {least}, got {least - 1}")


def test_scaling_mfu_batch_size_zero_is_a_section_not_run(scaling):
    args = scaling.parse_args(["--shared_dir", "/nonexistent", "--mfu_batch_size", "0"])
    assert args.not_run == {"mfu": "not run: --mfu_batch_size 0"}


def test_scaling_real_inputs_with_exactly_the_batch(scaling):
    """3 of 4 texts reach 16 tokens, a batch of 3: those three, cut to 16, no padding."""

    def tokenizer(texts, truncation, max_length):
        return {"input_ids": [list(range(len(t)))[:max_length] for t in texts]}

    batch = scaling.real_inputs(tokenizer, ["a" * 20, "b" * 3, "c" * 16, "d" * 30], batch_size=3, seq_len=16)
    assert batch.rows.tolist() == [0, 1, 2] and batch.inputs["input_ids"].tolist() == [list(range(16))] * 3
    assert (
        batch.inputs["attention_mask"].tolist() == [[1] * 16] * 3
        and batch.inputs["input_ids"].dtype == np.int64
    )


def test_scaling_numbers_on_a_fixed_clock(scaling, tiny_modernbert, tmp_path, monkeypatch):
    """Batch 2 x 16 timed at 0.5 s, the MFU batch of 4 at 0.8 s; 1 GFLOP per sequence; GEMM peaks of 100 (the
    session), 10 (before the model) and 6.25 GFLOP/s (before the MFU batch): 250 ms/sequence, 4 GFLOP/s = 40 %
    of the peak measured right before it; 5 GFLOP/s = 80 % at the large batch, which meets the 80 % target."""
    import longtail.benchmark as benchmark

    peaks = iter([100.0, 10.0, 6.25])
    monkeypatch.setattr(benchmark, "gemm_peak_gflops", lambda *a: {"gflops": next(peaks)})
    monkeypatch.setattr(benchmark, "forward_flops", lambda ne, config, lengths: 1e9 * len(lengths))
    monkeypatch.setattr(
        scaling, "measure", lambda model, batch, *a: {2: 0.5, 4: 0.8}[batch.inputs["input_ids"].shape[0]]
    )
    monkeypatch.setattr(scaling, "plot", lambda report, path: None)
    report = scaling.main(["--model_dirs", f"tiny={tiny_modernbert}", "--batch_size", "2", "--seq_len", "16",
                           "--mfu_model", "tiny", "--mfu_batch_size", "4", "--onnx_model", "",
                           "--shared_dir", str(tmp_path / "shared"), "--output_dir", str(tmp_path)])  # fmt: skip
    texts = "synthetic complaints (--shared_dir has no data/cfpb/complaints_dev.csv)"
    assert report["texts"] == texts
    [row] = report["results"]
    assert (
        row["ms_per_sequence"] == 250.0 and row["gflops_per_s"] == 4.0 and row["gemm_gflops_at_run"] == 10.0
    )
    assert row["gemm_peak_share"] == pytest.approx(0.4) and report["gemm"] == {"gflops": 100.0}
    mfu = report["mfu"]
    assert (mfu["batch"], mfu["median_s"], mfu["gflops_per_s"], mfu["gemm_gflops_at_run"]) == (
        4,
        0.8,
        5.0,
        6.25,
    )
    assert mfu["gemm_peak_share"] == 0.8
    md = (tmp_path / "scaling.md").read_text("utf-8")
    assert "| tiny | encoder |" in md and "| 2 x 16 | 250.0 | 4.0 | 40% |" in md
    assert "tiny at batch 4 x 16: 5.0 GFLOP/s = 80% of the GEMM peak (target >= 80%: met)." in md
    assert f"warm-up, {texts} cut to the exact length" in md
    # the three references disagree by (100 - 6.25) / 100: scaling.md said nothing of it
    assert report["stability"]["gemm_drift"] == 0.9375 and report["stability"]["unstable"] is True
    assert (
        "The GEMM peak, measured 3 times in this run, moved between 6.2 and 100.0 GFLOP/s (94%). **Warning: the "
        "machine was unstable during this run** (threshold 10%): shares of the GEMM peak and latency ratios that "
        "differ by less than about 94% are within noise" in md
    )


def test_scaling_drift_at_the_threshold_is_no_warning(scaling):
    """Peaks of 100 (the session) and 90 (the model): a drift of exactly 10 % is stable; 89.9 is not."""

    def report(peak):
        return {"gemm": {"gflops": 100.0}, "results": [{"gemm_gflops_at_run": peak}], "mfu": None}

    assert scaling.stability(report(90.0))["unstable"] is False
    assert scaling.stability(report(89.9))["unstable"] is True
    zero = {"gemm": {"gflops": 0.0}, "results": [{"gemm_gflops_at_run": 0.0}], "mfu": None}  # a fake clock's
    assert scaling.stability(zero)["gemm_drift"] == 0.0


def test_scaling_onnx_batch_defaults_to_the_mfu_batch(scaling, tiny_modernbert, tmp_path, monkeypatch):
    """--onnx_batch_size, else --mfu_batch_size, else --batch_size (--mfu_batch_size 0)."""
    import longtail.benchmark as benchmark

    monkeypatch.setattr(benchmark, "gemm_peak_gflops", lambda *a: {"gflops": 1.0})
    monkeypatch.setattr(scaling, "measure", lambda *a: 0.5)
    monkeypatch.setattr(scaling, "plot", lambda report, path: None)
    rows = []
    monkeypatch.setattr(
        scaling, "onnx_check", lambda name, folder, model, tok, batch, *a: rows.append(len(batch.rows))
    )
    for extra in (
        ["--mfu_batch_size", "4"],
        ["--mfu_batch_size", "4", "--onnx_batch_size", "3"],
        ["--mfu_batch_size", "0"],
    ):
        scaling.main(["--model_dirs", f"tiny={tiny_modernbert}", "--batch_size", "2", "--seq_len", "16", "--mfu_model", "",
                      "--onnx_model", "tiny", "--overwrite", "--output_dir", str(tmp_path), *extra])  # fmt: skip
    assert rows == [4, 3, 2]


def test_scaling_onnx_section_picks_the_fastest_variant_that_was_not_rejected(scaling, monkeypatch):
    """PyTorch 0.4 s; ONNX fp32 0.5 s, optimised 0.25 s, int8 rejected by the export (not timed): the best is
    the optimised one, 0.4 / 0.25 = 1.6x PyTorch's speed."""
    import longtail.benchmark as benchmark
    import longtail.export
    import longtail.inference
    from longtail.inference import Batch

    class Saved:
        def save_pretrained(self, path):
            path.mkdir(parents=True, exist_ok=True)

    class Backend:
        def __init__(self, folder, device):
            self.variant = folder.name

    record = {"variants": {"fp32": {"status": "ok", "max_abs_logit_diff": 1e-6},
                           "optimized": {"status": "ok", "max_abs_logit_diff": 2e-6},
                           "int8": {"status": "rejected", "reason": "agreement"}}}  # fmt: skip
    monkeypatch.setattr(longtail.export, "export_onnx", lambda export_args: record)
    monkeypatch.setattr(longtail.inference, "OrtBackend", Backend)
    timings = {"fp32": 0.5, "optimized": 0.25}
    monkeypatch.setattr(
        benchmark,
        "timed",
        lambda fn, repeats, warmup, device: {"median_s": timings[fn.__defaults__[0].variant]},
    )
    monkeypatch.setattr(scaling, "measure", lambda *a: 0.4)
    batch = Batch(np.arange(4), {"input_ids": np.ones((4, 16), np.int64), "attention_mask": np.ones((4, 16))})
    args = SimpleNamespace(repeats=1, warmup=0)
    onnx = scaling.onnx_check("m", "folder", Saved(), Saved(), batch, args, "cpu", {})
    assert onnx == {"model": "m", "batch": [4, 16], "pytorch_s": 0.4, "onnx_fp32_s": 0.5,
                    "onnx_fp32_max_abs_logit_diff": 1e-6, "onnx_optimized_s": 0.25,
                    "onnx_optimized_max_abs_logit_diff": 2e-6, "best_onnx": "onnx_optimized",
                    "best_onnx_vs_pytorch": 1.6}  # fmt: skip
    report = {"machine_text": "m", "gemm": {"gflops": 1.0}, "repeats": 1, "warmup": 0, "results": [], "claims": {},
              "mfu": None, "onnx": {**onnx, "best_onnx_vs_pytorch": 1.0}, "texts": "real CFPB texts (c.csv)"}  # fmt: skip
    assert (
        "ONNX on m at batch 4 x 16: pytorch 0.40 s, onnx_fp32 0.50 s, onnx_optimized 0.25 s; best ONNX "
        "(onnx_optimized) = 1.00x PyTorch's speed (target >= 1.0: met)." in scaling.markdown(report)
    )
    assert "Median of 1 timed forward pass after 0 warm-up, real CFPB texts (c.csv) cut" in scaling.markdown(
        report
    )


def test_scaling_says_when_its_texts_are_synthetic(scaling, tmp_path):
    """Without <shared>/data/cfpb the study times synthetic complaints; scaling.md said "real CFPB texts"."""
    texts, source = scaling.texts_for(tmp_path)
    assert (
        len(texts) > 8 and source == "synthetic complaints (--shared_dir has no data/cfpb/complaints_dev.csv)"
    )
    report = {"machine_text": "m", "gemm": {"gflops": 1.0}, "repeats": 1, "warmup": 0, "results": [], "claims": {},
              "mfu": None, "onnx": None, "texts": source}  # fmt: skip
    md = scaling.markdown(report)
    assert f"warm-up, {source} cut to the exact length" in md and "real CFPB" not in md
    assert str(tmp_path) not in md  # named from --shared_dir, not by this machine's absolute path
    # with the export there: 400 of its narratives (all of them here), named as real
    narratives = [f"complaint number {i}" for i in range(400)]
    (tmp_path / "data" / "cfpb").mkdir(parents=True)
    pd.DataFrame({"Consumer complaint narrative": narratives, "Issue": "x"}).to_csv(
        tmp_path / "data" / "cfpb" / "complaints_dev.csv", index=False
    )
    texts, source = scaling.texts_for(tmp_path)
    assert sorted(texts) == sorted(narratives) and source == "real CFPB texts (complaints_dev.csv)"


# ------------------------------------------------------------------------------------------------ kd_step


def base_model(path, config=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps(config or {"model_type": "bert", "architectures": ["BertModel"]})
    )
    return path


def test_kd_step_option_boundaries_are_accepted(kd_step, tmp_path):
    model = base_model(tmp_path / "model")
    for extra in (["--alpha", "0"], ["--alpha", "1"], ["--temperature", "0.001"]):
        kd_step.parse_args(["--model_dir", str(model), *extra])
    args = kd_step.parse_args(["--model_dir", str(model), "--warmup", "0", "--rounds", "1", "--batch_size", "1",
                               "--seq_len", "1", "--num_labels", "2"])  # fmt: skip
    assert (args.warmup, args.rounds, args.batch_size, args.seq_len, args.num_labels) == (0, 1, 1, 1, 2)


def test_kd_step_labels_only_from_a_sequence_classifier(kd_step, tmp_path):
    """A base model's config may carry id2label (from its pretraining task): only a *ForSequenceClassification
    head's labels are the model's own."""
    labels = {str(i): f"x{i}" for i in range(3)}
    assert kd_step.classifier_labels(base_model(tmp_path / "clf", {"architectures": ["BertForSequenceClassification"],
                                                                   "id2label": labels})) == 3  # fmt: skip
    assert (
        kd_step.classifier_labels(
            base_model(tmp_path / "base", {"architectures": ["BertModel"], "id2label": labels})
        )
        is None
    )
    assert (
        kd_step.classifier_labels(base_model(tmp_path / "none", {"architectures": None, "id2label": labels}))
        is None
    )
    assert (
        kd_step.classifier_labels(
            base_model(tmp_path / "nolabels", {"architectures": ["BertForSequenceClassification"]})
        )
        is None
    )
    assert kd_step.classifier_labels(tmp_path / "absent") is None


def test_kd_step_ratio_of_medians_on_a_fixed_clock(kd_step, tmp_path, monkeypatch):
    """1 warm-up step of each kind (untimed: 9.9 s), then 3 rounds alternating CE first, KD first, CE first. CE
    2.5, 1.0, 4.0 s (median 2.5); KD 2.75, 5.0, 2.0 s (median 2.75): KD / CE = 1.1, exactly the target, met."""

    class Model:
        def train(self):
            pass

    times = {"ce": iter([9.9, 2.5, 1.0, 4.0]), "kd": iter([9.9, 2.75, 5.0, 2.0])}
    order = []

    def timed_step(trainer, model, batch, optimizer):
        order.append(trainer)
        assert batch == {"ce": "batch", "kd": "kd_batch"}[trainer]
        return next(times[trainer])

    monkeypatch.setattr(kd_step, "build", lambda args: (Model(), "ce", "kd", "batch", "kd_batch", None))
    monkeypatch.setattr(kd_step, "timed_step", timed_step)
    monkeypatch.setattr(kd_step, "environment", lambda: {"cpu": "test"})
    model = base_model(tmp_path / "minilm" / "model")
    argv = ["--model_dir", str(model), "--warmup", "1", "--rounds", "3", "--temperature", "2", "--alpha", "0.5",
            "--batch_size", "4", "--seq_len", "8", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert kd_step.main(argv) == 0
    assert order == ["ce", "kd", "ce", "kd", "kd", "ce", "ce", "kd"]
    report = json.loads((tmp_path / "out" / "kd_step.json").read_text("utf-8"))
    assert report["model"] == "minilm" and report["num_labels"] == 113
    assert report["ce_step_s"] == {"median": 2.5, "min": 1.0, "max": 4.0}
    assert report["kd_step_s"] == {"median": 2.75, "min": 2.0, "max": 5.0}
    assert report["kd_over_ce"] == 1.1 and report["meets_target"] is True and report["target"] == 1.1
    md = (tmp_path / "out" / "kd_step.md").read_text("utf-8")
    assert (
        "| CE | 2.5000 | 1.0000 | 4.0000 |" in md
        and "| KD (T=2, alpha=0.5) | 2.7500 | 2.0000 | 5.0000 |" in md
    )
    assert "**KD / CE = 1.100** (target <= 1.1: met)." in md
    # CE's steps spread (4.0 - 1.0) / 2.5 = 120 %, KD's (5.0 - 2.0) / 2.75: the verdict said nothing of it
    assert report["spread"] == 1.2 and report["unstable"] is True
    assert (
        "**Warning: the machine was unstable during this run** (threshold 10%): the timed steps spread up to 120% "
        "of their median" in md
    )
    assert (
        "Student minilm, batch 4 x 8 tokens, 113 labels; 3 alternating rounds after 1 warm-up step of" in md
    )


def test_kd_step_a_spread_of_exactly_ten_percent_is_stable(kd_step, tmp_path, monkeypatch):
    """CE 9.5, 10, 10.5 s and KD 19, 20, 21 s: each spreads (max - min) / its own median = 1 / 10 = 2 / 20 = 10 %,
    the threshold itself, which is no warning (KD's against CE's median would be 20 %)."""

    class Model:
        def train(self):
            pass

    times = {"ce": iter([1.0, 9.5, 10.0, 10.5]), "kd": iter([1.0, 19.0, 20.0, 21.0])}
    monkeypatch.setattr(kd_step, "build", lambda args: (Model(), "ce", "kd", "batch", "kd_batch", None))
    monkeypatch.setattr(kd_step, "timed_step", lambda trainer, *a: next(times[trainer]))
    monkeypatch.setattr(kd_step, "environment", lambda: {"cpu": "test"})
    argv = ["--model_dir", str(base_model(tmp_path / "m")), "--warmup", "1", "--rounds", "3",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert kd_step.main(argv) == 0
    report = json.loads((tmp_path / "out" / "kd_step.json").read_text("utf-8"))
    assert (report["kd_over_ce"], report["spread"], report["unstable"]) == (2.0, 0.1, False)
    assert "unstable" not in (tmp_path / "out" / "kd_step.md").read_text("utf-8")


def test_kd_step_waits_for_the_gpu_before_it_stops_the_clock(kd_step, monkeypatch):
    """On a GPU (the Trainer moves the model to args.device) a step's kernels run after their launch: the training
    step returns in 0.1 s on the fake clock and the optimizer's update in 0.5 s, their kernels finish 2 s later, at
    the sync the step now ends with (after the update, whose kernels it waits for too); without it the step
    measured 0.6 s, the launches alone. On CPU there is nothing to wait for."""
    import torch

    clock = [0.0]
    synced = []

    def synchronize():
        synced.append(clock[0])
        clock[0] += 2.0

    class Trainer:
        def __init__(self, device):
            self.args = SimpleNamespace(device=torch.device(device))

        def training_step(self, model, batch):
            clock[0] += 0.1

    def step():
        clock[0] += 0.5

    optimizer = SimpleNamespace(step=step, zero_grad=lambda set_to_none: None)
    monkeypatch.setattr(kd_step.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    assert kd_step.timed_step(Trainer("cuda"), None, {}, optimizer) == pytest.approx(2.6) and synced == [0.6]
    assert kd_step.timed_step(Trainer("cpu"), None, {}, optimizer) == pytest.approx(0.6) and len(synced) == 1


# ------------------------------------------------------------------------------------------- train_memory

TRAIN_MEMORY_AT_LEAST = {"batch_size": 1, "seq_len": 1, "num_labels": 2, "steps": 1, "repeats": 1, "timeout": 1,
                         "malloc_mmap_threshold": 0}  # fmt: skip


@pytest.mark.parametrize("name, least", TRAIN_MEMORY_AT_LEAST.items())
def test_train_memory_option_boundaries(train_memory, tmp_path, capsys, name, least):
    base = ["--shared_dir", str(tmp_path / "absent")]
    assert getattr(train_memory.parse_args([*base, f"--{name}", str(least)]), name) == least
    line = error_line(train_memory.parse_args, [*base, f"--{name}", str(least - 1)], capsys)
    assert line.endswith(f"--{name} must be >= {least}, got {least - 1}")


def memory_result(train_memory, variant, load, step, peak, baseline=0.5):
    return {"variant": variant, "description": train_memory.DESCRIPTIONS[variant], "measure": "peak RSS",
            "trainable_params": 10, "total_params": 100, "trainable_share_pct": 10.0,
            "baseline_bytes": int(baseline * GIB), "load_peak_bytes": int(load * GIB),
            "step_peak_bytes": None if step is None else int(step * GIB), "peak_bytes": int(peak * GIB),
            "load_s": 0.1, "step_s": 0.1}  # fmt: skip


def fake_workers(train_memory, monkeypatch, run_worker, tmp_path):
    """train_memory.main without processes: each variant's worker is `run_worker`, the environment fixed; returns
    a base model folder to pass as --model_dir."""
    monkeypatch.setattr(
        train_memory, "_subprocess", lambda argv, timeout, *a: subprocess.CompletedProcess(argv, 0, "", "")
    )
    monkeypatch.setattr(train_memory, "run_worker", run_worker)
    monkeypatch.setattr(train_memory, "environment", lambda: {"cpu": "test"})
    return base_model(tmp_path / "model", {"model_type": "qwen2"})


def test_train_memory_ratios_of_all_four_variants(train_memory):
    """GiB (baseline 0.5 each): full step 6, peak 6; LoRA step 3, peak 4; LoRA + GC step 2, peak 3; QLoRA step
    0.75, peak 1.5. Each ratio by hand, rounded to 3 decimals."""
    results = [memory_result(train_memory, "full", 3, 6, 6), memory_result(train_memory, "lora", 2, 3, 4),
               memory_result(train_memory, "lora_gc", 2, 2, 3), memory_result(train_memory, "qlora", 1.5, 0.75, 1.5)]  # fmt: skip
    ratios = train_memory.summarise(results)
    assert ratios == {
        "qlora_vs_lora_peak_bytes": 0.375, "lora_vs_full_peak_bytes": 0.667, "qlora_vs_full_peak_bytes": 0.25,
        "qlora_vs_lora_gc_peak_bytes": 0.5,
        "qlora_vs_lora_step_peak_bytes": 0.25, "lora_vs_full_step_peak_bytes": 0.5,
        "qlora_vs_full_step_peak_bytes": 0.125, "qlora_vs_lora_gc_step_peak_bytes": 0.375,
        "qlora_vs_lora_peak_above_baseline_bytes": 0.286, "lora_vs_full_peak_above_baseline_bytes": 0.636,
        "qlora_vs_full_peak_above_baseline_bytes": 0.182, "qlora_vs_lora_gc_peak_above_baseline_bytes": 0.4,
    }  # fmt: skip
    assert [r["peak_above_baseline_bytes"] for r in results] == [
        int(5.5 * GIB),
        int(3.5 * GIB),
        int(2.5 * GIB),
        GIB,
    ]
    md = memory_markdown(train_memory, results, ratios)
    assert (
        "| LoRA r16 q/k/v/o + head | 10 (10.000 %) | 0.50 | 2.00 | 3.00 | **4.00** | 3.50 | 0.667 | 1.0 |"
        in md
    )
    assert "- QLoRA / LoRA with gradient checkpointing: 0.5x process peak; 0.375x step only" in md
    assert "- LoRA / full fine-tuning: **0.667x** process peak; 0.5x step only; 0.636x above baseline." in md


def test_train_memory_target_boundary(train_memory):
    """A step-only (and a whole-process) ratio of exactly 0.35 meets the target (an unknown step peak:
    test_bench_memory)."""
    met = [memory_result(train_memory, "lora", 2, 2, 4), memory_result(train_memory, "qlora", 1, 0.7, 1.4)]
    met[0]["peak_bytes_runs"] = [4 * GIB]  # one run: no range
    ratios = train_memory.summarise(met)
    assert ratios["qlora_vs_lora_step_peak_bytes"] == 0.35 and ratios["qlora_vs_lora_peak_bytes"] == 0.35
    md = memory_markdown(train_memory, met, ratios)
    assert "**0.35x** training-step peak" in md and "target <= 0.35x: met); 0.35x whole-process peak" in md
    assert "| **4.00** |" in md
    assert "(target: met)" in md


def test_train_memory_reports_the_median_run(train_memory, tmp_path, monkeypatch):
    """--repeats 4: LoRA's runs peak at 5, 3, 4 and 6 GiB, the median run shown is the lower middle one (4);
    full's 4 runs have one failure: of 5, 3 and 4 the middle (4). The workers get the mmap threshold; with 0,
    the report says glibc's default."""
    peaks = {"lora": iter([5, 3, 4, 6]), "full": iter([5, None, 3, 4])}
    calls = []

    def run_worker(variant, checkpoint, common, timeout, malloc_mmap_threshold):
        calls.append((variant, malloc_mmap_threshold, timeout))
        peak = next(peaks[variant])
        if peak is None:
            return {"variant": variant, "error": "failed (exit 1): boom"}
        return {
            **memory_result(train_memory, variant, 1, peak - 0.5, peak),
            "run": peak,
            "device": "CPU (2 cores)",
        }

    model = fake_workers(train_memory, monkeypatch, run_worker, tmp_path)
    out = tmp_path / "out"
    argv = ["--model_dir", str(model), "--output_dir", str(out), "--variants", "lora", "full", "--repeats", "4",
            "--malloc_mmap_threshold", "0", "--timeout", "7"]  # fmt: skip
    assert train_memory.main(argv) == 0
    assert calls == [("lora", 0, 7)] * 4 + [("full", 0, 7)] * 4
    report = json.loads((out / "train_memory.json").read_text())
    lora, full = report["results"]
    assert lora["run"] == 4 and lora["peak_bytes_runs"] == [3 * GIB, 4 * GIB, 5 * GIB, 6 * GIB]
    assert lora["step_peak_bytes_runs"] == [int(2.5 * GIB), int(3.5 * GIB), int(4.5 * GIB), int(5.5 * GIB)]
    assert full["run"] == 4 and full["peak_bytes_runs"] == [3 * GIB, 4 * GIB, 5 * GIB]
    assert report["settings"]["malloc_mmap_threshold"] == "glibc default (dynamic)"
    assert (
        report["settings"]["architecture"] == "model (qwen2)"
        and report["environment"]["device"] == "CPU (2 cores)"
    )
    assert report["ratios"]["lora_vs_full_peak_bytes"] == 1.0
    md = (out / "train_memory.md").read_text()  # the median run's peak, the range of the runs beside it
    assert "| **4.00** (3.00–6.00) |" in md and "| **4.00** (3.00–5.00) |" in md


def test_train_memory_worker_environment_and_result_line(train_memory, monkeypatch):
    """The worker's MALLOC_MMAP_THRESHOLD_ is set only for a threshold above 0; its last RESULT line is the
    result; a failure or a timeout is an error entry with its reason."""
    envs = []

    def run(argv, capture_output, text, env, timeout):
        envs.append(env)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(train_memory.subprocess, "run", run)
    train_memory._subprocess(["x"], 5, 0)
    train_memory._subprocess(["x"], 5, 65536)
    assert "MALLOC_MMAP_THRESHOLD_" not in envs[0] and envs[1]["MALLOC_MMAP_THRESHOLD_"] == "65536"
    assert envs[1]["HF_HUB_OFFLINE"] == "1"

    def answer(returncode, stdout, stderr=""):
        monkeypatch.setattr(
            train_memory,
            "_subprocess",
            lambda argv, timeout, *a: subprocess.CompletedProcess(argv, returncode, stdout, stderr),
        )
        return train_memory.run_worker("lora", "ckpt", [], 5, 0)

    lines = (
        'loading\nRESULT {"variant": "lora", "peak_bytes": 1}\nRESULT {"variant": "lora", "peak_bytes": 2}\n'
    )
    assert answer(0, lines) == {"variant": "lora", "peak_bytes": 2}
    assert answer(1, lines, "Traceback\nMemoryError: boom") == {
        "variant": "lora",
        "error": "failed (exit 1): MemoryError: boom",
    }
    assert answer(0, "no result\n") == {"variant": "lora", "error": "failed (exit 0): no result"}

    def timeout(argv, timeout, *a):
        raise subprocess.TimeoutExpired(argv, timeout)

    monkeypatch.setattr(train_memory, "_subprocess", timeout)
    assert train_memory.run_worker("lora", "ckpt", [], 5, 0) == {
        "variant": "lora",
        "error": "timed out after 5 s",
    }


def test_train_memory_a_failed_variant_beside_a_measured_one(train_memory, tmp_path, monkeypatch):
    """LoRA measured, full failing in every run: the report is written (exit 0) with full's error in its row; the
    workers get --malloc_mmap_threshold as given, and the report records it. One step peak unknown (its
    process could not reset the high-water mark) beside a measured one: that ratio is None, not a TypeError."""
    calls = []

    def run_worker(variant, checkpoint, common, timeout, malloc_mmap_threshold):
        calls.append(malloc_mmap_threshold)
        if variant == "full":
            return {"variant": variant, "error": "failed (exit 1): boom"}
        return {**memory_result(train_memory, variant, 1, 2, 3), "device": "CPU"}

    model = fake_workers(train_memory, monkeypatch, run_worker, tmp_path)
    out = tmp_path / "out"
    argv = ["--model_dir", str(model), "--output_dir", str(out), "--variants", "lora", "full",
            "--malloc_mmap_threshold", "4096"]  # fmt: skip
    assert train_memory.main(argv) == 0 and calls == [4096, 4096]
    report = json.loads((out / "train_memory.json").read_text())
    assert report["settings"]["malloc_mmap_threshold"] == 4096
    assert report["results"][1] == {"variant": "full", "error": "failed (exit 1): boom"}
    assert "| full | failed (exit 1): boom |" in (out / "train_memory.md").read_text()
    mixed = [memory_result(train_memory, "lora", 2, 2, 4), memory_result(train_memory, "qlora", 1, None, 1.4)]
    assert train_memory.summarise(mixed)["qlora_vs_lora_step_peak_bytes"] is None


def test_train_memory_worker_measures_on_a_fixed_clock(
    train_memory, tiny_qwen2, monkeypatch, one_torch_thread
):
    """The worker itself (LoRA on the tiny Qwen2, 2 steps) with its clock and memory readings replaced: loading
    from t=0 to 1.5 s, the steps from 10 to 14 s: 2.0 s per step; peak RSS 5 GiB while loading, 3 GiB in the
    steps: the process peak is the larger, 5, and the step peak 3."""
    import longtail.benchmark as benchmark

    clock = iter([0.0, 1.5, 10.0, 14.0])
    monkeypatch.setattr(train_memory, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    peaks = iter([5 * GIB, 3 * GIB])
    monkeypatch.setattr(benchmark, "peak_memory_bytes", lambda device: next(peaks))
    current = iter([GIB, 2 * GIB])
    monkeypatch.setattr(train_memory, "_current_rss_bytes", lambda: next(current))
    monkeypatch.setattr(train_memory, "_release_free_memory", lambda: None)
    monkeypatch.setattr(train_memory, "_reset_rss_peak", lambda: True)
    result = train_memory.run_variant("lora", tiny_qwen2, batch_size=2, seq_len=16, num_labels=3, steps=2)
    assert (result["load_s"], result["step_s"]) == (1.5, 2.0)
    assert (result["baseline_bytes"], result["load_peak_bytes"], result["before_step_bytes"]) == (
        GIB,
        5 * GIB,
        2 * GIB,
    )
    assert (result["peak_bytes"], result["step_peak_bytes"]) == (5 * GIB, 3 * GIB)
    assert result["variant"] == "lora" and not result["gradient_checkpointing"]
    assert 0 < result["trainable_params"] < result["total_params"]


def test_bench_scripts_share_one_instability_threshold_and_drift(inference, scaling, kd_step):
    """The 10 % threshold and the GEMM-drift formula live once, in longtail.benchmark (three copies before)."""
    import longtail.benchmark as benchmark

    assert inference.UNSTABLE is scaling.UNSTABLE is kd_step.UNSTABLE is benchmark.UNSTABLE
    assert benchmark.UNSTABLE == 0.10
    # (max - min) / max, the session's peak among them; 0 where no peak is above 0
    assert benchmark.gemm_drift([100.0, 75.0, 90.0]) == 0.25 and benchmark.gemm_drift(iter([0.0, 0.0])) == 0.0
