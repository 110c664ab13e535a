"""Tests for longtail.data: loading, label merging, cleaning, leakage-free splitting, slices."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CFPB_CSV, needs_shared

from longtail.data import (
    DataArguments,
    DataError,
    first_non_utf8,
    legacy_text_digest,
    load_merge_map,
    load_raw_splits,
    load_taxonomy,
    normalise_text,
    prepare_data,
    read_table,
    refuse_repeated,
    require_usable_splits,
    slice_masks,
    split_ids,
    text_digest,
)

OLD, NEW = "Incorrect information on credit report", "Incorrect information on your report"
IN_TAXONOMY = ["Incorrect information on your report", "Improper use of your report", "Fraud or scam"]


def args(**kw) -> DataArguments:
    """Arguments for crafted frames with columns text/label; no merging, no rare-class filter."""
    defaults = dict(text_column="text", label_column="label", label_merge_map="none", min_class_count=1)
    return DataArguments(**{**defaults, **kw})


def frame(counts: dict[str, int], prefix: str = "") -> pd.DataFrame:
    """Distinct texts, `counts[label]` rows per label."""
    rows = [(f"{prefix}{label} complaint number {i}", label) for label, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["text", "label"])


def norms(df: pd.DataFrame) -> set[str]:
    return {normalise_text(t) for t in df["text"]}


# ---------------------------------------------------------------------------------------------
# Label merging and taxonomy
# ---------------------------------------------------------------------------------------------


def test_builtin_merge_map_and_taxonomy_sizes():
    merge_map = load_merge_map("cfpb_2017")
    taxonomy = load_taxonomy("cfpb_issue_113")
    assert len(merge_map) == 35
    assert len(taxonomy) == len(set(taxonomy)) == 113
    assert merge_map[OLD] == NEW
    assert set(merge_map.values()) <= set(taxonomy)  # every new wording is canonical
    assert not set(merge_map) & set(taxonomy)  # no old wording is


def test_builtin_merge_map_folds_old_wordings():
    df = pd.DataFrame({"text": [f"text {i}" for i in range(6)], "label": [OLD] * 3 + [NEW] * 3})
    data = prepare_data(args(label_merge_map="cfpb_2017", validation_split_fraction=0.3), raw={"train": df})
    assert data.label_names == [NEW]
    assert data.log["merge_map_pairs"] == 35
    assert data.log["train"]["labels_merged"] == 3


INVESTIGATION_2025 = "Problem with a company's investigation into an existing problem"
INVESTIGATION = "Problem with a credit reporting company's investigation into an existing problem"


def test_the_2025_merge_map_folds_cfpbs_2025_wording_into_the_taxonomy_too():
    """CFPB reworded the credit-reporting investigation issue in March 2025; the course's 2017 map predates it, so
    its rows were dropped as outside the 113-issue taxonomy. `cfpb_2025` is the 2017 pairs and that one."""
    old, new = load_merge_map("cfpb_2017"), load_merge_map("cfpb_2025")
    assert new == {**old, INVESTIGATION_2025: INVESTIGATION} and len(new) == 36
    assert set(new.values()) <= set(load_taxonomy("cfpb_issue_113"))
    df = pd.DataFrame(
        {
            "text": [f"text {i}" for i in range(8)],
            "label": [INVESTIGATION_2025] * 3 + [INVESTIGATION, OLD] * 2 + [NEW],
        }
    )
    kept = prepare_data(args(label_merge_map="cfpb_2025", label_taxonomy="cfpb_issue_113"), raw={"train": df})
    assert kept.log["train"]["labels_merged"] == 5 and kept.log["train"]["dropped_outside_taxonomy"] == 0
    assert (kept.splits["train"]["label"] == INVESTIGATION).sum() + (
        kept.splits["validation"]["label"] == INVESTIGATION
    ).sum() == 5
    before = prepare_data(
        args(label_merge_map="cfpb_2017", label_taxonomy="cfpb_issue_113"), raw={"train": df}
    )
    assert before.log["train"]["dropped_outside_taxonomy"] == 3 and before.log["train"]["labels_merged"] == 2


@needs_shared
def test_the_2025_wording_is_the_real_samples_commonest_label_outside_the_taxonomy():
    rows = pd.read_csv(CFPB_CSV, usecols=["Issue", "Consumer complaint narrative"]).dropna()
    merged = rows["Issue"].replace(load_merge_map("cfpb_2017"))
    outside = merged[~merged.isin(set(load_taxonomy("cfpb_issue_113")))].value_counts()
    assert outside.index[0] == INVESTIGATION_2025 and outside.iloc[0] == 152
    assert not rows["Issue"].replace(load_merge_map("cfpb_2025")).eq(INVESTIGATION_2025).any()


def test_merge_map_none_keeps_old_wordings():
    df = pd.DataFrame({"text": [f"text {i}" for i in range(6)], "label": [OLD] * 3 + [NEW] * 3})
    data = prepare_data(args(label_merge_map="none"), raw={"train": df})
    assert data.label_names == sorted([OLD, NEW])
    assert data.log["merge_map_pairs"] == 0
    assert data.log["train"]["labels_merged"] == 0


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_custom_merge_map_file(tmp_path, kind):
    path = tmp_path / f"map.{kind}"
    if kind == "csv":
        path.write_text("# comment line\nold,new\nA,B\nC,B\n", "utf-8")
    else:
        path.write_text(json.dumps({"_comment": "ignored", "A": "B", "C": "B"}), "utf-8")
    assert load_merge_map(str(path)) == {"A": "B", "C": "B"}
    df = frame({"A": 3, "B": 3, "C": 2, "D": 3})
    data = prepare_data(args(label_merge_map=str(path)), raw={"train": df})
    assert data.label_names == ["B", "D"]
    assert data.log["train"]["labels_merged"] == 5
    pool = pd.concat([data.splits["train"], data.splits["validation"]])
    assert pool["label"].value_counts().to_dict() == {"B": 8, "D": 3}


def test_merge_map_errors(tmp_path):
    with pytest.raises(DataError, match="neither a built-in .*cfpb_2017.* nor a file"):
        load_merge_map("no_such_map")
    bad = tmp_path / "three.csv"
    bad.write_text("old,new,extra\nA,B,C\n", "utf-8")
    with pytest.raises(DataError, match=r"exactly two columns .*\['old', 'new', 'extra'\]"):
        load_merge_map(str(bad))
    not_object = tmp_path / "list.json"
    not_object.write_text('["A", "B"]', "utf-8")
    with pytest.raises(DataError, match="must be an object"):
        load_merge_map(str(not_object))
    hashed = tmp_path / "hash.csv"
    hashed.write_text("# comment line\nold,new\nIssue #1,Issue #2\n", "utf-8")
    assert load_merge_map(str(hashed)) == {"Issue #1": "Issue #2"}


def test_merge_map_new_labels_that_are_not_text_name_the_file(tmp_path):
    """A .json value that is a number, null or a list was a TypeError from pandas while merging ('Invalid value for
    dtype str', "'<' not supported"); an empty new label (`A,` in a .csv) made a class named ''."""
    raw = {"train": frame({"A": 3, "B": 3})}
    for name, text, shown in (
        ("number.json", '{"A": 3}', "{'A': 3}"),
        ("null.json", '{"A": null}', "{'A': None}"),
        ("list.json", '{"A": ["B"]}', "{'A': ['B']}"),
        ("empty.csv", "old,new\nA,\n", "{'A': ''}"),
        ("blank.csv", "old,new\nA, \n", "{'A': ' '}"),
        ("many.json", json.dumps({k: 1 for k in "ABCDEFG"}), "{'A': 1, 'B': 1, 'C': 1, 'D': 1, 'E': 1}"),
    ):
        path = tmp_path / name
        path.write_text(text, "utf-8")
        with pytest.raises(DataError) as info:
            prepare_data(args(label_merge_map=str(path)), raw=raw)
        assert str(info.value) == (
            f"{path} (--label_merge_map): each new label must be non-empty text (in .json, numbers in quotes), "
            f"got {shown}"
        )


def test_taxonomy_filter_keeps_only_taxonomy_labels(caplog):
    df = pd.DataFrame(
        {
            "text": [f"text {i}" for i in range(10)],
            "label": [NEW] * 4 + [OLD] * 2 + ["Made-up issue"] * 3 + ["Another made-up issue"],
        }
    )
    with caplog.at_level(logging.INFO, logger="longtail.data"):
        data = prepare_data(
            args(label_merge_map="cfpb_2017", label_taxonomy="cfpb_issue_113"), raw={"train": df}
        )
    assert data.log["taxonomy_size"] == 113
    # merging runs first, so the two old wordings are kept under the new one
    assert data.log["train"]["labels_merged"] == 2
    assert data.log["train"]["dropped_outside_taxonomy"] == 4
    assert data.log["train"]["rows_kept"] == 6
    assert data.label_names == [NEW]
    assert any("4 rows have labels outside the taxonomy" in r.getMessage() for r in caplog.records)


def test_labels_in_another_case_or_spacing_are_read_as_the_taxonomy_and_merge_map_write_them(
    tmp_path, caplog
):
    """Label text that differs from a taxonomy or merge-map label only in case or inner spacing (CFPB's wording
    across years, a hand-edited file) is read as that label, counted and named: it was dropped as "outside the
    taxonomy" (400 real rows lower-cased: "No training rows left"; a doubled space: 394 of 400 dropped, and the
    run went on with 6), or not merged."""
    labels = [NEW.lower()] * 2 + [NEW.replace(" ", "  ", 1)] + [OLD.upper()] * 2 + ["FRAUD OR SCAM"] * 3
    labels += ["Made-up issue"] * 2
    df = pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label": labels})
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(
            args(label_merge_map="cfpb_2017", label_taxonomy="cfpb_issue_113"), raw={"train": df}
        )
    counts = data.log["train"]
    assert counts["labels_respelled"] == 8 and counts["labels_merged"] == 2
    assert counts["dropped_outside_taxonomy"] == 2 and counts["rows_kept"] == 8  # 'Made-up issue' only
    assert data.label_names == sorted([NEW, "Fraud or scam"])
    message = next(r.getMessage() for r in caplog.records if "another case or spacing" in r.getMessage())
    assert message.startswith(
        "train: 8 rows have labels written in another case or spacing than the merge map's"
    )
    assert "'FRAUD OR SCAM' as 'Fraud or scam'" in message
    # a merge map alone: its old wording in another case is merged
    data = prepare_data(args(label_merge_map="cfpb_2017"), raw={"train": df})
    assert (
        data.log["train"]["labels_merged"] == 2
        and NEW in data.label_names
        and OLD.upper() not in data.label_names
    )
    # a label whose key two taxonomy labels share is not guessed at; no merge map nor taxonomy: labels as written
    taxonomy = tmp_path / "taxonomy.txt"
    taxonomy.write_text("Late fee\nLATE FEE\nFraud or scam\n", "utf-8")
    df = pd.DataFrame(
        {"text": ["a", "b", "c", "d"], "label": ["late fee", "Late fee", "fraud or scam", "Fraud or scam"]}
    )
    data = prepare_data(args(label_taxonomy=str(taxonomy)), raw={"train": df})
    assert data.log["train"]["labels_respelled"] == 1 and data.log["train"]["dropped_outside_taxonomy"] == 1
    assert data.label_names == ["Fraud or scam", "Late fee"]
    data = prepare_data(args(), raw={"train": df})
    assert "labels_respelled" not in data.log["train"] and len(data.label_names) == 4


@pytest.mark.parametrize("kind", ["txt", "json"])
def test_custom_taxonomy_file(tmp_path, kind):
    path = tmp_path / f"taxonomy.{kind}"
    if kind == "txt":
        path.write_text("# the labels\nA\n\nB\n", "utf-8")
    else:
        path.write_text(json.dumps(["A", "B"]), "utf-8")
    assert load_taxonomy(str(path)) == ["A", "B"]
    data = prepare_data(args(label_taxonomy=str(path)), raw={"train": frame({"A": 3, "B": 3, "C": 4})})
    assert data.label_names == ["A", "B"]
    assert data.log["train"]["dropped_outside_taxonomy"] == 4


def test_a_json_taxonomy_that_is_not_a_list_of_labels_is_an_error(tmp_path):
    """A JSON string was split into its characters (list("abc")), an object read as its keys."""
    path = tmp_path / "taxonomy.json"
    for content, got in (
        ('"Fraud or scam"', "'Fraud or scam'"),
        ('{"A": 1}', "{'A': 1}"),
        ("[1, 2]", "[1, 2]"),
    ):
        path.write_text(content, "utf-8")
        with pytest.raises(DataError) as info:
            load_taxonomy(str(path))
        assert str(info.value) == (
            f'{path} (--label_taxonomy): a .json taxonomy must be a list of labels as text, ["label", ...], '
            f"got {got}"
        )


def test_taxonomy_none_keeps_everything():
    assert load_taxonomy("none") is None
    with pytest.raises(DataError, match="label_taxonomy 'nope' is neither a built-in"):
        load_taxonomy("nope")


# ---------------------------------------------------------------------------------------------
# Rare classes and the validation split
# ---------------------------------------------------------------------------------------------


def test_min_class_count_drops_rare_classes_in_the_pool_before_the_split(caplog):
    df = frame({"big": 20, "edge": 5, "rare": 4, "single": 1})
    with caplog.at_level(logging.INFO, logger="longtail.data"):
        data = prepare_data(args(min_class_count=5, validation_split_fraction=0.2), raw={"train": df})
    assert data.log["dropped_rare_classes"] == {"rare": 4, "single": 1}
    assert data.log["dropped_rare_class_rows"] == 5
    assert any("Dropped 2 classes with < 5 training rows (5 rows)" in r.getMessage() for r in caplog.records)
    # 'edge' has exactly 5 rows in the pool: kept, although only 4 remain in train after the split
    assert data.label_names == ["big", "edge"]
    assert (data.splits["train"]["label"] == "edge").sum() == 4
    assert (data.splits["validation"]["label"] == "edge").sum() == 1


def stratified_source() -> pd.DataFrame:
    return frame({"a": 100, "b": 50, "c": 20, "d": 2, "e": 1})


def test_validation_split_is_stratified():
    data = prepare_data(args(validation_split_fraction=0.1), raw={"train": stratified_source()})
    val = data.splits["validation"]["label"].value_counts().to_dict()
    train = data.splits["train"]["label"].value_counts().to_dict()
    # round(0.1 * n) per class; a class with 1 or 2 rows stays in training
    assert val == {"a": 10, "b": 5, "c": 2}
    assert train == {"a": 90, "b": 45, "c": 18, "d": 2, "e": 1}
    assert data.log["validation_from_train"] == {"fraction": 0.1, "seed": 42}
    assert data.log["rows"] == {"train": 156, "validation": 17}
    assert not set(data.splits["train"]["row_id"]) & set(data.splits["validation"]["row_id"])


def test_validation_split_depends_on_the_seed_only():
    def val_ids(seed):
        data = prepare_data(args(split_seed=seed), raw={"train": stratified_source()})
        return split_ids(data)["validation"]

    assert val_ids(1) == val_ids(1)
    assert val_ids(1) != val_ids(2)


def test_single_row_class_stays_in_train():
    df = frame({"a": 10, "solo": 1})
    data = prepare_data(args(validation_split_fraction=0.5), raw={"train": df})
    assert "solo" in data.label_names
    assert (data.splits["train"]["label"] == "solo").sum() == 1
    assert (data.splits["validation"]["label"] == "solo").sum() == 0
    assert (data.splits["validation"]["label"] == "a").sum() == 5


def test_validation_split_rounds_half_up_per_class():
    """round(fraction * n) with halves up: 0.25 x 10 = 2.5 -> 3, 0.25 x 7 = 1.75 -> 2, 0.25 x 2 = 0.5 -> 1."""
    data = prepare_data(args(validation_split_fraction=0.25), raw={"train": frame({"a": 10, "b": 7, "c": 2})})
    assert data.splits["validation"]["label"].value_counts().to_dict() == {"a": 3, "b": 2, "c": 1}
    assert data.splits["train"]["label"].value_counts().to_dict() == {"a": 7, "b": 5, "c": 1}


def test_validation_split_fraction_and_min_class_count_bounds():
    for fraction in (0, 0.0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"validation_split_fraction must be in \(0, 1\)"):
            args(validation_split_fraction=fraction)
    with pytest.raises(ValueError, match="min_class_count must be >= 1, got 0"):
        args(min_class_count=0)


def duplicated_source() -> pd.DataFrame:
    """40 narratives, each written three ways that differ only in case and whitespace."""
    rows = []
    for i in range(40):
        base = f"my card number {i} was charged twice by the bank"
        label = "ab"[i % 2]
        rows += [
            (base, label),
            ("  " + base.upper().replace(" ", "   ") + " ", label),
            (base.title().replace(" ", "\t", 3) + "\n", label),
        ]
    return pd.DataFrame(rows, columns=["text", "label"])


def test_duplicates_never_straddle_train_and_validation():
    df = duplicated_source()
    assert df["text"].nunique() == 120 and df["text"].map(normalise_text).nunique() == 40
    for seed in range(5):
        data = prepare_data(args(split_seed=seed, validation_split_fraction=0.25), raw={"train": df})
        train, val = data.splits["train"], data.splits["validation"]
        assert not norms(train) & norms(val)
        # duplicate groups move whole: 5 of 20 narratives per class, three copies each
        assert len(val) == 2 * 5 * 3 and len(train) == 2 * 15 * 3


def test_train_rows_duplicating_test_texts_are_dropped_and_counted(caplog):
    train = duplicated_source()
    test = pd.DataFrame(
        {
            "text": [
                "MY CARD NUMBER 0 WAS CHARGED TWICE BY THE BANK",
                "my card number 7 was  charged twice by the bank",
            ],
            "label": ["a", "b"],
        }
    )
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(args(validation_split_fraction=0.2), raw={"train": train, "test": test})
    assert data.log["dropped_train_duplicates_of_eval"] == 6  # three copies of each of 2 narratives
    # a warning naming the split, the share and the leakage (an INFO line "... in validation/test" once)
    assert messages(caplog, "Dropped") == [
        f"Dropped 6 of {len(train)} training rows ({600 / len(train):.1f}%) whose text also appears in test (case "
        "and spacing ignored): train/test leakage, kept out of training so that no score is of a text trained on; "
        "more than a few repeated complaints means the test data was drawn from the training data"
    ]
    assert len(data.splits["test"]) == 2
    test_norms = norms(data.splits["test"])
    assert not norms(data.splits["train"]) & test_norms
    assert not norms(data.splits["validation"]) & test_norms
    assert not norms(data.splits["train"]) & norms(data.splits["validation"])


def test_train_rows_duplicating_validation_file_are_dropped():
    train = frame({"a": 6, "b": 6})
    # same narratives as train rows 'a ... 3' and 'b ... 5', up to case and whitespace
    validation = pd.DataFrame(
        {"text": ["A  complaint NUMBER 3", " b complaint\nnumber 5 "], "label": ["a", "b"]}
    )
    data = prepare_data(args(), raw={"train": train, "validation": validation})
    assert data.log["dropped_train_duplicates_of_eval"] == 2
    assert "validation_from_train" not in data.log
    assert len(data.splits["train"]) == 10 and len(data.splits["validation"]) == 2
    assert not norms(data.splits["train"]) & norms(data.splits["validation"])


def test_validation_rows_duplicating_test_are_dropped(caplog):
    train = frame({"a": 6, "b": 6})
    validation = frame({"a": 2, "b": 2}, prefix="val ")
    test = pd.DataFrame({"text": ["VAL a complaint   number 1", "fresh b text"], "label": ["a", "b"]})
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(args(), raw={"train": train, "validation": validation, "test": test})
    assert data.log["dropped_validation_duplicates_of_test"] == 1
    assert len(data.splits["validation"]) == 3
    assert not norms(data.splits["validation"]) & norms(data.splits["test"])
    assert (
        "Dropped 1 of 4 validation rows (25.0%) whose text also appears in test (case and spacing ignored): "
        "validation/test leakage" in caplog.text
    )


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def export_shaped() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Date received": ["2017-05-01"] * 4,
            "Product": ["Credit reporting"] * 4,
            "Issue": [NEW, NEW, "Fraud or scam", "Fraud or scam"],
            "Consumer complaint narrative": [f"narrative {i}" for i in range(4)],
        }
    )


