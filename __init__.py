"""ComfyUI entry point of raiiaf, used when this repository is cloned into ComfyUI/custom_nodes/.

ComfyUI imports this file by its location, as a package named after the folder; custom_nodes/ is not on
sys.path. The nodes are imported relatively, so the clone's own raiiaf_nodes is always the one used. They
import the format core as the top-level package `raiiaf_core`: if it is installed (`pip install raiiaf-plugins`, or
`pip install -e .` of this clone), that one is used; if not, this folder is appended to sys.path so the
clone's own raiiaf_core is found. Appending (not prepending) never shadows a module of ComfyUI or of another
node pack.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("raiiaf_core") is None:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))

if __package__:
    from .raiiaf_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
else:
    # Imported as a plain module, not as a package: pytest does that with a clone whose folder name is not a
    # Python name (raiiaf-main). This folder is on sys.path then, so the absolute import finds the same nodes.
    from raiiaf_nodes.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./raiiaf_nodes/web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
