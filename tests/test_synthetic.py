"""Tests for the synthetic, CFPB-shaped demo data (longtail.synthetic)."""

from __future__ import annotations

import time

import numpy as np
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


# Phrases from the module's specification, written out again here: a few of each kind
CREDIT_REPORTING = "Credit reporting, credit repair services, or other personal consumer reports"
COMPANIES = {
    CREDIT_REPORTING: {"Northgate Credit Bureau LLC", "Summit Consumer Reporting Inc.", "Keystone Data Services Corp."},
    "Debt collection": {"Meridian Recovery Partners", "Atlas Collection Services LLC", "Harbor Receivables Group"},
    "Payday loan, title loan, or personal loan": {"QuickBridge Lending", "Pinecrest Installment Loans",
                                                  "Redwood Title Loans Inc."},
    "Checking or savings account": {"First Lakeshore Bank", "Granite State Savings", "Unity Federal Bank N.A."},
    "Credit card or prepaid card": {"Beacon Card Services", "Silverline Bank USA", "Evergreen Prepaid Co."},
    "Mortgage": {"Hearthstone Mortgage Servicing", "Cornerstone Home Loans", "Bayview Residential Servicing"},
    "Money transfer, virtual currency, or money service": {"SwiftSend Payments", "Coinharbor Exchange"},
}  # fmt: skip
HEAD_ISSUES = {  # the three largest classes, which alone carry the defects
    "Incorrect information on your report",
    "Problem with a credit reporting company's investigation into an existing problem",
    "Improper use of your report",
}


def test_allocate_gives_the_rows_left_to_the_largest_remainders():
    from longtail.synthetic import _allocate

    # 10 rows at 27/25/26/22 %: 2.7, 2.5, 2.6, 2.2 -> floors 2, 2, 2, 2 and the 2 rows left to 2.7 and 2.6
    assert _allocate(10, np.array([27.0, 25.0, 26.0, 22.0])).tolist() == [3, 2, 3, 2]
    assert _allocate(7, np.array([0.5, 0.5])).sum() == 7


def test_companies_dates_and_states(frame):
    """Each product's own companies, all of them drawn; an old (pre-April-2017) wording only on a complaint
    received before the rewording (2017-04-24), new wordings over the whole range; states spread widely."""
    assert frame.groupby("Product")["Company"].agg(set).to_dict() == COMPANIES
    dates = pd.to_datetime(frame["Date received"], format="%Y-%m-%d")
    old = frame[LABEL].isin(OLD_TO_NEW.keys())
    assert dates[old].max() < pd.Timestamp("2017-04-24") and dates[old].min() >= pd.Timestamp("2017-01-01")
    reworded = frame[LABEL].isin(OLD_TO_NEW.values())
    assert dates[reworded].max() >= pd.Timestamp("2023-01-01")
    assert frame["State"].nunique() >= 40


def test_defects_are_exact_and_on_head_classes_only(frame):
    """1800 rows: round(0.5 %) = 9 empty narratives, round(0.3 %) = 5 missing labels, round(1 %) = 18
    duplicates, all on rows of the three largest classes (the empty ones keep their label, so it can be read)."""
    empty = frame[frame[TEXT] == ""]
    assert len(empty) == 9 and set(empty[LABEL]) <= HEAD_ISSUES | set(OLD_TO_NEW)
    assert frame[LABEL].isna().sum() == 5 and (frame.loc[frame[LABEL].isna(), TEXT] != "").all()
    assert (frame.loc[frame[LABEL].isna(), "Product"] == CREDIT_REPORTING).all()
    assert frame.loc[frame[TEXT] != "", TEXT].duplicated().sum() == 18
    # a duplicate never copies another defect (it would add a 16th empty text or a 10th missing label)
    for seed in (1, 3):
        other = make_synthetic_complaints(3000, seed=seed)
        assert ((other[TEXT] == "").sum(), other[LABEL].isna().sum()) == (15, 9)


def test_narratives_are_built_from_their_issues_phrases(frame):
    """Per row (its issue known: not a duplicate, an empty text or a missing label): 1 of its issue's cue
    phrases, or 2 in about a quarter of the rows; another issue of the same product mentioned in about a fifth,
    never an issue of another product; 1 or 2 of the product's shared phrases; at least one filler sentence; the
    sentences in a random order, each starting with a capital; no trace of the specification's markup."""
    import re

    from longtail.synthetic import _FILLER, _ISSUES, _PRODUCTS

    cues = {issue: [c.lower() for c in phrases] for _, issue, _, phrases in _ISSUES}
    product_of = {issue: product for product, issue, *_ in _ISSUES}
    fillers = [
        re.compile(re.escape(f).replace(r"\{date\}", ".*").replace(r"\{amount\}", ".*")) for f in _FILLER
    ]
    rows = frame[frame[TEXT].ne("") & frame[LABEL].notna() & ~frame[TEXT].duplicated(keep=False)]
    own, sibling, shared, first = [], [], [], []
    for issue, text in zip(rows[LABEL].replace(OLD_TO_NEW), rows[TEXT]):
        low = text.lower()
        own.append(sum(c in low for c in cues[issue]))
        others = {o for o in cues if o != issue and any(c in low for c in cues[o])}
        assert {product_of[o] for o in others} <= {product_of[issue]}, (issue, text)
        sibling.append(bool(others))
        shared.append(sum(p.lower() in low for p in _PRODUCTS[product_of[issue]][0]))
        assert any(f.search(text) for f in fillers), text
        first.append(any(c in text.split(". ")[0].lower() for c in cues[issue]))
        assert not re.search(r"[=>;|]|\b[A-Z]{2}[a-z]", text), text
    own, sibling, shared = np.array(own), np.array(sibling), np.array(shared)
    assert set(own) == {1, 2} and 0.2 <= (own == 2).mean() <= 0.3
    assert 0.15 <= sibling.mean() <= 0.25
    assert set(shared) == {1, 2} and 0.4 <= (shared == 2).mean() <= 0.6
    assert np.mean(first) < 0.6  # shuffled: the cue is not always the first sentence
    # every sentence opening is drawn, the last one too
    for prefix in ("On XX/XX/XXXX, ", "I noticed that ", "Also, ", "In addition, ", "I was told that "):
        assert rows[TEXT].str.contains(prefix, regex=False).any(), prefix


def test_long_narratives_are_cut_at_90_words():
    words = make_synthetic_complaints(3000, seed=0)[TEXT].str.split().str.len()
    assert words.max() == 90


def test_test_split_is_another_draw(tmp_path):
    splits = make_synthetic_splits(300, 300, seed=5)
    train, test = (splits[s].loc[splits[s][TEXT] != "", TEXT] for s in ("train", "test"))
    assert not set(train) & set(test)
    assert splits["test"]["Complaint ID"].tolist() == list(range(3_000_300, 3_000_600))


def test_cli_defaults_and_a_new_nested_folder(tmp_path, capsys):
    out = tmp_path / "new" / "data"
    main(["--out", str(out)])
    assert capsys.readouterr().out.split() == [str(out / "train.csv"), str(out / "test.csv")]
    assert (len(pd.read_csv(out / "train.csv")), len(pd.read_csv(out / "test.csv"))) == (1800, 600)
