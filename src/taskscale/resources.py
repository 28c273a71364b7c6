"""Where taskscale's own files are: the project templates, packaged or in a source checkout.

The one template locator: ``taskscale new`` renders from it and ``taskscale loadtest`` finds
the built-in scenarios' locustfile in it when run outside a project.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from taskscale.errors import TaskscaleError


def template_root() -> Path:
    """The project templates: packaged data in a wheel, ``templates/`` in a checkout."""
    packaged = resources.files("taskscale") / "templates" / "project"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parents[2] / "templates" / "project"
    if checkout.is_dir():
        return checkout
    raise TaskscaleError("taskscale's project templates are missing from this installation")
