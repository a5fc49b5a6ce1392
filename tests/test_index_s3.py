"""The index over object storage: a real S3-protocol server (moto's, on 127.0.0.1) read through s3fs and
fsspec's HTTP filesystem; a counting layer in front of the server shows that only ranges were fetched."""

import io
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet")
s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
pytest.importorskip("aiohttp")

from PIL import Image  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

import raiiaf_core as rc  # noqa: E402
from raiiaf_core.index import build_index  # noqa: E402
from raiiaf_core.layout import FIRST_READ  # noqa: E402

from test_index import HERE, comfy_metadata  # noqa: E402

V1 = Path(__file__).parent / "data" / "v1"
BUCKET = "renders"


class CountingLayer:
    """WSGI middleware in front of moto: records each request's method, path, Range header and body bytes sent."""

    def __init__(self, app):
        self.app, self.lock, self.requests = app, threading.Lock(), []

    def __call__(self, environ, start_response):
        request = [environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), environ.get("QUERY_STRING", ""),
                   environ.get("HTTP_RANGE"), 0]
        body = self.app(environ, start_response)
        try:
            for chunk in body:
                request[4] += len(chunk)
                yield chunk
        finally:
            if hasattr(body, "close"):
                body.close()
            with self.lock:
                self.requests.append(tuple(request))

    def object_gets(self):
        """(key, Range header, bytes) of every GET of an object (listings are GETs of the bucket, with a query)."""
        with self.lock:
            return [(path.removeprefix(f"/{BUCKET}/"), rng, sent) for method, path, query, rng, sent in self.requests
                    if method == "GET" and path.startswith(f"/{BUCKET}/") and not query]

    def reset(self):
        with self.lock:
            self.requests.clear()


