"""The route behind dropping a .raiiaf on the ComfyUI canvas (raiiaf_nodes/routes.py), served by a real aiohttp
server on 127.0.0.1 and called over HTTP, as ComfyUI's PromptServer serves it (tests/comfyui_browser drives it
from a browser in a real ComfyUI)."""

import asyncio
import json
from pathlib import Path

import pytest

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestServer  # noqa: E402

import raiiaf_core as rc  # noqa: E402
from raiiaf_nodes import routes  # noqa: E402
from conftest import FIXED_ENV, png_bytes  # noqa: E402

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


def post(body, *, name="fox.raiiaf", max_bytes=1 << 20, chunked=False):
    """(status, JSON answer) of one POST to the route of a fresh server."""
    async def go():
        table = web.RouteTableDef()
        routes.add_to(table, max_bytes)
        app = web.Application()
        app.add_routes(table)
        async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as session:
            data = body
            if chunked:  # no Content-Length: the limit must hold while reading
                async def pieces():
                    for start in range(0, len(body), 1000):
                        yield body[start:start + 1000]
                data = pieces()
            async with session.post(server.make_url(routes.ROUTE), params={"name": name}, data=data) as response:
                return response.status, await response.json()

    return asyncio.run(go())


def comfyui_file(tmp_path, **metadata) -> bytes:
    workflow = json.loads((WORKFLOWS / "raiiaf_capture_save.json").read_text())
    prompt = json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())
    meta = {"generator": {"name": "raiiaf_nodes", "version": "2.0.0"},
            "host": {"comfyui": {"workflow": workflow, "prompt": prompt}}, **metadata}
    return rc.write(tmp_path / "f.raiiaf", image=png_bytes(), metadata=meta, environment=FIXED_ENV).read_bytes()


def test_the_stored_workflow_comes_back(tmp_path):
    status, answer = post(comfyui_file(tmp_path))
    assert status == 200
    assert answer["workflow"] == json.loads((WORKFLOWS / "raiiaf_capture_save.json").read_text())
    assert answer["prompt"] == json.loads((WORKFLOWS / "raiiaf_capture_save_api.json").read_text())
    assert answer == dict(answer, name="fox.raiiaf", message=None)


def test_a_file_without_a_workflow_says_why(tmp_path, small_file):
    status, answer = post(small_file.read_bytes())
    assert status == 200 and answer["workflow"] is None and answer["prompt"] is None
    assert answer["message"].startswith("fox.raiiaf holds no ComfyUI workflow to load: it was saved without")
    diffusers = rc.write(tmp_path / "d.raiiaf", image=png_bytes(),
                         metadata={"generator": {"name": "raiiaf_diffusers", "version": "0.1"}}).read_bytes()
    assert post(diffusers)[1]["message"].endswith("it was made outside ComfyUI")
    only_prompt = comfyui_file(tmp_path, host={"comfyui": {"prompt": {"1": {"class_type": "X", "inputs": {}}}}})
    status, answer = post(only_prompt)
    assert answer["workflow"] is None and answer["prompt"] == {"1": {"class_type": "X", "inputs": {}}}
    assert answer["message"] == "fox.raiiaf holds no UI workflow, only the API graph it ran"


def test_damaged_and_foreign_files_are_a_clear_400(tmp_path):
    data = bytearray(comfyui_file(tmp_path))
    data[-10] ^= 0xFF  # inside the image chunk, which comes last
    status, answer = post(bytes(data))
    assert status == 400 and answer == {"error": "fox.raiiaf: image chunk is damaged (sha256 mismatch)"}
    status, answer = post(png_bytes(), name="cat.png.raiiaf")
    assert status == 400 and answer["error"].startswith("cat.png.raiiaf: ")
    assert post(b"")[1] == {"error": "fox.raiiaf is empty: no file was sent"}


@pytest.mark.parametrize("chunked", [False, True])
def test_bodies_over_the_limit_are_refused_while_reading(tmp_path, chunked):
    data = comfyui_file(tmp_path)
    status, answer = post(data, max_bytes=len(data) - 1, chunked=chunked)
    assert status == 413
    assert answer == {"error": f"fox.raiiaf is larger than this ComfyUI's upload limit of {len(data) - 1:,} bytes "
                               "(--max-upload-size)"}
    assert post(data, max_bytes=len(data), chunked=chunked)[0] == 200


def test_the_name_is_only_a_label():
    assert routes.upload_name("../../etc/passwd") == "passwd"
    assert routes.upload_name("C:\\Users\\me\\fox\x1b[31m\n.raiiaf") == "fox[31m.raiiaf"
    assert routes.upload_name(None) == routes.upload_name("a/") == "dropped file"
    assert len(routes.upload_name("x" * 1000)) == 255


def test_the_route_is_added_once():
    table = web.RouteTableDef()
    routes.add_to(table, 10)
    routes.add_to(table, 10)  # the package imported twice (a clone and a pip install) must not add it twice
    assert [(r.method, r.path) for r in table] == [("POST", routes.ROUTE)]


def test_an_exported_png_is_read_like_the_raiiaf(tmp_path):
    path = tmp_path / "f.raiiaf"
    path.write_bytes(comfyui_file(tmp_path))
    status, answer = post(rc.export_png(path).read_bytes(), name="fox.png")
    assert status == 200 and answer["name"] == "fox.png" and answer["message"] is None
    assert answer["workflow"] == json.loads((WORKFLOWS / "raiiaf_capture_save.json").read_text())
    status, answer = post(png_bytes(), name="photo.png")
    assert status == 400 and "not made by `raiiaf export`" in answer["error"]
