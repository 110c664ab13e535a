"""bench/inference.py on user mistakes: one-line errors before any timing or output folder, never the model
folder's own ONNX export replaced, and a report that states the batch size, repeats and max_length it used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import corpus, load_bench, refused, run_as, save_bert_classifier, train_wordpiece

RUN_MAX_LENGTH = 24  # the tiny run's run_config.json max_length (not the bench's fallback 128)


@pytest.fixture(autouse=True)
def as_bench(monkeypatch):
    run_as(monkeypatch, "inference.py")  # as `python bench/inference.py` names itself


@pytest.fixture(scope="module")
def bench():
    return load_bench("inference", "bench_inference_input")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, eval_csv) -> Path:
    """A 1-layer BERT classifier folder (random weights) with a run_config.json saying max_length 24."""
    labels = sorted(pd.read_csv(eval_csv)["Issue"].unique())
    tokenizer = train_wordpiece(corpus(200), vocab_size=300)
    path = save_bert_classifier(tmp_path_factory.mktemp("run") / "run", tokenizer, labels, max_positions=128)
    (path / "run_config.json").write_text(json.dumps({"data": {"max_length": RUN_MAX_LENGTH}}), "utf-8")
    return path


def argv(run_dir, eval_csv, out, *extra) -> list[str]:
    return ["--model_dir", str(run_dir), "--data", str(eval_csv), "--output_dir", str(out), "--smoke",
            "--in_process", "--padding_data", "", "--variants", "pytorch_fp32", *extra]  # fmt: skip


@pytest.mark.parametrize("where", ["", "onnx", "onnx/deeper"])
def test_output_dir_in_the_model_folder_is_refused(bench, run_dir, eval_csv, capsys, where):
    export = run_dir / "onnx"
    export.mkdir(exist_ok=True)
    (export / "parity.json").write_text('{"gated": true}', "utf-8")
    out = run_dir / where if where else run_dir
    line = refused(bench.main, argv(run_dir, eval_csv, out, "--overwrite"), capsys)
    assert f"--output_dir {out} would write" in line and f"model folder {run_dir}" in line
    assert (export / "parity.json").read_text("utf-8") == '{"gated": true}'
    assert sorted(p.name for p in export.iterdir()) == ["parity.json"]
    assert not (run_dir / "results.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--repeats", "0"], "--repeats must be >= 1 (got 0)"),
        (["--batch_size", "0"], "--batch_size must be >= 1 (got 0)"),
        (["--max_rows", "0"], "--max_rows must be >= 1 (got 0)"),
        (["--latency_rows", "0"], "--latency_rows must be >= 1 (got 0)"),
        (["--threads", "-2"], "--threads must be >= 1 (got -2)"),
        (["--bootstrap_resamples", "1"], "--bootstrap_resamples must be >= 2 (got 1)"),
        (["--max_length", "0"], "--max_length must be >= 1 (got 0)"),
        (["--padding_rows", "0"], "--padding_rows must be >= 1 (got 0)"),
        (
            ["--variants", "pytorch_fp32", "onnx_fp32", "pytorch_fp32"],
            "--variants lists pytorch_fp32 more than once",
        ),
        (["--device", "gpu"], "--device must be cpu, cuda or cuda:N"),
    ],
)
def test_bad_option_values_are_one_line_errors(bench, run_dir, eval_csv, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert message in refused(bench.main, argv(run_dir, eval_csv, out, *extra), capsys)
    assert not out.exists()


def test_cuda_asked_without_cuda(bench, run_dir, eval_csv, tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = refused(bench.main, argv(run_dir, eval_csv, tmp_path / "out", "--device", "cuda"), capsys)
    assert "--device cuda: CUDA is not available here" in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "marker, what", [("model.joblib", "a scikit-learn TF-IDF run"), ("ensemble.json", "an ensemble")]
)
def test_tfidf_and_ensemble_folders_are_refused(bench, eval_csv, tmp_path, capsys, marker, what):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / marker).write_text("{}", "utf-8")
    line = refused(bench.main, argv(folder, eval_csv, tmp_path / "out"), capsys)
    assert (
        f"is {what} ({marker}): it has no PyTorch/ONNX variants" in line and not (tmp_path / "out").exists()
    )


@pytest.mark.parametrize("given", ["onnx", "onnx/fp32"])
def test_an_onnx_export_as_model_dir_names_the_run_folder(bench, eval_csv, tmp_path, capsys, given):
    """An export's variant failed to load ("no file named model.safetensors"), and its onnx/ folder was answered
    "pass one of its variants" (predict's advice), which then failed too."""
    (tmp_path / "run" / "onnx" / "fp32").mkdir(parents=True)
    for name in ("onnx/fp32/config.json", "onnx/fp32/model.onnx", "onnx/parity.json"):
        (tmp_path / "run" / name).write_text("{}", "utf-8")
    folder = tmp_path / "run" / given
    line = refused(bench.main, argv(folder, eval_csv, tmp_path / "out"), capsys)
    inside = "model.onnx" if given == "onnx/fp32" else "fp32/model.onnx"
    assert line.endswith(
        f"--model_dir {folder} is an ONNX export ({inside}): the bench times the PyTorch model and exports its "
        "ONNX variants from it; pass the run folder it was exported from"
    )
    assert not (tmp_path / "out").exists()


def test_a_model_folder_holding_onnx_files_is_benchmarked(bench, run_dir, eval_csv, tmp_path):
    """A model folder with its ONNX files beside its weights (`make export`'s onnx/<variant>/, or onnx/model.onnx as
    many Hub repos ship it) is a model the bench takes, sharded weights (a large model's) included."""
    run = shutil.copytree(run_dir, tmp_path / "run")
    (run / "onnx" / "fp32").mkdir(parents=True)
    for name in ("onnx/fp32/model.onnx", "onnx/model.onnx"):
        (run / name).write_text("{}", "utf-8")
    check = ["--model_dir", str(run), "--data", str(eval_csv), "--output_dir", str(tmp_path / "out")]
    assert bench.parse_args(check, check_paths=True).model_dir == str(run)
    (run / "model.safetensors").rename(run / "model-00001-of-00001.safetensors")
    assert bench.parse_args(check, check_paths=True).model_dir == str(run)


def test_the_load_average_is_taken_before_the_bench_adds_its_own(
    bench, run_dir, eval_csv, tmp_path, monkeypatch
):
    """The machine (its load average) was described after the model loaded and --data was read (minutes for a
    large export), so "load average" counted the bench's own work."""
    import longtail.inference

    order = []

    class Loaded(Exception):
        pass

    def load_model_dir(*a, **k):
        order.append("load")
        raise Loaded

    monkeypatch.setattr(longtail.inference, "machine_description", lambda: order.append("machine") or {})
    monkeypatch.setattr(longtail.inference, "load_model_dir", load_model_dir)
    with pytest.raises(Loaded):
        bench.main(argv(run_dir, eval_csv, tmp_path / "out"))
    assert order == ["machine", "load"]


def test_missing_data_and_file_as_output_dir(bench, run_dir, eval_csv, tmp_path, capsys):
    missing = tmp_path / "missing.csv"
    assert f"--data {missing}: file not found" in refused(
        bench.main, argv(run_dir, missing, tmp_path / "o"), capsys
    )
    a_file = tmp_path / "a_file"
    a_file.write_text("x", "utf-8")
    assert f"--output_dir {a_file} is a file" in refused(bench.main, argv(run_dir, eval_csv, a_file), capsys)
    assert not (tmp_path / "o").exists()


def test_folder_without_weights_is_one_line_before_any_output(bench, run_dir, eval_csv, tmp_path):
    folder = tmp_path / "noweights"
    shutil.copytree(run_dir, folder, ignore=shutil.ignore_patterns("*.safetensors", "onnx"))
    out = tmp_path / "out"
    with pytest.raises(
        SystemExit, match=r"^inference.py: error: cannot load --model_dir .*noweights: "
    ) as exit_info:
        bench.main(argv(folder, eval_csv, out))
    assert "\n" not in str(exit_info.value) and not out.exists()


def test_data_mistakes_end_with_status_2(bench, run_dir, eval_csv, tmp_path, capsys):
    """A --data file that does not parse or lacks a column: one line with status 2, as the other bench refusals (was
    status 1, and "error:" without "bench:" for the column)."""
    out = tmp_path / "out"
    broken = tmp_path / "broken.csv"
    broken.write_text('text,Issue\n"never closed\n')
    line = refused(bench.main, argv(run_dir, broken, out), capsys)
    assert line.startswith(f"inference.py: error: --data {broken}: ")
    line = refused(bench.main, argv(run_dir, eval_csv, out, "--text_column", "body"), capsys)
    assert line.startswith(f"inference.py: error: {eval_csv} has no column ['body']; columns: ")
    # a label column named twice (pandas read the second as `Issue.1`, and the first was scored silently)
    twice = tmp_path / "twice.csv"
    twice.write_text("text,Issue,Issue\nlate fee,a,b\n", "utf-8")
    assert refused(bench.main, argv(run_dir, twice, out, "--text_column", "text"), capsys) == (
        f"inference.py: error: --data {twice} has more than one column named ['Issue']: rename or drop the "
        "repeated columns (columns: ['text', 'Issue', 'Issue'])"
    )
    assert not out.exists()


def test_no_row_left_to_score(bench, run_dir, eval_csv, tmp_path):
    unseen = tmp_path / "unseen.csv"
    df = pd.read_csv(eval_csv).head(6)
    df["Issue"] = "a label the model never saw"
    df.to_csv(unseen, index=False)
    out = tmp_path / "out"
    with pytest.raises(
        SystemExit, match=r"^inference.py: error: no row left to score in unseen.csv: 6 rows, 0 without"
    ) as info:
        bench.main(argv(run_dir, unseen, out))
    assert "(left out: {'dropped_unknown_label': 6}; its labels: " in str(
        info.value
    )  # the counts that are not 0
    assert not out.exists()


def test_padding_rows_above_the_data_are_capped(bench, run_dir, eval_csv, tmp_path, caplog, one_torch_thread):
    from longtail.inference import load_model_dir

    few = tmp_path / "few.csv"
    pd.read_csv(eval_csv).head(5).to_csv(few, index=False)
    args = bench.parse_args(["--model_dir", str(run_dir), "--padding_data", str(few), "--padding_rows", "96",
                             "--padding_max_length", "64", "--repeats", "1", "--warmup", "0", "--batch_size", "4"])  # fmt: skip
    model, tokenizer, _ = load_model_dir(run_dir)
    pad = bench.padding_study(args, model, tokenizer, "cpu")
    assert pad["rows"] == 5 and "fewer than --padding_rows 96" in caplog.text


def test_report_states_batch_size_repeats_and_the_runs_max_length(
    bench, run_dir, eval_csv, tmp_path, one_torch_thread
):
    out = tmp_path / "bench"
    report = bench.main(argv(run_dir, eval_csv, out, "--batch_size", "8", "--max_rows", "12"))
    assert report["batch_size"] == 8 and report["repeats"] == 2 and report["rows"]["scored"] == 12
    assert report["max_length"] == RUN_MAX_LENGTH  # with --data, still the run's max_length, as --help says
    md = (out / "results.md").read_text("utf-8")
    assert "batch 8 sorted by length" in md and "ms/example (b8)" in md and "rows/s (b8)" in md
    assert "median of 2 timed passes" in md and "the fastest at batch 8" in md
    assert "b32" not in md and "batch 32" not in md
    assert f"max_length {RUN_MAX_LENGTH}," in md


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="fp16 runs on a GPU")
def test_nothing_measured_is_an_error_after_the_report(bench, run_dir, eval_csv, tmp_path, one_torch_thread):
    """Only GPU variants on a CPU (or every variant failing) once exited 0 with "Nothing measured": a script or
    CI read it as a finished benchmark. The report with each reason is still written."""
    out = tmp_path / "bench"
    args = argv(run_dir, eval_csv, out)
    args[args.index("pytorch_fp32")] = "pytorch_fp16"
    with pytest.raises(
        SystemExit, match="inference.py: error: no variant was measured \\(pytorch_fp16: needs a GPU\\)"
    ):
        bench.main(args)
    assert "Nothing measured." in (out / "results.md").read_text("utf-8")


