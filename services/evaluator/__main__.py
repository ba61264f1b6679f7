"""`python -m services.evaluator`: the evaluation worker, the same as `adgen worker eval [OPTIONS]`."""

import sys

from shared.jobs.worker import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
