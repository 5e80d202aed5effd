"""inspector: inline visual inspection for manufacturing lines."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("inspector")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