def test_an_earlier_runs_onnx_folder_without_results_needs_overwrite(
    bench, run_dir, eval_csv, tmp_path, capsys, monkeypatch, one_torch_thread
):
    """A run that stopped after its ONNX export leaves <output_dir>/onnx and no results.json: a rerun once
    replaced that folder silently (the guard looked for results.json only)."""
    import longtail.export

    out = tmp_path / "bench"
    earlier = out / "onnx" / "fp32" / "model.onnx"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("earlier", "utf-8")
    args = argv(run_dir, eval_csv, out, "--variants", "onnx_fp32")
    assert refused(bench.main, args, capsys).endswith(
        f"{out} holds earlier results (onnx); pass --overwrite or choose another --output_dir"
    )
    assert earlier.read_text("utf-8") == "earlier" and sorted(p.name for p in out.iterdir()) == ["onnx"]

    # with --overwrite the run goes on to export into that folder, replacing it (stopped there: the export
    # itself is tested in test_export_predict)
    class Exported(Exception):
        pass

    def export_onnx(export_args):
        raise Exported(export_args)

    monkeypatch.setattr(longtail.export, "export_onnx", export_onnx)
    with pytest.raises(Exported) as exported:
        bench.main([*args, "--overwrite"])
    export_args = exported.value.args[0]
    assert export_args.output_dir == str(out / "onnx") and export_args.overwrite_output_dir


