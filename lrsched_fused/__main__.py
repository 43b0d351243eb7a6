"""``python -m lrsched_fused <command>``: see :mod:`lrsched_fused.cli`."""

import sys

from lrsched_fused.cli import main

sys.exit(main())
