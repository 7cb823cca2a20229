"""Two gloo processes with different data keep identical codebooks, equal to one process on the whole batch.

Each rank sees its own micro-batches (different sizes and distributions). After every optimizer step the
all-reduced EMA update and the rank-consistent restart draw must leave every rank with the same codebook
as a single process that saw all ranks' batches concatenated in rank order.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dualtoken_lite.quantizers.residual import ResidualQuantizer

WORLD = 2
STEPS = 4
OPTIONS = {"shared": {"shared_codebook": True}, "per_depth": {"shared_codebook": False}}


def make(options):
    torch.manual_seed(0)  # identical initial codebooks on every rank
    return ResidualQuantizer(dim=4, depth=3, codebook_size=24, dead_code_threshold=3.0, **options)


def micro_batches(step: int, rank: int) -> list[torch.Tensor]:
    """Rank r's two micro-batches at a step: sizes and distributions differ between ranks."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    sizes = (13, 7) if rank == 0 else (5, 21)
    return [torch.randn(n, 3, 4, generator=g) * (1 + rank) + 2.0 * rank for n in sizes]


def worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        quantizers = {name: make(options) for name, options in OPTIONS.items()}
        history = {name: [] for name in OPTIONS}
        for step in range(STEPS):
            for name, rq in quantizers.items():
                for batch in micro_batches(step, rank):
                    rq(batch)
                log = rq.update_codebook()
                history[name].append(({k: v.clone() for k, v in rq.state_dict().items()}, log))
        torch.save(history, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for name, options in OPTIONS.items():
        single = make(options)
        initial = single.codebooks[0].embed.clone()
        restarted_after_init = 0.0
        for step in range(STEPS):
            single(torch.cat([b for r in range(WORLD) for b in micro_batches(step, r)]))
            log = single.update_codebook()
            for r in range(WORLD):
                state, rank_log = ranks[r][name][step]
                assert rank_log["restarted"] == log["restarted"] and rank_log["vectors"] == log["vectors"]
                for key, value in single.state_dict().items():
                    if r == 1:  # ranks agree with each other exactly
                        assert torch.equal(state[key], ranks[0][name][step][0][key]), (name, step, key)
                    torch.testing.assert_close(state[key], value, rtol=0, atol=1e-5, msg=f"{name} {step} {key}")
            if step:
                restarted_after_init += log["restarted"]
        assert not torch.allclose(single.codebooks[0].embed, initial)  # the codebook did change
        assert restarted_after_init > 0  # and restarts (the rank-consistent draw) were exercised