def test_an_onnx_variant_the_export_rejects_is_reported_not_loaded(
    bench, run_dir, eval_csv, tmp_path, monkeypatch, one_torch_thread
):
    """On CUDA the export rejects (and removes) a dynamic int8 whose matmuls ran on CPU, even with the bench's
    gate off: the bench read only "skipped", went on to load the removed folder and stopped; it is a row not run."""
    import longtail.export

    why = "ONNX Runtime was asked for CUDAExecutionProvider but ran compute nodes elsewhere (MatMulInteger x2 on CPU)"
    record = {"variants": {"fp32": {"status": "skipped", "reason": "not asked"},
                           "int8": {"file": None, "status": "rejected", "reason": why}}}  # fmt: skip
    monkeypatch.setattr(longtail.export, "export_onnx", lambda export_args: record)
    report = bench.main(argv(run_dir, eval_csv, tmp_path / "out", "onnx_int8"))
    assert [r["variant"] for r in report["results"]] == ["pytorch_fp32"]
    assert report["skipped"] == {"onnx_int8": f"rejected by the export: {why}"}


def test_max_length_above_the_models_positions(bench, run_dir, eval_csv, tmp_path, capsys):
    """The tiny model has 128 positions: --max_length 129 once ran on, then every variant failed on the rows
    past 128 tokens ("no variant was measured", after the timing), or it passed silently had no row been that long."""
    from types import SimpleNamespace

    out = tmp_path / "out"
    assert refused(bench.main, argv(run_dir, eval_csv, out, "--max_length", "129"), capsys).endswith(
        f"--max_length 129 exceeds the 128 positions of {run_dir}; use at most that"
    )
    assert not out.exists()
    parser = bench.build_parser()
    at_limit = bench.parse_args(argv(run_dir, eval_csv, out, "--max_length", "128"))
    bench.check_max_length(parser, at_limit, SimpleNamespace(max_position_embeddings=128))  # allowed
    # a config without max_position_embeddings is not checked; nor is the default max_length (None here)
    longer = bench.parse_args(argv(run_dir, eval_csv, out, "--max_length", "100000"))
    bench.check_max_length(parser, longer, SimpleNamespace())
    bench.check_max_length(parser, bench.parse_args([]), SimpleNamespace(max_position_embeddings=8))


