"""`python -m signatures.cli`: the `trimmer` command."""
import sys

from signatures.cli import main

sys.exit(main())
