"""``taskscale new``: render the project templates into a new directory, safely."""

from taskscale.scaffold.new import NewProjectResult, NewProjectSpec, create_project
from taskscale.scaffold.render import render_tree, template_root

__all__ = ["NewProjectResult", "NewProjectSpec", "create_project", "render_tree", "template_root"]
