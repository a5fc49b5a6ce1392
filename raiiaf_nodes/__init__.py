"""ComfyUI nodes for raiiaf: capture what the sampler really used, save it with the image, replay it.

Importing this package never imports ComfyUI: the node logic (noise reconstruction, records, saving,
replay, path and hash handling) works on plain tensors and files. Everything that touches ComfyUI's own
modules lives in `comfy_bridge`, which only the node classes in `nodes` import, and only when called.
"""

__version__ = "2.0.0"
