"""Forward + backward ms of one attention call, fused kernel vs PyTorch's math backend vs explicit matmuls + softmax.

Usage: OMP_NUM_THREADS=1 python attention_kernels.py BATCH HEAD_WIDTH   (4 heads; CPU scale: 128 16, paper: 256 64)
Rows: (queries, keys) = (16, 16) decoder/action-encoder self-attention, (16, 2) cross-attention to the observation
memory, (2, 2) observation-encoder self-attention; medians of 60 calls after 5 warm-up calls, two runs each.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def explicit(q, k, v):
    return torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, dim=-1) @ v


def fused(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def math_backend(q, k, v):
    with sdpa_kernel(SDPBackend.MATH):
        return F.scaled_dot_product_attention(q, k, v)


def median_ms(fn, batch: int, width: int, queries: int, keys: int, n: int = 60) -> float:
    q = torch.randn(batch, 4, queries, width, requires_grad=True)
    k = torch.randn(batch, 4, keys, width, requires_grad=True)
    v = torch.randn(batch, 4, keys, width, requires_grad=True)
    grad = torch.randn(batch, 4, queries, width)
    for _ in range(5):
        fn(q, k, v).backward(grad)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn(q, k, v).backward(grad)
        times.append(time.perf_counter() - t)
    return sorted(times)[n // 2] * 1e3


def main(batch: str = "128", width: str = "16") -> None:
    torch.set_num_threads(1)
    b, w = int(batch), int(width)
    for queries, keys in [(16, 16), (16, 2), (2, 2)]:
        for _ in range(2):
            print(
                f"{queries} x {keys}: fused {median_ms(fused, b, w, queries, keys):.2f}  "
                f"math {median_ms(math_backend, b, w, queries, keys):.2f}  "
                f"explicit {median_ms(explicit, b, w, queries, keys):.2f} ms"
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
