#!/usr/bin/env python
"""Remove one namespace from a Kvrocks/Redis (or embedded) store: ``imgsim flush``."""

import sys

from imgsim_lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["flush", *sys.argv[1:]]))
