import sys

from ..compare import cli
from . import main

sys.exit(cli(main=main))  # errors as one line, as compare's