def test_unstable_machine_is_flagged_in_the_report(bench):
    """A variant whose timed repeats spread beyond UNSTABLE, or a GEMM peak that drifted across variants
    (as measured on a shared VM: passes of 2.0-10.0 s, peaks 176 -> 73 GFLOP/s), puts a warning in results.md;
    a steady run has none."""

    def row(variant, runs, peak):
        median = sorted(runs)[len(runs) // 2]
        return {"variant": variant, "batch32_runs_s": runs, "batch32_pass_s": median, "gemm_gflops_at_run": peak,
                "batch32_spread": (max(runs) - min(runs)) / median}  # fmt: skip

    steady = [row("pytorch_fp32", [1.00, 1.02, 1.01], 100.0), row("onnx_int8", [0.50, 0.51, 0.52], 98.0)]
    assert (
        bench.stability(steady, 101.0)["unstable"] is False
        and bench.stability(steady, 101.0)["warning"] is None
    )
    noisy = [row("pytorch_fp32", [4.17, 9.95, 9.25, 2.67, 2.03], 176.5), steady[1]]
    report = bench.stability(noisy, 170.4)
    assert report["unstable"] and report["max_spread_variant"] == "pytorch_fp32"
    assert report["max_batch32_spread"] == pytest.approx((9.95 - 2.03) / 4.17)
    assert "pytorch_fp32 spread 190%" in report["warning"] and "within noise" in report["warning"]
    drifting = [steady[0], row("onnx_int8", [0.50, 0.51, 0.52], 73.0)]  # steady repeats, the peak moved 28 %
    assert bench.stability(drifting, 101.0)["gemm_drift"] == pytest.approx(28 / 101)
    assert "between 73.0 and 101.0 GFLOP/s" in bench.stability(drifting, 101.0)["warning"]


def test_an_overwrite_rerun_leaves_none_of_the_earlier_runs_outputs(
    bench, run_dir, eval_csv, tmp_path, one_torch_thread
):
    """--overwrite replaced results.json and results.md but kept the earlier run's pareto_memory.png (an
    --in_process rerun draws none) and its onnx/ export (a rerun without ONNX variants exports none): files
    beside the new report that were not measured by it."""
    out = tmp_path / "bench"
    (out / "onnx" / "fp32").mkdir(parents=True)
    for name in ("results.json", "pareto_memory.png", "pareto_latency.png", "onnx/fp32/model.onnx"):
        (out / name).write_text("earlier", "utf-8")
    report = bench.main(argv(run_dir, eval_csv, out, "--overwrite"))
    assert report["plots"] == ["pareto_latency.png"]
    assert sorted(p.name for p in out.iterdir()) == ["pareto_latency.png", "results.json", "results.md"]
