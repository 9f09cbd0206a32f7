"""DataError, the one exception for a bad data file, and the wording its messages share.

Every reader turns bad input (missing, truncated, wrong shape or dtype, labels out of range) into a DataError that
names the file and says how to fix it.
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CORRUPT_ERRORS", "REDOWNLOAD", "DataError", "not_found"]

REDOWNLOAD = "re-download the data set (or regenerate the file)"

#: What reading a truncated or corrupt file raises (numpy, zip, gzip, pickle streams).
CORRUPT_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError)


class DataError(ValueError):
    """A data file is missing, corrupt or malformed; the message names the file and the fix."""


def not_found(what: str, looked_for: Sequence[Path | str], fix: str) -> DataError:
    """The DataError for `what` not found: every path looked at, then the fix."""
    listing = "\n  ".join(str(p) for p in looked_for)
    return DataError(f"{what}: not found. Looked for:\n  {listing}\n{fix}")
