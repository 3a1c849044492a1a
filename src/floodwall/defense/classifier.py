"""The prompt classifier beside the rules: hashed character and word n-grams of the screened prompt, one
linear layer, a probability that the prompt is an injection or jailbreak attempt.

The prompt is scored whole and in overlapping windows (384 characters, moving by 128), and the highest logit
counts: ordinary text before or after an attack does not drown it. Before the n-grams, the featurizer undoes
cheap disguises the rules need not (`read`): compatibility forms (NFKC: full-width letters), format
characters, Cyrillic and Greek look-alikes, digits for letters inside words, dots inside words.

Runtime is numpy only, vectorised and linear in the prompt's length, bounded by `scanned()`'s cap (12 KiB of
the head, 4 KiB of the tail). tools/train_prompt_model.py trains the shipped model (data/prompt_model.npz)
with the same `Featurizer` on whole prompts (a prompt's label is the whole prompt's: a window of a long
jailbreak template is often plain role-play); the threshold is chosen on windowed scores
(bench/prompt_model.py). docs/prompt-model.md is its card.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import math
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import re2

from floodwall.defense.prompts import MAX_SCANNED, scanned

DEFAULT_MODEL = Path(__file__).parent / "data" / "prompt_model.npz"
Buckets = npt.NDArray[np.uint32]

# a polynomial hash over code points, modulo 2**64 (numpy's uint64 arithmetic wraps): any substring's hash
# from two prefix sums, hash(c[a:b]) = (S[b] - S[a]) * P**(b-1), where S[i] = sum of c[j] * P**-j, j < i
_P = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_P_INVERSE = pow(_P, -1, 1 << 64)
_LIMIT = MAX_SCANNED + 8  # characters read: scanned() gives at most MAX_SCANNED + 1, lower() may add a few
assert _LIMIT < 1 << 16  # a start fits in the 16 low bits of PromptModel.logits's sort keys
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
_WORD = np.array([chr(c).isalnum() or c == 95 for c in range(128)] + [True])  # [128]: every non-ASCII code point
_STARTS = np.arange(_LIMIT + 1)
_SALT_CHAR = [np.uint64(n * 0x9E3779B97F4A7C15 & _MASK) for n in range(9)]  # one per n-gram length
_SALT_WORD, _SALT_PAIR = np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)


# format characters (category Cf: U+2062, bidi controls, tag characters...), the combining grapheme joiner and
# the variation selectors are dropped; look-alike Cyrillic and Greek letters read as the Latin ones
_DROPPED = [c for c in [*range(0x80, 0x20000), *range(0xE0000, 0xE0080)] if unicodedata.category(chr(c)) == "Cf"]
_FOLD: dict[int, int | None] = {**dict.fromkeys(_DROPPED), 0x34F: None, **dict.fromkeys(range(0xFE00, 0xFE10)),
                                **dict.fromkeys(range(0xE0100, 0xE01F0)),
                                **{ord(k): ord(v) for k, v in zip("аеорсухіјѕһԁԛԝӏвкмнтёїўαβεικνορτυχγηω",
                                                                  "aeopcyxijshdqwlbkmhteiyabeikvoptuxynw",
                                                                  strict=True)}}
_FOLD_FROM = np.array(sorted(_FOLD), np.uint64)
_FOLD_TO = np.array([_FOLD[c] or 0 for c in sorted(_FOLD)], np.uint64)  # 0: dropped
# digits for letters, read as letters where a letter is beside them (1gn0r3 -> ignore; 2024 stays)
_LEET = np.arange(128, dtype=np.uint64)
for _digit, _letter in zip("013457", "oieast", strict=True):
    _LEET[ord(_digit)] = ord(_letter)
_IS_LETTER = np.array([chr(c).isalpha() and c < 128 for c in range(128)] + [True])  # non-ASCII: a letter
_IS_LEET = np.append(np.arange(128, dtype=np.uint64) != _LEET, False)
# in ASCII text, where _undisguised would change something: a leetspeak digit beside a letter, a dot between two
_DISGUISED = re2.compile(r"[A-Za-z][013457]|[013457][A-Za-z]|[A-Za-z]\.[A-Za-z]")


def _undisguised(codes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """Format characters dropped and look-alike letters read as Latin (_FOLD); leetspeak digits beside a
    letter read as the letter; a dot between two letters dropped (ig.nore)."""
    if codes.max(initial=0) >= 128:
        at = np.minimum(np.searchsorted(_FOLD_FROM, codes), len(_FOLD_FROM) - 1)
        hit = np.flatnonzero(_FOLD_FROM[at] == codes)
        if len(hit):
            codes = codes.copy()
            codes[hit] = _FOLD_TO[at[hit]]
            codes = codes[codes != 0]
    ascii_ = np.minimum(codes, 128).astype(np.intp)
    letter = _IS_LETTER[ascii_]
    near = np.zeros(len(codes), bool)
    near[1:] |= letter[:-1]
    near[:-1] |= letter[1:]
    leet = np.flatnonzero(near & _IS_LEET[ascii_])
    if len(leet):
        codes = codes.copy()
        codes[leet] = _LEET[codes[leet].astype(np.intp)]
        letter[leet] = True
    dots = np.zeros(len(codes), bool)
    dots[1:-1] = (codes[1:-1] == 46) & letter[:-2] & letter[2:]
    return codes[~dots] if dots.any() else codes


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
    fold: bool = True  # undo the disguises (`read`, `_undisguised`); False: the first model's reading
    window: int = 384  # characters of a window (0: the whole prompt only); a multiple of `step`
    step: int = 128  # a power of two

    def features(self, text: str) -> list[tuple[Buckets, float]]:
        """Per group, the buckets read and the value each stands for: the whole prompt's sparse feature
        vector (what the trainer learns from)."""
        out = []
        for found in self.buckets(text):
            if len(found):
                if self.binary:
                    found = _distinct(found)
                out.append((found, 1 / math.sqrt(len(found)) if self.binary else 1 / len(found)))
        return out

    def read(self, text: str) -> str:
        """The text n-grams are taken from: the screened prompt, lowercased, bounded, between spaces; with
        `fold`, in compatibility form (NFKC), without format characters, look-alike letters read as Latin."""
        text = scanned(text)
        if self.fold and not text.isascii():
            if not unicodedata.is_normalized("NFKC", text):
                text = unicodedata.normalize("NFKC", text[:_LIMIT])
            text = text.lower()  # the rest of the folding: _undisguised
        return " " + text.lower()[:_LIMIT - 2] + " "

    def buckets(self, text: str) -> list[Buckets]:
        """The buckets of the prompt's n-grams, one array per group (characters, words), an entry per
        occurrence."""
        return self.hashed(self.codes(text), False)[0]

    def codes(self, text: str) -> npt.NDArray[np.uint64]:
        """The code points of the text read, disguises undone (`fold`). Most prompts are ASCII with nothing
        to undo, which `_DISGUISED` tells without the dozen array operations of `_undisguised`."""
        read = self.read(text)
        if read.isascii():
            codes = np.frombuffer(read.encode("ascii"), np.uint8).astype(np.uint64)
            return _undisguised(codes) if self.fold and _DISGUISED.search(read) else codes
        codes = np.frombuffer(read.encode("utf-32-le", "surrogatepass"), "<u4").astype(np.uint64)
        return _undisguised(codes) if self.fold else codes

    def hashed(self, codes: npt.NDArray[np.uint64], where: bool) -> tuple[list[Buckets], list[npt.NDArray[np.intp]]]:
        """Per group, the buckets of the n-grams of `codes`; with `where`, also where each starts. Each numpy
        call costs about 2 µs when its code is not in the CPU's caches, as on a server between two calls,
        more than the arithmetic of a short prompt: one hash and one mix over every n-gram of both groups."""
        size = len(codes)
        sums = np.zeros(size + 1, np.uint64)
        np.cumsum(codes * _INVERSES[:size], out=sums[1:])
        keys, starts, lengths = [], [], []  # lengths: each group's n-grams
        if self.chars[1]:
            for n in range(self.chars[0], self.chars[1] + 1):
                if size >= n:
                    # slices, not gathers: the n-grams start at 0 .. size - n, each ends n later
                    keys.append((sums[n:] - sums[:size - n + 1]) * _POWERS[n - 1:size] + _SALT_CHAR[n])
                    starts.append(_STARTS[:size - n + 1])
            lengths.append(sum(map(len, keys)))
        if self.words:
            first = len(keys)
            word = _WORD[np.minimum(codes, 128).astype(np.intp)]
            edges = np.flatnonzero(word[1:] != word[:-1])  # read starts and ends with a space
            begins, ends = edges[0::2] + 1, edges[1::2] + 1
            hashes = (sums[ends] - sums[begins]) * _POWERS[ends - 1]
            keys.append(hashes ^ _SALT_WORD)
            starts.append(begins)
            if self.words >= 2 and len(hashes) > 1:
                keys.append((hashes[:-1] * np.uint64(_P) + (hashes[1:] ^ _SALT_WORD)) ^ _SALT_PAIR)
                starts.append(begins[:-1])
            lengths.append(sum(map(len, keys[first:])))
        mixed = _mixed(np.concatenate(keys), self.bits) if keys else np.empty(0, np.uint32)
        bounds = list(itertools.accumulate(lengths, initial=0))
        groups = [mixed[a:b] for a, b in itertools.pairwise(bounds)]
        if not where:
            return groups, []
        at = np.concatenate(starts) if starts else np.empty(0, np.intp)
        return groups, [at[a:b] for a, b in itertools.pairwise(bounds)]


@dataclasses.dataclass(frozen=True, slots=True)
class PromptModel:
    """Logistic regression over the featurizer's groups: z = bias + scale * sum over groups of
    value * sum(weights[buckets]). Weights are int16 with one scale, summed as integers."""

    featurizer: Featurizer
    weights: npt.NDArray[np.int16]
    scale: float
    bias: float

    def logit(self, text: str) -> float:
        """The highest of the whole prompt's logit and its windows' (see `logits`)."""
        return float(self.logits(text).max())

    def logits(self, text: str) -> npt.NDArray[np.float64]:
        """The whole prompt's logit, then each window's: window k reads the n-grams that start in
        [k * step, k * step + window); the last ends past the text. Each window's features are its own
        distinct n-grams, L2-normalised per group, as a prompt of that text alone would have (but for n-grams
        across its edges). Vectorised: one sort per group puts each bucket's occurrences in order, and an
        occurrence counts in a window when the one before it of the same bucket is not in that window."""
        f = self.featurizer
        codes = f.codes(text)
        size = len(codes)
        windows = 0 if not f.window or size <= f.window else -(-(size - f.window) // f.step) + 1
        if not f.binary or not windows:  # most prompts: the whole prompt's distinct buckets are enough
            total = 0.0
            for found in f.hashed(codes, False)[0]:
                if len(found):
                    found = _distinct(found) if f.binary else found
                    value = 1 / math.sqrt(len(found)) if f.binary else 1 / len(found)
                    total += int(self.weights[found].sum(dtype=np.int64)) * value
            return np.array([self.bias + self.scale * total])
        groups = list(zip(*f.hashed(codes, True), strict=True))
        # one sort of (group, bucket, window) over both groups, in 32 bits: a bucket's occurrences in order
        shift = f.step.bit_length() - 1
        span = (_LIMIT >> shift).bit_length()
        keys = np.sort(np.concatenate([((found + np.uint32(g << f.bits)) << np.uint32(span))
                                       | (where >> shift).astype(np.uint32)
                                       for g, (found, where) in enumerate(groups)]))
        ids = keys >> np.uint32(span)
        group = (ids >> np.uint32(f.bits)).astype(np.int32)
        weights = self.weights[ids & np.uint32((1 << f.bits) - 1)].astype(np.float64)
        first = np.empty(len(keys), bool)
        first[0] = True
        np.not_equal(ids[1:], ids[:-1], out=first[1:])
        # an occurrence counts in the windows that hold it and not the bucket's occurrence before it: a run
        # of windows, added by a difference array (+ at its first window, - past its last) and a cumulative sum
        last = (keys & np.uint32((1 << span) - 1)).astype(np.int32)  # the last window that holds it
        low = np.empty_like(last)
        low[1:] = last[:-1] + 1
        low[first] = 0
        np.maximum(low, last - (f.window // f.step - 1), out=low)
        np.minimum(low, windows, out=low)
        high = np.minimum(last, windows - 1) + 1
        np.maximum(high, low, out=high)  # none: + and - in one cell (the weights are whole numbers: exact)
        row = group * (windows + 1)
        low += row
        high += row
        cells = len(groups) * (windows + 1)
        sums = np.bincount(low, weights, cells) - np.bincount(high, weights, cells)
        counts = np.bincount(low, minlength=cells) - np.bincount(high, minlength=cells)
        sums, counts = sums.reshape(len(groups), -1).cumsum(axis=1), counts.reshape(len(groups), -1).cumsum(axis=1)
        # the whole prompt's, last: each group's distinct buckets (a group's keys are together, in order)
        starts = np.searchsorted(ids, np.arange(len(groups) + 1, dtype=np.uint32) << np.uint32(f.bits))
        for g, (a, b) in enumerate(itertools.pairwise(starts.tolist())):
            sums[g, windows] = weights[a:b][first[a:b]].sum()
            counts[g, windows] = np.count_nonzero(first[a:b])
        with np.errstate(divide="ignore", invalid="ignore"):
            per_window = np.where(counts > 0.5, sums / np.sqrt(counts), 0.0).sum(axis=0)
        return np.asarray(self.bias + self.scale * np.roll(per_window, 1), np.float64)  # the whole prompt's first

    def probability(self, text: str) -> float:
        z = self.logit(text)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


_NAMES = ("weights", "scale", "bias", "shape")


def save(model: PromptModel, path: Path) -> None:
    """An .npz numpy reads, written byte for byte alike for the same model: fixed entry dates and order."""
    f = model.featurizer
    arrays = {"weights": model.weights, "scale": np.array(model.scale, "<f8"), "bias": np.array(model.bias, "<f8"),
              "shape": np.array([f.bits, f.chars[0], f.chars[1], f.words, f.binary, f.fold, f.window, f.step],
                                "<i4")}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name in _NAMES:
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, arrays[name], allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(entry, buffer.getvalue(), compresslevel=9)


def load(path: str | Path | None = None) -> PromptModel:
    with np.load(Path(path) if path else DEFAULT_MODEL, allow_pickle=False) as data:
        shape = [int(v) for v in data["shape"]]
        bits, low, high, words, binary, fold, window, step = shape + [0, 0, 1][len(shape) - 5:]  # 5: the first
        weights = data["weights"].astype(np.int16, copy=False)
        if len(weights) != 1 << bits:
            raise ValueError(f"a prompt model of {len(weights)} weights for {bits} bits")
        if not 0 < low <= high < len(_SALT_CHAR) and (low, high) != (0, 0):
            raise ValueError(f"a prompt model of character n-grams {low} to {high} long")
        if step < 1 or step & (step - 1) or window % step or (window and bits + 1 + (_LIMIT // step).bit_length() > 32):
            raise ValueError(f"a prompt model of windows of {window} characters moving by {step}")
        featurizer = Featurizer(bits, (low, high), words, bool(binary), bool(fold), window, step)
        return PromptModel(featurizer, weights, float(data["scale"]), float(data["bias"]))


@functools.cache
def shipped() -> PromptModel:
    """The model that ships with floodwall, read once per process."""
    return load()
