"""recipes/export_onnx.py on bad input: a clear error while the options are parsed or before any output is
written, never a library's traceback after an export (so a rerun is not refused by the output-folder guard)."""

from __future__ import annotations

import pandas as pd
import pytest
from test_export_predict import tiny_classifier  # noqa: F401  (a fixture)
from test_recipes import REPO, load_recipe


def test_export_refuses_tfidf_and_ensemble_folders(tmp_path):
    """Neither has a config.json: each is named for what it is, with how to serve it, not 'no config.json'."""
    export = load_recipe("export_onnx")
    tfidf, ensemble = tmp_path / "baseline_tfidf", tmp_path / "ensemble"
    for folder, name in ((tfidf, "model.joblib"), (ensemble, "ensemble.json")):
        folder.mkdir()
        (folder / name).write_text("{}")
    with pytest.raises(ValueError, match=r"baseline_tfidf is a scikit-learn TF-IDF run \(model.joblib\), which "
                       r"has no ONNX export here: serve it with python -m longtail.predict"):  # fmt: skip
        export.main(["--model_dir", str(tfidf)])
    with pytest.raises(
        ValueError, match=r"ensemble is an ensemble folder \(ensemble.json\).*export its member runs"
    ):
        export.main(["--model_dir", str(ensemble)])
    assert not (tfidf / "onnx").exists() and not (ensemble / "onnx").exists()


def test_export_yaml_with_another_model_dir_exports_beside_that_model(
    tiny_classifier,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """The README's `export_onnx.py --config recipes/configs/export_onnx.yaml --model_dir RUN` exports into
    RUN/onnx. The YAML once also fixed output_dir to the demo model's onnx/, so any other RUN's export landed
    there (from the repo root: into the demo run's folder, where `predict` would serve it as the demo model)."""
    import shutil

    export = load_recipe("export_onnx")
    run = tmp_path / "my_run"
    shutil.copytree(tiny_classifier, run)
    monkeypatch.chdir(tmp_path)
    export.main(["--config", str(REPO / "recipes/configs/export_onnx.yaml"), "--model_dir", str(run),
                 "--parity_rows", "8", "--optimize", "false", "--quantize", "false"])  # fmt: skip
    assert (run / "onnx" / "parity.json").is_file() and (run / "onnx" / "fp32").is_dir()
    assert not (tmp_path / "outputs").exists()


def test_export_parity_rows_below_one_is_refused_at_parse_time(tiny_classifier, tmp_path):  # noqa: F811
    export = load_recipe("export_onnx")
    for rows in ("0", "-3"):
        with pytest.raises(ValueError, match=f"--parity_rows must be >= 1, got {rows}"):
            export.main(
                ["--model_dir", tiny_classifier, "--output_dir", str(tmp_path / "x"), "--parity_rows", rows]
            )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max_length", "0", r"--max_length must be >= 1 \(tokens\), got 0"),  # it turned truncation off
        ("--atol", "-1", "--atol must be >= 0, got -1.0"),  # it failed only after the whole export
        (
            "--min_int8_agreement",
            "97",
            r"--min_int8_agreement must be in \[0, 1\], got 97.0",
        ),  # rejected every int8
        ("--max_int8_macro_f1_drop", "-0.1", "--max_int8_macro_f1_drop must be >= 0, got -0.1"),
        ("--device", "gpu", "--device must be cpu, cuda or cuda:N"),  # torch's RuntimeError, mid-export
        # the synthetic sample has no labels: the macro-F1 gate asked for was skipped without a word
        (
            "--label_column",
            "Issue",
            "--label_column Issue names a column of --parity_file, and none was given",
        ),
    ],
)
def test_export_options_out_of_range_are_refused_at_parse_time(
    tiny_classifier,  # noqa: F811
    tmp_path,
    option,
    value,
    message,
):
    export = load_recipe("export_onnx")
    with pytest.raises(ValueError, match=message):
        export.main(["--model_dir", tiny_classifier, "--output_dir", str(tmp_path / "x"), option, value])
    assert not any(tmp_path.iterdir())


