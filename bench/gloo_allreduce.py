"""PyTorch's gloo all-reduce of the same buffer, for comparison with
`nice-coord bench allreduce --workers N --floats 19200000`.

    python3 bench/gloo_allreduce.py --workers 2
"""
import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def member(rank, n, floats, iters, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=n)
    buf = torch.ones(floats)
    for _ in range(2):
        dist.all_reduce(buf)
    times, cpus = [], []
    for _ in range(iters):
        dist.barrier()
        c0, t0 = time.process_time(), time.perf_counter()
        dist.all_reduce(buf)
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    t = torch.tensor(times, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    c = torch.tensor(cpus, dtype=torch.float64)
    dist.all_reduce(c)  # CPU of all members, run by run
    if rank == 0:
        out.put((t.tolist(), c.tolist()))
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--floats", type=int, default=19_200_000)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--port", type=int, default=29517)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=member, args=(r, a.workers, a.floats, a.iters, a.port, q)) for r in range(a.workers)]
    for p in procs:
        p.start()
    times, cpus = q.get()
    for p in procs:
        p.join()
    med = statistics.median(times)
    algbw = a.floats * 4 / med / 1e9
    busbw = algbw * 2 * (a.workers - 1) / a.workers
    # As the Go bench's cpu_ns_per_byte: CPU of all members (their I/O
    # threads included) per byte that crossed a link.
    moved = a.floats * 4 * 2 * (a.workers - 1)
    cpu = statistics.median(cpus) * 1e9 / moved
    print(f"gloo N={a.workers}: median {med:.4f} s, algbw {algbw:.3f} GB/s, busbw {busbw:.3f} GB/s, CPU {cpu:.2f} ns per byte over a link")


if __name__ == "__main__":
    main()
