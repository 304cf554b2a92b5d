"""``python -m diffjax {train,eval,sweep,generate,demo} --config=... --workdir=...`` (see diffjax/cli.py)."""

import sys

from diffjax.cli import main

if __name__ == "__main__":
    sys.exit(main())
