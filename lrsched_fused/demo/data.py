"""Byte-level text data for the demo: the Python standard library's own sources, or a file of the user's.

Every machine that runs Python has its standard library's ``.py`` files, so the demo needs no download.
The corpus is read in a fixed (sorted) order up to a byte budget and cut into blocks; every
``VAL_EVERY``-th block goes to validation, the rest to training, so both splits come from the same mix
of modules. Batches are random windows drawn from a seeded ``torch.Generator``: the same seed gives the
same batches in the same order, whichever optimizer consumes them.
"""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Corpus", "stdlib_sources", "load_corpus", "BatchStream"]

#: Bytes per block of the train/validation split.
BLOCK_BYTES = 4096
#: Every ``VAL_EVERY``-th block is held out for validation.
VAL_EVERY = 10
#: Directories of the standard library left out (third-party packages, test data with odd encodings).
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}


@dataclass(frozen=True)
class Corpus:
    """Token ids (bytes as int64) of the training and validation splits, and where they came from."""

    train: torch.Tensor
    val: torch.Tensor
    source: str
    files: int

    @property
    def nbytes(self) -> int:
        return self.train.numel() + self.val.numel()


def stdlib_sources() -> list[Path]:
    """The standard library's ``.py`` files in sorted order (``sysconfig.get_paths()["stdlib"]``)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return out


def _split(data: bytes, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    blocks = ids.split(BLOCK_BYTES)
    val = [b for i, b in enumerate(blocks) if i % VAL_EVERY == VAL_EVERY - 1]
    train = [b for i, b in enumerate(blocks) if i % VAL_EVERY != VAL_EVERY - 1]
    if not val:  # small user file: hold out the tail instead
        cut = max(len(ids) - max(len(ids) // VAL_EVERY, context + 1), context + 1)
        return ids[:cut], ids[cut:]
    return torch.cat(train), torch.cat(val)


def load_corpus(path: str | os.PathLike | None = None, *, max_bytes: int = 4_000_000, context: int = 64) -> Corpus:
    """Read ``path`` (any file, used as raw bytes) or, if ``None``, the standard library sources, up to
    ``max_bytes`` bytes, and split it into training and validation token ids."""
    if not isinstance(max_bytes, int) or max_bytes < 2 * (context + 1):
        raise ValueError(f"max_bytes must be an integer >= {2 * (context + 1)}; got {max_bytes!r}")
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"--data must be a readable file; {str(p)!r} is not a file")
        with open(p, "rb") as fh:
            data = fh.read(max_bytes)
        files, source = 1, str(p)
    else:
        chunks, size, files = [], 0, 0
        for f in stdlib_sources():
            try:
                chunk = f.read_bytes()
            except OSError:
                continue
            chunks.append(chunk)
            size += len(chunk)
            files += 1
            if size >= max_bytes:
                break
        data = b"".join(chunks)[:max_bytes]
        source = f"Python standard library ({sysconfig.get_paths()['stdlib']})"
    train, val = _split(data, context)
    if train.numel() <= context + 1 or val.numel() <= context + 1:
        raise ValueError(f"the text must hold at least {4 * (context + 1)} bytes; {source} has {len(data)}")
    return Corpus(train=train, val=val, source=source, files=files)


class BatchStream:
    """Deterministic batches of ``(inputs, targets)`` windows: ``batch(step)`` depends only on the seed and
    the step, so two runs (or two ranks with different ``shard``) see reproducible data.

    Args:
        tokens: int64 token ids.
        batch_size: windows per batch.
        context: window length (targets are the inputs shifted by one).
        seed: seed of the window offsets.
        shard, num_shards: this consumer's slice of each global batch (for data parallel training the
            global batch is ``batch_size`` windows and each of ``num_shards`` ranks takes its rows).
    """

    def __init__(self, tokens: torch.Tensor, batch_size: int, context: int, seed: int, *, shard: int = 0,
                 num_shards: int = 1) -> None:
        if batch_size < 1 or batch_size % num_shards:
            raise ValueError(f"batch_size must be >= 1 and divisible by num_shards={num_shards}; got {batch_size}")
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard must be in [0, {num_shards}); got {shard}")
        self.tokens, self.batch_size, self.context, self.seed = tokens, batch_size, context, seed
        self.shard, self.num_shards = shard, num_shards

    def offsets(self, step: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.randint(0, self.tokens.numel() - self.context - 1, (self.batch_size,), generator=gen)

    def batch(self, step: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        per = self.batch_size // self.num_shards
        starts = self.offsets(step)[self.shard * per:(self.shard + 1) * per]
        idx = starts[:, None] + torch.arange(self.context + 1)
        windows = self.tokens[idx]
        return windows[:, :-1].to(device), windows[:, 1:].to(device)
