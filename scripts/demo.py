#!/usr/bin/env python
"""``make demo``: the default CIFAR-10 experiment end to end (``--full`` for the full protocol).

Sets CIFAR-10 up from the local archive when needed, ingests the database subset with
each model into the embedded store, runs notebooks/03_benchmark.ipynb with papermill
and prints the summary table (see ``imgsim_lab.experiments.demo``).
"""

import sys

from imgsim_lab.experiments import demo_main
from imgsim_lab.log import setup_logging

if __name__ == "__main__":
    setup_logging("demo")
    sys.exit(demo_main(sys.argv[1:]))
