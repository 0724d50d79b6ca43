"""The leaf of the CLI package: exit codes and the handler type. Every command module imports
these from here, never from `edge.cli` itself, so no module imports the package back."""

from __future__ import annotations

import argparse
from collections.abc import Callable

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2

Handler = Callable[[argparse.Namespace], int]
