"""Combine the calibrated probabilities of finished runs; the post-hoc shift (and optionally the weights) chosen
on validation.

    python -m longtail.ensemble outputs/probe_encoder outputs/baseline_tfidf --output_dir outputs/ensemble

Runs whose errors differ (a frozen-encoder probe and TF-IDF) help each other most. Each member is first
temperature-scaled on validation (`calibration.fit_temperature`, T minimising validation NLL; softmax(log p / T)
equals scaling its logits, so the saved probabilities suffice). The calibrated members are combined with equal
weights (default) or weights searched on a simplex grid (`--weights search`, step --weight_step), as a geometric
mean (default: softmax of the weighted log-probabilities, i.e. averaged calibrated logits) or an arithmetic one.
A post-hoc logit adjustment tau (`longtail.posthoc`: p * prior^-tau, renormalised; the prior is the training
counts in labels.json of the first member that has them) is chosen by validation macro-F1, with the weights when
they are searched; ties go to the smaller tau, then the lower validation NLL. A last temperature for the mix, fit on
validation NLL, changes no prediction. Why these defaults (README, measured on CFPB re-splits): a few hundred
validation rows overfit a weight grid, and log-linear pooling beat the arithmetic mean for every member set
tried. Why the shift: calibrated members carry the training prior again (temperature scaling undoes part of
what class weighting did), so their mix leans to the head classes. The test split is scored once with the
chosen setting. Writes predictions_validation.npz / predictions_test.npz (so `longtail.compare` can put the
ensemble next to its members), ensemble.json and report.md; and predictions_train.npz, the members' own (cross-
fitted by `--predict_train true`) mixed by the same setting, when every member has them: a distillation teacher. The folder serves new texts like any run:
`python -m longtail.predict --model_dir <it>` scores every member (found through ensemble.json) and mixes them
with the chosen setting.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from longtail.calibration import apply_temperature, log_probs
from longtail.calibration import fit_temperature as fit_on_logits
from longtail.cli import UsageError, usage_exit
from longtail.compare import (
    MIN_RESAMPLES,
    RESAMPLES_ERROR,
    CompareError,
    bootstrap_note,
    check_distinct,
    check_same_rows,
    load_tiers,
    read_labels_json,
    read_run,
    run_labels,
)
from longtail.crossfit import combined_folds, train_prediction_folds
from longtail.metrics import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_settings,
    classification_metrics,
    macro_f1,
    negative_log_likelihood,
)
from longtail.posthoc import log_prior_array, parse_tau_option


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities at temperature T (calibration's softmax(logits / T), on log-probabilities)."""
    return apply_temperature(log_probs(probs), temperature)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """calibration.fit_temperature on log-probabilities (they differ from the logits by a per-row constant)."""
    return fit_on_logits(log_probs(probs), y)


def simplex_grid(k: int, step: float) -> list[tuple[float, ...]]:
    """Every k-tuple of multiples of `step` that sums to 1, in lexicographic order (ties in the search go to the
    first). Built point by point, not by filtering the (1/step + 1)^k tuples of a product: that took hours for a
    grid of a few hundred points over many members (20 members at step 0.5: 210 points, 3^20 tuples)."""
    n = round(1 / step)

    def compositions(parts: int, total: int):
        if parts == 1:
            yield (total,)
            return
        for first in range(total + 1):
            for rest in compositions(parts - 1, total - first):
                yield (first, *rest)

    return [tuple(c / n for c in combo) for combo in compositions(k, n)]


def grid_size(k: int, step: float) -> int:
    """The number of points of `simplex_grid(k, step)`, without building it: C(1/step + k - 1, k - 1)."""
    return math.comb(round(1 / step) + k - 1, k - 1)


