"""The paper's benchmarks from a user's own files, as Avalanche 0.6 class-incremental benchmarks.

``imagenet_r``, ``imagenet_a``, ``cub200``, ``domainnet`` and ``cifar100`` each take a path (or an environment
variable) and return a benchmark whose ``info`` says which split it used; ``PAPER_BENCHMARKS`` records every
benchmark's classes, task counts, published split sizes and archive md5, and ``paper_benchmark("imagenet-r-10",
root)`` builds one named protocol.
"""

from .paper import (LOADERS, LOCATIONS, PAPER_BENCHMARKS, PAPER_PROTOCOLS, PaperBenchmark, SplitSpec, cifar100, cub200,
                    data_location, domainnet, imagenet_a, imagenet_r, paper_benchmark)
from .scenario import BenchmarkInfo, class_order
from .transforms import sdlora_transforms, timm_normalization

__all__ = ["imagenet_r", "imagenet_a", "cub200", "domainnet", "cifar100", "paper_benchmark", "PAPER_BENCHMARKS",
           "PAPER_PROTOCOLS", "LOADERS", "LOCATIONS", "data_location", "PaperBenchmark", "SplitSpec", "BenchmarkInfo",
           "class_order", "sdlora_transforms", "timm_normalization"]
