"""DistributedDataParallel: two CPU processes (gloo) train as one process does on the whole batch."""

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fixedbranch as fb

from .common import assert_close

WORLD_SIZE = 2
STEPS = 3
TIMEOUT_S = 120


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        fb.FixedBranchConv2d(3, 4, 3, padding=1, bank=fb.filters.bank("sobel_x", "sobel_y"),
                             filter_padding_mode="reflect"),
        nn.ReLU(),
        fb.FixedBranch(fb.filters.bank("laplacian4"), "replicate"),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(24, 3),
    )


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, 8, 3, 10, 10, generator=g), torch.randint(0, 3, (STEPS, 8), generator=g)


def _train(model: nn.Module, inputs, targets, rank: int = 0, world_size: int = 1) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for x, t in zip(inputs, targets):
        # Each rank takes its contiguous share of the batch; DDP averages the gradients of the mean losses,
        # which is the gradient of the mean loss over the whole batch.
        x, t = x.chunk(world_size)[rank], t.chunk(world_size)[rank]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), t).backward()
        opt.step()


def _worker(rank: int, store_path: str, result_path: str) -> None:
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # the processes talk over the loopback interface only
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD_SIZE,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        _train(model, *_data(), rank=rank, world_size=WORLD_SIZE)
        if rank == 0:
            torch.save(model.module.state_dict(), result_path)
        # Both ranks leave together: a rank that tears gloo down while its peer is still connected can make the
        # peer's gloo thread abort the process ("terminate called without an active exception", seen once on a
        # loaded 2-core machine).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process_training(tmp_path):
    result = tmp_path / "ddp_state.pt"
    # A file store needs no free port. "spawn", not "fork": autograd refuses to run in a process forked after
    # the parent ran a backward pass on a GPU (its device threads cannot cross a fork).
    workers = mp.start_processes(_worker, args=(str(tmp_path / "store"), str(result)), nprocs=WORLD_SIZE,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not workers.join(timeout=1):  # raises if a worker failed, and then stops the other one
        if time.monotonic() > deadline:
            for process in workers.processes:
                process.kill()
            pytest.fail(f"the DDP workers did not finish within {TIMEOUT_S} s")

    single = _model()
    _train(single, *_data())
    trained = torch.load(result, weights_only=True)
    assert sorted(trained) == sorted(single.state_dict())
    initial = _model().state_dict()
    for name, value in single.state_dict().items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        assert_close(trained[name], value, torch.float32, name)
