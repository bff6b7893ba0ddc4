"""Text data: one sentence per line, tokenized, with a vocabulary that travels with the run.

``data.source: text`` reads ``data.path`` (UTF-8, one sentence per line, blank lines skipped; a
``.gz`` file is decompressed), or the shipped demo corpus (``data/corpora``, King James Bible
sentences) when no path is given. Validation and test sentences come from ``data.val_path`` and
``data.test_path``; a split without its file is carved from a seeded shuffle of the training
lines (``data.seed``), ``max(1, min(data.val_size, N // 10))`` sentences each, so the three
splits never share a line.

Tokens: words (runs of letters, digits and underscores, with inner apostrophes: ``don't``) and
single punctuation marks, after optional lower-casing (``data.lowercase``). The vocabulary is the
``data.vocab_size - 4`` most frequent training tokens (ties broken alphabetically, so the same
data always gives the same ids) after the four specials ``<pad> <unk> <bos> <eos>`` (ids 0-3);
any other token is ``<unk>``. It is saved as ``vocab.json`` in the run directory, and a loaded
run encodes new text with that file (`run_vocabulary`).

A sentence is at most ``data.max_len`` tokens and then ``<eos>``: every split is one int32 array
``x`` of shape (N, max_len + 1) padded with ``<pad>`` (one compiled shape for all batches); the real positions (the tokens and
the ``<eos>``) are those that are not ``<pad>`` (`sentence_lengths`). Longer
sentences are truncated to their first max_len tokens, and how many were is logged per split.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import logging
import re
from importlib import resources
from pathlib import Path

import numpy as np

from vaekit.config.schema import DataConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD, UNK, BOS, EOS = range(4)
VOCAB_FILE = "vocab.json"
MIN_VOCAB = len(SPECIALS) + 1  # the specials and at least one word
DEMO_CORPUS = "kjv-sentences.txt.gz"


@dataclasses.dataclass(frozen=True)
class TextDataConfig(DataConfig):
    """The keys of data.source=text (`vaekit.data.SOURCE_CONFIGS`)."""

    source: str = "text"
    max_len: int = 30  # most tokens per sentence (then <eos>); longer sentences are truncated
    vocab_size: int = 10_000  # vocabulary size, the specials <pad> <unk> <bos> <eos> included
    lowercase: bool = True  # lower-case sentences before tokenizing
    val_path: str | None = None  # validation sentences (else carved from data.path with data.seed)
    test_path: str | None = None  # test sentences (else carved from data.path with data.seed)

    def check(self) -> None:
        if self.max_len <= 0:
            raise VaekitError(f"data.max_len must be positive, got {self.max_len}")
        if self.vocab_size < MIN_VOCAB:
            raise VaekitError(f"data.vocab_size must be at least {MIN_VOCAB} (<pad> <unk> <bos> <eos> and one word), "
                              f"got {self.vocab_size}")


_TOKEN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Words and single punctuation marks of `text`: "Don't go!" -> ["don't", "go", "!"]."""
    return _TOKEN.findall(text.lower() if lowercase else text)


def sentence_lengths(x) -> np.ndarray:
    """The real positions (tokens and <eos>) of each encoded sentence (N, T): (N,) int."""
    return np.sum(np.asarray(x) != PAD, axis=-1)