def test_missing_text_column_lists_columns_and_hints_the_export_name():
    with pytest.raises(DataError) as err:
        prepare_data(DataArguments(text_column="Consumer Complaint"), raw={"train": export_shaped()})
    message = str(err.value)
    assert "['Consumer Complaint']" in message
    assert "the train data" in message
    assert "['Date received', 'Product', 'Issue', 'Consumer complaint narrative']" in message
    assert "Did you mean 'Consumer complaint narrative'?" in message


def test_missing_label_column_lists_columns():
    df = frame({"a": 3})
    with pytest.raises(DataError, match=r"\['Issue'\] not found in the train data.*\['text', 'label'\]"):
        prepare_data(args(label_column="Issue"), raw={"train": df})
    # no hint when nothing similar exists
    with pytest.raises(DataError) as err:
        prepare_data(args(text_column="body"), raw={"train": df})
    assert "Did you mean" not in str(err.value)


def test_a_missing_column_suggests_the_same_name_written_another_way(tmp_path):
    """`issue` for the export's `Issue`, BigQuery's `consumer_complaint_narrative`, a typo, and the API's JSON
    names: the error named no match ("Did you mean" came only for the Hub set's and the export's narrative)."""
    with pytest.raises(DataError) as err:
        prepare_data(
            DataArguments(text_column="Consumer complaint narrative", label_column="issue"),
            raw={"train": export_shaped()},
        )
    assert str(err.value).endswith("Did you mean 'Issue'? Set --text_column / --label_column.")
    bigquery = export_shaped().rename(
        columns={"Consumer complaint narrative": "consumer_complaint_narrative", "Issue": "issue"}
    )
    both = r"Did you mean '{}' for 'Consumer complaint narrative', 'issue' for 'Issue'\?"
    with pytest.raises(DataError, match=both.format("consumer_complaint_narrative")):
        prepare_data(DataArguments(text_column="Consumer complaint narrative"), raw={"train": bigquery})
    with pytest.raises(DataError, match=r"\['Isue'\] not found .* Did you mean 'Issue'\?"):
        prepare_data(
            DataArguments(text_column="Consumer complaint narrative", label_column="Isue"),
            raw={"train": export_shaped()},
        )
    # the API's JSON, read with the export's names
    path = tmp_path / "api.json"
    path.write_text(json.dumps(api_hits()), "utf-8")
    with pytest.raises(DataError, match=both.format("complaint_what_happened")):
        prepare_data(DataArguments(train_file=str(path), text_column="Consumer complaint narrative"))


def test_missing_column_in_an_evaluation_split_names_the_split():
    test = pd.DataFrame({"narrative": ["x"], "label": ["a"]})
    with pytest.raises(DataError, match=r"\['text'\] not found in the test data.*\['narrative', 'label'\]"):
        prepare_data(args(), raw={"train": frame({"a": 3}), "test": test})


def test_empty_texts_and_missing_labels_are_dropped_and_counted(caplog):
    df = pd.DataFrame(
        {
            "text": [
                "good one",
                "",
                "   ",
                None,
                np.nan,
                "good two",
                "no label",
                "also no label",
                "good three",
            ],
            "label": ["a", "a", "b", "a", "b", "b", np.nan, "  ", "a"],
        }
    )
    with caplog.at_level(logging.INFO, logger="longtail.data"):
        data = prepare_data(args(), raw={"train": df})
    assert data.log["train"] == {
        "rows_read": 9,
        "dropped_empty_text": 4,
        "dropped_missing_label": 2,
        "labels_merged": 0,
        "rows_kept": 3,
    }
    pool = pd.concat([data.splits["train"], data.splits["validation"]])
    assert sorted(pool["text"]) == ["good one", "good three", "good two"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "train: read 9 rows, kept 3, dropped {'dropped_empty_text': 4, 'dropped_missing_label': 2}" in m
        for m in messages
    )


def test_a_row_without_text_or_label_counts_as_an_empty_text_only():
    df = pd.DataFrame({"text": ["one", "two", "", None, "three"], "label": ["a", "b", "", None, ""]})
    data = prepare_data(args(), raw={"train": df})
    assert data.log["train"]["dropped_empty_text"] == 2
    assert data.log["train"]["dropped_missing_label"] == 1  # 'three'; the two empty rows are counted once
    assert data.log["train"]["rows_kept"] == 2


