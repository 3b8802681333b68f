"""The same NICE training step in PyTorch, for comparison with
`go test -tags openblas -bench BenchmarkTrainStep ./flow/`.

Four additive couplings (392 -> 1000 x 5 ReLU -> 392), diagonal scaling,
logistic prior, Adam(lr 1e-3, betas (0.9, 0.99), eps 1e-4), batch 256 of
random inputs in [0,1]. Prints samples/s after warm-up.

    python3 bench/pytorch_nice.py --threads 1
    OPENBLAS_NUM_THREADS=2 python3 bench/pytorch_nice.py --threads 1   # tuned: 1 OpenMP, 2 BLAS threads
"""
import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Coupling(nn.Module):
    def __init__(self, parity, hidden=1000, layers=5):
        super().__init__()
        self.parity = parity
        dims = [392] + [hidden] * layers
        mods = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        mods.append(nn.Linear(hidden, 392))
        self.m = nn.Sequential(*mods)

    def forward(self, x):
        x1, x2 = (x[:, 0::2], x[:, 1::2]) if self.parity == 0 else (x[:, 1::2], x[:, 0::2])
        y2 = x2 + self.m(x1)
        out = torch.empty_like(x)
        if self.parity == 0:
            out[:, 0::2], out[:, 1::2] = x1, y2
        else:
            out[:, 1::2], out[:, 0::2] = x1, y2
        return out


class NICE(nn.Module):
    def __init__(self):
        super().__init__()
        self.couplings = nn.ModuleList([Coupling(k % 2) for k in range(4)])
        self.s = nn.Parameter(torch.zeros(784))

    def forward(self, x):
        for c in self.couplings:
            x = c(x)
        h = x * torch.exp(self.s)
        logp = -(F.softplus(h) + F.softplus(-h)).sum(1)
        return logp + self.s.sum()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1, help="torch (OpenMP) threads")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = NICE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-4)
    x = torch.rand(256, 784)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = -model(x).mean()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t0
    print(f"torch {torch.__version__}, {args.threads} torch threads: {256 * args.steps / dt:.0f} samples/s")


if __name__ == "__main__":
    main()
