"""Issue 24's model selection: the prompt classifier's candidates, validated by repository on the shared
prompt corpora (prompts_dev.jsonl + prompts_train_extra.jsonl), beside the rules alone and the two together.

Folds: the repository of a row is the first word of `source`; forks are one repository (the PyRIT forks are
named after the first, "hannahwestra25/PyRIT"). Each repository with 30 attack rows or more is a fold; the
other repositories with attacks are pooled into one fold; repositories with benign rows only are folds of
their own (false positives only). One fold was held out before any tuning, `random.Random(24).choice` over
the sorted folds with 30 attacks or more: PyRIT. It is left out of every run below; `--final` trains the
chosen candidate on every other fold and reports the held-out fold once.

For each candidate, leave one fold out: train on the other folds, score the fold. The model's threshold is
chosen on those out-of-fold probabilities so that the model flags at most 3% of the hard negatives and 1% of
the ordinary prompts (the rules alone flag more than 3% of the hard negatives already); recall is per fold,
averaged over the folds with attacks.

    python bench/prompt_model.py [--corpus DIR] [--candidates NAME,...] [--final]
    python bench/prompt_model.py --time    (only the shipped model's time per prompt, beside the rules alone)

Writes bench/out/prompt_model.json (--time: prompt_model_time.json).
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from sklearn.linear_model import SGDClassifier  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import train_prompt_model as trainer  # noqa: E402

from floodwall.defense.classifier import DEFAULT_MODEL, Featurizer, PromptModel, shipped  # noqa: E402
from floodwall.defense.prompts import Screen, load_rules  # noqa: E402

OUT = Path(__file__).with_name("out")
HARD = {"benign_roleplay", "benign_system_prompt", "benign_borderline", "benign_roleplay_system_prompt"}
HELD_OUT = "hannahwestra25/PyRIT"
MIN_ATTACKS = 30
HARD_FP, ORDINARY_FP = 0.03, 0.01
FIRST: dict[str, Any] = {"fold": False, "window": 0}  # the first model's reading: no folding, no windows
# false positives allowed per defense level, rules and model together (hard negatives, ordinary prompts): the
# issue's at normal (where a flag spends a strike); more recall for more false positives when under attack
BUDGETS = {"normal": (HARD_FP, ORDINARY_FP), "elevated": (0.05, 0.02), "under_attack": (0.08, 0.04)}
PADDING = 2048  # characters of benign text put before each attack for the padded recall
RULES_THRESHOLD = 3


def fit_lr(c: float) -> Callable[[Any, list[int]], tuple[np.ndarray, float]]:
    return lambda x, y: trainer.fit(x, y, c)


def fit_sgd(x: Any, y: list[int]) -> tuple[np.ndarray, float]:
    """A linear SVM (hinge loss) by stochastic gradient descent, seeded."""
    model = SGDClassifier(loss="hinge", alpha=1e-5, max_iter=50, tol=1e-4, random_state=trainer.SEED)
    model.fit(x, np.asarray(y))
    return model.coef_[0], float(model.intercept_[0])


CANDIDATES: dict[str, tuple[Featurizer, Callable[[Any, list[int]], tuple[np.ndarray, float]]]] = {
    # the shipped model (tools/train_prompt_model.py): the set features below, read with the disguises undone,
    # scored whole and in windows of 384 characters moving by 128 (the highest logit); trained on whole prompts
    "char+word-binary-lr-fold-window": (Featurizer(20, (3, 5), 2), fit_lr(8.0)),
    "char+word-binary-lr-fold": (Featurizer(20, (3, 5), 2, window=0), fit_lr(8.0)),
    # character 3-5-grams, word 1-2-grams, in 2**20 buckets; logistic regression (C) or a linear SVM
    # every occurrence, each group averaged
    "char-lr": (Featurizer(20, (3, 5), 0, binary=False, **FIRST), fit_lr(8.0)),
    "word-lr": (Featurizer(20, (0, 0), 2, binary=False, **FIRST), fit_lr(8.0)),
    "char+word-lr": (Featurizer(20, (3, 5), 2, binary=False, **FIRST), fit_lr(8.0)),
    "char+word-lr-c32": (Featurizer(20, (3, 5), 2, binary=False, **FIRST), fit_lr(32.0)),
    "char+word-svm": (Featurizer(20, (3, 5), 2, binary=False, **FIRST), fit_sgd),
    # each group's distinct n-grams, L2-normalised: a short injection inside a long text weighs more; the
    # first was the first shipped model (commit 9366126)
    "char+word-binary-lr": (Featurizer(20, (3, 5), 2, binary=True, **FIRST), fit_lr(8.0)),
    "char+word-binary-lr-c32": (Featurizer(20, (3, 5), 2, binary=True, **FIRST), fit_lr(32.0)),
    "char+word-binary-svm": (Featurizer(20, (3, 5), 2, binary=True, **FIRST), fit_sgd),
}


def fold_of(row: dict[str, Any]) -> str:
    repository = row["source"].split(" ")[0]
    return HELD_OUT if repository.endswith("/PyRIT") else repository


def kind_of(row: dict[str, Any]) -> str:
    return "attack" if row["label"] == 1 else "hard" if row["category"] in HARD else "ordinary"


def assign_folds(rows: list[dict[str, Any]]) -> list[str]:
    repositories = [fold_of(row) for row in rows]
    attacks = collections.Counter(repo for repo, row in zip(repositories, rows, strict=True) if row["label"] == 1)
    large = sorted(repo for repo, count in attacks.items() if count >= MIN_ATTACKS)
    assert random.Random(24).choice(large) == HELD_OUT, "the held-out fold was chosen before tuning"
    return [repo if repo in large or repo not in attacks else "pooled" for repo in repositories]


def rate(flags: np.ndarray, mask: np.ndarray) -> float:
    return float(flags[mask].mean()) if mask.any() else math.nan


def threshold_for(logits: np.ndarray, kinds: np.ndarray) -> float:
    """The lowest logit threshold at which the model flags at most HARD_FP of the hard negatives and
    ORDINARY_FP of the ordinary prompts (rounded up to a probability of two decimals). The model alone: the
    rules already flag more than 3% of the hard negatives by themselves, so no threshold keeps the two
    together within it."""
    bound = -math.inf
    for kind, budget in (("hard", HARD_FP), ("ordinary", ORDINARY_FP)):
        mask = kinds == kind
        allowed = math.floor(budget * mask.sum())
        ordered = np.sort(logits[mask])[::-1]
        if allowed < len(ordered):
            bound = max(bound, float(ordered[allowed]))
    probability = math.ceil(1 / (1 + math.exp(-bound)) * 100 + 1e-9) / 100 if bound > -math.inf else 0.01
    return logit(min(probability, 0.99))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def scores(model: PromptModel, features: Any) -> np.ndarray:
    return np.asarray(features @ (model.weights.astype(np.float64) * model.scale) + model.bias)


def scored(model: PromptModel, features: Any, texts: list[str]) -> np.ndarray:
    """Out-of-fold logits as the runtime gives them: windowed when the featurizer has windows (every text through
    PromptModel.logit), else the whole prompt's (the feature matrix's rows: the same figure, faster)."""
    if model.featurizer.window:
        return np.array([model.logit(text) for text in texts])
    return scores(model, features)


def padding(rows: list[dict[str, Any]]) -> str:
    """PADDING characters of ordinary benign prompts (seeded, rules silent on each), put before attacks."""
    screen = Screen(load_rules())
    ordinary = [row["text"] for row in rows if kind_of(row) == "ordinary" and screen.score(row["text"]).score == 0]
    random.Random(24).shuffle(ordinary)
    text = ""
    for prompt in ordinary:
        text += prompt + "\n\n"
        if len(text) >= PADDING:
            return text[:PADDING] + "\n\n"
    return text


def level_thresholds(logits: np.ndarray, kinds: np.ndarray, rules: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per level, the lowest model threshold (a probability of two decimals) at which rules and model together
    stay within the level's budget of false positives; where the rules alone exceed it, the threshold at which
    the model adds at most half of the budget to what the rules flag (said as `within: false`)."""
    out = {}
    for level, (hard, ordinary) in BUDGETS.items():
        chosen = None
        for cents in range(1, 100):
            flags = (logits >= logit(cents / 100)) | rules
            rates = {part: float(flags[kinds == part].mean()) for part in ("hard", "ordinary")}
            if rates["hard"] <= hard and rates["ordinary"] <= ordinary:
                chosen = {"threshold": cents / 100, "within": True, **rates}
                break
        if chosen is None:  # the rules alone are over: the model may add half the budget
            for cents in range(1, 100):
                flags = (logits >= logit(cents / 100)) | rules
                rates = {part: float(flags[kinds == part].mean()) for part in ("hard", "ordinary")}
                extra = {part: rates[part] - float(rules[kinds == part].mean()) for part in rates}
                if extra["hard"] <= hard / 2 and rates["ordinary"] <= ordinary:
                    chosen = {"threshold": cents / 100, "within": False, **rates}
                    break
        out[level] = chosen or {"threshold": 0.99, "within": False}
    return out