# The most validation scorings (weight points x taus) `--weights search` may take. Each is a mix, a shift and a
# scikit-learn macro-F1: ~2-5 ms on a few hundred to a few thousand validation rows of ~60 classes (measured on 2
# CPU cores), so the cap is a minute or two; the grids users ask for are far below it (4 members at the default
# step 0.1: 286 points x 5 taus), while 4 members at step 0.02 (23,426 points x 5 taus) ran 10+ minutes without a
# word. A finer grid only fits validation noise better (README: equal weights did as well on unseen rows).
MAX_GRID_SCORINGS = 25_000
COARSER_STEPS = (0.01, 0.02, 0.025, 0.05, 0.1, 0.125, 0.2, 0.25, 0.5)  # what the refusal may suggest
# What `write_outputs` writes (predictions_train.npz and _test when there are some): all that
# --overwrite_output_dir replaces in --output_dir, an earlier ensemble (never a run's files)
ENSEMBLE_FILES = (
    "ensemble.json",
    "report.md",
    "predictions_validation.npz",
    "predictions_test.npz",
    "predictions_train.npz",
)


def check_grid_size(run_dirs, step: float, num_taus: int, cap: int = MAX_GRID_SCORINGS) -> None:
    """A UsageError when `--weights search` over these members at this step, times the taus tried, is more than
    `cap` validation scorings (--max_grid_scorings): naming the count, the members, the step, and a step that
    fits."""
    points = grid_size(len(run_dirs), step)
    if points * num_taus <= cap:
        return

    def count(x: int) -> str:
        return f"{x:,}" if x < 10**12 else f"{float(x):.1e}"

    fits = [s for s in COARSER_STEPS if s > step and grid_size(len(run_dirs), s) * num_taus <= cap]
    coarser = (
        f"a coarser --weight_step ({fits[0]}: {grid_size(len(run_dirs), fits[0]):,} points), " if fits else ""
    )
    taus = f" x {num_taus} taus = {count(points * num_taus)} validation scorings" if num_taus > 1 else ""
    raise UsageError(
        f"--weights search over {len(run_dirs)} members ({', '.join(map(str, run_dirs))}) at --weight_step {step} "
        f"is {count(points)} weight points{taus}, more than the {cap:,} it may take (each a "
        f"validation macro-F1; a finer grid only fits validation noise): pass {coarser}fewer members, "
        "--weights equal, or a larger --max_grid_scorings to wait for it"
    )


