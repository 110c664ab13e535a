"""SYNTHETIC, CFPB-shaped consumer-complaint data for the offline demo and the tests only.

Nothing here is real: every narrative is assembled at random from hand-written phrases and every
company is made up. Only the shape mimics the CFPB complaint database: post-2017 ``Issue`` wordings
over a few products with a Zipf-like long tail, ~3% of rows still carrying an old pre-2017 wording,
``XXXX`` redactions, ``XX/XX/XXXX`` dates and dollar amounts, a few empty narratives, missing labels
and exact duplicates. Never use it to draw conclusions about real complaints.

    python -m longtail.synthetic --out DIR [--n_train N --n_test N --seed S]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SYNTHETIC_COLUMNS = [
    "Date received",
    "Product",
    "Issue",
    "Consumer complaint narrative",
    "Company",
    "State",
    "Complaint ID",
]

# "> product | companies", "= phrases shared by the product's issues", "share % | issue | its cue phrases".
_SPEC_TEXT = """
> Credit reporting, credit repair services, or other personal consumer reports | Northgate Credit Bureau LLC; Summit Consumer Reporting Inc.; Keystone Data Services Corp.
= I checked my credit report from all three bureaus; the credit bureau has my file wrong; my credit score dropped by XXXX points; this violates the Fair Credit Reporting Act; the consumer reporting agency ignores my letters; I am trying to rebuild my credit
22.0 | Incorrect information on your report | an account on my report does not belong to me; the balance reported is wrong; it shows late payments that I never made; my name and address are listed incorrectly; the account is reported as open but it was closed; the same account is listed twice; the tradeline has the wrong date of first delinquency
12.0 | Problem with a credit reporting company's investigation into an existing problem | I disputed this item and they verified it without investigating; the dispute results came back with no changes; they never responded to my dispute letter; they ignored the documents I sent with my dispute; they marked my dispute as frivolous; the reinvestigation was not completed within 30 days
9.0 | Improper use of your report | there is a hard inquiry I never authorized; someone pulled my credit without my permission; they had no permissible purpose to obtain my report; there are inquiries from companies I never applied with; I keep getting prescreened offers after I opted out
1.2 | Unable to get your credit report or credit score | I cannot get my free annual credit report online; the website says it cannot verify my identity; I requested my credit score and never received it; the phone line hangs up before I can order my report
> Debt collection | Meridian Recovery Partners; Atlas Collection Services LLC; Harbor Receivables Group
= the debt collector keeps contacting me; this collection agency bought the account; the original creditor sold the account; this violates the Fair Debt Collection Practices Act; a collection account appeared on my credit
7.0 | Attempts to collect debt not owed | this debt is not mine; I never had an account with the original creditor; the debt was already paid in full; the debt was discharged in bankruptcy; the debt came from identity theft; I do not owe this amount
3.5 | Written notification about debt | they never sent me a validation notice; I asked for debt validation in writing and got nothing; the letter did not state the amount owed or the creditor name; I never received any written notice about this debt
2.5 | Took or threatened to take negative or legal action | they threatened to sue me; they said they would garnish my wages; they threatened to have me arrested; they filed a lawsuit without serving me
2.2 | Communication tactics | they call me many times a day; they called my workplace after I told them to stop; they called my family and neighbors; the caller used abusive and profane language
1.8 | False statements or representation | the collector falsely claimed to be an attorney; they misrepresented the amount of the debt; they lied that my credit would be ruined forever; they gave false information about the statute of limitations
> Payday loan, title loan, or personal loan | QuickBridge Lending; Pinecrest Installment Loans; Redwood Title Loans Inc.
= I took out a personal loan; the lender will not help me; the loan agreement I signed says otherwise; this online installment loan is a nightmare; I have a title loan on my car
6.0 | Charged fees or interest you didn't expect | they charged a late fee even though I paid on time; the interest rate is higher than agreed; hidden fees were added to my balance; there is an origination fee nobody told me about; the APR is over 300 percent
4.0 | Struggling to pay your loan | I lost my job and cannot make the payments; I asked for a hardship plan and they refused; I need a payment extension because of medical bills; they would not work with me on a repayment plan
3.0 | Problem with the payoff process at the end of the loan | I paid off the loan but they still show a balance; they will not give me a payoff amount; they kept withdrawing money after the final payment; the car title was not released after payoff
0.8 | Received a loan you didn't apply for | a loan was opened in my name that I never applied for; I never signed up for this loan; money was deposited for a loan I did not request
> Checking or savings account | First Lakeshore Bank; Granite State Savings; Unity Federal Bank N.A.
= I have had my checking account there for years; the bank branch manager could not help; my savings account is with the same bank; my debit card was affected; online banking shows a different balance
4.5 | Managing an account | they froze my account without explanation; a deposit was held for weeks; a check I deposited was never credited; my funds were not available
1.5 | Problem caused by your funds being low | they charged multiple overdraft fees in one day; they reordered transactions to cause overdrafts; a returned item fee was charged for insufficient funds
1.1 | Problem with a lender or other company charging your account | a company keeps debiting my account after I revoked authorization; there was an unauthorized ACH withdrawal from a lender; I asked the bank to stop payment to the lender
> Credit card or prepaid card | Beacon Card Services; Silverline Bank USA; Evergreen Prepaid Co.
= I have had this credit card for years; the card issuer will not help; my monthly statement shows it; the cardholder agreement does not allow this
2.6 | Problem with a purchase shown on your statement | I disputed a charge for merchandise I never received; the merchant charged me twice; the chargeback was denied; a refund from the merchant never posted
1.0 | Fees or interest | they charged an annual fee I did not agree to; interest was charged though I paid in full; they raised my interest rate without notice
0.6 | Getting a credit card | my card application was denied; I was approved but never received the card; the promotional offer was not honored when I applied
> Mortgage | Hearthstone Mortgage Servicing; Cornerstone Home Loans; Bayview Residential Servicing
= my mortgage was transferred to a new servicer; the loan servicer will not answer; my escrow account is a mess; the mortgage company keeps sending letters
3.5 | Trouble during payment process | my payment was not applied to the account; the servicer misapplied my payment to fees; autopay failed and they charged late fees; they returned my payment
1.6 | Struggling to pay mortgage | I applied for a loan modification; they started foreclosure while my modification was pending; I requested forbearance; they lost my modification paperwork again
0.6 | Closing on a mortgage | the closing was delayed; the closing costs were far above the loan estimate; the rate lock expired before closing
> Money transfer, virtual currency, or money service | SwiftSend Payments; Coinharbor Exchange
= I used the money transfer app; I sent a wire transfer; the transfer service will not help
1.5 | Fraud or scam | I was scammed by someone posing as a relative; the seller took the money and disappeared; a scammer convinced me to send money
0.7 | Other transaction problem | the transfer never arrived; the funds went to the wrong recipient; they cancelled my transaction without explanation
"""
_FILLER = """I have called them several times and nobody helps me. | This has caused me a lot of stress.
| I want this resolved as soon as possible. | I spoke with a representative on {date} and was told to wait.
| I have attached copies of all my documents. | Please help me with this matter. | They keep giving me the runaround.
| I have been a customer for years. | I am filing this complaint because I have no other option.
| A supervisor named XXXX XXXX promised to call back but never did. | The amount in question is {amount}.
| I sent a letter on {date} by certified mail. | This is unacceptable. | Nobody has given me a clear answer.
| I expect a full explanation in writing.""".replace("\n", " ").split(" | ")
_PREFIX = ["", "", "", "On {date}, ", "I noticed that ", "Also, ", "In addition, ", "I was told that "]
_OLD_WORDING = {  # new -> old (pre-April-2017) wording, used on ~3% of all rows
    "Incorrect information on your report": "Incorrect information on credit report",
    "Improper use of your report": "Improper use of my credit report",
    "Attempts to collect debt not owed": "Cont'd attempts collect debt not owed",
    "Charged fees or interest you didn't expect": "Charged fees or interest I didn't expect",
}
_OLD_RATE = 0.068  # the four classes above hold ~44% of rows -> ~3% old wordings overall
# Text noise, tuned so TF-IDF + logistic regression scores ~0.86-0.89 on the test split (not ~1.0):
_TWO_CUES = 0.25  # a row states 1 of its issue's cue phrases, or 2 with this probability
_SIBLING_RATE = 0.2  # rows that also mention cue(s) of another issue of the same product
_SIBLING_TWO = 0.6  # ... two such cues rather than one
_STATES = (
    "CA TX FL NY GA IL PA NC OH NJ MI VA AZ MD WA TN MA CO IN MO SC AL LA NV MN OR KY WI CT OK "
    "UT IA KS AR MS NM NE ID WV HI NH ME RI MT DE SD ND AK DC VT WY PR"
).split()
_START, _END, _REWORDED = (np.datetime64(d) for d in ("2017-01-01", "2024-01-01", "2017-04-24"))


def _parse(text: str) -> tuple[list[tuple[str, str, float, list[str]]], dict[str, tuple[list, list]]]:
    """-> [(product, issue, share %, cue phrases)], {product: (shared phrases, companies)}."""
    issues, products, product = [], {}, ""
    for line in filter(None, text.splitlines()):
        fields = [part.strip() for part in line.lstrip(">=").split("|")]
        if line[0] == ">":
            product, products[fields[0]] = fields[0], ([], fields[1].split("; "))
        elif line[0] == "=":
            products[product][0].extend(fields[0].split("; "))
        else:
            issues.append((product, fields[1], float(fields[0]), fields[2].split("; ")))
    return issues, products


_ISSUES, _PRODUCTS = _parse(_SPEC_TEXT)
_SIBLINGS = [[j for j, o in enumerate(_ISSUES) if o[0] == it[0] and j != i] for i, it in enumerate(_ISSUES)]


def _allocate(n: int, shares: np.ndarray) -> np.ndarray:
    """Exact per-class counts (largest remainder), so no tail class is left empty by chance."""
    raw = n * shares / shares.sum()
    counts = np.floor(raw).astype(int)
    counts[np.argsort(counts - raw)[: n - counts.sum()]] += 1
    return counts


def _stream(rng: np.random.Generator) -> Iterator[float]:
    """Endless uniforms from ``rng``, drawn in blocks: far faster than one ``rng`` call per choice."""
    while True:
        yield from rng.random(4096).tolist()


def _narrative(u: Iterator[float], k: int) -> str:
    def one(seq: list) -> Any:
        return seq[int(next(u) * len(seq))]

    def some(seq: list[str], n: int) -> list[str]:
        return sorted(seq, key=lambda _: next(u))[:n]

    def fill(text: str) -> str:
        return text.format(date="XX/XX/XXXX", amount=f"${next(u) * 9000 + 20:,.2f}")

    def sentence(phrase: str) -> str:
        text = fill(one(_PREFIX)) + phrase
        return text[0].upper() + text[1:] + "."

    product, _, _, cues = _ISSUES[k]
    phrases = some(cues, 1 + (next(u) < _TWO_CUES))
    if _SIBLINGS[k] and next(u) < _SIBLING_RATE:  # noise in the text, never in the label
        phrases += some(_ISSUES[one(_SIBLINGS[k])][3], 1 + (next(u) < _SIBLING_TWO))
    phrases += some(_PRODUCTS[product][0], 1 + (next(u) < 0.5))
    parts = [sentence(p) for p in phrases] + [fill(f) for f in some(_FILLER, 1 + int(next(u) * 3))]
    words = " ".join(some(parts, len(parts))).split()
    while len(words) < 25:
        words += fill(one(_FILLER)).split()
    return " ".join(words[:90])


def make_synthetic_complaints(n_rows: int = 2400, seed: int = 0, *, start_id: int = 0) -> pd.DataFrame:
    """Return ``n_rows`` synthetic complaints with :data:`SYNTHETIC_COLUMNS`; same seed -> same frame."""
    rng = np.random.default_rng(seed)
    counts = _allocate(n_rows, np.array([share for _, _, share, _ in _ISSUES]))
    klass = rng.permutation(np.repeat(np.arange(len(_ISSUES)), counts))
    u = _stream(rng)
    rows = []
    for k in klass:
        product, issue, _, _ = _ISSUES[k]
        old = issue in _OLD_WORDING and next(u) < _OLD_RATE
        start, end = (_START, _REWORDED) if old else (_START, _END)
        companies = _PRODUCTS[product][1]
        rows.append(
            (
                str(start + int(next(u) * (end - start).astype(int))),
                product,
                _OLD_WORDING[issue] if old else issue,
                _narrative(u, k),
                companies[int(next(u) * len(companies))],
                _STATES[min(int(-12 * math.log1p(-next(u))), len(_STATES) - 1)],
            )
        )
    df = pd.DataFrame(rows, columns=SYNTHETIC_COLUMNS[:-1])
    df["Complaint ID"] = np.arange(n_rows, dtype=np.int64) + 3_000_000 + start_id
    # Defects for the pipeline to handle, put on head-class rows only so the tail keeps its counts.
    head = rng.permutation(np.flatnonzero(klass < 3))
    n_empty, n_nan, n_dup = (round(n_rows * f) for f in (0.005, 0.003, 0.01))
    empty, nan, dup = np.split(head[: n_empty + n_nan + n_dup], [n_empty, n_empty + n_nan])
    df.loc[empty, "Consumer complaint narrative"] = ""
    df.loc[nan, "Issue"] = np.nan
    source = rng.choice(np.setdiff1d(np.arange(n_rows), head[: n_empty + n_nan + n_dup]), size=len(dup))
    copied = ["Product", "Issue", "Consumer complaint narrative", "Company"]
    df.loc[dup, copied] = df.loc[source, copied].to_numpy()
    return df


def make_synthetic_splits(n_train: int = 1800, n_test: int = 600, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Train/test frames: independent draws (another seed, disjoint ids) from the same label distribution."""
    return {
        "train": make_synthetic_complaints(n_train, seed),
        "test": make_synthetic_complaints(n_test, seed + 1_000_003, start_id=n_train),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic CFPB-shaped train/test split (offline demo).")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--n_train", type=int, default=1800)
    ap.add_argument("--n_test", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, frame in make_synthetic_splits(args.n_train, args.n_test, args.seed).items():
        path = args.out / f"{name}.csv"
        frame.to_csv(path, index=False, encoding="utf-8")
        print(path)


if __name__ == "__main__":
    main()
