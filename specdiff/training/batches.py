"""Training batches: collation, the counter sampler shared by all ranks, the synthetic data set for smoke
tests and benchmarks, and opening the data sets a config names."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from specdiff.constants import N_MELS, TOKENS_LENGTH
from specdiff.errors import SpecdiffError
from specdiff.training.config import TARGET_FRAMES, TrainConfig
from specdiff.training.objective import example_seed

# ---------------------------------------------------------------------------------------------
# Data: batches, the counter sampler, a synthetic data set for smoke tests and benchmarks
# ---------------------------------------------------------------------------------------------

BATCH_KEYS = ("tokens", "context", "context_mask", "target")


def _as_mapping(item: Any) -> Mapping[str, Tensor]:
    if dataclasses.is_dataclass(item):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    return item


def collate_counted(items: Sequence[tuple[int, Any]]) -> dict[str, Tensor]:
    """``(counter, example)`` pairs -> batch dict with ``index`` (the counters) and the BATCH_KEYS stacked
    (and ``timbre``, ``target_valid``, ``velocity``, ``carry_tokens``, ``carry_frames`` where every example has
    one)."""
    examples = [_as_mapping(example) for _, example in items]
    batch = {key: torch.stack([torch.as_tensor(ex[key]) for ex in examples]) for key in BATCH_KEYS}
    if all(ex.get("timbre") is not None for ex in examples):  # timbre indices (feature caches); absent: the default
        batch["timbre"] = torch.stack([torch.as_tensor(ex["timbre"]) for ex in examples]).long()
    if all(ex.get("target_valid") is not None for ex in examples):  # frames before the piece end (caches)
        batch["target_valid"] = torch.stack([torch.as_tensor(ex["target_valid"]) for ex in examples]).long()
    if all(ex.get("velocity") is not None for ex in examples):  # relative log-velocities per frame (caches)
        batch["velocity"] = torch.stack([torch.as_tensor(ex["velocity"]) for ex in examples]).float()
    for key in ("carry_tokens", "carry_frames"):  # what rings into the window (caches)
        if all(ex.get(key) is not None for ex in examples):
            batch[key] = torch.stack([torch.as_tensor(ex[key]) for ex in examples]).long()
    batch["tokens"] = batch["tokens"].long()
    batch["context_mask"] = batch["context_mask"].bool()
    batch["index"] = torch.tensor([counter for counter, _ in items], dtype=torch.long)
    return batch


class _CounterDataset(torch.utils.data.Dataset):
    """Maps a global sample counter to ``(counter, dataset[counter % len(dataset)])``."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset
        self.size = len(dataset)  # type: ignore[arg-type]
        if self.size == 0:
            raise SpecdiffError("the training data set is empty")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, counter: int) -> tuple[int, Any]:
        return counter, self.dataset[counter % self.size]


class ShardedCounterSampler(torch.utils.data.Sampler):
    """Endless stream of this rank's sample counters, starting at the data position ``start``.

    Optimiser step k consumes the global counters ``[start + k G, start + (k+1) G)`` with
    ``G = micro_batch * accumulation * world_size``; micro-batch ``a`` of rank ``r`` takes the block
    ``(a * world_size + r) * micro_batch`` of that range.
    """

    def __init__(self, start: int, micro_batch: int, accumulation: int, rank: int = 0, world_size: int = 1):
        self.start, self.micro_batch, self.accumulation = start, micro_batch, accumulation
        self.rank, self.world_size = rank, world_size

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.world_size

    def __iter__(self) -> Iterator[int]:
        position = self.start
        while True:
            for a in range(self.accumulation):
                first = position + (a * self.world_size + self.rank) * self.micro_batch
                yield from range(first, first + self.micro_batch)
            position += self.global_batch

    def __len__(self) -> int:  # endless; DataLoader only needs this for len(loader)
        return sys.maxsize