class Vocabulary:
    """Token <-> id, with the four specials first; `encode`/`decode` whole sentences."""

    def __init__(self, words, *, lowercase: bool, max_len: int):
        self.words = tuple(words)
        if self.words[: len(SPECIALS)] != SPECIALS:
            raise VaekitError(f"a vocabulary must start with {' '.join(SPECIALS)}")
        self.lowercase, self.max_len = bool(lowercase), int(max_len)
        self.ids = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and (self.words, self.lowercase, self.max_len) == (
            other.words, other.lowercase, other.max_len)

    @classmethod
    def build(cls, sentences: list[list[str]], size: int, *, lowercase: bool, max_len: int) -> Vocabulary:
        """The `size - 4` most frequent tokens of `sentences` (ties: alphabetical) after the specials."""
        if size < MIN_VOCAB:
            raise VaekitError(f"data.vocab_size must be at least {MIN_VOCAB} (the 4 specials "
                              f"{' '.join(SPECIALS)} and one word), got {size}")
        counts = collections.Counter(t for s in sentences for t in s)
        for special in SPECIALS:  # a literal "<unk>" in the text is the special, not a word
            counts.pop(special, None)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - len(SPECIALS)]
        return cls(SPECIALS + tuple(w for w, _ in ranked), lowercase=lowercase, max_len=max_len)

    @property
    def seq_len(self) -> int:
        """Positions of an encoded sentence: max_len tokens and <eos>."""
        return self.max_len + 1

    def token_ids(self, tokens: list[str]) -> list[int]:
        return [self.ids.get(t, UNK) for t in tokens]

    def encode_tokens(self, sentences: list[list[str]]) -> tuple[dict[str, np.ndarray], int]:
        """({"x"}, number truncated) for tokenized sentences (see the module docstring)."""
        x = np.full((len(sentences), self.seq_len), PAD, np.int32)
        truncated = 0
        for i, tokens in enumerate(sentences):
            truncated += len(tokens) > self.max_len
            ids = self.token_ids(tokens[: self.max_len]) + [EOS]
            x[i, : len(ids)] = ids
        return {"x": x}, truncated

    def encode(self, sentences: list[str]) -> dict[str, np.ndarray]:
        """A batch for raw sentences: {"x" (N, max_len + 1) int32}."""
        return self.encode_tokens([tokenize(s, self.lowercase) for s in sentences])[0]

    def decode(self, ids) -> list[str]:
        """Sentences for id rows (N, T): tokens up to the first <eos> (or <pad>), joined by spaces."""
        out = []
        for row in np.asarray(ids):
            words = []
            for i in row.tolist():
                if i in (EOS, PAD):
                    break
                if i != BOS:
                    words.append(self.words[i] if 0 <= i < len(self.words) else "<unk>")
            out.append(" ".join(words))
        return out

    def to_json(self) -> str:
        return json.dumps({"format": "vaekit-vocab-1", "lowercase": self.lowercase, "max_len": self.max_len,
                           "words": list(self.words)}, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "vocab.json") -> Vocabulary:
        try:
            doc = json.loads(text)
            return cls(doc["words"], lowercase=doc["lowercase"], max_len=doc["max_len"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise VaekitError(f"{where} is not a vaekit vocabulary ({type(e).__name__}: {e})") from None


def run_vocabulary(run) -> Vocabulary:
    """The vocabulary a text run was trained with (its run directory's vocab.json)."""
    path = Path(run.path) / VOCAB_FILE
    if not path.is_file():
        raise VaekitError(f"run '{run.path}' has no {VOCAB_FILE}; it was not trained on text")
    return Vocabulary.from_json(path.read_text(encoding="utf-8"), str(path))


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file (``.gz`` decompressed), stripped; one line on errors."""
    path = Path(path)
    if not path.exists():
        raise VaekitError(f"data file not found: {path}")
    if path.is_dir():
        raise VaekitError(f"data path {path} is a directory; give a text file with one sentence per line")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise VaekitError(f"cannot read data file {path}: {e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise VaekitError(f"data file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                          f"convert it, e.g. with iconv -t UTF-8") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise VaekitError(f"data file {path} has no sentences (it is empty or blank)")
    return lines


def _demo_lines() -> list[str]:
    with resources.as_file(resources.files("vaekit") / "data" / "corpora" / DEMO_CORPUS) as p:
        return read_lines(p)


def load_text_splits(path: str | None = None, *, val_size: int = 10_000, seed: int = 0, limit: int | None = None,
                     data_config=None) -> dict:
    """Data-source loader for ``"text"`` (see the module docstring and ``vaekit.data.DATA_SOURCES``).

    data_config: the run's `TextDataConfig` (max_len, vocab_size, lowercase, val_path, test_path);
    None: their defaults. ``limit`` keeps the first ``limit`` training sentences before the
    vocabulary is built. Returns the three splits, the token `DataSpec` and {"vocab.json": text}
    for the run directory.
    """
    cfg = data_config if isinstance(data_config, TextDataConfig) else TextDataConfig()
    lines = read_lines(path) if path is not None else _demo_lines()
    given = {name: read_lines(p) for name, p in (("val", cfg.val_path), ("test", cfg.test_path)) if p is not None}
    n = len(lines)
    carve = max(1, min(val_size, n // 10))
    missing = [name for name in ("val", "test") if name not in given]
    if missing:
        order = np.random.default_rng(seed).permutation(n)
        if n - carve * len(missing) < 1:
            raise VaekitError(f"{path or DEMO_CORPUS} has {n} sentences: too few to carve {' and '.join(missing)} "
                              f"splits from (give data.val_path/data.test_path or more lines)")
        for i, name in enumerate(missing):
            given[name] = [lines[j] for j in order[i * carve : (i + 1) * carve]]
        lines = [lines[j] for j in np.sort(order[len(missing) * carve :])]  # training lines keep file order
    if limit is not None:
        lines = lines[:limit]
    tokens = {"train": [tokenize(s, cfg.lowercase) for s in lines]}
    tokens |= {name: [tokenize(s, cfg.lowercase) for s in given[name]] for name in ("val", "test")}
    if all(len(t) > cfg.max_len for t in tokens["train"]):
        shortest = min(len(t) for t in tokens["train"])
        raise VaekitError(f"no training sentence of {path or DEMO_CORPUS} has at most data.max_len={cfg.max_len} "
                          f"tokens (the shortest has {shortest}); raise data.max_len")
    vocab = Vocabulary.build(tokens["train"], cfg.vocab_size, lowercase=cfg.lowercase, max_len=cfg.max_len)
    out: dict = {}
    for name in ("train", "val", "test"):
        out[name], truncated = vocab.encode_tokens(tokens[name])
        if truncated:
            log.info("text: %d of %d %s sentences are longer than data.max_len=%d tokens and were truncated",
                     truncated, len(tokens[name]), name, cfg.max_len)
    unk = float(np.mean(out["train"]["x"][out["train"]["x"] != PAD] == UNK))
    log.info("text: %d training sentences, vocabulary of %d (%.1f%% of training tokens are <unk>)",
             len(lines), len(vocab), 100 * unk)
    out["spec"] = DataSpec("tokens", (vocab.seq_len,), None, len(vocab))
    out["run_files"] = {VOCAB_FILE: vocab.to_json()}
    return out


__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "UNK", "VOCAB_FILE", "TextDataConfig", "Vocabulary", "load_text_splits",
           "read_lines", "run_vocabulary", "sentence_lengths", "tokenize"]
