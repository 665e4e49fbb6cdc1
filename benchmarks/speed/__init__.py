"""Speed, memory, FLOPs and parameter cost of SD-LoRA: ``python -m benchmarks.speed [--quick]``.

The command lives in :mod:`benchmarks.speed.command`; this package file imports nothing, so that ``--help``
(``benchmarks/__main__`` of the package, :mod:`benchmarks.commands`) prints before torch, timm and Avalanche load.
Modules: ``command`` (the command and its README), ``models`` (what is measured), ``peers`` (the peer methods as
measured), ``timing``, ``memory``, ``costs`` (parameters, runs' wall times, data loading), ``report``, ``precision``
(bf16 training against float32).
"""
