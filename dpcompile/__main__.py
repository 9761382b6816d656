"""python -m dpcompile: the command line (dpcompile.cli)."""
import sys

from .cli import main

sys.exit(main())
