"""wbcv: verification and validation of image-based WBC differential analyzers.

One installed top-level name: the layers install as ``wbcv.inference``, ``wbcv.validation``,
``wbcv.dashboards`` and ``wbcv.fixtures`` (a wheel puts them inside this package through
pyproject's ``package-dir``), ``wbcv.base`` is what they share.
"""

from importlib import metadata
from pathlib import Path

try:
    __version__ = metadata.version("wbcv")
except metadata.PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+source"

# In a source tree (a clone, a git worktree, an editable install) the layers' folders sit beside
# this one, at the top level the product brief fixes: look for ``wbcv.inference`` & co. there too,
# so that a checkout always imports its own code. A wheel has them inside this folder instead.
_here = Path(__file__).resolve().parent
if not (_here / "inference").is_dir() and (_here.parent / "inference" / "__init__.py").is_file():
    __path__.append(str(_here.parent))
