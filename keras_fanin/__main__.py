"""`python -m keras_fanin`: the `keras-fanin` command."""

import sys

from keras_fanin_logs._cli import main

sys.exit(main())
