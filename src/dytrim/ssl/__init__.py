"""Base semi-supervised algorithms: they decide pseudo-label targets and masks (see fixmatch.py); ReMixMatch also
forms the step's losses from its own mixed forwards (remixmatch.py)."""

from dytrim.ssl import fixmatch as _fixmatch  # noqa: F401  (registers fixmatch and supervised)
from dytrim.ssl import flexmatch as _flexmatch  # noqa: F401  (registers flexmatch)
from dytrim.ssl import freematch as _freematch  # noqa: F401  (registers freematch)
from dytrim.ssl import remixmatch as _remixmatch  # noqa: F401  (registers remixmatch and its config section)
from dytrim.ssl.base import ALGORITHMS, SSLAlgorithm, create_ssl

__all__ = ["ALGORITHMS", "SSLAlgorithm", "create_ssl"]
