"""PyTorch DistributedDataParallel on gloo training the same NICE model, for
comparison with `go test -tags openblas -bench BenchmarkThroughput ./internal/clustertest/`.

Global batch 256 split over N processes, one thread each (torch and BLAS).

    OPENBLAS_NUM_THREADS=1 python3 bench/pytorch_ddp.py --workers 2
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from pytorch_nice import NICE


def member(rank, n, steps, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    torch.manual_seed(1)
    model = DDP(NICE())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-4)
    x = torch.rand(256 // n, 784)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = -model(x).mean()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        out.put(256 * steps / dt)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--port", type=int, default=29527)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=member, args=(r, a.workers, a.steps, a.port, q)) for r in range(a.workers)]
    for p in procs:
        p.start()
    sps = q.get()
    for p in procs:
        p.join()
    print(f"DDP gloo, {a.workers} processes: {sps:.0f} samples/s")


if __name__ == "__main__":
    main()
