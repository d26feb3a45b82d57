"""natsflow's shared contracts: message models, subject names, errors and the client.

Imports nothing of natsflow's own; every other package imports this one.
"""

from importlib.metadata import version as _version

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .ids import deterministic_id, new_id
from .messages import *  # noqa: F403
from .messages import __all__ as _messages_all
from .models import *  # noqa: F403
from .models import __all__ as _models_all
from .subjects import DEFAULT_PREFIX, Subjects

#: natsflow's version, as installed (pyproject.toml is its one home).
__version__ = _version("natsflow")

__all__ = [*_errors_all, *_messages_all, *_models_all, "DEFAULT_PREFIX", "Subjects",
           "__version__", "deterministic_id", "new_id"]