def adjust(probs: np.ndarray, log_prior: np.ndarray, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment on probabilities: softmax(log p - tau * log prior)."""
    if tau == 0:
        return probs
    return apply_temperature(log_probs(probs) - tau * log_prior, 1.0)


WEIGHTS = ("equal", "search")
COMBINE = ("geometric", "arithmetic")


def combine(members: list[np.ndarray], weights, how: str) -> np.ndarray:
    """The weighted mix of calibrated member probabilities. `geometric`: softmax(sum w_i log p_i), log-linear
    pooling, i.e. averaging the calibrated logits (a class one member rules out stays unlikely); `arithmetic`:
    sum w_i p_i (one confident member can carry a class alone)."""
    if how == "geometric":
        return apply_temperature(sum(w * log_probs(p) for w, p in zip(weights, members)), 1.0)
    if how == "arithmetic":
        return sum(w * p for w, p in zip(weights, members))
    raise ValueError(f"combine must be one of {COMBINE}, got '{how}'")


def weight_candidates(num_members: int, mode: str, step: float) -> list[tuple[float, ...]]:
    """`equal`: the plain average only; `search`: every point of the simplex grid with the given step."""
    if mode == "equal":
        return [(1 / num_members,) * num_members]
    if mode == "search":
        return simplex_grid(num_members, step)
    raise ValueError(f"weights must be one of {WEIGHTS}, got '{mode}'")


def choose_weights(
    members: list[np.ndarray],
    y: np.ndarray,
    candidates: list[tuple[float, ...]],
    log_prior: np.ndarray | None = None,
    taus: tuple[float, ...] = (0.0,),
    how: str = "geometric",
) -> tuple[tuple[float, ...], float, list[dict]]:
    """The candidate weights and tau with the best validation macro-F1 (ties: smaller tau, then lower NLL)."""
    rows = []
    for w in candidates:
        mix = combine(members, w, how)
        for tau in taus:
            adjusted = adjust(mix, log_prior, tau)
            rows.append(
                {
                    "weights": w,
                    "tau": tau,
                    "val_macro_f1": macro_f1(y, adjusted.argmax(1)),
                    "val_nll": negative_log_likelihood(adjusted, y),
                }
            )
    best = max(rows, key=lambda r: (round(r["val_macro_f1"], 12), -r["tau"], -r["val_nll"]))
    return best["weights"], best["tau"], rows


def apply_mix(member_probs: list[np.ndarray], spec: dict) -> np.ndarray:
    """The ensemble's output for its members' probabilities as they save them (`predictions_<split>.npz`, the
    same rows in the same order): each tempered by its validation temperature, mixed, shifted by tau, and
    tempered once more. One function for the test split and for `longtail.predict`, so both agree."""
    calibrated = [temper(p, t) for p, t in zip(member_probs, spec["temperatures"], strict=True)]
    mixed = combine(calibrated, spec["weights"], spec["combine"])
    if spec["tau"]:
        mixed = adjust(mixed, np.asarray(spec["log_prior"], dtype=np.float64), spec["tau"])
    return temper(mixed, spec["mix_temperature"])


def serving_spec(result: dict) -> dict:
    """What `apply_mix` and `longtail.predict` need, saved in ensemble.json: members as absolute paths, and
    lists (not dicts keyed by folder name: two members may share one)."""
    return {
        "members": [str(Path(m).resolve()) for m in result["members"]],
        "temperatures": [float(t) for t in result["temperatures"]],
        "weights": [float(w) for w in result["weights"]],
        "combine": result["combine"],
        "tau": float(result["tau"]),
        "log_prior": None if result["log_prior"] is None else [float(x) for x in result["log_prior"]],
        "mix_temperature": float(result["mix_temperature"]),
        "label_names": list(result["label_names"]),
    }


def training_log_prior(run_dir, label_names: list[str]) -> np.ndarray | None:
    """log class prior from a run's labels.json training counts (by label name); None without them."""
    counts = (read_labels_json(run_dir, label_names) or {}).get("train_counts")
    if not counts:
        return None
    return log_prior_array({i: counts.get(name, 0) for i, name in enumerate(label_names)}, len(label_names))


def prior_and_taus(run_dirs, label_names: list[str], tau_option: str):
    """(log prior, tau grid, the member it came from). The prior is the training counts of the first member whose
    labels.json has them (an ensemble saves none: with one listed first, or an ensemble of ensembles, the shift was
    silently dropped, and a fixed tau refused), as the report's tiers are; a note says so when it is not the first.
    `auto` with no member's counts falls back to no shift, saying so; a fixed tau without them is an error."""
    taus = parse_tau_option(tau_option)
    if taus == (0.0,):
        return None, taus, None
    for run_dir in run_dirs:
        log_prior = training_log_prior(run_dir, label_names)
        if log_prior is not None:
            if run_dir != run_dirs[0]:
                print(
                    f"ensemble: the class prior of the post-hoc logit adjustment is {run_dir}'s training counts "
                    f"(labels.json; {run_dirs[0]} has none)",
                    file=sys.stderr,
                )
            return log_prior, taus, run_dir
    if tau_option == "auto":
        print(
            "ensemble: no training counts in any member's labels.json: no post-hoc logit adjustment",
            file=sys.stderr,
        )
        return None, (0.0,), None
    raise CompareError(
        f"no training counts in any member's labels.json ({', '.join(map(str, run_dirs))}), so no class prior "
        "for the post-hoc logit adjustment; pass --posthoc_logit_adjustment none"
    )


def ensemble_members(run_dir) -> list[Path]:
    """The member folders an ensemble folder's ensemble.json lists, resolved (its `serving` entry's absolute paths;
    an older file's `members` as written); [] for a run that is not an ensemble or whose ensemble.json is unreadable
    (it is not needed to read the folder's predictions)."""
    try:
        record = json.loads((Path(run_dir) / "ensemble.json").read_text("utf-8"))
        spec = record.get("serving") or {}
        members = spec.get("members") or record.get("members") or []
        return [Path(m).resolve() for m in members]
    except (OSError, ValueError, AttributeError, TypeError):
        return []


def member_walk(folder) -> list[tuple[Path, tuple[Path, ...]]]:
    """Every folder `folder` leads to through ensemble.json member lists (`ensemble_members`), resolved, each with
    the ensembles on the way (outermost first), depth first from `folder` itself (with ()). The one walk over
    members of predict, score and ensemble: members that lead back to an ensemble on the way (an ensemble.json
    edited by hand, or a folder replaced afterwards) are one CompareError naming the cycle, where each tool
    recursed without end. Every way down is walked, as before: ensembles built here share no run
    (`check_no_run_twice`), so that is each folder once."""
    start = Path(folder).resolve()
    walk: list[tuple[Path, tuple[Path, ...]]] = []

    def visit(node: Path, chain: tuple[Path, ...]) -> None:
        if node in chain:
            loop = " -> ".join(map(str, [*chain[chain.index(node) :], node]))
            raise CompareError(
                f"ensembles in a cycle, {loop}: each folder's ensemble.json lists the next as a member (edited by "
                "hand, or a folder replaced afterwards), so no tool can serve or score it"
                + ("" if node == start else f" (reached from {folder})")
                + "; rebuild the ensemble from its runs with python -m longtail.ensemble"
            )
        walk.append((node, chain))
        for member in ensemble_members(node):
            visit(member, (*chain, node))

    visit(start, ())
    return walk


def check_no_run_twice(run_dirs) -> None:
    """A CompareError when one run would count twice: given itself and inside a given ensemble (an ensemble of
    ensembles; nested ones are followed), or inside two given ensembles. Compared as resolved paths; the same
    folder given twice is `check_distinct`'s. The mix weighed such a run twice, silently: --weights search is the
    way to weigh a member more. Ensembles in a cycle are `member_walk`'s CompareError."""
    reached: dict[Path, dict[str, list[Path]]] = {}  # run -> {given folder: the ensembles down to the run}
    for d in run_dirs:
        for folder, chain in member_walk(d):
            reached.setdefault(folder, {}).setdefault(str(d), list(chain))

    def ensemble(given: str, chain: list[Path]) -> str:
        """The ensemble that lists the run: as given, or the inner one inside the given one."""
        return given if len(chain) == 1 else f"{chain[-1]} (inside {given})"

    for run, via in reached.items():
        if len(via) < 2:
            continue
        (first, first_chain), (second, second_chain) = list(via.items())[:2]
        if not first_chain or not second_chain:  # given itself, and inside an ensemble given too
            (given, _), (other, chain) = sorted(via.items(), key=lambda item: len(item[1]))[:2]
            spelt = "" if given == str(run) else f" (as {given})"
            where = f"is given{spelt} and is also a member of the ensemble {ensemble(other, chain)}"
        else:
            where = f"is a member of both ensembles {ensemble(first, first_chain)} and {ensemble(second, second_chain)}"
        raise CompareError(
            f"{run} {where}: the mix would count it twice. List each run once (--weights search weighs the members)"
        )


def build_ensemble(
    run_dirs: list[str],
    step: float = 0.1,
    do_test: bool = True,
    tau_option: str = "auto",
    weights_mode: str = "equal",
    how: str = "geometric",
    max_scorings: int = MAX_GRID_SCORINGS,
) -> dict:
    val = [read_run(d, "validation") for d in run_dirs]
    check_same_rows(val[1:], val[0], "the first member")
    y_val = val[0]["y_true"]
    log_prior, taus, prior_from = prior_and_taus(run_dirs, val[0]["label_names"], tau_option)
    if weights_mode == "search":  # before the grid is built: refused at once, not after an hour
        check_grid_size(run_dirs, step, len(taus), max_scorings)
    temps = [fit_temperature(r["probs"], y_val) for r in val]
    calibrated = [temper(r["probs"], t) for r, t in zip(val, temps)]
    candidates = weight_candidates(len(run_dirs), weights_mode, step)
    weights, tau, grid = choose_weights(calibrated, y_val, candidates, log_prior, taus, how)
    # what set tau, for the report: said "best validation macro-F1" for a fixed tau and for none too
    if len(taus) > 1:
        tau_rule = "best validation macro-F1"
    elif tau_option == "auto":
        tau_rule = "none, no training counts in any member's labels.json"
    else:
        tau_rule = f"fixed by --posthoc_logit_adjustment {tau_option}"
    mixed = adjust(combine(calibrated, weights, how), log_prior, tau)
    # one more temperature, for the mix itself (a product of calibrated members is over-confident where they
    # agree, an average under-confident): it rescales every row's logits alike, so no prediction changes
    mix_temperature = fit_temperature(mixed, y_val)
    out = {
        "members": [r["dir"] for r in val],
        "temperatures": temps,
        "weights": list(weights),
        "tau": tau,
        "tau_rule": tau_rule,
        "weights_mode": weights_mode,
        "combine": how,
        "mix_temperature": mix_temperature,
        "grid": grid,
        "label_names": val[0]["label_names"],
        "log_prior": log_prior,
        "prior_from": prior_from,
        "splits": {"validation": (val[0]["row_id"], y_val, temper(mixed, mix_temperature))},
    }
    out["serving"] = serving_spec(out)
    if do_test:
        test = [read_run(d, "test") for d in run_dirs]
        check_same_rows(test[1:], test[0], "the first member")
        out["splits"]["test"] = (
            test[0]["row_id"],
            test[0]["y_true"],
            apply_mix([r["probs"] for r in test], out["serving"]),
        )
    train = train_split(run_dirs, out["serving"])
    if train is not None:
        out["splits"]["train"], out["train_folds"] = train
    return out


def train_split(run_dirs: list[str], spec: dict):
    """The members' training-row predictions (`--predict_train`) mixed by the setting chosen on validation, so the
    ensemble folder can teach a distillation student (`distill.py --teacher_logits <folder>`), plus each member's
    folds; None unless every member saved them (a note names the members that did not)."""
    missing = [d for d in run_dirs if not (Path(d) / "predictions_train.npz").is_file()]
    if missing:
        if len(missing) < len(run_dirs):
            print(
                f"ensemble: no predictions_train.npz in {', '.join(missing)}, so no train predictions for the "
                "ensemble (a distillation teacher needs them from every member: baseline_tfidf and probe_encoder "
                "write them with --predict_train true; a fine-tuning run writes none, its own rows being in-sample)",
                file=sys.stderr,
            )
        return None
    # the ensemble itself is fine: only its teacher output is not
    try:
        train = [read_run(d, "train") for d in run_dirs]
    except CompareError as err:  # a malformed predictions_train.npz
        print(f"ensemble: no train predictions for the ensemble: {err}", file=sys.stderr)
        return None
    try:
        check_same_rows(train[1:], train[0], "the first member")
    except CompareError as err:
        print(
            f"ensemble: no train predictions for the ensemble: the members' do not match ({err})",
            file=sys.stderr,
        )
        return None
    folds = [train_prediction_folds(Path(d)) for d in run_dirs]
    mixed = apply_mix([r["probs"] for r in train], spec)
    return (train[0]["row_id"], train[0]["y_true"], mixed), folds


def write_outputs(
    result: dict,
    output_dir: Path,
    tiers: dict,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    provenance: dict | None = None,
) -> dict:
    """predictions_*.npz, ensemble.json and report.md; `provenance` (the command, the environment) goes into
    ensemble.json as well."""
    from longtail.report import jsonable
    from longtail.runs import write_json

    metrics = {}
    for split, (row_id, y, probs) in result["splits"].items():
        np.savez_compressed(
            output_dir / f"predictions_{split}.npz",
            row_id=row_id.astype(np.int64),
            y_true=y.astype(np.int64),
            probs=probs.astype(np.float32),
            label_names=np.asarray(result["label_names"], dtype=str),
        )
        metrics[split] = classification_metrics(y, probs, tiers, n_resamples=n_resamples)
    names = run_labels(result["members"])  # distinct keys, even for two members named `probe`
    tau_searched = result["tau_rule"] == "best validation macro-F1"
    record = {
        "members": result["members"],
        "temperatures": dict(zip(names, result["temperatures"])),
        "weights": dict(zip(names, result["weights"])),
        "posthoc_tau": result["tau"],
        "posthoc_prior_from": result.get("prior_from"),  # the member whose training counts are the prior
        "weights_mode": result["weights_mode"],
        "combine": result["combine"],
        "mix_temperature": result["mix_temperature"],
        "serving": result["serving"],  # read by `python -m longtail.predict --model_dir <this folder>`
        "selection": "temperatures: validation NLL per member and for the mix; "
        + (
            (
                "weights: equal; post-hoc tau: best validation macro-F1 (ties: smaller tau)"
                if result["weights_mode"] == "equal"
                else "weights and post-hoc tau: best validation macro-F1 over the simplex grid x tau "
                "(ties: smaller tau, then lower NLL)"
            )
            if tau_searched
            else (
                "weights: equal"
                if result["weights_mode"] == "equal"
                else "weights: best validation macro-F1 over the simplex grid (ties: lower NLL)"
            )
            + f"; post-hoc tau: {result['tau_rule']}"
        )
        + ("; test scored once at the end" if "test" in metrics else ""),
        "metrics": metrics,
        "bootstrap": bootstrap_settings(n_resamples),  # of the metrics' CIs: the same seed gives the same CIs
        **(provenance or {}),
    }
    if "train_folds" in result:  # read back by crossfit.train_prediction_folds (distill.py's warning)
        record["train_predictions"] = {
            "predict_train_folds": combined_folds(result["train_folds"]),
            # a list by path, not a dict by folder name: two members may share a name (seed0/probe, seed1/probe)
            "members": [
                {"run": m, "predict_train_folds": f}
                for m, f in zip(result["members"], result["train_folds"], strict=True)
            ],
        }
    write_json(output_dir / "ensemble.json", record)
    shift_note = " (no shift)"
    if result["tau"] != 0:
        prior = result.get("prior_from")
        prior = f"; the prior: {names[result['members'].index(prior)]}'s training counts" if prior else ""
        shift_note = f" (probabilities x prior^-tau, renormalised{prior})"
    md = [
        "# Ensemble of " + ", ".join(names),
        "",
        f"**Selection**: {record['selection']}. Validation scores of the chosen setting are therefore optimistic, "
        "its validation ECE and NLL most of all: every temperature (each member's, refitted on all the validation "
        "rows, and the mix's) is fitted on the rows they are scored on. Test's are not.",
        "",
        "| member | temperature (validation NLL) | weight ("
        + ("equal" if result["weights_mode"] == "equal" else "validation macro-F1")
        + ") |",
        "|---|---|---|",
        *(
            f"| {n} | {t:.3f} | {w:.2f} |"
            for n, t, w in zip(names, result["temperatures"], result["weights"])
        ),
        "",
        f"Mix: {result['combine']} mean of the calibrated members"
        + (" (softmax of the weighted log-probabilities)" if result["combine"] == "geometric" else "")
        + f"; then post-hoc logit adjustment ({'validation macro-F1' if tau_searched else result['tau_rule']}): "
        + f"tau = {result['tau']}"
        + shift_note
        + f"; then temperature {result['mix_temperature']:.3f} (validation NLL; no prediction changes).",
        "",
        "CIs: 95% percentile bootstrap over rows." + bootstrap_note(record["bootstrap"]),
        "",
        "| split | accuracy [95% CI] | macro-F1 [95% CI] | zero-F1 / classes scored | ECE, served | NLL, served |",
        "|---|---|---|---|---|---|",
    ]
    for split, m in metrics.items():
        md.append(
            f"| {split} | {m['accuracy']:.3f} [{m['accuracy_ci_low']:.3f}, {m['accuracy_ci_high']:.3f}] | "
            f"**{m['macro_f1']:.3f}** [{m['macro_f1_ci_low']:.3f}, {m['macro_f1_ci_high']:.3f}] | "
            f"{m['zero_f1_classes']} / {m['classes_scored']} | {m['ece']:.3f} | {m['nll']:.3f} |"
        )
    if "train_predictions" in record:
        md += ["", train_note(record["train_predictions"])]
    top = sorted(result["grid"], key=lambda r: (-r["val_macro_f1"], r["tau"], r["val_nll"]))[:10]
    md += [
        "",
        "## Validation grid (top 10)",
        "",
        "| weights | tau | validation macro-F1 | validation NLL |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {', '.join(f'{w:.2f}' for w in r['weights'])} | {r['tau']} | {r['val_macro_f1']:.4f} | "
        f"{r['val_nll']:.4f} |"
        for r in top
    ]
    (output_dir / "report.md").write_text("\n".join(md) + "\n", "utf-8")
    return jsonable(record)


def train_note(train: dict) -> str:
    """The report's words on the ensemble's train predictions."""
    if train["predict_train_folds"]:
        how = f"cross-fitted in every member (fewest folds: {train['predict_train_folds']})"
    else:
        seen = [
            f"{m['run']} ({'not recorded' if m['predict_train_folds'] is None else 'in-sample'})"
            for m in train["members"]
            if not m["predict_train_folds"]
        ]
        how = (
            "not held out in " + ", ".join(seen) + ": such a member is near-certain on the rows it was fit on"
        )
    return (
        "Train: the members' `predictions_train.npz` mixed by the same setting, for a distillation teacher "
        f"(`recipes/distill.py --teacher_logits <this folder>`); {how}."
    )


def main(argv: list[str] | None = None) -> dict:
    # no prog: argparse names the tool by sys.argv[0] as usage_exit does, so its errors and ours start alike
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="finished run folders (predictions_validation.npz [+ _test])")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite_output_dir", action="store_true")
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="equal",
        help="equal (default: on CFPB re-splits, weights searched on 679 validation rows did no better on "
        "unseen rows, on average, and worse with three or more members); search: a simplex grid (step "
        "--weight_step) chosen with tau on validation macro-F1",
    )
    parser.add_argument(
        "--weight_step",
        type=float,
        default=None,
        help="grid step of the member weights (--weights search; 0.1): at most --max_grid_scorings validation "
        "scorings (grid points x taus tried)",
    )
    parser.add_argument(
        "--max_grid_scorings",
        type=int,
        default=None,
        help=f"the largest --weights search to run, in validation scorings (grid points x taus tried; "
        f"{MAX_GRID_SCORINGS:,}: a minute or two); a larger grid is refused before it starts",
    )
    parser.add_argument(
        "--combine",
        choices=COMBINE,
        default="geometric",
        help="geometric (default): softmax of the weighted calibrated log-probabilities (log-linear pooling); "
        "arithmetic: the weighted mean of the calibrated probabilities",
    )
    parser.add_argument(
        "--n_resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="bootstrap resamples (CIs)"
    )
    parser.add_argument(
        "--no_test", action="store_true", help="validation only (members without a test split)"
    )
    parser.add_argument(
        "--posthoc_logit_adjustment",
        default="auto",
        help="shift the mix by -tau * log(training prior): auto chooses tau in {0, .25, .5, .75, 1} on "
        "validation macro-F1 (with the weights, when searched); none; or a fixed tau",
    )
    args = parser.parse_args(argv)
    try:
        parse_tau_option(args.posthoc_logit_adjustment)
    except ValueError as err:
        parser.error(str(err))
    if len(args.runs) < 2:
        parser.error("an ensemble needs at least two runs")
    if args.n_resamples < MIN_RESAMPLES:
        parser.error(RESAMPLES_ERROR.format(args.n_resamples))
    if args.max_grid_scorings is not None and args.weights != "search":
        parser.error("--max_grid_scorings caps --weights search; add --weights search, or drop it")
    args.max_grid_scorings = MAX_GRID_SCORINGS if args.max_grid_scorings is None else args.max_grid_scorings
    if args.max_grid_scorings < 1:
        parser.error(f"--max_grid_scorings must be >= 1, got {args.max_grid_scorings}")
    if args.weight_step is not None and args.weights != "search":
        # the step used to mean a search (the previous default): asking for one and getting equal weights is a surprise
        parser.error("--weight_step sets the grid of --weights search; add --weights search, or drop it")
    args.weight_step = 0.1 if args.weight_step is None else args.weight_step
    if not 0 < args.weight_step <= 0.5 or abs(round(1 / args.weight_step) * args.weight_step - 1) > 1e-9:
        parser.error(f"--weight_step must divide 1 (0.05, 0.1, 0.25, ...), got {args.weight_step}")
    from longtail.runs import prepare_results_dir

    try:  # the output folder is checked before the work, not after
        check_distinct(args.runs)
        check_no_run_twice(args.runs)  # an ensemble of ensembles that share a run, ensembles in a cycle
        # --output_dir an ensemble inside a member: the new one would be its own member (predict recursed on it)
        for folder, chain in (step for d in args.runs for step in member_walk(d)):
            if chain and folder == Path(args.output_dir).resolve():
                raise CompareError(
                    f"--output_dir {args.output_dir} is a member of the ensemble {chain[-1]}: an ensemble written "
                    f"there would be in a cycle, {' -> '.join(map(str, [folder, *chain, folder]))}. Choose "
                    "another --output_dir"
                )
        # never clear a member (--output_dir one of them, as `make ensemble ENSEMBLE_OUT=...` could say), nor
        # write inside one, nor in another run's folder: an overwrite replaces an earlier ensemble only
        members = [("the member", d) for d in args.runs]
        out = prepare_results_dir(
            args.output_dir,
            args.overwrite_output_dir,
            members,
            ENSEMBLE_FILES,
            (),
            "ensemble",
            "ensemble.json",
        )
        result = build_ensemble(
            args.runs,
            args.weight_step,
            not args.no_test,
            args.posthoc_logit_adjustment,
            args.weights,
            args.combine,
            args.max_grid_scorings,
        )
        # the first member that has tiers (an ensemble member saves no labels.json); a malformed one is an error
        tiers = next((t for t in (load_tiers(r, result["label_names"]) for r in args.runs) if t), {})
    except UsageError as err:  # CompareError, OutputDirError, ...
        raise usage_exit(str(err)) from None
    from longtail.provenance import environment
    from longtail.runs import command_line, replace_previous_run

    # an overwrite clears the previous results only now, when the ensemble is built
    replace_previous_run(out, args.overwrite_output_dir)
    provenance = {
        "command": command_line("-m", ["longtail.ensemble", *(sys.argv[1:] if argv is None else argv)]),
        "environment": environment(),
    }
    record = write_outputs(result, out, tiers, args.n_resamples, provenance)
    print((out / "report.md").read_text("utf-8"))
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
