"""`python -m soundstorm_jax ...`: the `soundstorm` command line."""
import sys

from soundstorm_jax.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
