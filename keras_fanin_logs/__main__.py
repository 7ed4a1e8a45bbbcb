"""`python -m keras_fanin_logs`: the `keras-fanin` command, without importing keras."""

import sys

from keras_fanin_logs._cli import main

sys.exit(main())
