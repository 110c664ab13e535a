"""Tests for the synthetic, CFPB-shaped demo data (longtail.synthetic)."""

from __future__ import annotations

import time

import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from longtail.synthetic import SYNTHETIC_COLUMNS, main, make_synthetic_complaints, make_synthetic_splits

TEXT, LABEL = "Consumer complaint narrative", "Issue"
OLD_TO_NEW = {
    "Incorrect information on credit report": "Incorrect information on your report",
    "Improper use of my credit report": "Improper use of your report",
    "Cont'd attempts collect debt not owed": "Attempts to collect debt not owed",
    "Charged fees or interest I didn't expect": "Charged fees or interest you didn't expect",
}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_synthetic_complaints(1800, seed=0)


@pytest.fixture(scope="module")
def splits() -> dict[str, pd.DataFrame]:
    return make_synthetic_splits(1800, 600, seed=0)


def _clean(df: pd.DataFrame) -> pd.DataFrame:
    df = df[df[TEXT].str.len().gt(0) & df[LABEL].notna()]
    return df.assign(**{LABEL: df[LABEL].replace(OLD_TO_NEW)})


def test_deterministic(frame):
    pd.testing.assert_frame_equal(frame, make_synthetic_complaints(1800, seed=0))
    assert not frame[TEXT].equals(make_synthetic_complaints(1800, seed=1)[TEXT])


def test_columns_and_fields(frame):
    assert list(frame.columns) == SYNTHETIC_COLUMNS
    assert frame["Complaint ID"].is_unique and frame["Complaint ID"].dtype.kind == "i"
    dates = pd.to_datetime(frame["Date received"], format="%Y-%m-%d")
    assert dates.dt.year.between(2017, 2023).all()
    assert frame["State"].str.fullmatch(r"[A-Z]{2}").all() and frame["Company"].notna().all()
    words = frame.loc[frame[TEXT] != "", TEXT].str.split().str.len()
    assert words.between(25, 90).all()
    text = " ".join(frame[TEXT])
    assert "XXXX" in text and "XX/XX/XXXX" in text and "$" in text


def test_long_tail_shape(frame):
    counts = _clean(frame)[LABEL].value_counts()
    assert 20 <= len(counts) <= 28 and frame["Product"].nunique() >= 5
    assert 0.18 <= counts.iloc[0] / counts.sum() <= 0.28
    assert counts.min() >= 6
    assert counts.min() / counts.sum() < 0.01


def test_old_wordings_present(frame):
    share = frame[LABEL].isin(OLD_TO_NEW.keys()).mean()
    assert 0.015 <= share <= 0.05
    assert set(OLD_TO_NEW) <= set(frame[LABEL].dropna())
    assert not set(OLD_TO_NEW) & set(_clean(frame)[LABEL])


def test_defects_present(frame):
    assert 1 <= (frame[TEXT] == "").sum() <= 0.02 * len(frame)
    assert 1 <= frame[LABEL].isna().sum() <= 0.01 * len(frame)
    dups = frame[frame[TEXT].ne("") & frame[TEXT].duplicated(keep=False)]
    assert len(dups) >= 2
    assert (dups.groupby(TEXT)[LABEL].nunique(dropna=False) == 1).all()  # same text, same label


def test_splits(splits):
    train, test = splits["train"], splits["test"]
    assert (len(train), len(test)) == (1800, 600)
    assert not set(train["Complaint ID"]) & set(test["Complaint ID"])
    train_counts, test_counts = _clean(train)[LABEL].value_counts(), _clean(test)[LABEL].value_counts()
    assert set(test_counts.index) == set(train_counts.index)  # same classes ...
    assert test_counts.index[0] == train_counts.index[0]  # ... and the same head


def test_fast():
    start = time.perf_counter()
    make_synthetic_complaints(3000, seed=3)
    assert time.perf_counter() - start < 1.0


def test_learnable_but_not_trivial(splits):
    train, test = _clean(splits["train"]), _clean(splits["test"])
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2)
    clf = LogisticRegression(solver="saga", max_iter=2000).fit(  # saga: fast and steady on busy CPUs
        vec.fit_transform(train[TEXT]), train[LABEL]
    )
    accuracy = (clf.predict(vec.transform(test[TEXT])) == test[LABEL].to_numpy()).mean()
    assert 0.6 <= accuracy <= 0.95, accuracy


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path), "--n_train", "60", "--n_test", "20", "--seed", "4"])
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "train.csv"), str(tmp_path / "test.csv")]
    train = pd.read_csv(tmp_path / "train.csv", encoding="utf-8")
    assert list(train.columns) == SYNTHETIC_COLUMNS and len(train) == 60
    assert len(pd.read_csv(tmp_path / "test.csv")) == 20
