"""The MQAR generator (multi-query associative recall, Zoology's layout) and its disk cache.

One example of seq_len tokens, with P pairs and vocabulary V:

    k1 v1 k2 v2 ... kP vP | slot 0 | slot 1 | ... | slot S-1 | (one filler if odd)

Keys are distinct tokens from [1, V/2), values distinct tokens from [V/2, V); token 0
is the filler. After the pairs come S = (seq_len - 2P) // 2 slots of two tokens; each
key is asked once, as the first token of a slot chosen without replacement with
probability proportional to (slot + 1) ** (power_a - 1), so early slots (short gaps
after the pairs) are the likely ones. The label of a query position is the key's value
(what the model must predict next); every other label is -100. Fillers stay 0, or are
random tokens from [1, V) with random_non_queries (they never carry a label).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcgen.mqar.config import (
    IGNORE_INDEX,
    MQARDataConfig,
    MQARSplit,
    key_tokens,
    slice_key,
    value_tokens,
)

# Bump when the generator's output changes for a given config: old cache files then miss.
GENERATOR_VERSION = 1
# Rows drawn at once when sampling without replacement (bounds memory at chunk * choices).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class MQARData:
    """One generated split: inputs and labels, both [num_examples, seq_len] int64."""

    inputs: torch.Tensor
    labels: torch.Tensor
    split: MQARSplit

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def key(self) -> str:
        return slice_key(self.split.num_pairs, self.split.seq_len)


def _choose(
    rng: np.random.Generator, rows: int, n: int, k: int, log_weights: np.ndarray | None = None
) -> np.ndarray:
    """`rows` independent draws of k distinct indices from range(n), in draw order:
    uniform, or with probability proportional to exp(log_weights).

    Gumbel top-k: the k largest of log_weights + Gumbel noise are distributed as k
    successive draws without replacement (numpy's choice(replace=False, p=...)), for
    all rows at once. With equal weights plain uniform noise does the same, faster.
    """
    if log_weights is None and k * k <= n:
        return _choose_sparse(rng, rows, n, k)
    out = np.empty((rows, k), dtype=np.int64)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, rows, chunk):
        size = (min(rows, start + chunk) - start, n)
        scores = rng.random(size) if log_weights is None else log_weights + rng.gumbel(size=size)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out[start : start + size[0]] = np.take_along_axis(top, order, axis=1)
    return out


def _choose_sparse(rng: np.random.Generator, rows: int, n: int, k: int) -> np.ndarray:
    """Uniform draws of k distinct indices from range(n) when k is small beside n: draw
    with replacement and redraw the rows that repeat an index. Accepting only distinct
    rows leaves every ordered k-tuple equally likely; with k * k <= n at most about
    half the rows repeat, so few rounds are needed."""
    out = rng.integers(0, n, size=(rows, k))
    redo = np.arange(rows)
    while redo.size:
        ordered = np.sort(out[redo], axis=1)
        redo = redo[(ordered[:, 1:] == ordered[:, :-1]).any(axis=1)]
        out[redo] = rng.integers(0, n, size=(redo.size, k))
    return out


def gap_log_weights(slots: int, power_a: float) -> np.ndarray:
    """Unnormalised log-probability of each query slot: (slot + 1) ** (power_a - 1)."""
    return (power_a - 1.0) * np.log(np.arange(1, slots + 1, dtype=np.float64))


def generate(split: MQARSplit) -> MQARData:
    """Generate one split, deterministically from split.seed (no cache)."""
    rng = np.random.default_rng(split.seed)
    n, length, pairs, vocab = split.num_examples, split.seq_len, split.num_pairs, split.vocab_size
    key_range, value_range = key_tokens(vocab), value_tokens(vocab)
    context = 2 * pairs
    slots = (length - context) // 2

    keys = key_range.start + _choose(rng, n, len(key_range), pairs)
    values = value_range.start + _choose(rng, n, len(value_range), pairs)
    gaps = _choose(rng, n, slots, pairs, gap_log_weights(slots, split.power_a))

    inputs = np.zeros((n, length), dtype=np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    rows = np.arange(n)[:, None]
    query_positions = context + 2 * gaps
    inputs[rows, query_positions] = keys
    labels = np.full((n, length), IGNORE_INDEX, dtype=np.int64)
    labels[rows, query_positions] = values

    if split.random_non_queries:
        # Keys and values are never 0, so the zeros left are exactly the fillers.
        filler = inputs == 0
        inputs[filler] = rng.integers(1, vocab, size=int(filler.sum()))
    return MQARData(torch.from_numpy(inputs), torch.from_numpy(labels), split)


def default_cache_dir() -> Path:
    """$MCGEN_CACHE/mqar if MCGEN_CACHE is set, else ~/.cache/mcgen/mqar."""
    root = os.environ.get("MCGEN_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "mcgen"
    return base / "mqar"


def cache_key(split: MQARSplit) -> str:
    """sha256 of the split's config and the generator's version."""
    payload = {"generator": GENERATOR_VERSION, "split": split.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(split: MQARSplit, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"mqar-{cache_key(split)}.npz"


def _read(path: Path, split: MQARSplit) -> MQARData | None:
    """The cached split at path, or None if it is missing or not what the config asks."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            inputs, labels = stored["inputs"], stored["labels"]
    except (OSError, KeyError, ValueError):
        return None
    shape = (split.num_examples, split.seq_len)
    if inputs.shape != shape or labels.shape != shape:
        return None
    return MQARData(torch.from_numpy(inputs), torch.from_numpy(labels), split)


def _write(path: Path, data: MQARData) -> None:
    """Write atomically: a temporary file in the same directory, then a rename, so a
    concurrent reader sees either nothing or a whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, inputs=data.inputs.numpy(), labels=data.labels.numpy())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_split(split: MQARSplit, cache_dir: Path | None = None, *, cache: bool = True) -> MQARData:
    """The split from the cache if present, else generated (and cached, if cache)."""
    if not cache:
        return generate(split)
    path = cache_path(split, cache_dir)
    if path.is_file():
        found = _read(path, split)
        if found is not None:
            return found
    data = generate(split)
    _write(path, data)
    return data


def load_data(
    config: MQARDataConfig, cache_dir: Path | None = None, *, cache: bool = True
) -> tuple[list[MQARData], list[MQARData]]:
    """(train slices, test slices) of a data config."""
    train = [load_split(s, cache_dir, cache=cache) for s in config.splits("train")]
    test = [load_split(s, cache_dir, cache=cache) for s in config.splits("test")]
    return train, test
