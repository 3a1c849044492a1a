"""Train the prompt classifier that ships with floodwall (src/floodwall/defense/data/prompt_model.npz) from
the shared prompt corpora, byte for byte alike on every run: one thread, a fixed seed, the versions pinned in
pyproject's `train` extra, int16 weights, a zip with fixed dates. docs/prompt-model.md is the model's card;
bench/prompt_model.py chose its settings.

    python tools/train_prompt_model.py [--corpus DIR] [--out PATH]
    python tools/train_prompt_model.py --check   # rebuild to a temporary file; exit 1 if it differs
"""

from __future__ import annotations

import os

# one thread, before numpy and scikit-learn load their BLAS: the sums run in one order, the model is exact
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import filecmp  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Iterable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from floodwall.defense.classifier import DEFAULT_MODEL, Featurizer, PromptModel, save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# ../shared/corpora beside the repository, or where FLOODWALL_CORPORA says (.ci/run: a clone elsewhere)
CORPUS = Path(os.environ.get("FLOODWALL_CORPORA") or ROOT.parent / "shared" / "corpora") / "prompts"
FILES = ("prompts_dev.jsonl", "prompts_train_extra.jsonl")
# chosen by bench/prompt_model.py (docs/benchmarks.md, "Prompt classifier")
FEATURIZER = Featurizer(bits=20, chars=(3, 5), words=2, binary=True, fold=True, window=384, step=128)
C = 8.0
SEED = 24


def read_rows(corpus: Path = CORPUS) -> list[dict[str, Any]]:
    rows = []
    for name in FILES:
        with open(corpus / name, encoding="utf-8") as lines:
            rows.extend(json.loads(line) for line in lines if line.strip())
    return rows


def matrix(featurizer: Featurizer, texts: Iterable[str]) -> scipy.sparse.csr_matrix:
    """The texts' features as the runtime reads them (Featurizer.features), so a row's dot product with the
    weights is what PromptModel.logit sums."""
    indices: list[np.ndarray] = []
    data: list[np.ndarray] = []
    indptr = [0]
    for text in texts:
        count = 0
        for found, value in featurizer.features(text):
            indices.append(found.astype(np.int64))
            data.append(np.full(len(found), value))
            count += len(found)
        indptr.append(indptr[-1] + count)
    out = scipy.sparse.csr_matrix((np.concatenate(data), np.concatenate(indices), np.array(indptr)),
                                  shape=(len(indptr) - 1, 1 << featurizer.bits))
    out.sum_duplicates()
    return out


def fit(features: scipy.sparse.csr_matrix, labels: Sequence[int], c: float = C) -> tuple[np.ndarray, float]:
    """Logistic regression's weights and bias (L2, lbfgs: deterministic on one thread)."""
    model = LogisticRegression(C=c, solver="lbfgs", max_iter=2000, tol=1e-4, random_state=SEED)
    model.fit(features, np.asarray(labels))
    return model.coef_[0], float(model.intercept_[0])


def quantized(featurizer: Featurizer, weights: np.ndarray, bias: float) -> PromptModel:
    """int16 weights with one scale (the largest weight is 32767): rounding, not the last bits of a float sum,
    decides the file, so the rebuild is exact; the bias is rounded to 1e-6 for the same reason. (int8 moved
    logits by up to 0.15 and zeroed 94% of the weights: the weights run from 1e-3 to 20.)"""
    scale = float(f"{float(np.abs(weights).max()) / 32767 or 1.0:.6e}")
    return PromptModel(featurizer, np.clip(np.rint(weights / scale), -32767, 32767).astype(np.int16), scale,
                       round(bias, 6))


def train(rows: Sequence[dict[str, Any]], featurizer: Featurizer = FEATURIZER, c: float = C) -> PromptModel:
    features = matrix(featurizer, (row["text"] for row in rows))
    weights, bias = fit(features, [row["label"] for row in rows], c)
    return quantized(featurizer, weights, bias)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="the folder of prompts_dev.jsonl and "
                        "prompts_train_extra.jsonl (default: ../shared/corpora/prompts/ beside the repository)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--check", action="store_true", help="rebuild to a temporary file and compare with --out")
    args = parser.parse_args()
    model = train(read_rows(args.corpus))
    if not args.check:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        save(model, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        rebuilt = Path(folder) / "prompt_model.npz"
        save(model, rebuilt)
        if args.out.exists() and filecmp.cmp(rebuilt, args.out, shallow=False):
            print(f"{args.out}: rebuilt byte for byte")
            return 0
    print(f"{args.out}: the rebuild differs from the shipped file (run tools/train_prompt_model.py and commit "
          "the model, or find what changed: the data, the featurizer, the pinned versions)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