@pytest.fixture(scope="module")
def server():
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    counting = CountingLayer(moto_server.DomainDispatcherApplication(moto_server.create_backend_app))
    httpd = make_server("127.0.0.1", 0, counting, threaded=True, request_handler=moto_server.MotoRequestHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", counting
    httpd.shutdown()
    thread.join(10)


def big_png(seed):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (600, 600, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def stored(server, tmp_path):
    """The same files in a local folder and in the bucket: four of 2 MB, a damaged one, a v1 file, a text file."""
    endpoint, counting = server
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
               "client_kwargs": {"region_name": "eu-west-1"}}
    fs = s3fs.S3FileSystem(**options)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    fs.rm(f"{BUCKET}/archive", recursive=True) if fs.exists(f"{BUCKET}/archive") else None
    local = tmp_path / "archive"
    for i, name in enumerate(("a.raiiaf", "b.raiiaf", "c.raiiaf", "sub/d.raiiaf")):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        noise = np.random.default_rng(i).standard_normal((1, 4, 256, 256)).astype(np.float32)
        rc.write(local / name, image=big_png(i), tensors={"noise": noise},
                 metadata=comfy_metadata(i, "euler", f"prompt {i}"), environment=HERE)
    (local / "damaged.raiiaf").write_bytes((local / "a.raiiaf").read_bytes()[:-1000])
    shutil.copy(V1 / "f32_raw.raiiaf", local / "v1.raiiaf")
    (local / "readme.txt").write_text("not indexed")
    for path in local.rglob("*"):
        if path.is_file():
            fs.pipe(f"{BUCKET}/archive/{path.relative_to(local).as_posix()}", path.read_bytes())
    counting.reset()
    return local, options, counting


def comparable(rows, drop=("path", "modified", "etag", "error")):
    return {Path(r["path"]).name: {k: v for k, v in r.items() if k not in drop} for r in rows}


def test_s3_index_matches_the_local_one_and_reads_only_ranges(stored, tmp_path):
    local, options, counting = stored
    output = tmp_path / "s3.parquet"
    report = build_index([f"s3://{BUCKET}/archive"], output, storage_options=options)

    rows = pq.read_table(output).to_pylist()
    assert [r["path"] for r in rows] == [f"s3://{BUCKET}/archive/{n}" for n in (
        "a.raiiaf", "b.raiiaf", "c.raiiaf", "damaged.raiiaf", "sub/d.raiiaf", "v1.raiiaf")]
    assert report.errors == [(f"s3://{BUCKET}/archive/damaged.raiiaf", "CorruptFileError",
                              f"s3://{BUCKET}/archive/damaged.raiiaf: file truncated: header says "
                              f"{(local / 'a.raiiaf').stat().st_size} bytes, found "
                              f"{(local / 'damaged.raiiaf').stat().st_size}")]
    assert all(r["etag"] and r["modified"] for r in rows)
    build_index([local], tmp_path / "local.parquet")
    assert comparable(rows) == comparable(pq.read_table(tmp_path / "local.parquet").to_pylist())

    gets = counting.object_gets()
    large = {name: (local / name).stat().st_size for name in ("a.raiiaf", "b.raiiaf", "c.raiiaf", "sub/d.raiiaf",
                                                              "damaged.raiiaf")}
    assert min(large.values()) > 2_000_000
    for name in large:  # one ranged GET each, of the reader's first read: header, index, metadata, environment
        [(_, rng, sent)] = [g for g in gets if g[0] == f"archive/{name}"]
        assert rng == f"bytes=0-{FIRST_READ - 1}" and sent == FIRST_READ
    # v1 files keep their manifest at the end, so the v1 reader fetches them whole (its first read, then all).
    assert sum(sent for key, _, sent in gets if key == "archive/v1.raiiaf") <= 2 * (local / "v1.raiiaf").stat().st_size
    assert sum(sent for _, _, sent in gets) < sum(large.values()) / 200
    assert {key for key, _, _ in gets} == {f"archive/{n}" for n in [*large, "v1.raiiaf"]}  # not readme.txt

    counting.reset()
    again = build_index([f"s3://{BUCKET}/archive"], output, storage_options=options)
    assert (again.read, again.kept, again.dropped) == (0, 6, 0)
    assert counting.object_gets() == []  # only the listing: nothing changed, nothing is fetched

    s3 = s3fs.S3FileSystem(**options)
    rc.write(tmp_path / "b2.raiiaf", image=big_png(9), tensors={"noise": np.zeros((1, 4, 8, 8), np.float32)}, metadata=comfy_metadata(9, "ddim", "changed"),
             environment=HERE)
    s3.pipe(f"{BUCKET}/archive/b.raiiaf", (tmp_path / "b2.raiiaf").read_bytes())
    s3.rm(f"{BUCKET}/archive/c.raiiaf")
    counting.reset()
    third = build_index([f"s3://{BUCKET}/archive"], output, storage_options=options)
    assert (third.read, third.kept, third.dropped) == (1, 4, 1)
    assert {key for key, _, _ in counting.object_gets()} == {"archive/b.raiiaf"}
    changed = {Path(r["path"]).name: r for r in pq.read_table(output).to_pylist()}
    assert "c.raiiaf" not in changed and changed["b.raiiaf"]["prompt"] == "changed"


def test_http_url_of_one_object(stored, tmp_path):
    local, options, counting = stored
    url = f"{options['endpoint_url']}/{BUCKET}/archive/sub/d.raiiaf"
    s3fs.S3FileSystem(**options).chmod(f"{BUCKET}/archive/sub/d.raiiaf", "public-read")  # plain HTTP is anonymous
    counting.reset()
    report = build_index([url], tmp_path / "http.parquet")
    [row] = pq.read_table(tmp_path / "http.parquet").to_pylist()
    assert report.errors == [] and row["path"] == url and row["prompt"] == "prompt 3"
    assert row["size"] == (local / "sub" / "d.raiiaf").stat().st_size and row["etag"]
    gets = counting.object_gets()
    assert [(rng, sent) for _, rng, sent in gets] == [(f"bytes=0-{FIRST_READ - 1}", FIRST_READ)]
