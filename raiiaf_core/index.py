"""The archive index: one Parquet row per .raiiaf file (or exported PNG), made from its header, index and metadata
alone.

`build_index(sources, output)` lists local folders (recursively) and fsspec URLs (s3://, gs://, https://),
reads the files that are new or changed since the index at `output` was written, on a thread pool and in
ranged reads, and replaces the index atomically. Files that cannot be read get a row with the reason in
`error`. pyarrow (and fsspec for URLs) are optional extras, imported only when an index is built.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import importlib
import json
import logging
import os
import stat
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .atomic import write_atomic
from .drift import output_relevant
from .environment import capture_environment
from .errors import MissingDependencyError, NoArtifactError, RaiiafError, ReadError
from .naming import EXTENSION
from .reader import open_artifact
from .report import environment_headline, escape

log = logging.getLogger(__name__)

# Raised when a column is added, removed or changes meaning (environment_key changes meaning with drift's
# classification of fields); an index of another schema is rebuilt in full.
INDEX_SCHEMA = 1
_SCHEMA_KEY = b"raiiaf.index_schema"

# (column, type, what it holds). File columns come from the listing; the others from describe().
COLUMNS = (
    ("path", "string", "absolute local path, or the URL"),
    ("size", "int", "bytes"),
    ("modified", "time", "modification time (UTC) as listed"),
    ("etag", "string", "the object store's ETag or generation (null for local files)"),
    ("error_type", "string", "null, or the class of the error that kept the file from being read"),
    ("error", "string", "null, or why the file could not be read"),
    ("format_version", "string", "'2.0', '1.0', ..."),
    ("index_sha256", "string", "the header's sha256 of the chunk index (null for v1 files, which have none)"),
    ("prompt", "string", ""),
    ("negative_prompt", "string", ""),
    ("seed", "seed", "decimal(20,0): every seed torch accepts, -2^63 to 2^64-1"),
    ("sampler", "string", ""),
    ("scheduler", "string", ""),
    ("steps", "int", ""),
    ("cfg", "float", "metadata guidance_scale"),
    ("width", "int", "metadata width, else the image's as the file's index declares it"),
    ("height", "int", ""),
    ("model_name", "string", "model name, else its id or path"),
    ("model_sha256", "string", ""),
    ("model_revision", "string", ""),
    ("lora_names", "strings", "model.files with role 'lora'"),
    ("lora_sha256", "strings", "their sha256, in the same order (null where not hashed)"),
    ("tags", "strings", ""),
    ("created", "string", "ISO-8601, as the file records it"),
    ("batch_index", "int", ""),
    ("batch_size", "int", ""),
    ("noise_source", "string", "'captured' or 'reconstructed'"),
    ("generator", "string", "the software that wrote the file, with its version"),
    ("torch_version", "string", ""),
    ("cuda_version", "string", ""),
    ("gpu", "strings", "GPU names"),
    ("cpu_model", "string", ""),
    ("environment_headline", "string", "torch, CUDA, GPU, Python and OS in one line"),
    ("pixel_environment", "string", "JSON of the environment fields that can change pixels"),
    ("environment_key", "string", "sha256 of pixel_environment; compare with environment_key()"),
)

# Queries of the README's Archives section, with DuckDB's $name parameters (run by the tests and the benchmark).
EXAMPLE_QUERIES = {
    "model_and_sampler": (
        "SELECT path, seed, prompt FROM read_parquet($index)\n"
        "WHERE model_sha256 = $model_sha256 AND sampler = $sampler\n"
        "ORDER BY path"
    ),
    "environment_differs": (
        "SELECT path, torch_version, cuda_version, gpu FROM read_parquet($index)\n"
        "WHERE error IS NULL AND environment_key IS DISTINCT FROM $environment_key\n"
        "ORDER BY path"
    ),
    "with_lora": (
        "SELECT path, lora_names FROM read_parquet($index)\n"
        "WHERE list_contains(lora_sha256, $lora_sha256)\n"
        "ORDER BY path"
    ),
    "unreadable": (
        "SELECT path, error_type, error FROM read_parquet($index)\n"
        "WHERE error IS NOT NULL\n"
        "ORDER BY path"
    ),
}

# Errors that follow from the bytes alone: an unchanged file fails the same way again, so its row is kept.
# Any other (unreadable, a missing optional package, a newer format) may go away, so that file is read again.
_CONTENT_ERRORS = ("CorruptFileError", "LimitExceededError", "NoArtifactError")
_BATCH_ROWS = 10_000  # rows turned into an Arrow table at a time, so a million rows never sit in Python dicts
_SEED_MIN, _SEED_END = -(1 << 63), 1 << 64  # what torch.Generator.manual_seed accepts
# What a folder is searched for: .raiiaf files, and PNGs, which are indexed when `raiiaf export` made them.
_SUFFIXES = (EXTENSION, ".png")


@dataclass
class IndexReport:
    output: Path
    rows: int
    read: int  # files read in this run (new, changed, or failed before for a reason that may pass)
    kept: int  # rows carried over from the previous index, unchanged
    dropped: int  # rows of the previous index whose file is gone
    errors: list = field(default_factory=list)  # (path, error_type, error) of every row with an error
    images: int = 0  # PNGs in the folders that hold no .raiiaf (images, not exported files): no row

    def format(self) -> str:
        lines = [f"{self.output}: {self.rows:,} files ({self.read:,} read, {self.kept:,} unchanged, "
                 f"{self.dropped:,} dropped); {len(self.errors):,} could not be read"
                 + (f"; {self.images:,} PNG images hold no .raiiaf (not indexed)" if self.images else "")]
        # Each error names its file; file names and what files hold are escaped, like all the CLI prints.
        lines += [f"FAIL  {escape(error)}" for _, _, error in self.errors]
        return "\n".join(lines)


def build_index(sources, output, *, workers: int | None = None, progress: bool | None = None,
                storage_options: dict | None = None) -> IndexReport:
    """Write the index of every .raiiaf file under `sources` (paths or fsspec URLs) to `output` (Parquet).

    Rows of an index already at `output` are kept for files with the same path, size, modification time and
    ETag; other files are read; rows of files no longer listed are dropped. The index describes exactly the
    files under `sources`. `progress`: None shows a bar on stderr when it is a terminal.
    """
    pa, pq = _pyarrow()
    sources = [os.fspath(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    output = Path(output)
    schema = _schema(pa, sources)
    previous = _previous_index(output, pa, pq, schema)
    listed, listing_errors = _list_sources(sources, storage_options or {})

    unchanged = _reusable_keys(previous) if previous is not None else {}
    keep = [path for path, item in listed.items() if unchanged.get(path) == item.key]
    todo = [item for path, item in listed.items() if unchanged.get(path) != item.key]
    tables = [previous.filter(pa.compute.is_in(previous["path"], pa.array(keep, pa.string())))] if keep else []
    if workers is None:
        workers = 32 if any(item.remote for item in todo) else 4
    batch, read = list(listing_errors), 0
    for row in _read_rows(todo, workers, progress if progress is not None else sys.stderr.isatty()):
        batch.append(row)
        read += 1
        if len(batch) >= _BATCH_ROWS:
            tables.append(pa.Table.from_pylist(batch, schema))
            batch = []
    tables.append(pa.Table.from_pylist(batch, schema))
    table = pa.concat_tables(tables).sort_by("path")

    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression="zstd")
    write_atomic(output, [buffer.getvalue()])

    failed = table.filter(table["error"].is_valid())
    errors = list(zip(*(failed[c].to_pylist() for c in ("path", "error_type", "error")))) if failed.num_rows else []
    dropped = len(set(previous["path"].to_pylist()) - set(table["path"].to_pylist())) if previous is not None else 0
    return IndexReport(output, table.num_rows, read, len(keep), dropped, errors, images=len(todo) - read)


def environment_key(environment: dict | None = None) -> str:
    """The `environment_key` column for an environment (default: this machine's, as `raiiaf env` shows it)."""
    return hashlib.sha256(_pixel_environment(capture_environment() if environment is None else environment)
                          .encode("utf-8")).hexdigest()


def _pixel_environment(environment: dict) -> str:
    # Not layout.canonical_json: a file's environment may hold NaN (JSON allows it in), which must not fail here.
    return json.dumps(output_relevant(environment), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_storage_options(pairs) -> dict:
    """fsspec options from the command line's KEY=VALUE pairs; a value that parses as JSON is taken as JSON."""
    options = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RaiiafError(f"storage option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


# -- one file's columns ------------------------------------------------------------------------------------

def describe(art, environments: dict | None = None) -> dict:
    """The metadata and environment columns of one opened file (reads its metadata and environment only).

    `environments` caches the environment columns by the environment chunk's sha256: an archive holds few
    distinct environments, and working out which fields can change pixels costs more than reading them.
    """
    meta = art.metadata
    model = _object(meta.get("model"))
    loras = [f for f in map(_object, _list(model.get("files"))) if f.get("role") == "lora"]
    batch, noise, generator = (_object(meta.get(k)) for k in ("batch", "noise", "generator"))
    chunks = {(c.type, c.name): c for c in art.chunks}
    # The size the index declares for the image: art.image_size would read the image to check it.
    image = chunks[("image", "")].info if ("image", "") in chunks else {}
    seed = _integer(meta.get("seed"))
    return {
        "format_version": f"{art.version[0]}.{art.version[1]}",
        "index_sha256": art.index_sha256,
        "prompt": _text(meta.get("prompt")),
        "negative_prompt": _text(meta.get("negative_prompt")),
        "seed": seed if seed is not None and _SEED_MIN <= seed < _SEED_END else None,
        "sampler": _text(meta.get("sampler")),
        "scheduler": _text(meta.get("scheduler")),
        "steps": _integer(meta.get("steps")),
        "cfg": _number(meta.get("guidance_scale")),
        "width": _integer(meta.get("width"), _integer(image.get("width"))),
        "height": _integer(meta.get("height"), _integer(image.get("height"))),
        "model_name": _text(model.get("name")) or _text(model.get("id")) or _text(model.get("path")),
        "model_sha256": _text(model.get("sha256")),
        "model_revision": _text(model.get("revision")),
        "lora_names": [_text(f.get("name")) for f in loras],
        "lora_sha256": [_text(f.get("sha256")) for f in loras],
        "tags": [t for t in _list(meta.get("tags")) if isinstance(t, str)],
        "created": _text(meta.get("created")),
        "batch_index": _integer(batch.get("index")),
        "batch_size": _integer(batch.get("size")),
        "noise_source": _text(noise.get("source")),
        "generator": " ".join(filter(None, (_text(generator.get("name")), _text(generator.get("version"))))) or None,
        **_environment_columns(art, chunks.get(("environment", "")), {} if environments is None else environments),
    }


def _environment_columns(art, entry, cache: dict) -> dict:
    env = art.environment  # read and checked against its sha256 also when the columns are cached
    key = entry.sha256 if entry else None
    columns = cache.get(key)  # shared by the reading threads: a race only computes the same columns twice
    if columns is None:
        torch = _object(env.get("torch"))
        pixel_environment = _pixel_environment(env)
        columns = {
            "torch_version": _text(torch.get("version")),
            "cuda_version": _text(torch.get("cuda")),
            "gpu": [_text(_object(g).get("name")) for g in _list(env.get("gpu"))],
            "cpu_model": _text(_object(env.get("cpu")).get("model")),
            "environment_headline": environment_headline(env),
            "pixel_environment": pixel_environment,
            "environment_key": hashlib.sha256(pixel_environment.encode("utf-8")).hexdigest(),
        }
        if len(cache) >= 1024:
            cache.clear()
        cache[key] = columns
    return columns


# Files from other writers may break the schema (the reader does not enforce it): a value of the wrong type
# becomes null rather than a wrong column type.
def _object(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _text(value):
    return value if isinstance(value, str) else None


def _integer(value, default=None):
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _number(value):
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# -- listing -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Listed:
    path: str  # as the row names it: absolute local path or URL
    size: int
    modified: int | None  # microseconds since the epoch: what Python's datetime holds (and finer than disk clocks tick)
    etag: str | None
    opener: object  # () -> what rc.open reads: a path, or a seekable file object
    remote: bool = False
    optional: bool = False  # a PNG found in a folder: a row only if it holds a .raiiaf (not if it is an image)

    @property
    def key(self) -> tuple:
        return self.size, self.modified, self.etag

    def row(self) -> dict:
        return {"path": self.path, "size": self.size, "modified": self.modified, "etag": self.etag}


def _list_sources(sources, storage_options: dict) -> tuple[dict, list]:
    """({path: _Listed}, error rows for folders that could not be listed). A source that does not exist
    raises: indexing on without it would drop every row it had."""
    listed, errors = {}, []
    for source in sources:
        found = _list_remote(source, storage_options) if "://" in source else _list_local(source)
        for item in found:
            if isinstance(item, _Listed):
                listed[item.path] = item
            else:
                errors.append(item)
    return listed, errors


def _list_local(source: str):
    root = os.path.abspath(source)
    try:
        st = os.stat(root)
    except OSError as exc:
        raise ReadError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(st.st_mode):
        yield _local_file(root)
        return
    failures = []
    for folder, _, names in os.walk(root, onerror=failures.append):
        for name in names:
            if name.lower().endswith(_SUFFIXES):
                yield _local_file(os.path.join(folder, name), optional=not name.lower().endswith(EXTENSION))
    for exc in failures:
        yield _error_row(exc.filename, "ReadError", f"{exc.filename}: cannot list this folder "
                                                    f"({exc.strerror or exc}); its files are not in the index")


def _local_file(path: str, optional: bool = False):
    try:
        st = os.stat(path)
    except OSError as exc:
        return _error_row(path, "ReadError", f"{path}: cannot read ({exc.strerror or exc})")
    if not stat.S_ISREG(st.st_mode):
        return _error_row(path, "ReadError", f"{path}: not a regular file")
    return _Listed(path, st.st_size, st.st_mtime_ns // 1000, None, functools.partial(str, path), optional=optional)


def _error_row(path: str, error_type: str, error: str) -> dict:
    return {"path": path, "error_type": error_type, "error": error}


# Where fsspec filesystems put an object's modification time and version tag in `info()`: S3, GCS, HTTP, local.
_MODIFIED_KEYS = ("LastModified", "updated", "Last-Modified", "last_modified", "mtime", "modified")
_ETAG_KEYS = ("ETag", "etag", "generation", "md5Hash")


def _list_remote(url: str, storage_options: dict):
    fsspec = _import("fsspec")
    try:
        fs, root = fsspec.core.url_to_fs(url, **storage_options)
        fs.invalidate_cache()  # a listing cached by an earlier index in this process may be stale
        info = fs.info(root)
        directory = info.get("type") == "directory"
        if directory:
            found = sorted((p, i) for p, i in fs.find(root, detail=True).items()
                           if p.lower().endswith(_SUFFIXES) and i.get("type") == "file")
        else:
            found = [(root, info)]
    except FileNotFoundError:
        raise ReadError(f"{url}: not found (no such file or folder, or no permission to see it)") from None
    except Exception as exc:  # fsspec backends raise their own types (botocore, aiohttp, google-auth)
        raise ReadError(f"{url}: cannot list ({type(exc).__name__}: {exc})") from None
    for path, info in found:
        name = fs.unstrip_protocol(path)
        size = info.get("size")
        if not isinstance(size, int):
            yield _error_row(name, "ReadError", f"{name}: the store gives no size for this object")
            continue
        modified = next((_microseconds(info[k]) for k in _MODIFIED_KEYS if info.get(k) is not None), None)
        etag = next((str(info[k]) for k in _ETAG_KEYS if info.get(k) is not None), None)
        yield _Listed(name, size, modified, etag, functools.partial(_RangedFile, fs, path, size, name), remote=True,
                      optional=directory and not path.lower().endswith(EXTENSION))


def _microseconds(value) -> int | None:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            try:
                value = email.utils.parsedate_to_datetime(value)  # HTTP's Last-Modified
            except (TypeError, ValueError):
                return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 10**6 + delta.microseconds
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value * 10**6)
    return None


class _RangedFile:
    """A remote object as the seekable binary file rc.open reads: each read is one ranged request for exactly
    the bytes asked for, nothing is read ahead, and the size comes from the listing (no extra request)."""

    def __init__(self, fs, path: str, size: int, name: str):
        self._fs, self._path, self._size, self.name = fs, path, size, name
        self._position = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, length: int = -1) -> bytes:
        end = self._size if length is None or length < 0 else min(self._size, self._position + length)
        if end <= self._position:
            return b""
        data = self._fs.cat_file(self._path, start=self._position, end=end)
        self._position += len(data)
        return data


# -- reading -----------------------------------------------------------------------------------------------

def _read_rows(items, workers: int, show_progress: bool):
    """Rows of `items`, read on a thread pool, in the order they finish."""
    progress = _Progress(len(items), show_progress)
    environments: dict = {}
    pending, tasks = set(), _tasks(items)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="raiiaf-index") as pool:
        try:
            # A bounded window of submitted tasks: a million futures at once would cost memory for nothing.
            for task in tasks:
                pending.add(pool.submit(_read_task, task, environments))
                if len(pending) >= 4 * workers:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    for row in future.result():
                        progress.advance(row is not None and row["error"] is not None)
                        if row is not None:
                            yield row
                    task = next(tasks, None)
                    if task is not None:
                        pending.add(pool.submit(_read_task, task, environments))
        finally:
            for future in pending:
                future.cancel()
            progress.close()


def _tasks(items, local_batch: int = 64):
    """Local files in batches (a handoff between threads costs more than reading one file from the page cache),
    remote ones alone (each waits on the network)."""
    batch = []
    for item in items:
        if item.remote:
            yield [item]
            continue
        batch.append(item)
        if len(batch) == local_batch:
            yield batch
            batch = []
    if batch:
        yield batch


def _read_task(items, environments: dict) -> list:
    return [_read_row(item, environments) for item in items]


def _read_row(item: _Listed, environments: dict) -> dict | None:
    """The file's row; None for a PNG found in a folder that is an image, not an exported .raiiaf."""
    row = {**item.row(), "error_type": None, "error": None}
    try:
        row.update(describe(open_artifact(item.opener()), environments))
    except Exception as exc:  # remote filesystems raise their own types; every failure must become a row
        if isinstance(exc, NoArtifactError) and item.optional:
            return None
        if not isinstance(exc, RaiiafError):
            log.debug("reading %s failed", item.path, exc_info=True)
        message = str(exc) if isinstance(exc, RaiiafError) else f"{item.path}: {type(exc).__name__}: {exc}"
        row.update(error_type=type(exc).__name__, error=message)
    return row


class _Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled and total > 0
        self.done = self.errors = 0
        self.started = self.drawn = time.monotonic()

    def advance(self, failed: bool) -> None:
        self.done += 1
        self.errors += failed
        if self.enabled and (time.monotonic() - self.drawn >= 0.1 or self.done == self.total):
            self.drawn = time.monotonic()
            rate = self.done / max(self.drawn - self.started, 1e-9)
            sys.stderr.write(f"\rraiiaf index: {self.done:,}/{self.total:,} files read "
                             f"({100 * self.done / self.total:.0f}%), {self.errors:,} errors, {rate:,.0f} files/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- the Parquet file --------------------------------------------------------------------------------------

def _schema(pa, sources):
    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64(), "seed": pa.decimal128(20, 0),
             "time": pa.timestamp("us", tz="UTC"), "strings": pa.list_(pa.string())}
    metadata = {_SCHEMA_KEY: str(INDEX_SCHEMA).encode(), b"raiiaf.version": __version__.encode(),
                b"raiiaf.sources": json.dumps(sources).encode()}
    return pa.schema([(name, types[kind]) for name, kind, _ in COLUMNS], metadata=metadata)


def _previous_index(output: Path, pa, pq, schema):
    """The index already at `output` in this schema, None if there is none (or it has an older schema)."""
    if not output.exists():
        return None
    try:
        table = pq.read_table(output)
    except (OSError, pa.ArrowException) as exc:
        raise RaiiafError(f"{output}: exists and is not a readable Parquet file ({exc}); not replacing it") from None
    found = (table.schema.metadata or {}).get(_SCHEMA_KEY)
    if found is None:
        raise RaiiafError(f"{output}: is a Parquet file but not a raiiaf index; not replacing it")
    if found != str(INDEX_SCHEMA).encode():
        log.info("%s: index schema %s, this raiiaf writes %s: reading every file again", output, found.decode(),
                 INDEX_SCHEMA)
        return None
    try:
        return table.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowException) as exc:
        raise RaiiafError(f"{output}: index columns do not match schema {INDEX_SCHEMA} ({exc}); remove it to "
                          "rebuild") from None


def _reusable_keys(previous) -> dict:
    """{path: (size, modified, etag)} of the rows that an unchanged file would give again."""
    import pyarrow as pa

    errors = previous["error_type"].to_pylist()
    keys = zip(previous["path"].to_pylist(), previous["size"].to_pylist(),
               previous["modified"].cast(pa.int64()).to_pylist(), previous["etag"].to_pylist())
    return {path: (size, modified, etag) for (path, size, modified, etag), error in zip(keys, errors)
            if error is None or error in _CONTENT_ERRORS}


def _pyarrow():
    pa = _import("pyarrow")
    import pyarrow.compute  # noqa: F401 - pa.compute is a submodule, loaded on import
    import pyarrow.parquet as pq

    return pa, pq


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingDependencyError(f"the archive index needs {name}: pip install 'raiiaf-plugins[archive]'") \
            from None
