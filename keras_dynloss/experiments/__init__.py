"""The paper's experiments, run by `python -m keras_dynloss` (layout: `docs/design.md`)."""