def test_text_is_stripped_and_na_string_is_text(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text,label\nNA,a\n"  padded text  ",a\n,a\nnull,a\n', "utf-8")
    data = prepare_data(args(train_file=str(path)))
    pool = pd.concat([data.splits["train"], data.splits["validation"]])
    assert sorted(pool["text"]) == ["NA", "null", "padded text"]
    assert data.log["train"]["dropped_empty_text"] == 1


@pytest.mark.parametrize("split", ["validation", "test"])
def test_unseen_evaluation_labels_are_excluded_and_counted(caplog, split):
    ev = pd.DataFrame({"text": ["eval 1", "eval 2", "eval 3", "eval 4"], "label": ["a", "zzz", "zzz", "yyy"]})
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(args(), raw={"train": frame({"a": 5, "b": 5}), split: ev})
    assert data.log[f"{split}_excluded_unseen_labels"] == 3
    assert data.splits[split]["text"].tolist() == ["eval 1"]
    assert data.splits[split]["label_id"].tolist() == [data.label2id["a"]]
    assert any(
        f"{split}: 3 rows (2 labels) never seen in training" in r.getMessage() and "yyy" in r.getMessage()
        for r in caplog.records
    )


def test_training_labels_in_two_spellings_are_named_as_split_classes(caplog):
    """Two exports joined, one upper-cased: each spelling was a class of its own, its rows split, silently."""
    train = pd.DataFrame(
        {
            "text": [f"complaint {i}" for i in range(9)],
            "label": ["Fees", "Fees", "FEES", "Late  fee", "late fee", "late fee", "Other", "Other", "Other"],
        }
    )
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(args(), raw={"train": train})
    assert data.log["labels_split_by_spelling"] == 2
    assert data.label_names == ["FEES", "Fees", "Late  fee", "Other", "late fee"]  # named, not merged
    assert messages(caplog, "train:") == [
        "train: 2 labels are written in more than one case or spacing, each spelling a class of its own: "
        "'FEES' (1 row) vs 'Fees' (2 rows); 'Late  fee' (1 row) vs 'late fee' (2 rows): write each label one "
        "way (a --label_taxonomy's spellings are read as its)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        one_way = prepare_data(args(), raw={"train": frame({"a": 3, "b": 3})})
    assert one_way.log["labels_split_by_spelling"] == 0 and not caplog.records


def test_labels_written_differently_in_training_are_named(tmp_path, caplog):
    """A numeric label column with a gap is written by pandas as floats ('3.0') in one file and ints ('3') in
    another; every evaluation row was then 'never seen in training', with nothing saying why."""
    (tmp_path / "train.csv").write_text(
        "text,label\n" + "".join(f"train {i},{i % 2 + 3}.0\n" for i in range(6))
    )
    pd.DataFrame({"text": ["t1", "t2", "t3", "t4"], "label": [3, 4, 5, 4]}).to_csv(
        tmp_path / "test.csv", index=False
    )
    files = dict(train_file=str(tmp_path / "train.csv"), test_file=str(tmp_path / "test.csv"))
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(args(**files, validation_split_fraction=0.34))
    expected = (
        "2 of them match a training label written differently ('3' vs '3.0', '4' vs '4.0'): write each label"
    )
    assert data.log["test_unseen_label_hint"].startswith(expected)  # '5' matches nothing
    assert any(expected in r.getMessage() for r in caplog.records)
    with pytest.raises(
        DataError, match=r"all 4 of its rows carry labels never seen in training\. 2 of them match"
    ):
        require_usable_splits(data, do_predict=True)
    # another case ('Fees ' is stripped on reading)
    train = pd.DataFrame({"text": ["a1", "a2", "b1", "b2"], "label": ["Fees", "Fees", "Other", "Other"]})
    val = pd.DataFrame({"text": ["v1", "v2"], "label": ["fees", "Other"]})
    data = prepare_data(args(), raw={"train": train, "validation": val})
    assert data.log["validation_unseen_label_hint"] == (
        "1 of them match a training label written differently ('fees' vs 'Fees'): write each label the same way in "
        "every file"
    )
    data = prepare_data(args(), raw={"train": train, "validation": val.assign(label="Other")})
    assert "validation_unseen_label_hint" not in data.log  # nothing unseen, no hint


@pytest.mark.parametrize(
    "content, match",
    [
        (
            "text;label\nfirst;a\nI paid, twice, a fee;b\n",
            r"Could not parse .*: .* \(its header is split by ';', not",
        ),
        (
            "text;label\nfirst;a\nsecond;b\n",
            r"\['text;label'\]\. The file was read as one column: is it ';'- or tab",
        ),
        # tab-separated, as the README's Bad input table says too: a parse failure names the tab, and a file
        # that parses reads as one column
        (
            "text\tlabel\nfirst\ta\nI paid, twice, a fee\tb\n",
            r"^Could not parse .*semi\.csv as csv: .*Expected 1 fields in line 3, saw 3 \(its header is split by "
            r"tab, not commas: save it comma-separated\)$",
        ),
        (
            "text\tlabel\nfirst\ta\nsecond\tb\n",
            r"^Column\(s\) \['text', 'label'\] not found in the train data\. Columns that exist: \['text\\tlabel'\]\. "
            r"The file was read as one column: is it ';'- or tab-separated\? Save it comma-separated\.",
        ),
    ],
)
def test_a_semicolon_separated_csv_is_named(tmp_path, content, match):
    """Whether it fails to parse (a comma inside a field) or parses as one column."""
    path = tmp_path / "semi.csv"
    path.write_text(content, "utf-8")
    with pytest.raises(DataError, match=match):
        prepare_data(args(train_file=str(path)))


def test_non_utf8_csv_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,label\ncaf\xe9 latte was cold,a\n")
    with pytest.raises(DataError) as err:
        prepare_data(args(train_file=str(path)))
    # the file named, and the `iconv` command the README's Bad input table promises
    assert str(err.value) == (
        f"{path} is not valid UTF-8 (byte 0xE9 at line 2, offset 14). Re-save it as UTF-8, e.g. "
        "`iconv -f cp1252 -t utf-8 latin1.csv > fixed.csv`."
    )


def test_a_cp1252_or_utf16_file_is_named_where_it_breaks_with_the_iconv_that_fixes_it(tmp_path):
    """A Windows export's curly quote (0x92) deep in the file was "at byte 1" (pandas counts from its block) and
    `iconv -f latin1` was suggested, which reads 0x92 as an invisible control character; UTF-16 (Excel's "Unicode
    Text") got the same latin1 advice."""
    rows = "".join(f"complaint number {i} about my card,a\n" for i in range(20_000))
    text = "text,label\n" + rows + "I\u2019m charged twice,b\n"
    cp1252 = tmp_path / "export.csv"
    cp1252.write_bytes(text.encode("cp1252"))
    offset = len(("text,label\n" + rows + "I").encode())
    with pytest.raises(DataError) as err:
        prepare_data(args(train_file=str(cp1252)))
    assert str(err.value) == (
        f"{cp1252} is not valid UTF-8 (byte 0x92 at line 20,002, offset {offset:,}). Re-save it as UTF-8, "
        "e.g. `iconv -f cp1252 -t utf-8 export.csv > fixed.csv`."
    )
    assert offset > 700_000
    # across blocks of any size: a character cut between two blocks is no error, one cut by the file's end is
    assert first_non_utf8(cp1252, block=7) == (offset, 20_002, b"\x92")
    (tmp_path / "utf8.csv").write_bytes(text.encode("utf-8") + b"caf\xc3")
    assert first_non_utf8(tmp_path / "utf8.csv", block=5) == (len(text.encode("utf-8")) + 3, 20_003, b"\xc3")
    utf16 = tmp_path / "unicode.csv"
    utf16.write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError) as err:
        prepare_data(args(train_file=str(utf16)))
    assert str(err.value) == (
        f"{utf16} is not valid UTF-8 (it is UTF-16, by its byte-order mark). Re-save it as UTF-8, "
        "e.g. `iconv -f utf-16 -t utf-8 unicode.csv > fixed.csv`."
    )


def test_unsupported_extension_and_missing_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("text,label\nx,a\n", "utf-8")
    with pytest.raises(
        DataError, match=r"Unsupported data file type '\.txt'.*\.csv, \.json, \.jsonl or \.parquet"
    ):
        prepare_data(args(train_file=str(path)))
    with pytest.raises(DataError, match="Data file not found"):
        read_table(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is a folder, not a data file"):  # it said "not found"
        prepare_data(args(train_file=str(tmp_path)))


def test_a_spreadsheet_or_tsv_given_as_data_says_how_to_save_it(tmp_path):
    for name, advice in (
        ("complaints.xlsx", "Save the sheet as CSV UTF-8 (comma-delimited)."),
        ("complaints.tsv", "Save it comma-separated as a .csv."),
    ):
        (tmp_path / name).write_bytes(b"PK\x03\x04")
        with pytest.raises(DataError) as err:
            prepare_data(args(train_file=str(tmp_path / name)))
        assert str(err.value) == (
            f"Unsupported data file type '{Path(name).suffix}' for {tmp_path / name}: use .csv, .json, .jsonl or "
            f".parquet (a .csv, .json or .jsonl may be compressed: .gz, .bz2, .xz, .zip). {advice}"
        )


def test_a_hub_data_set_that_cannot_be_loaded_is_one_line_naming_the_option(monkeypatch):
    """`--dataset_name` that `datasets` cannot load: offline and not cached (the YAMLs' default, as the README's
    first commands run it here), a repo id the Hub does not have, or a local file misspelt into a name that is no
    data file (`complaints.cvs`). Each was a traceback from inside `datasets` (ConnectionError,
    DatasetNotFoundError); now a DataError naming the option and the ways to give local data."""
    import datasets

    with pytest.raises(DataError) as err:  # the real call: HF_DATASETS_OFFLINE=1 in the tests (conftest)
        prepare_data(DataArguments(dataset_name="longtail-tests/no-such-data-set"))
    message = str(err.value)
    assert message.startswith(
        "--dataset_name longtail-tests/no-such-data-set could not be loaded from the Hugging Face Hub ("
    ), message
    assert message.endswith(
        "): a local .csv/.json/.jsonl/.parquet file goes in --train_file (or --dataset_name <file>), and "
        "--dataset_name synthetic is the built-in demo set"
    )
    assert "\n" not in message
    for raised in (ConnectionError("Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)"),
                   datasets.exceptions.DatasetNotFoundError("Dataset 'complaints.cvs' doesn't exist on the Hub"),
                   ValueError("BuilderConfig 'bogus' not found. Available: ['default']")):  # fmt: skip

        def fail(name, config_name=None, raised=raised):
            raise raised

        monkeypatch.setattr(datasets, "load_dataset", fail)
        with pytest.raises(DataError, match="could not be loaded from the Hugging Face Hub") as err:
            prepare_data(DataArguments(dataset_name="complaints.cvs"))
        assert str(raised) in str(err.value)
    with pytest.raises(DataError) as err:  # the configuration may be the mistyped one: it is named too
        prepare_data(DataArguments(dataset_name="org/complaints", dataset_config_name="bogus"))
    assert str(err.value).startswith(
        "--dataset_name org/complaints --dataset_config_name bogus could not be loaded"
    )


def test_a_text_column_empty_in_every_row_is_named(tmp_path, caplog):
    """A CFPB export whose rows all lack a narrative (complaints before March 2015, an export filtered on another
    field): the error and a warning name the column and the file (it was only the counts, 'dropped_empty_text')."""
    path = tmp_path / "complaints.csv"
    export_shaped().assign(**{"Consumer complaint narrative": ""}).to_csv(path, index=False)
    options = dict(text_column="Consumer complaint narrative", label_column="Issue")
    with caplog.at_level(logging.WARNING, logger="longtail.data"), pytest.raises(DataError) as err:
        prepare_data(args(train_file=str(path), **options))
    note = (
        f"--text_column 'Consumer complaint narrative' is empty in all 4 rows of the train data ({path}): pass the "
        "column that holds the texts (a CFPB export has a narrative only where the consumer agreed"
    )
    assert str(err.value).startswith(
        "No training rows left after cleaning: {'rows_read': 4, 'dropped_empty_text': 4"
    )
    assert note in str(err.value)
    assert any(r.getMessage().startswith(note) for r in caplog.records)
    # an evaluation file with no texts: the warning names it
    caplog.clear()
    train = tmp_path / "train.csv"
    export_shaped().to_csv(train, index=False)
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        prepare_data(
            args(train_file=str(train), test_file=str(path), validation_split_fraction=0.5, **options)
        )
    assert any(f"empty in all 4 rows of the test data ({path})" in r.getMessage() for r in caplog.records)


def test_no_training_rows_left_is_an_error():
    df = pd.DataFrame({"text": ["", None], "label": ["a", "b"]})
    with pytest.raises(DataError, match="No training rows left after cleaning"):
        prepare_data(args(), raw={"train": df})


def test_a_file_with_only_a_header_or_nothing_is_named(tmp_path, caplog):
    """A header-only file was "No training rows left after cleaning: {'rows_read': 0, ...}" (no file named), an
    empty .jsonl "Column(s) [...] not found ... Columns that exist: []"."""
    header = tmp_path / "header.csv"
    header.write_text("text,label\n", "utf-8")
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"t {i},{'ab'[i % 2]}\n" for i in range(8)))
    with pytest.raises(DataError) as err:
        prepare_data(args(train_file=str(header)))
    assert str(err.value) == f"the train data ({header}) has no data rows, only a header: nothing to train on"
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(
            args(
                train_file=str(tmp_path / "train.csv"), test_file=str(header), validation_split_fraction=0.25
            )
        )
    assert f"the test data ({header}) has no data rows, only a header" in caplog.text
    with pytest.raises(
        DataError, match=r"^The test split has no rows left to score: its file has no data rows, "
    ):
        require_usable_splits(data, do_predict=True)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", "utf-8")
    with pytest.raises(DataError) as err:
        prepare_data(args(train_file=str(empty)))
    assert str(err.value) == f"the train data ({empty}) is empty: no rows and no columns"