def evaluate(name: str, rows: list[dict[str, Any]], folds: list[str], rules: np.ndarray,
             features: Any, pad: str) -> dict[str, Any]:
    featurizer, fit = CANDIDATES[name]
    labels = [row["label"] for row in rows]
    texts = [row["text"] for row in rows]
    order = [fold for fold in sorted(set(folds)) if fold != HELD_OUT]
    folds_ = np.array(folds)
    kinds = np.array([kind_of(row) for row in rows])
    out_of_fold = np.full(len(rows), np.nan)
    padded = np.full(len(rows), np.nan)  # the attacks' out-of-fold logits with PADDING of benign text before
    started = time.perf_counter()
    for fold in order:
        train = np.flatnonzero((folds_ != fold) & (folds_ != HELD_OUT))
        test = np.flatnonzero(folds_ == fold)
        weights, bias = fit(features[train], [labels[i] for i in train])
        model = trainer.quantized(featurizer, weights, bias)
        out_of_fold[test] = scored(model, features[test], [texts[i] for i in test])
        attacks = [i for i in test if kinds[i] == "attack"]
        padded[attacks] = [model.logit(pad + texts[i]) for i in attacks]
    seen = folds_ != HELD_OUT
    cut = threshold_for(out_of_fold[seen], kinds[seen])
    levels = level_thresholds(out_of_fold[seen], kinds[seen], rules[seen])
    model_flags = out_of_fold >= cut
    both = model_flags | rules
    table = []
    for fold in order:
        in_fold = folds_ == fold
        attacks, hard, ordinary = in_fold & (kinds == "attack"), in_fold & (kinds == "hard"), \
            in_fold & (kinds == "ordinary")
        table.append({"fold": fold, "attacks": int(attacks.sum()), "hard": int(hard.sum()),
                      "ordinary": int(ordinary.sum()),
                      **{f"recall_{what}": rate(flags, attacks) for what, flags in
                         (("model", model_flags), ("rules", rules), ("both", both))},
                      "recall_padded_model": rate(padded >= cut, attacks),
                      **{f"fp_{part}_{what}": rate(flags, mask) for what, flags in
                         (("model", model_flags), ("rules", rules), ("both", both))
                         for part, mask in (("hard", hard), ("ordinary", ordinary))}})
    with_attacks = [row for row in table if row["attacks"]]
    summary = {f"recall_{what}": float(np.mean([row[f"recall_{what}"] for row in with_attacks]))
               for what in ("model", "rules", "both", "padded_model")}
    for what, flags in (("model", model_flags), ("rules", rules), ("both", both)):
        for part in ("hard", "ordinary"):
            summary[f"fp_{part}_{what}"] = rate(flags, seen & (kinds == part))
    at_normal = (out_of_fold >= logit(levels["normal"]["threshold"])) | rules
    for row in table:
        in_fold = folds_ == row["fold"]
        row["at_normal"] = [rate(at_normal, in_fold & (kinds == part)) for part in ("attack", "hard", "ordinary")]
    for values in levels.values():
        flags = (out_of_fold >= logit(values["threshold"])) | rules
        values["recall_both"] = float(np.mean([rate(flags, (folds_ == row["fold"]) & (kinds == "attack"))
                                               for row in with_attacks]))
    return {"name": name, "threshold": round(1 / (1 + math.exp(-cut)), 2), "folds": table, "summary": summary,
            "levels": levels, "out_of_fold_logits": [round(float(v), 4) for v in out_of_fold],
            "seconds": round(time.perf_counter() - started, 1)}


