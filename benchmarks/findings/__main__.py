import sys

from ..commands import print_kept_help

print_kept_help("benchmarks.findings", sys.argv[1:])  # --help before torch, timm and Avalanche load

from .command import cli

sys.exit(cli())
