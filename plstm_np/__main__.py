"""``python -m plstm_np``: the ``plstm-np`` command (see :mod:`plstm_np.cli`)."""
import sys

from .cli import main

sys.exit(main())
