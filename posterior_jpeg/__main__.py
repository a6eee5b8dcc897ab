"""`python -m posterior_jpeg COMMAND ...` (and `torchrun -m posterior_jpeg eval ...`): the `posterior-jpeg` command."""

import sys

from .commands import main

sys.exit(main())