def test_splits_with_nothing_to_learn_or_score_are_refused_before_any_model():
    """Each case used to reach a library: sklearn's "at least 2 classes" or "empty vocabulary", torch's
    "num_samples=0", or an AxisError scoring an empty split after training; one class even 'scored' 1.0."""
    ok = prepare_data(args(), raw={"train": frame({"a": 5, "b": 5}), "validation": frame({"a": 1}, "v ")})
    require_usable_splits(ok, do_predict=False)
    one = prepare_data(args(), raw={"train": frame({"a": 5}), "validation": frame({"a": 2}, "v ")})
    with pytest.raises(
        DataError, match=r"training rows hold 1 class \(\['a'\]\): a classifier needs at least two"
    ):
        require_usable_splits(one, do_predict=False)
    rare = prepare_data(args(min_class_count=6), raw={"train": frame({"a": 5, "b": 5})})
    with pytest.raises(
        DataError, match=r"No training rows left .*2 classes \(10 rows\) have fewer than --min_class_count 6"
    ):
        require_usable_splits(rare, do_predict=False)
    unseen = prepare_data(
        args(),
        raw={"train": frame({"a": 5, "b": 5}), "validation": frame({"a": 1}, "v "), "test": frame({"z": 3})},
    )
    require_usable_splits(unseen, do_predict=False)  # a test split is read only to be scored
    with pytest.raises(
        DataError, match="test split has no rows left to score: all 3 of its rows carry labels never"
    ):
        require_usable_splits(unseen, do_predict=True)
    # one row per class: the stratified carve keeps every class in training and validation gets nothing
    empty_val = prepare_data(args(), raw={"train": frame({"a": 1, "b": 1})})
    with pytest.raises(
        DataError, match="validation split has no rows left to score .*--validation_split_fraction"
    ):
        require_usable_splits(empty_val, do_predict=False)
    for bad in ({"max_length": 0}, {"max_length": -3}, {"max_train_samples": 0}, {"max_eval_samples": -5}):
        with pytest.raises(ValueError, match="must be >= 1"):
            args(**bad)


def test_option_files_that_are_missing_or_not_json_name_the_option(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", "utf-8")
    raw = {"train": frame({"a": 3, "b": 3})}
    for option in ("split_indices", "label_merge_map", "label_taxonomy"):
        with pytest.raises(DataError, match=f"--{option} .*bad.json is not valid JSON"):
            prepare_data(args(**{option: str(bad)}), raw=raw)
    with pytest.raises(DataError, match="--split_indices .*absent.json: no such file"):
        prepare_data(args(split_indices=str(tmp_path / "absent.json")), raw=raw)
    bad.write_text("[1, 2]", "utf-8")
    with pytest.raises(DataError, match="expected an object of row ids per split, got list"):
        prepare_data(args(split_indices=str(bad)), raw=raw)


@pytest.mark.parametrize("kind", ["json", "jsonl", "parquet"])
def test_json_jsonl_parquet_files_load(tmp_path, kind):
    files = {}
    for split, df in {
        "train": frame({"a": 6, "b": 6}, prefix="tr "),
        "validation": frame({"a": 2, "b": 1}, prefix="va "),
        "test": frame({"a": 1, "b": 2}, prefix="te "),
    }.items():
        path = tmp_path / f"{split}.{kind}"
        if kind == "json":
            df.to_json(path, orient="records")
        elif kind == "jsonl":
            df.to_json(path, orient="records", lines=True)
        else:
            df.to_parquet(path)
        files[f"{split}_file"] = str(path)
    data = prepare_data(args(**files))
    assert data.log["rows"] == {"train": 12, "validation": 3, "test": 3}
    assert data.label_names == ["a", "b"]
    assert data.splits["test"]["text"].tolist() == [
        f"te {lab} complaint number {i}" for lab, i in ("a0", "b0", "b1")
    ]
    assert list(data.splits["train"].columns) == ["text", "label", "row_id", "norm", "label_id"]


def test_json_lines_file_with_json_extension_loads(tmp_path):
    path = tmp_path / "train.json"
    frame({"a": 3, "b": 3}).to_json(path, orient="records", lines=True)
    assert len(read_table(path)) == 6


def export_bytes() -> bytes:
    """A CFPB export as downloaded: a byte-order mark, CRLF line ends, a narrative over two lines with quotes and a
    redaction, label text with a trailing space."""
    rows = "".join(
        f'"2017-05-0{i % 9 + 1}","Credit reporting","{issue} ","narrative {i} on XX/XX/XXXX,\r\nI was ""charged"" '
        f'$20.00"\r\n'
        for i, issue in enumerate([NEW] * 3 + ["Fraud or scam"] * 3)
    )
    header = "Date received,Product,Issue,Consumer complaint narrative\r\n"
    return b"\xef\xbb\xbf" + (header + rows).encode("utf-8")


def write_compressed(path, payload: bytes, member: str = "complaints.csv") -> None:
    import bz2
    import gzip
    import lzma
    import zipfile

    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(member, payload)
            archive.writestr("__MACOSX/._" + member, b"resource fork")  # a zip made on a Mac
    else:
        path.write_bytes({".gz": gzip, ".bz2": bz2, ".xz": lzma}[path.suffix].compress(payload))


@pytest.mark.parametrize(
    "name", ["complaints.csv.zip", "complaints.zip", "complaints.csv.gz", "c.csv.bz2", "c.csv.xz"]
)
def test_a_compressed_export_is_read_through(tmp_path, name):
    """CFPB's download is complaints.csv.zip: it, and a .gz, .bz2 or .xz, is read as the file inside (it was
    "Unsupported data file type '.zip'"), the byte-order mark, CRLF ends and multi-line narratives included."""
    path = tmp_path / name
    write_compressed(path, export_bytes())
    (tmp_path / "plain.csv").write_bytes(export_bytes())
    expected = read_table(tmp_path / "plain.csv")
    frame_read = read_table(path)
    pd.testing.assert_frame_equal(frame_read, expected)
    assert (
        frame_read["Consumer complaint narrative"][0]
        == 'narrative 0 on XX/XX/XXXX,\r\nI was "charged" $20.00'
    )
    options = dict(text_column="Consumer complaint narrative", label_column="Issue")
    data = prepare_data(args(train_file=str(path), validation_split_fraction=0.34, **options))
    assert data.label_names == sorted([NEW, "Fraud or scam"]) and data.log["train"]["rows_kept"] == 6
    # a compressed JSON Lines file, and a compressed file as --dataset_name
    lines = tmp_path / "texts.jsonl.gz"
    write_compressed(
        lines, b"\xef\xbb\xbf" + frame({"a": 3, "b": 3}).to_json(orient="records", lines=True).encode()
    )
    assert read_table(lines)["label"].tolist() == ["a"] * 3 + ["b"] * 3
    assert prepare_data(args(dataset_name=str(path), **options)).log["train"]["rows_read"] == 6


def test_a_compressed_file_that_cannot_be_read_names_the_file(tmp_path):
    """A .zip of several files, a download cut short, a file not compressed as its name says: one line naming
    the file and what to do (they were "Unsupported data file type '.zip'", or tracebacks)."""
    import gzip
    import zipfile

    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as archive:
        archive.writestr("a.csv", export_bytes())
        archive.writestr("b.csv", export_bytes())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(export_bytes())[:60])
    plain = tmp_path / "plain.csv.gz"
    plain.write_bytes(export_bytes())
    latin1 = tmp_path / "latin1.csv.gz"
    latin1.write_bytes(gzip.compress(b"text,label\ncaf\xe9 latte was cold,a\n"))
    for path, message in (
        (two, rf"{two} holds 2 files \(a\.csv, b\.csv\), not one data file: unzip it \(`unzip two\.zip`\)"),
        (cut, rf"Could not decompress {cut} \(gzip: .*\): check the download, or decompress it yourself"),
        (plain, rf"Could not decompress {plain} \(gzip: Not a gzipped file"),
        (
            latin1,
            rf"{latin1} is not valid UTF-8 .* of the decompressed data\)\. Decompress it and re-save it",
        ),
        (
            tmp_path / "x.tar.gz",
            r"Unsupported data file type '\.tar\.gz' .*may be compressed: \.gz, \.bz2, \.xz",
        ),
        (tmp_path / "x.parquet.gz", r"a compressed \.parquet file is not read: decompress it"),
    ):
        if not path.exists():
            path.write_bytes(gzip.compress(b"x"))
        with pytest.raises(DataError, match=message):
            prepare_data(args(train_file=str(path)))


# ---------------------------------------------------------------------------------------------
# Reading only the columns a run reads
# ---------------------------------------------------------------------------------------------

EXPORT_OPTIONS = dict(
    text_column="Consumer complaint narrative",
    label_column="Issue",
    label_merge_map="cfpb_2017",
    label_taxonomy="cfpb_issue_113",
    min_class_count=2,
    validation_split_fraction=0.25,
)


def wide_export_bytes(n: int = 40) -> bytes:
    """An export as downloaded with its other columns around the two a recipe reads: a byte-order mark, CRLF ends,
    narratives over two lines, rows without a narrative or an issue, a blank line and a row cut short."""
    issues = [NEW, OLD, "Fraud or scam", "fraud or scam", "Improper use of your report"]
    lines = []
    for i in range(n):
        narrative = (
            "" if i % 7 == 3 else f'"complaint {i % 30}, about XX/XX/XXXX,\r\nI was ""charged"" ${i}.00"'
        )
        issue = "" if i % 11 == 5 else issues[i % len(issues)]
        lines.append(f"2017-05-01,Credit reporting,,{issue},,{narrative},Big Bank,CA,9XXXX,{3000000 + i}\r\n")
    lines[9] = "\r\n"
    lines[16] = f"2017-05-02,Credit reporting,,{NEW}\r\n"
    header = "Date received,Product,Sub-product,Issue,Sub-issue,Consumer complaint narrative,Company,State,ZIP code,"
    return b"\xef\xbb\xbf" + (header + "Complaint ID\r\n" + "".join(lines)).encode("utf-8")


@pytest.mark.parametrize("name", ["complaints.csv", "complaints.csv.gz", "complaints.csv.zip"])
def test_a_run_reads_only_its_text_and_label_columns_with_the_rows_of_a_whole_read(
    tmp_path, monkeypatch, name
):
    """The export has 18 columns and millions of rows, and every column was read (as text) to keep two. Now only
    the text and label columns are kept, read in pieces (here 4 rows, so pieces end inside this file) with the
    rows, values and row positions of a whole read: the splits, their ids (splits.json) and the log are the same."""
    import longtail.data as data_module

    monkeypatch.setattr(data_module, "CSV_CHUNK_ROWS", 4)
    path = tmp_path / name
    if name == "complaints.csv":
        path.write_bytes(wide_export_bytes())
    else:
        write_compressed(path, wide_export_bytes())
    whole = read_table(path)
    assert len(whole) == 40 and len(whole.columns) == 10
    kept = ["Issue", "Consumer complaint narrative"]
    part = read_table(path, columns=kept[::-1])
    assert list(part.columns) == kept  # in the file's order
    pd.testing.assert_frame_equal(part, whole[kept])
    assert part.attrs["file_columns"] == list(whole.columns)
    options = dict(train_file=str(path), **EXPORT_OPTIONS)
    raw = load_raw_splits(DataArguments(**options))
    assert list(raw["train"].columns) == kept
    data = prepare_data(DataArguments(**options))
    before = prepare_data(DataArguments(**options), raw={"train": whole})
    assert data.log == before.log and data.label_names == before.label_names
    assert data.log["train"]["rows_read"] == 40 and data.log["train"]["dropped_empty_text"] == 8
    assert split_ids(data) == split_ids(before)
    for split, df in before.splits.items():
        pd.testing.assert_frame_equal(data.splits[split], df)


