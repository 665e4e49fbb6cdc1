import sys

from ..commands import print_kept_help

print_kept_help("benchmarks.speed", sys.argv[1:])  # --help before torch, timm and Avalanche load

from ..compare import cli
from .command import main

sys.exit(cli(main=main))  # errors as one line, as compare's
