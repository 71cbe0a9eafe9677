"""Pin every CPU kernel choice that would make training depend on the machine it runs on.

PyTorch picks kernels by CPU at load time: ATen's vectorised loops by the widest instruction
set (AVX2 or AVX-512 lanes sum in a different order), MKL's BLAS by the CPU and by the thread
count, oneDNN's convolutions by the CPU. Each choice changes the rounding, so the same seed
gave different weights on an AVX-512 EPYC than on an AVX2 laptop. Fixing them all makes CPU
training bit-identical on every x86-64 machine with AVX2 or newer, whatever its core count.

The variables are read when torch and MKL load, so `pin_cpu_kernels()` must run before
anything imports torch: the train stage and the SageMaker container call it first thing.
This module imports nothing heavy for that reason.
"""
from __future__ import annotations

import contextlib
import os
import sys

PINNED_ENV = {
    # ATen's CPU dispatch: the AVX2 kernels exist on every x86-64 CPU this project supports.
    "ATEN_CPU_CAPABILITY": "avx2",
    # MKL's conditional numerical reproducibility: the AVX2 code path, and STRICT so that
    # results do not depend on the number of threads either.
    "MKL_CBWR": "AVX2,STRICT",
    # MKL's FFT (torch.stft, so the featurizer) is outside CBWR: it picks its kernels by the
    # instructions MKL may use, AVX-512 where the CPU has it; AVX2 exists on every supported CPU.
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    # cuBLAS needs a fixed workspace to be deterministic (GPUs are repeatable on the same GPU
    # model only; see docs/pipeline.md: Reproducibility).
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}


def pin_cpu_kernels() -> None:
    """Fix ATen's and MKL's kernel choice for this process; call it before importing torch.

    Overrides whatever the caller set (e.g. MKL_ENABLE_INSTRUCTIONS or ATEN_CPU_CAPABILITY),
    because any other value changes the weights. oneDNN is switched off where training
    runs, and `cpu_kernels_pinned` tells whether this process was pinned in time.
    """
    os.environ.update(PINNED_ENV)


def cpu_kernels_pinned() -> bool:
    """True if torch runs ATen's AVX2 kernels and MKL's pinned path, i.e. it was loaded after
    `pin_cpu_kernels()` (False too on a CPU without AVX2)."""
    import torch

    return (all(os.environ.get(k) == v for k, v in PINNED_ENV.items())
            and torch.backends.cpu.get_cpu_capability() == "AVX2")


@contextlib.contextmanager
def reproducible_cpu_kernels():
    """oneDNN off and one intra-op thread while torch computes, restored afterwards.

    oneDNN picks its convolution kernels by CPU; MKL's gemm and ATen's full reductions
    split the work by thread count (measured: 3 threads give other weights than 1 or 2).
    The env half of the pinning (ATen's AVX2 kernels, MKL_CBWR) must precede `import torch`.
    """
    import torch

    if not cpu_kernels_pinned():
        print("coughlab: torch was imported before coughlab.determinism.pin_cpu_kernels(): "
              "the results may differ on other CPUs", file=sys.stderr)
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn
