"""`python -m modeling_vlp.commands ...` is the `vlp` command (what torchrun and `accelerate launch` start)."""

import sys

from . import main


sys.exit(main())
