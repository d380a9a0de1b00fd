"""Batch sharding: the processes' parts of each global batch are exactly the single-process batch; leaving the
process group."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ban.engine.distributed import BUCKET_BATCHES, DistContext, ShardedBatches, bucketed_batches, on_main, teardown


def test_shards_partition_each_global_batch():
    single = list(ShardedBatches(103, batch_size=16, seed=7, epoch=3))
    parts = [ShardedBatches(103, batch_size=16, seed=7, epoch=3, rank=r, world_size=3) for r in range(3)]
    assert parts[0].global_sizes == [16] * 6 + [7]
    for k, batch in enumerate(single):
        assert sum((list(p)[k] for p in parts), []) == batch
        assert max(len(list(p)[k]) for p in parts) - min(len(list(p)[k]) for p in parts) <= 1
    assert sorted(sum(single, [])) == list(range(103))


def test_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch():
    epoch3 = list(ShardedBatches(50, batch_size=8, seed=1, epoch=3))
    assert epoch3 == list(ShardedBatches(50, batch_size=8, seed=1, epoch=3))
    assert epoch3 != list(ShardedBatches(50, batch_size=8, seed=1, epoch=4))
    resumed = ShardedBatches(50, batch_size=8, seed=1, epoch=3, start=4)
    assert list(resumed) == epoch3[4:] and resumed.global_sizes == [8, 8, 2]


def test_last_batch_smaller_than_world_is_dropped():
    assert [len(b) for b in ShardedBatches(9, batch_size=4, seed=0, epoch=0, rank=0, world_size=2)] == [2, 2]
    assert ShardedBatches(9, batch_size=4, seed=0, epoch=0).global_sizes == [4, 4, 1]


def test_bucketed_batches_hold_similar_box_counts_and_still_cover_the_epoch_once():
    sizes = torch.randint(10, 101, (5000,), generator=torch.Generator().manual_seed(0)).tolist()
    plain = list(ShardedBatches(5000, batch_size=32, seed=5, epoch=2))
    bucketed = list(ShardedBatches(5000, batch_size=32, seed=5, epoch=2, sizes=sizes))
    assert sorted(sum(bucketed, [])) == list(range(5000))
    assert bucketed == list(ShardedBatches(5000, batch_size=32, seed=5, epoch=2, sizes=sizes))
    assert bucketed != list(ShardedBatches(5000, batch_size=32, seed=5, epoch=3, sizes=sizes))

    def mean_padding(batches):  # padded slots per real box: (max − mean) / mean, averaged over batches
        return sum((max(sizes[i] for i in b) / (sum(sizes[i] for i in b) / len(b)) - 1) for b in batches) / len(batches)

    assert mean_padding(plain) > 0.6 and mean_padding(bucketed) < 0.05
    assert [len(b) for b in bucketed] == [32] * (len(bucketed) - 1) + [5000 % 32]  # the smaller one last, as unbucketed
    parts = [ShardedBatches(5000, batch_size=32, seed=5, epoch=2, rank=r, world_size=2, sizes=sizes) for r in (0, 1)]
    assert [a + b for a, b in zip(*(list(p) for p in parts), strict=True)] == bucketed
    resumed = ShardedBatches(5000, batch_size=32, seed=5, epoch=2, start=7, sizes=sizes)
    assert list(resumed) == bucketed[7:]


def test_buckets_are_sorted_within_runs_of_the_shuffled_order_not_across_the_epoch():
    """Each batch comes from one run of BUCKET_BATCHES batches of the shuffled order (so an epoch still mixes
    questions from all over the dataset), sorted by box count inside its run; distinct sizes, so a sort across
    the whole epoch would cut other batches."""
    batch_size, samples = 4, 3 * BUCKET_BATCHES * 4 + 2
    order = torch.randperm(samples, generator=torch.Generator().manual_seed(3))
    sizes = torch.randperm(samples, generator=torch.Generator().manual_seed(4))  # all distinct
    batches = bucketed_batches(order, sizes, batch_size, torch.Generator().manual_seed(5))
    runs = [set(run.tolist()) for run in order.split(BUCKET_BATCHES * batch_size)]
    expected = [sorted(run, key=lambda index: int(sizes[index]))[start:start + batch_size]
                for run in runs for start in range(0, len(run), batch_size)]
    assert sorted(batch.tolist() for batch in batches) == sorted(expected)
    assert len(batches[-1]) == 2


def test_a_bucketed_epoch_resumed_with_another_number_of_processes_counts_every_sample_once():
    """Stopped at step 183 with one process, resumed with two: the batches before the position are the same, so
    only the last, smaller batch — which two processes drop when it holds one sample — can go missing."""
    sizes = torch.randint(10, 101, (1159,), generator=torch.Generator().manual_seed(1)).tolist()
    done = sum(list(ShardedBatches(1159, batch_size=6, seed=2, epoch=0, sizes=sizes))[:183], [])
    parts = [ShardedBatches(1159, batch_size=6, seed=2, epoch=0, rank=r, world_size=2, start=183, sizes=sizes)
             for r in (0, 1)]
    rest = [index for part in parts for batch in part for index in batch]
    assert len(set(done) | set(rest)) == len(done) + len(rest) == 1159 - 1  # 1159 = 193 × 6 + 1: one dropped


def test_leaving_the_process_group_first_frees_a_ddp_wrapper_held_in_a_reference_cycle():
    # freed by the garbage collector during the interpreter's exit instead, the wrapper took the process group and
    # its pending work with it: the likely cause of a rare SIGABRT at the end of a torchrun run (gloo)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    gc.disable()
    try:
        holder = {"model": DistributedDataParallel(torch.nn.Linear(3, 2))}
        holder["self"] = holder
        holder["model"](torch.randn(4, 3)).sum().backward()
        wrapper = weakref.ref(holder["model"])
        del holder
        assert wrapper() is not None  # only the garbage collector frees it
        teardown()
        assert wrapper() is None and not dist.is_initialized()
    finally:
        gc.enable()
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_run_ending_in_an_error_in_the_forward_pass_leaves_no_ddp_wrapper_behind(tmp_path, monkeypatch):
    # the exception's traceback holds the wrapper (DDP's forward frame, the task's) until the process exits: train()
    # must let go of it before it leaves the process group
    from conftest import make_dataset

    from ban.engine import trainer as trainer_module
    from ban.engine.config import TrainConfig
    from ban.engine.run import RunConfig, start_run
    from ban.engine.tasks import VQATask
    from ban.models import BanForVQA, preset

    data_dir = make_dataset(tmp_path, seed=0)
    task = VQATask(data_dir)
    model = preset("tiny", **task.model_sizes(), hidden_dim=8, word_dim=4)
    run = RunConfig("vqa", str(data_dir), model, TrainConfig(batch_size=4, device="cpu", epochs=1, val_split=""))
    start_run(tmp_path / "run", run, resume=False)
    wrappers, alive_at_teardown = [], []

    class RecordedDDP(DistributedDataParallel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            wrappers.append(weakref.ref(self))

    def one_process_standing_for_two(device):
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        return DistContext(0, 2, torch.device(device))

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("out of memory (raised by the test)")

    def recorded_teardown():
        gc.collect()
        alive_at_teardown.append(wrappers[0]() is not None)
        dist.destroy_process_group()

    monkeypatch.setattr(trainer_module, "DistributedDataParallel", RecordedDDP)
    monkeypatch.setattr(trainer_module.distributed, "setup", one_process_standing_for_two)
    monkeypatch.setattr(trainer_module.distributed, "teardown", recorded_teardown)
    monkeypatch.setattr(BanForVQA, "forward", out_of_memory)
    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            trainer_module.train(tmp_path / "run", run, task)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert len(wrappers) == 1 and alive_at_teardown == [False]


def _on_main_in_a_process(rank: int, store: str, outcome: str, results: str) -> None:
    """Process ``rank`` of two (gloo): :func:`on_main` of work that, in the main process, ends as ``outcome``; the
    type and text of what each process raised (or its value) written to ``results``/<rank>."""
    from ban.cli import Terminated
    from ban.errors import DataError

    def work() -> str:
        if outcome == "terminated":
            raise Terminated
        if outcome == "data error":
            raise DataError("cannot be written: Is a directory", path="run/learning_curves.png")
        return "written"

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        value = on_main(work, DistContext(rank, 2, torch.device("cpu")))
        said = f"value {value}"
    except BaseException as error:  # noqa: BLE001 - what was raised is the result
        said = f"{type(error).__name__} {error} every_process={getattr(error, 'every_process', None)}"
    finally:
        dist.destroy_process_group()
    Path(results, str(rank)).write_text(said)


@pytest.mark.parametrize(("outcome", "main_said", "other_said"), [
    ("written", "value written", "value None"),
    ("data error", "DataError run/learning_curves.png: cannot be written: Is a directory every_process=True",
     "DataError run/learning_curves.png: cannot be written: Is a directory every_process=True"),
    ("terminated", "Terminated  every_process=None", "Terminated  every_process=None"),
])
def test_what_the_main_process_alone_does_ends_every_process_alike(tmp_path, outcome, main_said, other_said):
    """Real processes: a write of the main process's that fails, or a SIGTERM that stops it, is raised in the other
    too (which waited for it), not left for that one's next collective to break off on."""
    context = torch.multiprocessing.get_context("spawn")
    processes = [context.Process(target=_on_main_in_a_process, args=(rank, str(tmp_path / "store"), outcome,
                                                                       str(tmp_path))) for rank in (0, 1)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=120)
            assert process.exitcode == 0
    finally:  # one left waiting for the other is not left behind
        for process in processes:
            process.kill()
    assert (tmp_path / "0").read_text() == main_said and (tmp_path / "1").read_text() == other_said
