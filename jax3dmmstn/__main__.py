"""``python -m jax3dmmstn COMMAND ...``: the same as the ``jax3dmmstn`` command."""

import sys

from jax3dmmstn.cli import main

if __name__ == "__main__":
    sys.exit(main())
