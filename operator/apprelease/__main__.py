"""`python -m apprelease`: the same command as the `apprelease` console script.

For hosts and images where only the interpreter is on PATH (a venv not activated, a
self-contained runtime copied onto a host): the console script's entry point, nothing more.
"""

import sys

from .cli import main

sys.exit(main())
