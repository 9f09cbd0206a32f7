"""dytrim: long-tailed semi-supervised image classification in PyTorch.

Importing the package registers every data set, model, SSL base and debiaser (with its config section), so the
configuration's allowed names are complete whatever module a program imports first."""

__version__ = "0.1.0"

from dytrim import debias as _debias  # noqa: E402,F401  (registers the debiasers and their config sections)
from dytrim import models as _models  # noqa: E402,F401  (registers the backbones)
from dytrim import ssl as _ssl  # noqa: E402,F401  (registers the SSL bases)
from dytrim.data import sources as _sources  # noqa: E402,F401  (registers the data sets)
