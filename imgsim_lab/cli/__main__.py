"""``python -m imgsim_lab.cli``: the same as the ``imgsim`` command."""

import sys

from imgsim_lab.cli import main

sys.exit(main())