class SyntheticDataset(torch.utils.data.Dataset):
    """Random but learnable examples in the training batch format (for smoke tests and benchmarks).

    Item ``i`` is a deterministic function of ``(seed, i)``: a prefix of random note tokens (the
    rest PAD), a target made of horizontal mel bands whose bins and levels follow from the tokens (so
    the conditioning carries information), and a context of random valid length.
    """

    def __init__(self, size: int = 1024, seed: int = 0, max_tokens: int = 256) -> None:
        self.size, self.seed, self.max_tokens = size, seed, max_tokens

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed(example_seed(self.seed + 7919, i))
        n_tokens = int(torch.randint(1, self.max_tokens + 1, (), generator=gen))
        tokens = torch.zeros(TOKENS_LENGTH, dtype=torch.long)
        tokens[:n_tokens] = torch.randint(1, 1536, (n_tokens,), generator=gen)
        bins = tokens[: min(n_tokens, 8)] % N_MELS
        level = torch.full((N_MELS,), -1.0)
        level[bins] = 0.5
        frames = torch.linspace(0, 1, TARGET_FRAMES)[:, None]
        target = (level[None, :] - 0.3 * frames * (level[None, :] > -1)).clamp(-1, 1)
        n_context = int(torch.randint(0, TARGET_FRAMES + 1, (), generator=gen))
        context = torch.zeros(TARGET_FRAMES, N_MELS)
        context[:n_context] = torch.rand(n_context, N_MELS, generator=gen) * 2 - 1
        context_mask = torch.arange(TARGET_FRAMES) < n_context
        return {"tokens": tokens, "context": context, "context_mask": context_mask, "target": target}


def _model_timbres(config: TrainConfig) -> list[str]:
    """The timbre names of the model ``config`` builds (``--set model.timbres=A,B``; empty: none)."""
    timbres = config.model.get("timbres", [])
    return [t for t in timbres.split(",") if t] if isinstance(timbres, str) else list(timbres)


def decoder_dataset_options(decoder: Any) -> dict[str, Any]:
    """How a feature cache must be opened for an existing ``decoder`` (``ChunkDataset`` / ``open_training_datasets``
    keyword arguments): its timbres, so each window carries its render's timbre index, and its program codec
    (General MIDI programs for a ``gm_programs`` decoder, else Slakh classes), so the tokens are the ones it reads."""
    config = decoder.config
    return {"timbres": list(getattr(decoder, "timbres", []) or []),
            "slakh_programs": not bool(config.get("gm_programs", False))}  # fmt: skip


def open_datasets(config: TrainConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """The training and validation sets named by ``config.data`` / ``config.val_data``.

    A feature cache gives ``ChunkDataset``s (specdiff.data.cache): split "train" for training and split
    "validation" (of ``val_data``, default ``data``) for validation. A cache without a validation
    split falls back to training windows drawn with another seed (a fixed set, but not held out).
    """
    if config.data is None:
        raise SpecdiffError("no training data: pass --data CACHE_DIR (or --data synthetic for a smoke test)")
    if config.data == "synthetic":
        return SyntheticDataset(seed=config.seed), SyntheticDataset(
            size=max(config.val_examples, 1), seed=config.seed + 1
        )
    from specdiff.data import cache as data_module

    # Counters never wrap within the run, so no window is drawn twice (the cache's default epoch is 1M).
    epoch_size = max(1_000_000, config.steps * config.batch_size)
    val_source = config.val_data if config.val_data is not None else config.data
    timbres = _model_timbres(config)
    options = dict(timbres=timbres, slakh_programs=not config.model.get("gm_programs", False))
    if not any(song["split"] == "validation" for song in data_module.load_index(val_source)):
        if config.val_data is not None:
            raise SpecdiffError(f"the feature cache {config.val_data} has no validation split")
        print(f"note: {config.data} has no validation split; validating on training windows drawn with another seed")
        train_set = data_module.ChunkDataset(config.data, seed=config.seed, split="train", epoch_size=epoch_size,
                                             **options)  # fmt: skip
        return train_set, data_module.ChunkDataset(config.data, seed=config.seed + 1_000_003, split="train",
                                                   **options)  # fmt: skip
    return data_module.open_training_datasets(config.data, config.val_data, seed=config.seed, epoch_size=epoch_size,
                                              **options)  # fmt: skip
