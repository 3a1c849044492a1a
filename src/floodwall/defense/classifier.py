"""The prompt classifier beside the rules: hashed character and word n-grams of the screened prompt, one
linear layer, a probability that the prompt is an injection or jailbreak attempt.

Runtime is numpy only, vectorised and linear in the prompt's length, bounded by `scanned()`'s cap (12 KiB of
the head, 4 KiB of the tail). tools/train_prompt_model.py trains the shipped model (data/prompt_model.npz)
with the same `Featurizer`, so training and serving read a prompt exactly alike; docs/prompt-model.md is its
card.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from floodwall.defense.prompts import MAX_SCANNED, scanned

DEFAULT_MODEL = Path(__file__).parent / "data" / "prompt_model.npz"
Buckets = npt.NDArray[np.uint32]

# a polynomial hash over code points, modulo 2**64 (numpy's uint64 arithmetic wraps): any substring's hash
# from two prefix sums, hash(c[a:b]) = (S[b] - S[a]) * P**(b-1), where S[i] = sum of c[j] * P**-j, j < i
_P = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_P_INVERSE = pow(_P, -1, 1 << 64)
_LIMIT = MAX_SCANNED + 8  # characters read: scanned() gives at most MAX_SCANNED + 1, lower() may add a few
_MASK = (1 << 64) - 1


def _powers(base: int) -> npt.NDArray[np.uint64]:
    out = np.empty(_LIMIT + 1, np.uint64)
    value = 1
    for i in range(_LIMIT + 1):  # once, at import: 16 K multiplications
        out[i] = value
        value = value * base & _MASK
    return out


_POWERS, _INVERSES = _powers(_P), _powers(_P_INVERSE)
# what counts as part of a word: ASCII letters, digits and underscore, and every non-ASCII code point
# (scripts without spaces are read by the character n-grams)
_ASCII_WORD = np.array([chr(c).isalnum() or c == 95 for c in range(128)])
_SALT_CHAR = [np.uint64(n * 0x9E3779B97F4A7C15 & _MASK) for n in range(9)]  # one per n-gram length
_SALT_WORD, _SALT_PAIR = np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)


def _mixed(keys: npt.NDArray[np.uint64], bits: int) -> Buckets:
    """splitmix64's finaliser: every input bit reaches the bucket's bits."""
    keys = keys ^ (keys >> np.uint64(30))
    keys = keys * np.uint64(0xBF58476D1CE4E5B9)
    keys = keys ^ (keys >> np.uint64(27))
    keys = keys * np.uint64(0x94D049BB133111EB)
    keys = keys ^ (keys >> np.uint64(31))
    return (keys >> np.uint64(64 - bits)).astype(np.uint32)


def _distinct(found: Buckets) -> Buckets:
    """np.unique's answer, by a sort: 0.07 ms for the 12 K n-grams of a 4 KiB prompt, where np.unique took 0.64."""
    found = np.sort(found)
    keep = np.empty(len(found), bool)
    keep[0] = True
    np.not_equal(found[1:], found[:-1], out=keep[1:])
    return found[keep]


