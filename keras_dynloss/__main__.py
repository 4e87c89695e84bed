"""`python -m keras_dynloss`: see `keras_dynloss.cli`."""

import sys

from keras_dynloss.cli import main

if __name__ == "__main__":
    sys.exit(main())