def test_a_parquet_file_is_read_for_the_columns_a_run_reads(tmp_path):
    """With pandas' saved index, as a whole read gives it."""
    df = export_shaped().assign(**{"Complaint ID": [str(i) for i in range(4)]})
    df.index = df.index + 10
    path = tmp_path / "export.parquet"
    df.to_parquet(path)
    whole = read_table(path)
    kept = ["Issue", "Consumer complaint narrative"]
    part = read_table(path, columns=kept)
    pd.testing.assert_frame_equal(part, whole[kept])
    assert part.attrs["file_columns"] == list(df.columns)
    raw = load_raw_splits(DataArguments(train_file=str(path), text_column=kept[1]))
    assert list(raw["train"].columns) == kept
    # a function of the file's columns picks them; None reads it whole, a name the file lacks none of its rows
    assert list(read_table(path, columns=lambda names: [names[-1]]).columns) == ["Complaint ID"]
    pd.testing.assert_frame_equal(read_table(path, columns=lambda names: None), whole)
    assert "file_columns" not in read_table(path, columns=lambda names: None).attrs
    header = read_table(path, columns=["Issue", "Consumer Complaint"])
    assert list(header.columns) == list(whole.columns) and header.empty
    assert header.attrs["missing_columns"] == ["Consumer Complaint"]


def test_reading_some_columns_keeps_the_errors_and_readings_of_a_whole_read(tmp_path, monkeypatch, caplog):
    """pandas' `usecols` reads a row with too many fields (an unquoted comma in a text) without a word, its fields
    shifted: it stays a parse error, in the piece it falls in. A header one name short (R's write.csv: rows begin
    with their names) is read as before; a missing column, or the text as the label, lists every column; a repeat
    of a column the run does not read is only a warning naming pandas' names."""
    import longtail.data as data_module

    monkeypatch.setattr(data_module, "CSV_CHUNK_ROWS", 1)
    path = tmp_path / "train.csv"
    path.write_text("text,label\nfirst,a\nsecond,b\nI paid, twice,b\n", "utf-8")
    with pytest.raises(
        DataError, match=r"Could not parse .*train\.csv as csv: .*Expected 2 fields in line 4, saw 3"
    ):
        prepare_data(args(train_file=str(path)))
    path.write_text('text,label\n"1","first text","a"\n"2","second text","b"\n', "utf-8")
    assert read_table(path, columns=["text", "label"]).to_dict("list") == {
        "text": ["first text", "second text"],
        "label": ["a", "b"],
    }
    path.write_bytes(export_bytes())
    with pytest.raises(DataError) as info:
        prepare_data(DataArguments(train_file=str(path), text_column="Consumer Complaint"))
    assert str(info.value) == (
        "Column(s) ['Consumer Complaint'] not found in the train data. Columns that exist: ['Date received', "
        "'Product', 'Issue', 'Consumer complaint narrative']. Did you mean 'Consumer complaint narrative'? Set "
        "--text_column / --label_column."
    )
    with pytest.raises(DataError) as info:
        prepare_data(DataArguments(train_file=str(path), text_column="Issue"))
    assert str(info.value) == (
        "--text_column and --label_column are both 'Issue': the model would read its label. Columns that exist: "
        "['Date received', 'Product', 'Issue', 'Consumer complaint narrative']"
    )
    path.write_text("t,l,note,note,,\nfirst text,a,x,y,,\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        part = read_table(path, columns=["t", "l"])
    assert list(part.columns) == ["t", "l"]
    assert f"{path} repeats the column name(s) ['note']: the later ones are read as ['note.1']" in caplog.text
    path.write_text("t,l,t\nfirst text,a,second text\n", "utf-8")
    with pytest.raises(
        DataError, match=r"more than one column named \['t'\].*\(columns: \['t', 'l', 't'\]\)"
    ):
        prepare_data(args(train_file=str(path), text_column="t", label_column="l"))


MISTYPED = (
    "Column(s) ['Consumer Complaint'] not found in the train data. Columns that exist: ['Date received', 'Product', "
    "'Issue', 'Consumer complaint narrative']. Did you mean 'Consumer complaint narrative'? Set --text_column / "
    "--label_column."
)


@pytest.mark.parametrize("name", ["train.csv", "train.csv.gz", "train.csv.zip", "train.csv.xz"])
def test_a_column_the_csv_lacks_is_named_from_its_header_without_reading_its_rows(tmp_path, name):
    """A mistyped column was found after reading the whole file (all 18 columns of a 3 GB export: minutes and
    gigabytes) so that the error could list every column. Only the header is read now: rows after it that do not
    parse (bytes that are not UTF-8, a row with too many fields) are never reached, and the error, hints and all,
    is the one a whole read of a good file gives. With every column there, the rows are read and still refused."""
    bad_rows = (
        b'"2017-05-01","Credit reporting","Fees","caf\xe9 latte"\r\n2017-05-02,Fees,I paid, twice,x\r\n'
    )
    path = tmp_path / name
    if name == "train.csv":
        path.write_bytes(export_bytes() + bad_rows)
    else:
        write_compressed(path, export_bytes() + bad_rows, member="train.csv")
    with pytest.raises(DataError) as info:
        prepare_data(DataArguments(train_file=str(path), text_column="Consumer Complaint"))
    assert str(info.value) == MISTYPED
    good = tmp_path / "good.csv"
    good.write_bytes(export_bytes())
    with pytest.raises(DataError) as info:
        prepare_data(DataArguments(train_file=str(good), text_column="Consumer Complaint"))
    assert str(info.value) == MISTYPED  # as a whole read lists them
    header = read_table(path, columns=lambda names: ["Consumer Complaint", "Issue"])
    assert header.empty and list(header.columns) == list(read_table(good).columns)
    assert header.attrs["missing_columns"] == ["Consumer Complaint"] and "file_columns" not in header.attrs
    with pytest.raises(DataError, match=r"not valid UTF-8|Could not parse"):
        prepare_data(DataArguments(train_file=str(path), text_column="Consumer complaint narrative"))


def test_a_column_the_parquet_file_lacks_is_named_from_its_schema_without_reading_its_data(
    tmp_path, monkeypatch
):
    """As for a .csv: the schema names the columns, and no column's data is read for the error (it was the whole
    file, every column)."""
    path = tmp_path / "export.parquet"
    export_shaped().to_parquet(path)
    whole = read_table(path)

    def read_parquet(*args, **kwargs):
        raise AssertionError(f"data read: read_parquet(columns={kwargs.get('columns')})")

    monkeypatch.setattr(pd, "read_parquet", read_parquet)
    with pytest.raises(DataError) as info:
        prepare_data(DataArguments(train_file=str(path), text_column="Consumer Complaint"))
    assert str(info.value) == MISTYPED
    header = read_table(path, columns=["Issue", "Consumer Complaint"])
    assert header.empty and list(header.columns) == list(whole.columns)
    assert header.attrs["missing_columns"] == ["Consumer Complaint"]
    with pytest.raises(AssertionError, match="data read"):  # every column there: its data is read
        read_table(path, columns=["Issue"])


def api_hits(n: int = 6) -> list[dict]:
    """Complaints as the CFPB API's JSON holds them: Elasticsearch hits, each complaint's fields in `_source`."""
    issues = [NEW, "Fraud or scam"]
    return [
        {
            "_index": "complaint-public-v2",
            "_id": str(1000 + i),
            "_score": None,
            "_source": {
                "complaint_id": 1000 + i,
                "issue": issues[i % 2],
                "sub_issue": None,
                "complaint_what_happened": f"narrative {i} on XX/XX/XXXX" if i else "",
                "has_narrative": bool(i),
                "tags": None,
            },
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("shape", ["list.json", "lines.jsonl", "search.json"])
def test_the_cfpb_api_json_is_read_one_row_per_complaint(tmp_path, shape):
    """The API's hits (a list with `format=json`, JSON Lines, or the search's `{"hits": {"hits": [...]}}`) are read
    as their `_source` fields (they were columns `_index, _id, _score, _source`, or one column `hits`, and
    --text_column could name none of the complaint's fields)."""
    path = tmp_path / f"api_{shape}"
    hits = api_hits()
    if shape == "lines.jsonl":
        path.write_text("\n".join(json.dumps(h) for h in hits) + "\n", "utf-8")
    elif shape == "search.json":
        answer = {
            "took": 3,
            "hits": {"total": {"value": 6}, "max_score": None, "hits": hits},
            "aggregations": {},
        }
        path.write_text(json.dumps(answer), "utf-8")
    else:
        path.write_text(json.dumps(hits), "utf-8")
    table = read_table(path)
    assert list(table.columns) == list(hits[0]["_source"])
    assert table["complaint_id"].tolist() == list(range(1000, 1006))
    data = prepare_data(
        args(
            train_file=str(path),
            text_column="complaint_what_happened",
            label_column="issue",
            min_class_count=1,
        )
    )
    assert data.log["train"]["dropped_empty_text"] == 1 and data.log["train"]["rows_kept"] == 5
    assert data.label_names == sorted([NEW, "Fraud or scam"])
    # a JSON file with a `_source` column that is not the API's objects is read as it is
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"_source": "web form", "text": "x", "label": "a"}]), "utf-8")
    assert list(read_table(other).columns) == ["_source", "text", "label"]


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_a_users_file_with_a_source_column_of_objects_keeps_its_columns(tmp_path, suffix):
    """Only the API's hits (every other column Elasticsearch hit metadata) are replaced by their `_source` fields:
    a user's table whose `_source` column holds objects keeps its own columns (it was read back as `['crawler']`)."""
    rows = [{"text": f"text {i}", "label": "ab"[i % 2], "_source": {"crawler": "x"}} for i in range(4)]
    path = tmp_path / f"mine{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", "utf-8")
    else:
        path.write_text(json.dumps(rows), "utf-8")
    table = read_table(path)
    assert list(table.columns) == ["text", "label", "_source"]
    assert table["text"].tolist() == [f"text {i}" for i in range(4)]
    # hits with more of Elasticsearch's own fields (`sort`, `highlight`, `_ignored`) are still flattened
    hits = [{**h, "sort": [i], "highlight": {}, "_ignored": []} for i, h in enumerate(api_hits())]
    api = tmp_path / f"api{suffix}"
    api.write_text(json.dumps(hits) if suffix == ".json" else "\n".join(json.dumps(h) for h in hits), "utf-8")
    assert list(read_table(api).columns) == list(hits[0]["_source"])


def test_a_json_file_keyed_by_row_id_is_read_one_row_per_key(tmp_path, caplog):
    """pandas' `to_json(orient="index")`, `{"0": {"Issue": ..., ...}, "1": {...}}`, was read sideways, by pandas'
    default orient: columns '0', '1', ... (the column error listed them) and one row per field. It is read one row
    per key, logged; keys that are not numbers are told by the columns the run reads. pandas' default orient
    ("columns"), a list of records and JSON Lines read as before, unlogged."""
    df = export_shaped()
    expected = df.to_dict("list")
    options = dict(EXPORT_OPTIONS, min_class_count=1)
    path = tmp_path / "by_row.json"
    path.write_text(df.to_json(orient="index"), "utf-8")
    with caplog.at_level(logging.INFO, logger="longtail.data"):
        table = read_table(path)
    assert list(table.columns) == list(df.columns) and table.to_dict("list") == expected
    assert f"{path}: read as records keyed by row id" in caplog.text
    data = prepare_data(DataArguments(train_file=str(path), **options))
    before = prepare_data(DataArguments(**options), raw={"train": df})
    assert data.log == before.log and split_ids(data) == split_ids(before)
    ids = tmp_path / "by_id.json"  # keyed by complaint ids that are not numbers
    ids.write_text(df.set_axis([f"CFPB-{i}" for i in range(4)]).to_json(orient="index"), "utf-8")
    table = read_table(ids, columns=["Issue", "Consumer complaint narrative"])
    assert table[["Issue", "Consumer complaint narrative"]].to_dict("list") == {
        k: expected[k] for k in ("Issue", "Consumer complaint narrative")
    }
    caplog.clear()
    for name, text in (
        ("columns.json", df.to_json()),  # pandas' default orient: {"Issue": {"0": ...}, ...}
        ("records.json", df.to_json(orient="records")),
        ("lines.json", df.to_json(orient="records", lines=True)),
        ("lines.jsonl", df.to_json(orient="records", lines=True)),
        ("ids.json", df.set_axis([f"CFPB-{i}" for i in range(4)]).to_json()),
    ):
        (tmp_path / name).write_text(text, "utf-8")
        with caplog.at_level(logging.INFO, logger="longtail.data"):
            table = read_table(tmp_path / name, columns=["Issue"])
        assert list(table.columns) == list(df.columns) and table.to_dict("list") == expected, name
    assert "keyed by row id" not in caplog.text
    # numbers as field names and as row ids: ambiguous, read as pandas reads it
    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps({"0": {"0": "a", "1": "b"}, "1": {"0": "c", "1": "d"}}), "utf-8")
    assert read_table(numbers).to_dict("list") == {0: ["a", "b"], 1: ["c", "d"]}


