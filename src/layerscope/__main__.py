"""``python -m layerscope`` runs the command line."""

import sys

from layerscope.cli import main

sys.exit(main())
