"""`python -m services.trainer`: the training worker, the same as `adgen worker train [OPTIONS]`."""

import sys

from shared.jobs.worker import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