def test_a_json_file_is_read_one_row_per_key_only_when_its_keys_are_row_ids(tmp_path):
    """Negative row ids are row ids; a list of records asked for a column named like a row number, and a table in
    pandas' default orient whose columns are (or include) numbers under complaint ids, are read as pandas reads
    them. A file keyed by row id with a field holding lists (CFPB's tags) was read sideways: the column error listed
    '0', '1', ... though the run named its other fields, and a whole read (`longtail.holdout`) gave one row per
    field."""
    df = export_shaped()
    expected = df.to_dict("list")
    negative = tmp_path / "negative.json"
    negative.write_text(df.set_axis([-2, -1, 0, 1]).to_json(orient="index"), "utf-8")
    assert read_table(negative).to_dict("list") == expected
    records = tmp_path / "records.json"
    records.write_text(df.to_json(orient="records"), "utf-8")
    assert read_table(records, columns=["1"]).to_dict("list") == expected  # (the column error names '1')
    ids = [f"CFPB-{i}" for i in range(4)]
    numbered = pd.DataFrame({"0": df["Consumer complaint narrative"], "1": df["Issue"]}).set_axis(ids)
    for name, table, columns in (
        ("numbered.json", numbered, ["0", "1"]),
        ("mixed.json", df.assign(**{"2017": "x"}).set_axis(ids), None),
    ):
        path = tmp_path / name
        path.write_text(table.to_json(), "utf-8")  # pandas' default orient: {column: {complaint id: value}}
        pd.testing.assert_frame_equal(read_table(path, columns=columns), pd.read_json(path, dtype=False))
    tags = tmp_path / "tags.json"
    tagged = df.assign(Tags=[["Servicemember"], None, [], ["Older American", "Servicemember"]])
    tags.write_text(tagged.to_json(orient="index"), "utf-8")
    whole = read_table(tags)  # as longtail.holdout reads it
    assert list(whole.columns) == list(tagged.columns) and whole[list(df.columns)].to_dict("list") == expected
    options = dict(EXPORT_OPTIONS, min_class_count=1)
    data = prepare_data(DataArguments(train_file=str(tags), **options))
    before = prepare_data(DataArguments(**options), raw={"train": df})
    assert data.log == before.log and split_ids(data) == split_ids(before)


# ---------------------------------------------------------------------------------------------
# Reproducible splits and caps
# ---------------------------------------------------------------------------------------------


def test_split_indices_reproduce_a_split_under_another_seed(tmp_path):
    raw = {"train": stratified_source(), "test": frame({"a": 3, "b": 3}, prefix="test ")}
    first = prepare_data(args(split_seed=1), raw=raw)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(split_ids(first)), "utf-8")
    other_seed = prepare_data(args(split_seed=2), raw=raw)
    assert split_ids(other_seed) != split_ids(first)  # the seed alone would change the split
    again = prepare_data(args(split_seed=2, split_indices=str(path)), raw=raw)
    assert split_ids(again) == split_ids(first)
    for split in first.splits:
        pd.testing.assert_frame_equal(again.splits[split], first.splits[split])
    assert again.label_names == first.label_names


def test_split_indices_refuse_ids_that_name_other_texts(tmp_path):
    """Ids are row positions: on an export downloaded again (rows reordered), or the synthetic set under another
    --split_seed, the same ids named other texts and the run went on with them. splits.json records a digest of
    each id's text; ids naming other texts are refused, the same data reproduces, ids trimmed or added by hand
    keep the others checked, and an older splits.json (ids only) is still read."""
    raw = {"train": stratified_source(), "test": frame({"a": 3, "b": 3}, prefix="test ")}
    first = prepare_data(args(split_seed=1), raw=raw)
    full = split_ids(first)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(full), "utf-8")
    written = json.loads(path.read_text())
    assert set(written["text_digests"]) == {"train", "validation", "test"}
    for split, df in first.splits.items():  # 16 hex digits of the SHA-256 of each id's normalised text
        expected = {
            str(i): hashlib.sha256(normalise_text(t).encode()).hexdigest()[:16]
            for i, t in zip(df["row_id"], df["text"])
        }
        assert written["text_digests"][split] == expected
    assert split_ids(prepare_data(args(split_indices=str(path)), raw=raw)) == full

    shuffled = {**raw, "train": raw["train"].sample(frac=1, random_state=0).reset_index(drop=True)}
    with pytest.raises(DataError) as info:
        prepare_data(args(split_indices=str(path)), raw=shuffled)
    assert str(info.value).startswith(f"{path} (--split_indices): ")
    assert "train ids name other texts here than in the run that wrote it (e.g. row ids [" in str(info.value)
    retitled = {**raw, "test": frame({"a": 3, "b": 3}, prefix="other ")}  # only the test file differs
    with pytest.raises(DataError, match=r"6 of its 6 test ids name other texts"):
        prepare_data(args(split_indices=str(path)), raw=retitled)

    # one digest wrong: that id is named
    wrong = json.loads(json.dumps(full))
    wrong["text_digests"]["train"][str(full["train"][3])] = "00000000"
    path.write_text(json.dumps(wrong), "utf-8")
    with pytest.raises(DataError) as info:
        prepare_data(args(split_indices=str(path)), raw=raw)
    assert f"1 of its {len(full['train'])} train ids name other texts" in str(info.value)
    assert f"(e.g. row ids [{full['train'][3]}];" in str(info.value)

    # ids trimmed by hand keep the others checked; an id added by hand has no digest and is taken as it is
    trimmed = {**full, "train": full["train"][1:] + [max(full["train"]) + 1000]}
    path.write_text(json.dumps(trimmed), "utf-8")
    assert prepare_data(args(split_indices=str(path)), raw=raw).splits["train"]["row_id"].tolist() == sorted(
        full["train"][1:]
    )  # (the added id names no row here: a warning)
    undigested = json.loads(json.dumps(full))  # an id whose digest was removed by hand: taken as it is
    del undigested["text_digests"]["train"][str(full["train"][0])]
    path.write_text(json.dumps(undigested), "utf-8")
    assert split_ids(prepare_data(args(split_indices=str(path)), raw=raw)) == full

    ids_only = {k: v for k, v in full.items() if k != "text_digests"}
    path.write_text(json.dumps(ids_only), "utf-8")
    assert split_ids(prepare_data(args(split_indices=str(path)), raw=raw)) == full
    for digests in ("abc", {"train": ["0a1b2c3d"]}, {"train": {"0": 5}}):  # not a mapping; a list; not text
        path.write_text(json.dumps({**ids_only, "text_digests": digests}), "utf-8")
        with pytest.raises(DataError) as info:
            prepare_data(args(split_indices=str(path)), raw=raw)
        assert "'text_digests' must map each split to {row id: text digest}, got" in str(info.value)
        assert str(info.value).endswith("(remove the key to use the ids unchecked)")
    misspelt = {**full, "text_digests": {**full["text_digests"], "validaton": {}}}
    path.write_text(json.dumps(misspelt), "utf-8")
    with pytest.raises(DataError, match=r"'text_digests' names \['validaton'\], which have no ids"):
        prepare_data(args(split_indices=str(path)), raw=raw)


def test_split_indices_read_digests_of_normalised_texts_and_the_older_ones_of_stripped_texts(tmp_path):
    """splits.json digests were 8 hex digits of the stripped text: a text changed only in case or spacing (a file
    re-saved with CRLF inside narratives) was refused as another text, though the recipes' leak guard counts it as
    the same. They are now 16 hex digits of the normalised text; files written before (8 digits of the stripped
    text) are still checked, each digest by its length."""
    raw = {"train": stratified_source(), "test": frame({"a": 3, "b": 3}, prefix="test ")}
    first = prepare_data(args(split_seed=1), raw=raw)
    new = split_ids(first)
    assert {len(d) for by_id in new["text_digests"].values() for d in by_id.values()} == {16}
    old = {k: v for k, v in new.items() if k != "text_digests"}
    old["text_digests"] = {  # as written before: 8 hex digits of the stripped text
        s: {str(i): hashlib.sha256(t.encode()).hexdigest()[:8] for i, t in zip(df["row_id"], df["text"])}
        for s, df in first.splits.items()
    }
    path = tmp_path / "splits.json"
    for written in (new, old):  # either form reproduces the split on the same data
        path.write_text(json.dumps(written), "utf-8")
        assert split_ids(prepare_data(args(split_indices=str(path)), raw=raw)) == new

    row = first.splits["train"]["row_id"].iloc[3]
    text = raw["train"].loc[row, "text"]
    respaced = raw["train"].copy()  # the same text to the recipes: another case, CRLF and doubled spaces
    respaced.loc[row, "text"] = "  " + text.upper().replace(" ", "\r\n  ", 1).replace(" ", "  ") + " "
    reworded = raw["train"].copy()  # another text
    reworded.loc[row, "text"] = text + " and more"
    path.write_text(json.dumps(new), "utf-8")
    again = prepare_data(args(split_indices=str(path)), raw={**raw, "train": respaced})
    assert again.splits["train"]["row_id"].tolist() == first.splits["train"]["row_id"].tolist()
    assert split_ids(again) == new
    with pytest.raises(
        DataError, match=rf"1 of its {len(new['train'])} train ids name other texts .*\[{row}\]"
    ):
        prepare_data(args(split_indices=str(path)), raw={**raw, "train": reworded})
    path.write_text(json.dumps(old), "utf-8")  # an older file's digest is of the exact stripped text
    for changed in (respaced, reworded):
        with pytest.raises(DataError, match=rf"1 of its {len(new['train'])} train ids name other texts"):
            prepare_data(args(split_indices=str(path)), raw={**raw, "train": changed})
    # each form exactly, on a text in mixed case and spacing (this data's texts are lower case)
    text = "My Report  lists\r\nA LOAN"
    assert text_digest(text) == hashlib.sha256(b"my report lists a loan").hexdigest()[:16]
    assert legacy_text_digest(text) == hashlib.sha256(text.encode()).hexdigest()[:8]


def test_split_indices_of_the_synthetic_set_under_another_split_seed_are_refused(tmp_path):
    """The synthetic demo set is drawn from --split_seed: another seed is other texts under the same ids."""

    def synthetic(**kw):
        return prepare_data(
            DataArguments(dataset_name="synthetic", text_column="Consumer complaint narrative", **kw)
        )

    first = synthetic(split_seed=1)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(split_ids(first)), "utf-8")
    assert split_ids(synthetic(split_seed=1, split_indices=str(path))) == split_ids(first)
    with pytest.raises(DataError, match="ids name other texts here than in the run that wrote it"):
        synthetic(split_seed=2, split_indices=str(path))


def test_split_indices_with_unknown_split_is_an_error(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [0], "dev": [1]}), "utf-8")
    with pytest.raises(DataError, match=r"expected keys among .* found \['dev', 'train'\]"):
        prepare_data(args(split_indices=str(path)), raw={"train": frame({"a": 3})})


