"""A split whose images stay on disk: evaluated batch by batch, sliced on demand.

A streamed dataset's test split is a `StreamedImages` where an in-memory DatasetSplits holds the
test_x tensor. It reports the tensor's dtype, shape and length, `x[a:b]` decodes just those
images (normalised: what the shrink check and robustness read; robustness without a `limit`
reads the whole split), and `prunekit.train.evaluate`
consumes it through `eval_batches`: the same DataLoader and workers as streamed training,
batch_size images at a time.

Under torch.distributed each rank evaluates a contiguous part of the split (the same parts
`prunekit.distributed.shard` gives an in-memory tensor, unpadded so no image counts twice) and
evaluate() all-reduces the loss sum, correct count and image count; every rank gets the
accuracy of the whole split, equal to the in-memory evaluation's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from prunekit.data.augment import normalize_batch
from prunekit.distributed import DistInfo, info


class StreamedImages:
    """A normalised float32 N x C x H x W split read from a per-sample uint8 dataset when needed."""

    dtype = torch.float32

    def __init__(self, dataset, sample_shape: tuple[int, ...], mean: tuple[float, ...], std: tuple[float, ...],
                 workers: int = 0):
        self.dataset, self.sample_shape = dataset, tuple(sample_shape)
        self.mean, self.std, self.workers = mean, std, workers

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.dataset), *self.sample_shape))

    def dim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key) -> Tensor:
        """The images at `key` (a slice, an index or an index tensor), decoded and normalised."""
        if isinstance(key, slice):
            idx = list(range(len(self)))[key]
        elif isinstance(key, int):
            return self[key : key + 1][0] if key >= 0 else self[len(self) + key]
        else:
            idx = torch.as_tensor(key).reshape(-1).tolist()
        x, _ = self.dataset.load(idx, self.workers)
        return normalize_batch(x, self.mean, self.std)

    def to(self, *args, **kwargs) -> "StreamedImages":
        """Itself: batches move to the device as they are read (lets code that moves test_x run unchanged)."""
        return self

    def rank_indices(self, d: DistInfo | None = None) -> Tensor:
        """The indices this rank evaluates: a contiguous part, as `shard` splits an in-memory tensor."""
        d = d or info()
        everything = torch.arange(len(self))
        return everything if not d.enabled else torch.tensor_split(everything, d.world_size)[d.rank]

    def eval_batches(self, batch_size: int, device: torch.device | str = "cpu",
                     d: DistInfo | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's (normalised x, y) batches on `device`, in index order, decoded by the workers."""
        idx = self.rank_indices(d).tolist()
        chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        if not chunks:
            return
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=chunks, num_workers=self.workers, pin_memory=torch.cuda.is_available(),
            prefetch_factor=4 if self.workers else None)
        for x, y in loader:
            yield normalize_batch(x.to(device, non_blocking=True), self.mean, self.std), y.to(device, non_blocking=True)
