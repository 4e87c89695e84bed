"""A griffe extension for the API pages: docstrings that a module builds at import time.

Some classes assign `__doc__` from a shared text (the loss classes share their `Args:`), which
static analysis cannot read. For a class without a static docstring, this reads `__doc__` from
the imported class and parses it like any other docstring.
"""

import importlib
import inspect

import griffe


class RuntimeDocstrings(griffe.Extension):
    def on_class_instance(self, *, node, cls, agent, **kwargs):
        if cls.docstring is not None:
            return
        try:
            obj = getattr(importlib.import_module(cls.module.path), cls.name)
        except (ImportError, AttributeError):
            return
        if obj.__doc__ and obj.__doc__ is not getattr(obj.__mro__[1], "__doc__", None):
            cls.docstring = griffe.Docstring(
                inspect.cleandoc(obj.__doc__), parent=cls,
                parser=getattr(agent, "docstring_parser", None),
                parser_options=getattr(agent, "docstring_options", None))