def test_split_indices_that_are_not_lists_of_ids_or_lack_validation_are_errors(tmp_path):
    """`{"train": 5}` or null was a TypeError ('int' object is not iterable); ids written as text matched no row
    ("No training rows left"); no 'validation' ids for a source without a validation split was a KeyError in the
    recipe after the data was read."""
    path = tmp_path / "splits.json"
    raw = {"train": frame({"a": 6, "b": 6})}
    for ids, shown in ((5, "5"), (None, "None"), (["0", "1"], "['0', '1']"), ([0, 1.5], "[0, 1.5]"),
                       ([True, 1], "[True, 1]")):  # fmt: skip
        path.write_text(json.dumps({"train": ids, "validation": [2]}), "utf-8")
        with pytest.raises(DataError) as info:
            prepare_data(args(split_indices=str(path)), raw=raw)
        assert str(info.value) == (
            f"{path} (--split_indices): the ids of ['train'] must be a list of integer row ids, got train: {shown}"
        )
    path.write_text(json.dumps({"train": [0, 1, 6, 7]}), "utf-8")
    with pytest.raises(DataError, match="has no 'validation' ids and the data has no validation split"):
        prepare_data(args(split_indices=str(path)), raw=raw)
    # with a validation source of its own, train ids alone are enough
    data = prepare_data(
        args(split_indices=str(path)), raw={**raw, "validation": frame({"a": 1, "b": 1}, prefix="v ")}
    )
    assert data.log["rows"] == {"train": 4, "validation": 2}


def test_the_same_column_as_text_and_label_is_an_error():
    """The model would read its label: with a validation file it trained on the labels as texts; without one the
    error blamed the validation split ("no rows left to score")."""
    raw = {"train": frame({"a": 6, "b": 6}), "validation": frame({"a": 2, "b": 2}, prefix="v ")}
    with pytest.raises(DataError) as info:
        prepare_data(args(text_column="label"), raw=raw)
    assert str(info.value) == (
        "--text_column and --label_column are both 'label': the model would read its label. Columns that exist: "
        "['text', 'label']"
    )


def test_json_and_jsonl_files_with_a_byte_order_mark_load(tmp_path):
    """As a .csv with a BOM does: it was "Could not parse ... Expected object or value at position 0"."""
    df = frame({"a": 3, "b": 3})
    for name, text in (
        ("bom.jsonl", df.to_json(orient="records", lines=True)),
        ("bom.json", df.to_json(orient="records")),
        ("bom_lines.json", df.to_json(orient="records", lines=True)),
        ("bom.csv", df.to_csv(index=False)),
    ):
        path = tmp_path / name
        path.write_text("\ufeff" + text, "utf-8")
        pd.testing.assert_frame_equal(read_table(path).astype(str), df, obj=name)


def test_a_csv_with_a_repeated_column_name_is_an_error(tmp_path, caplog):
    """pandas renames the second `t` to `t.1`: the first `t` was read as the text, the other silently ignored. A
    repeat among columns the run does not read, or blank header cells (a spreadsheet's trailing columns), still
    load: with a warning for the repeat, which pandas renames."""
    path = tmp_path / "dup.csv"
    path.write_text("t,l,t\nfirst text,a,second text\n", "utf-8")
    message = (
        f"the train data ({path}) has more than one column named ['t']: rename or drop the repeated columns "
        "(columns: ['t', 'l', 't'])"
    )
    with pytest.raises(DataError) as info:
        prepare_data(args(train_file=str(path), text_column="t", label_column="l"))
    assert str(info.value) == message
    # the file named by --dataset_name, and a byte-order mark before the first name, which still repeats
    path.write_text("\ufefft,l,t\nfirst text,a,second text\n", "utf-8")
    with pytest.raises(DataError) as info:
        prepare_data(args(dataset_name=str(path), text_column="t", label_column="l"))
    assert str(info.value) == message
    path.write_text("\ufeffa,b,c\n1,2,3\n", "utf-8")  # distinct names (and a byte-order mark) still read
    assert list(read_table(path).columns) == ["a", "b", "c"]
    path.write_text("t,l,note,note,,\nfirst text,a,x,y,,\n", "utf-8")
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        frame = read_table(path)
    assert list(frame.columns) == ["t", "l", "note", "note.1", "Unnamed: 4", "Unnamed: 5"]
    assert f"{path} repeats the column name(s) ['note']: the later ones are read as ['note.1']" in caplog.text
    refuse_repeated(frame, ["t", "l"], "x")  # not a column the run reads
    with pytest.raises(DataError, match=r"^x has more than one column named \['note'\]"):
        refuse_repeated(frame, ["note", "l"], "x")


def test_json_texts_or_labels_that_are_lists_or_objects_are_errors(tmp_path):
    """astype(str) turned them into their printed form ("['my card', 'was charged']") and trained on that."""
    rows = [{"text": f"complaint {i}", "label": "ab"[i % 2]} for i in range(8)]
    rows[2]["text"], rows[5]["text"] = ["my card", "was charged"], {"body": "late fee"}
    path = tmp_path / "train.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    with pytest.raises(DataError) as info:
        prepare_data(args(train_file=str(path)))
    assert str(info.value) == (
        f"Column 'text' of the train data ({path}) holds lists or objects, not text, in 2 of 8 rows (rows 2, 5; "
        "0-based): write each value as one string"
    )
    many = [{"text": [f"part {i}"], "label": "a"} for i in range(12)]
    pd.DataFrame(many).to_json(path, orient="records", lines=True)
    with pytest.raises(
        DataError, match=r"in 12 of 12 rows \(rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 \.\.\.; 0-based\)"
    ):
        prepare_data(args(train_file=str(path)))
    rows[2]["text"], rows[5]["text"] = "complaint 2", "complaint 5"
    rows[7]["label"] = ["b"]
    with pytest.raises(
        DataError, match=r"^Column 'label' of the validation data holds .* in 1 of 8 rows \(rows 7;"
    ):
        prepare_data(args(), raw={"train": frame({"a": 3, "b": 3}), "validation": pd.DataFrame(rows)})


def test_split_indices_cannot_bring_back_rows_cleaning_dropped(tmp_path, caplog):
    """Train ids index the cleaned training pool: a rare-class row and a row repeating a test text stay out."""
    train = frame({"a": 5, "b": 5, "rare": 1})  # row ids: a 0-4, b 5-9, rare 10
    test = pd.DataFrame({"text": ["A complaint number 4", "fresh"], "label": ["a", "b"]})  # repeats row 4
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": [1, 2, 3, 4, 6, 7, 8, 9, 10], "validation": [0, 5]}), "utf-8")
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(
            args(min_class_count=2, split_indices=str(path)), raw={"train": train, "test": test}
        )
    assert data.splits["train"]["row_id"].tolist() == [1, 2, 3, 6, 7, 8, 9]
    assert data.splits["validation"]["row_id"].tolist() == [0, 5]
    assert data.label_names == ["a", "b"]
    assert "train: 2 of 9 ids from" in caplog.text


def test_row_caps_keep_source_order():
    source_test = frame({"a": 6, "b": 4}, prefix="test ")
    data = prepare_data(
        args(max_predict_samples=4), raw={"train": frame({"a": 5, "b": 5}), "test": source_test}
    )
    expected = sorted(source_test.sample(n=4, random_state=42).index)
    assert expected != list(source_test.sample(n=4, random_state=42).index)  # the sample itself is shuffled
    assert data.splits["test"]["row_id"].tolist() == expected
    assert data.splits["test"]["text"].tolist() == source_test.loc[expected, "text"].tolist()


def test_label_space_comes_from_the_capped_training_rows():
    train = frame({"a": 6, "b": 3, "c": 1})
    kept = train.sample(n=4, random_state=42)
    assert set(kept["label"]) == {"a", "b"}  # the cap loses class 'c'
    validation = frame({"a": 1, "c": 2}, prefix="v ")
    data = prepare_data(args(max_train_samples=4), raw={"train": train, "validation": validation})
    assert data.label_names == ["a", "b"]
    assert data.splits["train"]["row_id"].tolist() == sorted(kept.index)
    assert data.train_counts == {0: int((kept["label"] == "a").sum()), 1: int((kept["label"] == "b").sum())}
    assert data.log["validation_excluded_unseen_labels"] == 2
    assert data.splits["validation"]["label"].tolist() == ["a"]


def test_a_local_file_as_dataset_name_is_the_training_file(tmp_path):
    path = tmp_path / "notes.csv"
    frame({"a": 3, "b": 3}).to_csv(path, index=False)
    data = prepare_data(args(dataset_name=str(path), split_seed=0))
    pool = pd.concat([data.splits["train"], data.splits["validation"]])
    assert sorted(pool["text"]) == sorted(frame({"a": 3, "b": 3})["text"])
    assert data.log["train"]["rows_read"] == 6


def test_a_hub_data_set_without_a_train_split_is_an_error(monkeypatch):
    import datasets

    hub = datasets.DatasetDict({"test": datasets.Dataset.from_pandas(frame({"a": 2}), preserve_index=False)})
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config_name=None: hub)
    with pytest.raises(DataError, match=r"has no 'train' split \(found: \['test'\]\)"):
        prepare_data(args(dataset_name="someone/complaints"))


def test_max_samples_cap_rows():
    raw = {"train": stratified_source(), "test": frame({"a": 10, "b": 10}, prefix="test ")}
    data = prepare_data(
        args(max_train_samples=30, max_eval_samples=7, max_predict_samples=4, validation_split_fraction=0.2),
        raw=raw,
    )
    assert len(data.splits["train"]) == 30
    # eval rows whose class the capped train split lost would be excluded, so count before that
    assert len(data.splits["validation"]) + data.log["validation_excluded_unseen_labels"] == 7
    assert len(data.splits["test"]) + data.log["test_excluded_unseen_labels"] == 4
    assert sum(data.train_counts.values()) == 30
    uncapped = prepare_data(args(max_train_samples=10_000), raw=raw)
    assert len(uncapped.splits["train"]) == 156 and len(uncapped.splits["test"]) == 20
    # the sample is said in the data log and the report's Data section (only the command line said it): 139 + 34 is
    # the 173 rows of the pool the 156 uncapped training rows come from at a 0.1 split; a cap
    # that keeps every row is none
    assert data.log["capped_rows"] == {
        "train": {"kept": 30, "of": 139},
        "validation": {"kept": 7, "of": 34},
        "test": {"kept": 4, "of": 20},
    }
    from longtail.report import _data_summary

    assert (
        "- rows capped (--max_train_samples / --max_eval_samples / --max_predict_samples, a seeded sample): "
        "train 30 of 139, validation 7 of 34, test 4 of 20"
    ) in _data_summary(data.log)
    assert "capped_rows" not in uncapped.log


# ---------------------------------------------------------------------------------------------
# Slices
# ---------------------------------------------------------------------------------------------


def test_slice_masks_length_boundaries_redaction_and_numbers():
    texts = pd.Series(
        [
            " ".join(["word"] * 34),
            " ".join(["word"] * 35),
            " ".join(["word"] * 65),
            " ".join(["word"] * 66),
            "On XXXX XXXX I called",
            "They charged me $12 twice",
            "Since 2019 nothing changed",
            "I owe 1,250 dollars",
            "I called 12 times about 123 issues in 1,25 weeks",
        ]
    )
    masks = slice_masks(texts)
    assert set(masks) == {
        "length<35",
        "length35-65",
        "length>65",
        "redacted",
        "not_redacted",
        "numeric",
        "not_numeric",
    }
    assert masks["length<35"].tolist() == [True, False, False, False, True, True, True, True, True]
    assert masks["length35-65"].tolist() == [False, True, True, False, False, False, False, False, False]
    assert masks["length>65"].tolist() == [False, False, False, True, False, False, False, False, False]
    assert masks["redacted"].tolist() == [False, False, False, False, True, False, False, False, False]
    assert masks["numeric"].tolist() == [False, False, False, False, False, True, True, True, False]
    np.testing.assert_array_equal(masks["not_redacted"], ~masks["redacted"])
    np.testing.assert_array_equal(masks["not_numeric"], ~masks["numeric"])
    for mask in masks.values():
        assert mask.dtype == bool


# ---------------------------------------------------------------------------------------------
# The real CFPB development file
# ---------------------------------------------------------------------------------------------


@pytest.mark.shared
@needs_shared
def test_real_cfpb_file_with_taxonomy():
    data = prepare_data(
        DataArguments(
            train_file=str(CFPB_CSV),
            text_column="Consumer complaint narrative",
            label_taxonomy="cfpb_issue_113",
        )
    )
    train, val = data.splits["train"], data.splits["validation"]
    assert len(data.label_names) == data.log["num_classes"] == 64
    assert len(train) + len(val) == 7911
    pool_counts = pd.concat([train, val])["label"].value_counts()
    assert pool_counts.min() >= 5
    assert set(pool_counts.index) == set(data.label_names)
    assert set(data.label_names) <= set(load_taxonomy("cfpb_issue_113"))
    old_wordings = set(load_merge_map("cfpb_2017"))
    assert not old_wordings & set(train["label"]) and not old_wordings & set(val["label"])
    assert data.log["train"]["labels_merged"] > 0
    assert not norms(train) & norms(val)
    assert data.log["validation_excluded_unseen_labels"] == 0


