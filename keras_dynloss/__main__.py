"""`python -m keras_dynloss`: see `keras_dynloss.cli`."""

import gc
import sys

from keras_dynloss.cli import main

if __name__ == "__main__":
    gc.freeze()  # the imports' objects are never garbage: no collection need walk them
    sys.exit(main())
