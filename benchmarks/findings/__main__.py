import sys

from .command import cli

sys.exit(cli())