@pytest.mark.shared
@needs_shared
def test_real_cfpb_rows_read_the_same_from_a_downloaded_zip(tmp_path):
    """Rows of the real export saved as the download comes (a byte-order mark, CRLF ends, zipped) read as the
    plain file does."""
    rows = pd.read_csv(CFPB_CSV, dtype=str, keep_default_na=False, nrows=300)
    rows.to_csv(tmp_path / "plain.csv", index=False)
    payload = b"\xef\xbb\xbf" + rows.to_csv(index=False, lineterminator="\r\n").encode("utf-8")
    write_compressed(tmp_path / "complaints.csv.zip", payload)
    options = dict(
        text_column="Consumer complaint narrative", label_taxonomy="cfpb_issue_113", min_class_count=1
    )
    plain = prepare_data(DataArguments(train_file=str(tmp_path / "plain.csv"), **options))
    zipped = prepare_data(DataArguments(train_file=str(tmp_path / "complaints.csv.zip"), **options))
    assert zipped.log == plain.log and zipped.label_names == plain.label_names
    for split, df in plain.splits.items():
        pd.testing.assert_frame_equal(zipped.splits[split], df)


@pytest.mark.shared
@needs_shared
def test_real_cfpb_file_read_for_two_columns_gives_the_ids_and_texts_of_a_whole_read():
    """The recipes' data options on the real export's columns: reading the text and label columns alone gives the
    rows, row ids (a run's splits.json stays valid) and texts that reading every column gave."""
    options = dict(EXPORT_OPTIONS, min_class_count=5, validation_split_fraction=0.1, split_seed=42)
    whole = read_table(CFPB_CSV)
    assert len(whole.columns) == 9
    kept = ["Issue", "Consumer complaint narrative"]
    part = read_table(CFPB_CSV, columns=kept)
    pd.testing.assert_frame_equal(part, whole[kept])
    data = prepare_data(DataArguments(train_file=str(CFPB_CSV), **options))
    before = prepare_data(DataArguments(train_file=str(CFPB_CSV), **options), raw={"train": whole})
    assert data.log == before.log and data.log["train"]["rows_read"] == 14248
    assert split_ids(data) == split_ids(before)
    for split, df in before.splits.items():
        pd.testing.assert_frame_equal(data.splits[split], df)


@pytest.mark.shared
@needs_shared
def test_real_cfpb_labels_in_another_case_read_as_the_taxonomy_writes_them(tmp_path):
    """Real rows whose Issue is lower-cased, or has a doubled space, give the classes and rows of the file as it
    is (every row was dropped as outside the taxonomy)."""
    rows = pd.read_csv(CFPB_CSV, dtype=str, keep_default_na=False, nrows=400)
    rows.to_csv(tmp_path / "plain.csv", index=False)
    options = dict(
        text_column="Consumer complaint narrative", label_taxonomy="cfpb_issue_113", min_class_count=1
    )
    plain = prepare_data(DataArguments(train_file=str(tmp_path / "plain.csv"), **options))
    assert plain.log["train"]["rows_kept"] > 300 and plain.log["train"]["labels_respelled"] == 0
    for name, respelt in (
        ("lower", rows["Issue"].str.lower()),
        ("spaced", rows["Issue"].str.replace(" ", "  ", n=1)),
    ):
        rows.assign(Issue=respelt).to_csv(tmp_path / f"{name}.csv", index=False)
        data = prepare_data(DataArguments(train_file=str(tmp_path / f"{name}.csv"), **options))
        assert data.label_names == plain.label_names and data.log["rows"] == plain.log["rows"], name
        for count in ("rows_kept", "labels_merged", "dropped_outside_taxonomy"):
            assert data.log["train"][count] == plain.log["train"][count], (name, count)
        respelled, kept = data.log["train"]["labels_respelled"], plain.log["train"]["rows_kept"]
        assert (
            respelled == kept if name == "lower" else 0 < respelled <= kept
        )  # one-word labels keep their spaces


def test_cleaning_in_pieces_matches_whole_columns(monkeypatch):
    """clean_split reads emptiness, takes the kept texts and normalises them in pieces of CLEAN_CHUNK_ROWS rows:
    pieces of 3 give the splits, ids, texts, keys and log of one piece, on rows with empty and blank texts, missing
    labels, case and whitespace variants and a training text repeated in test."""
    import longtail.data as data_module

    texts = [
        "  Late FEE charged ",
        "",
        "late fee   charged",
        None,
        "  \t ",
        "wrong balance",
        "Wrong Balance\n",
    ]
    texts += [f"complaint {i}" for i in range(14)] + ["fraud on card", "card stolen"]
    labels = ["a", "b", "A ", "a", "b", "", "b"] + ["a", "b"] * 7 + ["a", None]
    train = pd.DataFrame({"text": texts, "label": labels}, index=np.arange(100, 100 + len(texts)))
    test = pd.DataFrame({"text": ["LATE fee charged", " complaint 3", "x"], "label": ["a", "b", "a"]})

    def run():
        data = prepare_data(
            args(label_merge_map="none", min_class_count=1), raw={"train": train.copy(), "test": test.copy()}
        )
        return split_ids(data), data.log, {s: df.to_dict("list") for s, df in data.splits.items()}

    whole = run()
    monkeypatch.setattr(data_module, "CLEAN_CHUNK_ROWS", 3)
    assert run() == whole
    assert whole[1]["train"]["dropped_empty_text"] == 3 and whole[1]["dropped_train_duplicates_of_eval"] == 3


def test_kept_columns_of_one_name_none_or_an_empty_selection():
    """A single name as a string is that column (it was split into its letters, so the file was read whole); None
    or an empty selection keeps every column, for a .csv and a .parquet alike (a .parquet kept none)."""
    from longtail.data import kept_columns

    names = ["Date", "text", "label", "t"]
    assert kept_columns("text", names) == ["text"]
    assert kept_columns(["label", "text"], names) == ["text", "label"]  # in the file's order
    assert kept_columns(None, names) is None and kept_columns([], names) is None
    assert kept_columns(lambda have: [], names) is None
    assert kept_columns(["text", "missing"], names) is None  # (read_frame reads the header alone for it)


def test_a_non_utf8_file_is_located_at_its_first_byte_in_any_of_its_forms(tmp_path):
    """The bad bytes as the decoder reports them (two for a character cut short by the next one), a bad first
    byte (offset 0, still a byte, not "its bytes do not decode"), and a big-endian UTF-16 file by its mark."""
    cut = tmp_path / "cut.csv"
    cut.write_bytes(b"text,label\ncaf\xe2\x80 ok,a\n")  # a 3-byte character missing its last byte
    first = tmp_path / "first.csv"
    first.write_bytes(b"\x92text,label\nok,a\n")
    big = tmp_path / "big.csv"
    big.write_bytes(b"\xfe\xff" + "text,label\nI\u2019m charged,a\n".encode("utf-16-be"))
    for path, found, source in (
        (cut, "byte 0xE2 0x80 at line 2, offset 14", "cp1252"),
        (first, "byte 0x92 at line 1, offset 0", "cp1252"),
        (big, "it is UTF-16, by its byte-order mark", "utf-16"),
    ):
        with pytest.raises(DataError) as err:
            prepare_data(args(train_file=str(path)))
        assert str(err.value) == (
            f"{path} is not valid UTF-8 ({found}). Re-save it as UTF-8, e.g. "
            f"`iconv -f {source} -t utf-8 {path.name} > fixed.csv`."
        )


def test_every_spreadsheet_and_tab_separated_suffix_says_how_to_save_it(tmp_path):
    sheet, tabs = "Save the sheet as CSV UTF-8 (comma-delimited).", "Save it comma-separated as a .csv."
    for name, advice in (
        ("a.xls", sheet),
        ("a.xlsm", sheet),
        ("a.ods", sheet),
        ("a.XLSX", sheet),
        ("a.tab", tabs),
        ("a.txt", ""),
    ):
        (tmp_path / name).write_bytes(b"PK\x03\x04")
        with pytest.raises(DataError) as err:
            prepare_data(args(train_file=str(tmp_path / name)))
        assert str(err.value).endswith(f".gz, .bz2, .xz, .zip).{' ' + advice if advice else ''}"), name


def test_a_jsonl_of_empty_objects_has_rows_and_is_named_by_its_missing_columns(tmp_path):
    """Only a file with no rows and no columns is "empty"; lines of `{}` are rows without the columns asked for."""
    path = tmp_path / "objects.jsonl"
    path.write_text("{}\n{}\n", "utf-8")
    with pytest.raises(DataError, match=r"^Column\(s\) \['text', 'label'\] not found in the train data"):
        prepare_data(args(train_file=str(path)))


def messages(caplog, prefix: str) -> list[str]:
    """The messages logged under `caplog` that start with `prefix`."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_training_rows_repeating_validation_and_test_texts_name_both_splits(caplog):
    train = frame({"a": 600, "b": 600})  # 1,200 rows: the counts are written with thousands separators
    validation = pd.DataFrame(
        {"text": ["A complaint  number 1", "fresh a", "fresh b"], "label": ["a", "a", "b"]}
    )
    test = pd.DataFrame({"text": ["b COMPLAINT number 2", "fresh test"], "label": ["b", "a"]})
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(args(), raw={"train": train, "validation": validation, "test": test})
    assert data.log["dropped_train_duplicates_of_eval"] == 2
    assert messages(caplog, "Dropped") == [
        "Dropped 2 of 1,200 training rows (0.2%) whose text also appears in validation and test (case and spacing "
        "ignored): train/validation/test leakage, kept out of training so that no score is of a text trained on; "
        "more than a few repeated complaints means the validation and test data was drawn from the training data"
    ]
    # a validation file none of whose texts is in training: only the split that shares them is named
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        prepare_data(args(), raw={"train": train, "validation": validation[1:], "test": test})
    assert messages(caplog, "Dropped") == [
        "Dropped 1 of 1,200 training rows (0.1%) whose text also appears in test (case and spacing ignored): "
        "train/test leakage, kept out of training so that no score is of a text trained on; more than a few "
        "repeated complaints means the test data was drawn from the training data"
    ]


def test_more_than_three_labels_split_by_spelling_name_three_and_count_all(caplog):
    labels = ["a", "A", "b", "B", "c", "C", "d", "D"]
    train = pd.DataFrame({"text": [f"complaint {i}" for i in range(8)], "label": labels})
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        data = prepare_data(args(), raw={"train": train})
    assert data.log["labels_split_by_spelling"] == 4
    assert messages(caplog, "train:") == [
        "train: 4 labels are written in more than one case or spacing, each spelling a class of its own: "
        "'A' (1 row) vs 'a' (1 row); 'B' (1 row) vs 'b' (1 row); 'C' (1 row) vs 'c' (1 row); ...: write "
        "each label one way (a --label_taxonomy's spellings are read as its)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="longtail.data"):
        prepare_data(args(), raw={"train": train[:6]})
    assert caplog.records[0].getMessage().startswith("train: 3 labels") and "; ...:" not in caplog.text


def test_first_non_utf8_is_the_same_byte_whatever_the_block_size():
    """A character cut between two blocks, with the bad byte in the second: its offset counts the bytes of the
    previous block the decoder held back, at every block size."""
    import tempfile

    content = (
        b"ab\ncd\xe2\x80\x99ef\n\x92g\n"  # a curly quote in UTF-8, then a cp1252 one at offset 11 of line 3
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mixed.csv"
        path.write_bytes(content)
        for block in range(1, len(content) + 2):
            assert first_non_utf8(path, block=block) == (11, 3, b"\x92"), block
        path.write_bytes(b"ab\ncd\xe2\x80x\n")  # a character cut short by the next one: both its bytes
        for block in range(1, 12):
            assert first_non_utf8(path, block=block) == (5, 2, b"\xe2\x80"), block


def test_an_empty_validation_split_cut_from_training_is_not_said_to_be_a_header_only_file():
    """The "only a header" reason is for a split read from a file of no rows; a validation split cut from the
    training file has no file, and 1% of 6 rows is none."""
    data = prepare_data(args(validation_split_fraction=0.01), raw={"train": frame({"a": 3, "b": 3})})
    assert len(data.splits["validation"]) == 0 and "validation" not in data.log
    with pytest.raises(DataError) as err:
        require_usable_splits(data, do_predict=False)
    assert str(err.value).startswith(
        "The validation split has no rows left to score ("
    ) and "header" not in str(err.value)
