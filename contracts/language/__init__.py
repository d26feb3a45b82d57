"""The languages inside a workflow config, checked where a config is read.

- :mod:`contracts.language.expr`: CEL expressions and ``${...}`` templates;
- :mod:`contracts.language.schema`: JSON Schema (2020-12) of inputs and outputs;
- :mod:`contracts.language.checks`: what a config's expressions and constant values must
  satisfy before it is accepted.

Pure: no I/O, so every party to the wire can check a config the same way.
"""

__all__ = ["checks", "expr", "schema"]
