"""``python -m keras_dynloss``: see :mod:`keras_dynloss.cli`."""

import gc
import sys

from keras_dynloss.cli import main


def run(argv=None):
    """:func:`keras_dynloss.cli.main`, with the garbage collector told to skip
    what the imports built (``gc.freeze``), before and after the command.

    TensorFlow and Keras leave a few million objects; at exit the interpreter's
    last collections would walk them all, about 2 s of a run. Frozen objects
    are still finalised and freed with the process, only not scanned for
    cycles (none of them is garbage: the command ended). Only here, in a
    process that is the command line: ``main()`` called from a program leaves
    that program's collector alone.
    """
    gc.freeze()
    try:
        return main(argv)
    finally:
        gc.freeze()


if __name__ == "__main__":
    sys.exit(run())
