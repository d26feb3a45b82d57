"""The CEL engine (``common-expression-language``), without its command line.

The package's ``__init__`` imports its REPL (``cel.cli``: typer, rich, prompt_toolkit,
pygments) before the engine: about a second of start-up, on this machine, for every
natsflow process that reads a workflow (orchestrator, gateway, CLI, workers' tests).
Only the compiled extension ``cel.cel`` is used here, so it is loaded on its own when
the installed package has the layout of the pinned version (uv.lock); otherwise the
package is imported whole, as before. ``tests/test_import_graph.py`` checks both that
the REPL stays out and that ``import cel`` still works after this.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["cel"]

_NAME = "cel.cel"


def _load() -> ModuleType:
    loaded = sys.modules.get(_NAME)
    if loaded is not None:
        return loaded
    package = importlib.util.find_spec("cel")  # finds it, runs none of its code
    for where in (package.submodule_search_locations or []) if package else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(where) / f"cel{suffix}"
            spec = importlib.util.spec_from_file_location(_NAME, path) if path.is_file() else None
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            # Registered under its own name, so a later `import cel` reuses it (its
            # `from .cel import *`) instead of initialising the extension twice.
            sys.modules[_NAME] = module
            spec.loader.exec_module(module)
            return module
    import cel as whole  # another layout: the whole package, REPL and all

    return whole


cel = _load()
