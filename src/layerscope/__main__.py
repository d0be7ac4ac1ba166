"""``python -m layerscope`` runs the command line; under ``torchrun -m layerscope`` every rank
runs it data-parallel (see :mod:`layerscope.launch`)."""

import sys

from layerscope.launch import main

sys.exit(main())