def percent(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1%}"


def report(result: dict[str, Any]) -> None:
    print(f"\n### {result['name']}: threshold {result['threshold']:.2f} ({result['seconds']} s)\n")
    print("| fold | attacks | recall model | rules | both | hard negatives | FP model | rules | both | ordinary "
          "| FP model | rules | both |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in result["folds"]:
        print(f"| {row['fold']} | {row['attacks']} | {percent(row['recall_model'])} | {percent(row['recall_rules'])} "
              f"| {percent(row['recall_both'])} | {row['hard']} | {percent(row['fp_hard_model'])} "
              f"| {percent(row['fp_hard_rules'])} | {percent(row['fp_hard_both'])} | {row['ordinary']} "
              f"| {percent(row['fp_ordinary_model'])} | {percent(row['fp_ordinary_rules'])} "
              f"| {percent(row['fp_ordinary_both'])} |")
    s = result["summary"]
    print(f"| **average over folds with attacks / all benign** | | **{percent(s['recall_model'])}** "
          f"| {percent(s['recall_rules'])} | **{percent(s['recall_both'])}** | | {percent(s['fp_hard_model'])} "
          f"| {percent(s['fp_hard_rules'])} | **{percent(s['fp_hard_both'])}** | | {percent(s['fp_ordinary_model'])} "
          f"| {percent(s['fp_ordinary_rules'])} | **{percent(s['fp_ordinary_both'])}** |")
    print(f"\nrecall of the model with {PADDING} characters of benign text before each attack, per fold: "
          + ", ".join(f"{row['fold']} {percent(row['recall_padded_model'])}"
                      for row in result["folds"] if row["attacks"])
          + f"; average **{percent(s['recall_padded_model'])}** (unpadded {percent(s['recall_model'])})")
    normal = result["levels"]["normal"]
    print(f"\nper fold at normal's threshold {normal['threshold']:.2f}, rules and model together (recall, hard FP, "
          "ordinary FP): " + "; ".join(f"{row['fold']} {percent(row['at_normal'][0])}, {percent(row['at_normal'][1])}, "
                                       f"{percent(row['at_normal'][2])}" for row in result["folds"]))
    print("\nthresholds per level, rules and model together (recall averaged over folds, hard FP, ordinary FP):")
    for level, v in result["levels"].items():
        print(f"- {level}: {v['threshold']:.2f}{'' if v['within'] else ' (over the budget: the rules alone are)'}: "
              f"recall {percent(v.get('recall_both', math.nan))}, hard {percent(v.get('hard', math.nan))}, "
              f"ordinary {percent(v.get('ordinary', math.nan))}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timings(rows: list[dict[str, Any]], screen: Screen, model: PromptModel) -> dict[str, float]:
    """Per prompt of up to 4 KiB (UTF-8), on this one core: the rules alone, then rules and model, in turn."""
    texts = [row["text"] for row in rows if len(row["text"].encode()) <= 4096]
    alone: list[float] = []
    together: list[float] = []
    for text in texts * 2:  # the first pass warms caches; both are kept, as a server's would be
        started = time.perf_counter()
        screen.score(text)
        alone.append(time.perf_counter() - started)
        started = time.perf_counter()
        screen.score(text)
        model.probability(text)
        together.append(time.perf_counter() - started)
    return {"prompts": len(texts), "rules_p50_ms": percentile(alone, 0.5) * 1e3,
            "rules_p99_ms": percentile(alone, 0.99) * 1e3, "both_p50_ms": percentile(together, 0.5) * 1e3,
            "both_p99_ms": percentile(together, 0.99) * 1e3}


def print_time(t: dict[str, float]) -> None:
    print(f"\ntime per prompt of up to 4 KiB ({t['prompts']} prompts, twice): rules alone p50 "
          f"{t['rules_p50_ms']:.3f} ms p99 {t['rules_p99_ms']:.3f} ms; rules + model p50 {t['both_p50_ms']:.3f} ms "
          f"p99 {t['both_p99_ms']:.3f} ms")


# resident memory of a fresh process: the rules' module, then numpy and the classifier's, then the model read
# and used once
RSS = """
import resource
def rss(): return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()
import floodwall.defense.prompts
before = rss()
from floodwall.defense.classifier import shipped
imported = rss()
shipped().probability("warm up")
print(imported - before, rss() - imported)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=trainer.CORPUS)
    parser.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated names")
    parser.add_argument("--final", action="store_true", help="also train the first candidate on every fold but the "
                        "held-out one and report the held-out fold, and time it")
    parser.add_argument("--time", action="store_true", help="only time the shipped model, beside the rules alone")
    args = parser.parse_args()
    rows = trainer.read_rows(args.corpus)
    screen = Screen(load_rules())
    if args.time:
        timed = timings(rows, screen, shipped())
        print_time(timed)
        OUT.mkdir(exist_ok=True)
        (OUT / "prompt_model_time.json").write_text(json.dumps(timed, indent=1))
        return 0
    folds = assign_folds(rows)
    rules = np.array([screen.score(row["text"]).score >= RULES_THRESHOLD for row in rows])
    print(f"corpus {args.corpus}: {len(rows)} prompts; folds {len(set(folds)) - 1} (+ held out: {HELD_OUT}); "
          f"hard-negative categories {sorted(HARD)}")
    cache: dict[Featurizer, Any] = {}
    pad = padding(rows)
    results = []
    for name in args.candidates.split(","):
        featurizer = CANDIDATES[name][0]
        if featurizer not in cache:
            cache[featurizer] = trainer.matrix(featurizer, (row["text"] for row in rows))
        result = evaluate(name, rows, folds, rules, cache[featurizer], pad)
        report(result)
        results.append(result)
    out: dict[str, Any] = {"candidates": results}
    if args.final:
        name = args.candidates.split(",")[0]
        featurizer, fit = CANDIDATES[name]
        features = cache[featurizer]
        folds_ = np.array(folds)
        train = np.flatnonzero(folds_ != HELD_OUT)
        weights, bias = fit(features[train], [rows[i]["label"] for i in train])
        model = trainer.quantized(featurizer, weights, bias)
        held = np.flatnonzero(folds_ == HELD_OUT)
        held_logits, flagged = scores(model, features[held]), rules[held]
        out["held_out"] = {"fold": HELD_OUT, "attacks": len(held)}
        # at the candidate's own threshold, and at what the policy ships for `normal` (the levels' procedure)
        for label, threshold in (("model alone within budget", results[0]["threshold"]),
                                 ("normal", results[0]["levels"]["normal"]["threshold"])):
            probability = held_logits >= logit(threshold)
            found = {"threshold": threshold, "recall_model": float(probability.mean()),
                     "recall_rules": float(flagged.mean()), "recall_both": float((probability | flagged).mean())}
            out["held_out"][label] = found
            print(f"\nheld out, {name} trained on every other fold, threshold {threshold:.2f} ({label}): {HELD_OUT} "
                  f"({len(held)} attacks, no benign rows): model {percent(found['recall_model'])}, "
                  f"rules {percent(found['recall_rules'])}, both {percent(found['recall_both'])}")
        out["time"] = timings(rows, screen, model)
        print_time(out["time"])
        found = subprocess.run([sys.executable, "-c", RSS], capture_output=True, text=True, check=True).stdout
        numpy_bytes, model_bytes = map(int, found.split())
        out["model_bytes"], out["rss_numpy"], out["rss_model"] = DEFAULT_MODEL.stat().st_size, numpy_bytes, model_bytes
        print(f"shipped model file {out['model_bytes']:,} bytes; resident memory added by importing numpy and the "
              f"classifier {numpy_bytes / 2**20:.1f} MiB, by reading the model and a first call "
              f"{model_bytes / 2**20:.1f} MiB")
    OUT.mkdir(exist_ok=True)
    (OUT / "prompt_model.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
