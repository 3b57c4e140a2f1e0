"""wbcv: verification and validation of image-based WBC differential analyzers (command line)."""

from importlib import metadata

try:
    __version__ = metadata.version("wbcv")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"