@dataclasses.dataclass(frozen=True, slots=True)
class Featurizer:
    """Which n-grams are read: characters `chars[0]..chars[1]` long (0, 0 for none), and words one to `words`
    long (0 for none), each hashed into 2**bits buckets. `binary`: each group's distinct buckets, worth
    1/sqrt(their number) (an L2-normalised set); else every occurrence, worth 1/(the group's n-grams)."""

    bits: int = 20
    chars: tuple[int, int] = (3, 5)
    words: int = 2
    binary: bool = True

    def features(self, text: str) -> list[tuple[Buckets, float]]:
        """Per group, the buckets read and the value each stands for: the prompt's sparse feature vector."""
        out = []
        for found in self.buckets(text):
            if len(found):
                if self.binary:
                    found = _distinct(found)
                out.append((found, 1 / math.sqrt(len(found)) if self.binary else 1 / len(found)))
        return out

    def read(self, text: str) -> str:
        """The text n-grams are taken from: the screened prompt, lowercased, bounded, between spaces."""
        return " " + scanned(text).lower()[:_LIMIT - 2] + " "

    def buckets(self, text: str) -> list[Buckets]:
        """The buckets of the prompt's n-grams, one array per group (characters, words), an entry per
        occurrence."""
        read = self.read(text)
        codes = np.frombuffer(read.encode("utf-32-le", "surrogatepass"), "<u4").astype(np.uint64)
        size = len(codes)
        sums = np.zeros(size + 1, np.uint64)
        np.cumsum(codes * _INVERSES[:size], out=sums[1:])
        groups: list[Buckets] = []
        if self.chars[1]:
            keys = []
            for n in range(self.chars[0], self.chars[1] + 1):
                if size >= n:
                    starts = np.arange(size - n + 1)
                    keys.append((sums[starts + n] - sums[starts]) * _POWERS[starts + n - 1] + _SALT_CHAR[n])
            groups.append(_mixed(np.concatenate(keys), self.bits) if keys else np.empty(0, np.uint32))
        if self.words:
            word = codes >= 128
            word[~word] = _ASCII_WORD[codes[~word].astype(np.intp)]
            edges = np.flatnonzero(np.diff(word.astype(np.int8)))  # read starts and ends with a space
            starts, ends = edges[0::2] + 1, edges[1::2] + 1
            hashes = (sums[ends] - sums[starts]) * _POWERS[ends - 1]
            keys = [hashes ^ _SALT_WORD]
            if self.words >= 2 and len(hashes) > 1:
                keys.append((hashes[:-1] * np.uint64(_P) + (hashes[1:] ^ _SALT_WORD)) ^ _SALT_PAIR)
            groups.append(_mixed(np.concatenate(keys), self.bits))
        return groups


@dataclasses.dataclass(frozen=True, slots=True)
class PromptModel:
    """Logistic regression over the featurizer's groups: z = bias + scale * sum over groups of
    value * sum(weights[buckets]). Weights are int16 with one scale, summed as integers."""

    featurizer: Featurizer
    weights: npt.NDArray[np.int16]
    scale: float
    bias: float

    def logit(self, text: str) -> float:
        total = 0.0
        for found, value in self.featurizer.features(text):
            total += int(self.weights[found].sum(dtype=np.int64)) * value
        return self.bias + self.scale * total

    def probability(self, text: str) -> float:
        z = self.logit(text)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


_NAMES = ("weights", "scale", "bias", "shape")


def save(model: PromptModel, path: Path) -> None:
    """An .npz numpy reads, written byte for byte alike for the same model: fixed entry dates and order."""
    f = model.featurizer
    arrays = {"weights": model.weights, "scale": np.array(model.scale, "<f8"), "bias": np.array(model.bias, "<f8"),
              "shape": np.array([f.bits, f.chars[0], f.chars[1], f.words, f.binary], "<i4")}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in _NAMES:
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, arrays[name], allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(entry, buffer.getvalue(), compresslevel=9)


def load(path: str | Path | None = None) -> PromptModel:
    with np.load(Path(path) if path else DEFAULT_MODEL, allow_pickle=False) as data:
        bits, low, high, words, binary = (int(v) for v in data["shape"])
        weights = data["weights"].astype(np.int16, copy=False)
        if len(weights) != 1 << bits:
            raise ValueError(f"a prompt model of {len(weights)} weights for {bits} bits")
        if not 0 < low <= high < len(_SALT_CHAR) and (low, high) != (0, 0):
            raise ValueError(f"a prompt model of character n-grams {low} to {high} long")
        featurizer = Featurizer(bits, (low, high), words, bool(binary))
        return PromptModel(featurizer, weights, float(data["scale"]), float(data["bias"]))


@functools.cache
def shipped() -> PromptModel:
    """The model that ships with floodwall, read once per process."""
    return load()
