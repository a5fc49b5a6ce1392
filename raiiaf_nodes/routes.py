"""The HTTP route behind dropping a .raiiaf onto the ComfyUI canvas: the file in, its stored workflow out.

    POST /raiiaf/workflow?name=<file name>      body: the .raiiaf file (or a PNG made by `raiiaf export`)
    200 {"name", "workflow", "prompt", "message"}   workflow/prompt are null when the file holds none;
                                                    message says why there is no workflow (null when there is)
    400 {"error"}   not a readable .raiiaf (damaged, hostile, not one at all): raiiaf_core's message
    413 {"error"}   larger than ComfyUI's upload limit (--max-upload-size)

The web extension (web/raiiaf.js) asks here first and uploads the file to the input folder only when it is a
sound .raiiaf. The body is spooled to a temporary file (in memory while small), checked completely with
raiiaf_core (every checksum), and only the metadata is parsed. comfy_bridge.register_routes adds the route to
ComfyUI's server; nothing here imports ComfyUI.
"""

from __future__ import annotations

import asyncio
import tempfile

import raiiaf_core as rc

ROUTE = "/raiiaf/workflow"
_SPOOL_IN_MEMORY = 8 << 20
_CHUNK = 1 << 20
_MAX_NAME = 255


class _Upload(tempfile.SpooledTemporaryFile):
    """The request body, named like the dropped file, so raiiaf_core's messages name that file."""

    def __init__(self, name: str):
        super().__init__(max_size=_SPOOL_IN_MEMORY)
        self._upload_name = name

    @property
    def name(self):
        return self._upload_name


def upload_name(raw: str | None) -> str:
    """The dropped file's base name, for messages only: never used as a path."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable())[:_MAX_NAME]
    return name or "dropped file"


def describe(upload, name: str) -> dict:
    """What the frontend needs to load a dropped file's workflow; raises RaiiafError if the file is unsound."""
    art = rc.open(upload)
    art.verify()
    host = art.metadata.get("host")
    comfy = host.get("comfyui") if isinstance(host, dict) else None
    comfy = comfy if isinstance(comfy, dict) else {}
    workflow, prompt = comfy.get("workflow"), comfy.get("prompt")
    workflow = workflow if isinstance(workflow, dict) else None
    prompt = prompt if isinstance(prompt, dict) and prompt else None
    if workflow is not None:
        message = None
    elif prompt is not None:
        message = f"{name} holds no UI workflow, only the API graph it ran"
    else:
        generator = art.metadata.get("generator")
        made_by = generator.get("name") if isinstance(generator, dict) else None
        why = ("it was made outside ComfyUI" if made_by and made_by != "raiiaf_nodes"
               else "it was saved without a workflow (ComfyUI's --disable-metadata, or not from a ComfyUI graph)")
        message = f"{name} holds no ComfyUI workflow to load: {why}"
    return {"name": name, "workflow": workflow, "prompt": prompt, "message": message}


async def answer(request, max_bytes: int):
    """The aiohttp handler: read at most max_bytes of body, describe the file, answer JSON."""
    from aiohttp import web

    name = upload_name(request.query.get("name"))
    too_large = web.json_response(
        {"error": f"{name} is larger than this ComfyUI's upload limit of {max_bytes:,} bytes (--max-upload-size)"},
        status=413)
    if request.content_length is not None and request.content_length > max_bytes:
        return too_large
    with _Upload(name) as upload:
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                return too_large
            upload.write(chunk)
        if size == 0:
            return web.json_response({"error": f"{name} is empty: no file was sent"}, status=400)
        try:
            # Checking every checksum of a large file takes a while: off the event loop.
            body = await asyncio.get_running_loop().run_in_executor(None, describe, upload, name)
        except rc.RaiiafError as exc:
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(body)


def add_to(routes, max_bytes: int) -> None:
    """Add the route to an aiohttp RouteTableDef (ComfyUI's PromptServer.routes), once."""
    if any(getattr(r, "path", None) == ROUTE for r in routes):
        return

    async def workflow(request):
        return await answer(request, max_bytes)

    routes.post(ROUTE)(workflow)