def test_export_parity_file_without_known_labels_fails_before_exporting(
    tiny_classifier,  # noqa: F811
    eval_csv,
    tmp_path,
):
    """A quality gate asked for (--label_column) that no row could score is an error naming the file, the column
    and labels on both sides, before any export; so is a parity file with no text to read."""
    export = load_recipe("export_onnx")
    df = pd.read_csv(eval_csv)
    other = tmp_path / "other.csv"
    df.assign(Issue="Renamed " + df["Issue"]).to_csv(other, index=False)
    args = ["--model_dir", tiny_classifier, "--output_dir", str(tmp_path / "x"), "--parity_rows", "8",
            "--optimize", "false", "--quantize", "false", "--parity_file"]  # fmt: skip
    with pytest.raises(ValueError, match=r"other.csv: no value of --label_column 'Issue' is a label the model "
                       r"knows.*file: \['Renamed .*model: \['"):  # fmt: skip
        export.main([*args, str(other), "--label_column", "Issue"])
    empty = tmp_path / "empty.csv"
    df.assign(**{"Consumer complaint narrative": " "}).to_csv(empty, index=False)
    with pytest.raises(ValueError, match="empty.csv: no row has a non-empty 'Consumer complaint narrative'"):
        export.main([*args, str(empty)])
    # a text column named twice: pandas read the second as `.1`, and the first was the parity sample, silently
    text = "Consumer complaint narrative"
    twice = tmp_path / "twice.csv"
    df[[text, "Issue"]].assign(again=df[text]).rename(columns={"again": text}).to_csv(twice, index=False)
    with pytest.raises(ValueError) as info:
        export.main([*args, str(twice), "--label_column", "Issue"])
    assert str(info.value) == (
        f"{twice} has more than one column named ['{text}']: rename or drop the repeated columns "
        f"(columns: ['{text}', 'Issue', '{text}'])"
    )
    assert not (tmp_path / "x").exists()


def test_export_of_a_base_model_names_the_missing_head(tiny_classifier, tmp_path):  # noqa: F811
    """A folder whose classification head was not saved (a base model): its head would be random and its labels
    LABEL_i, so the export refuses it, naming the missing weights, before anything is exported."""
    import shutil

    from safetensors.torch import load_file, save_file

    export = load_recipe("export_onnx")
    base = tmp_path / "base"
    shutil.copytree(tiny_classifier, base)
    weights = load_file(str(base / "model.safetensors"))
    head = sorted(k for k in weights if k.startswith(("classifier.", "score.")))
    save_file({k: v for k, v in weights.items() if k not in head}, str(base / "model.safetensors"))
    with pytest.raises(ValueError) as info:
        export.main(["--model_dir", str(base), "--output_dir", str(tmp_path / "x")])
    assert str(info.value) == (
        f"{base} has no saved weights for {', '.join(head[:4])}{' ...' if len(head) > 4 else ''}: a base model or "
        "a partial save, not a trained classifier. Pass a run folder of the recipes."
    )
    assert not (tmp_path / "x").exists()


def test_export_into_the_model_folder_itself_is_refused(tiny_classifier):  # noqa: F811
    """With --overwrite_output_dir the export would clear its variants' folders, and (through the run folders'
    overwrite) once the model's own files, beside the model it is reading."""
    from pathlib import Path

    export = load_recipe("export_onnx")
    before = sorted(p.name for p in Path(tiny_classifier).iterdir())
    with pytest.raises(ValueError, match="is the model's own folder: the export needs a folder of its own"):
        export.main(["--model_dir", tiny_classifier, "--output_dir", tiny_classifier, "--overwrite_output_dir",
                     "true"])  # fmt: skip
    assert sorted(p.name for p in Path(tiny_classifier).iterdir()) == before


def test_an_earlier_export_and_a_gpu_onnxruntime_that_is_missing_are_one_line(
    tiny_classifier,  # noqa: F811
    tmp_path,
    capsys,
):
    """Both were tracebacks from the script (a FileExistsError, a RuntimeError): one line now, status 2; they are
    still a FileExistsError and a RuntimeError for callers that catch those."""
    import onnxruntime as ort
    from conftest import refused

    from longtail.cli import run
    from longtail.export import ExportExistsError
    from longtail.inference import ExecutionProviderError

    assert issubclass(ExportExistsError, FileExistsError) and issubclass(ExecutionProviderError, RuntimeError)
    export = load_recipe("export_onnx")
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["--model_dir", tiny_classifier, "--output_dir", str(out), "--parity_rows", "8"]
    line = refused(lambda a: run(export.main, a), argv, capsys)
    assert line.endswith(
        f"error: {out} exists and is not empty: pass --overwrite_output_dir to replace the export"
    )
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return  # this onnxruntime has CUDA
    line = refused(
        lambda a: run(export.main, a), [*argv[:3], str(tmp_path / "x"), "--device", "cuda"], capsys
    )
    assert "error: device 'cuda' asks for ONNX Runtime's CUDAExecutionProvider" in line
    assert not (tmp_path / "x").exists()


def test_export_output_dir_that_is_a_file_is_one_line_before_exporting(tiny_classifier, tmp_path):  # noqa: F811
    """It was a FileExistsError traceback after the whole export, with <output_dir>.partial left beside it."""
    export = load_recipe("export_onnx")
    target = tmp_path / "out.onnx"
    target.write_text("a file", "utf-8")
    args = [
        "--model_dir",
        tiny_classifier,
        "--output_dir",
        str(target),
        "--parity_rows",
        "4",
        "--quantize",
        "false",
    ]
    with pytest.raises(ValueError, match=f"--output_dir {target} is a file, not a folder"):
        export.main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
