"""`python -m crtool`, the same as the `crtool` command."""

import sys

from crtool.cli import main

sys.exit(main())
