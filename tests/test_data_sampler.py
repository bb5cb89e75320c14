"""The sharded epoch order: DistributedSampler semantics, same global batches as one process, resume."""

import pytest
import torch

from prunekit.data.sampler import EpochShard, ShardBatchSampler
from prunekit.errors import ConfigError
from prunekit.train import TensorSource, epoch_generator, epoch_order_seed


def test_every_sample_once_per_epoch_across_ranks_padded_evenly():
    n, world = 11, 3
    shards = [EpochShard(n, 6, seed=5, rank=r, world_size=world) for r in range(world)]
    seen = [torch.cat([idx for idx, _ in s.batches()]) for s in shards]
    assert [len(s) for s in seen] == [4, 4, 4]  # 11 padded to 12, 4 per rank
    assert [s.steps for s in shards] == [2, 2, 2]
    counts = torch.bincount(torch.cat(seen), minlength=n)
    assert sorted(counts.tolist()) == [1] * 10 + [2]  # one padded sample repeats
    assert counts[shards[0].order()[0]] == 2  # padding repeats the head of the permutation
    # ranks are disjoint apart from the padding
    head = {int(shards[0].order()[0])}  # position 0 (rank 0) and padded position 11 (rank 2)
    sets = [set(s.tolist()) for s in seen]
    assert (sets[0] & sets[1], sets[1] & sets[2], sets[0] & sets[2]) == (set(), set(), head)


def test_union_of_rank_batches_is_the_single_process_batch():
    one = EpochShard(20, 8, seed=3)
    two = [EpochShard(20, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for step, ((glob, pos), (a, pa), (b, pb)) in enumerate(zip(one.batches(), two[0].batches(), two[1].batches())):
        assert sorted(torch.cat([a, b]).tolist()) == sorted(glob.tolist())
        assert torch.equal(glob[pa], a) and torch.equal(glob[pb], b)  # positions index the global batch
        assert two[0].global_size(step) == len(glob)
    assert [len(g) for g, _ in one.batches()] == [8, 8, 4]


def test_single_process_order_is_the_in_memory_order():
    x, y = torch.arange(23.0).view(23, 1), torch.arange(23)
    mem = [yb for _, yb, _, _ in TensorSource(x, y, 5).batches(epoch_order_seed(0, 1, 2))]
    stream = [idx for idx, _ in EpochShard(23, 5, epoch_order_seed(0, 1, 2)).batches()]
    assert all(torch.equal(a, b) for a, b in zip(mem, stream)) and len(mem) == len(stream) == 5
    assert torch.equal(torch.cat(stream), torch.randperm(23, generator=epoch_generator(0, 1, 2)))


def test_start_step_skips_whole_batches():
    s = EpochShard(30, 4, seed=9, rank=1, world_size=2)
    full = [idx.tolist() for idx, _ in s.batches()]
    assert [idx.tolist() for idx, _ in s.batches(3)] == full[3:]
    assert list(ShardBatchSampler(s, 3)) == full[3:] and len(ShardBatchSampler(s, 3)) == len(full) - 3
    assert list(s.batches(s.steps)) == []


def test_batch_size_must_divide_among_ranks():
    with pytest.raises(ConfigError, match="batch_size 10 is not divisible by the 4 ranks"):
        EpochShard(100, 10, seed=0, rank=0, world_size=4)
