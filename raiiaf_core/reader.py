"""Lazy, checked reading of .raiiaf files: open reads the header and index, each part is read when asked for.

What each chunk type means is the table in chunks.py; this module finds chunks, reads and hash-checks their
bytes from a source, and serves them through Artifact's accessors.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from pathlib import Path, PurePath

from . import chunks, images, layout
from .errors import CorruptFileError, LimitExceededError, RaiiafError, ReadError

_HASH_BLOCK = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block


class _Source:
    """Where an artifact's bytes are: positional reads of a known size, and the first bytes, read on opening.

    Subclasses: a path, a seekable file object, bytes in memory, and the .raiiaf inside an exported PNG
    (png_share.PngSource, over one of the others). Anything that can answer read(offset, length) with
    checked-later bytes can hold a .raiiaf.
    """

    __slots__ = ("name", "size", "head")  # head: the first min(size, head_length) bytes
    path: Path | None = None

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def hash(self, offset: int, length: int) -> str:
        digest = hashlib.sha256()
        for start in range(offset, offset + length, _HASH_BLOCK):
            digest.update(self.read(start, min(_HASH_BLOCK, offset + length - start)))
        return digest.hexdigest()

    def verify(self) -> None:
        """Check what the chunks' own checks do not cover: a container's structure (nothing, for a plain file)."""

    def _short(self, data: bytes, length: int) -> bytes:
        if len(data) != length:
            raise CorruptFileError(f"{self.name}: file changed or was truncated while being read")
        return data


class _FileSource(_Source):
    """A path, opened again for each read.

    An open handle would keep other processes from replacing the file on Windows, so a save may replace it
    between two reads: each read checks it still has the file it started with, and a replaced file reads as
    replaced, not as damaged.
    """

    __slots__ = ("_path", "_identity")

    def __init__(self, path, head_length: int):
        # fspath once: a Path would otherwise be turned into its string by os.open and again for the name.
        self._path = fspath = os.fspath(path)
        self.name = fspath if type(fspath) is str else str(path)
        try:
            fd = os.open(fspath, _OPEN_FLAGS)
            try:
                st = os.fstat(fd)
                # Devices and folders have no meaningful size (and a FIFO would have blocked a plain open).
                if not stat.S_ISREG(st.st_mode):
                    raise ReadError(f"{self.name}: not a regular file")
                self.size = size = st.st_size
                self._identity = (st.st_dev, st.st_ino, size, st.st_mtime_ns)
                length = head_length if size > head_length else size
                head = _PREAD(fd, length, 0) if _PREAD is not None else b""
                if len(head) != length:  # a short read (a signal, a network filesystem), or Windows
                    head = _pread(fd, length, 0)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ReadError(f"{self.name}: cannot read ({exc.strerror or exc})") from None
        if len(head) < head_length and len(head) < size:
            raise CorruptFileError(f"{self.name}: file changed or was truncated while being read")
        self.head = head

    @property
    def path(self) -> Path:
        return Path(self._path)

    def read(self, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path, _OPEN_FLAGS)
            try:
                if _identity(os.fstat(fd)) != self._identity:
                    raise ReadError(f"{self.name}: the file was replaced or changed since it was opened; open it "
                                    "again")
                data = _pread(fd, length, offset)
            finally:
                os.close(fd)
        except OSError as exc:
            raise ReadError(f"{self.name}: cannot read ({exc.strerror or exc})") from None
        return self._short(data, length)


def _pread(fd: int, length: int, offset: int) -> bytes:
    """Up to `length` bytes at `offset` (fewer only at the end of the file)."""
    if _PREAD is not None:
        data = _PREAD(fd, length, offset)
        if len(data) == length or not data:
            return data
        pieces = [data]  # a short read before the end of the file (rare; a signal, a network filesystem)
    else:  # Windows
        os.lseek(fd, offset, os.SEEK_SET)
        pieces = []
    got = sum(map(len, pieces))
    while got < length:
        piece = _PREAD(fd, length - got, offset + got) if _PREAD is not None else os.read(fd, length - got)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


_PREAD = getattr(os, "pread", None)


def _identity(st) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _StreamSource(_Source):
    """A seekable binary file object, read where asked."""

    def __init__(self, file, head_length: int):
        self.file, self.name = file, str(getattr(file, "name", "<stream>"))
        try:
            self.size = file.seek(0, os.SEEK_END)
        except (OSError, AttributeError, ValueError) as exc:
            raise ReadError(f"{self.name}: not a seekable binary file ({exc})") from None
        self.head = self.read(0, min(head_length, self.size))

    def read(self, offset: int, length: int) -> bytes:
        try:
            self.file.seek(offset)
            data = self.file.read(length)
        except OSError as exc:
            raise ReadError(f"{self.name}: cannot read ({exc.strerror or exc})") from None
        return self._short(data, length)


class _MemorySource(_Source):
    """Bytes held in memory (a v1 file, translated to the v2 layout)."""

    def __init__(self, data: bytes, name: str, path: Path | None, head_length: int):
        self.data, self.name, self.path, self.size = data, name, path, len(data)
        self.head = data[:head_length]

    def read(self, offset: int, length: int) -> bytes:
        return self._short(self.data[offset:offset + length], length)


_ZSTD = threading.local()  # a decompression context per thread: creating one costs more than decoding a record


def _zstd_decompressor():
    decompressor = getattr(_ZSTD, "decompressor", None)
    if decompressor is None:
        import zstandard

        decompressor = _ZSTD.decompressor = zstandard.ZstdDecompressor()
    return decompressor


class Artifact:
    """One .raiiaf file (v2, or v1 from the raiiaf 1.x library). Cheap to open; reads parts on demand."""

    __slots__ = ("limits", "name", "size", "version", "index_sha256", "_index", "_entries", "_origin", "_source",
                 "_parts", "_json_cache")

    def __init__(self, source, limits: layout.Limits = layout.DEFAULT_LIMITS):
        self.limits = limits
        # A str or Path is settled before asking os.PathLike, an ABC (slower to ask than opening costs to read).
        if type(source) is str or isinstance(source, (PurePath, os.PathLike)):
            src = _FileSource(source, layout.FIRST_READ)
        elif isinstance(source, _Source):
            src = source
        else:
            src = _StreamSource(source, layout.FIRST_READ)
        self._origin, self.name, self.size = src, src.name, src.size
        self.version = None
        head = src.head
        if head[:8] == b"\x89PNG\r\n\x1a\n":  # a PNG from `raiiaf export`: the .raiiaf is inside it
            from .png_share import PngSource

            src = PngSource(src, layout.FIRST_READ, limits)
            head = src.head
        v1 = head[6:7] == b"\x01" and layout.is_v1(head)
        if v1:  # written by the raiiaf 1.x library
            src = self._translate_v1(src)
            head = src.head
        self._source = src
        header = layout.unpack_header(head, self.name)
        layout.check_header_against_file(header, src.size, self.name, limits)
        self.version = self.version or (header.major, header.minor)
        # The header's checksum of the index; v1 files have none (this header is their in-memory translation's).
        self.index_sha256 = None if v1 else header.index_sha256.hex()
        index_end = header.index_offset + header.index_length
        index = head[header.index_offset:index_end] if index_end <= len(head) else \
            src.read(header.index_offset, header.index_length)
        self._json_cache: dict = {}
        self._check_index(layout.decode_index(index, header, self.name, limits))

    def _translate_v1(self, src: _Source) -> _Source:
        """The v1 file, checked and decoded, rewritten in memory as the v2 file the writer makes of it."""
        from . import v1, writer

        limits = self.limits
        contents = v1.parse_v1(src.read(0, src.size), self.name, max_output=limits.max_v1_output,
                               max_json=limits.max_json_bytes, max_depth=limits.max_json_depth)
        self.version = contents.version
        data = b"".join(writer.build(contents.image, contents.tensors, contents.metadata, contents.environment))
        return _MemorySource(data, self.name, src.path, layout.FIRST_READ)

    def _check_index(self, index: list) -> None:
        # Every chunk's index object is checked here, by the handler of its type; the ChunkEntry of a chunk is
        # made when the chunk is first used (opening a file to read its metadata uses one).
        self._index, self._entries = index, [None] * len(index)
        self._parts = parts = {}  # (role, name) -> (handler, position in the index, spec)
        types, unknown = chunks.TYPES, chunks.UNKNOWN
        for i, fields in enumerate(index):
            name = fields["name"]
            handler = types.get(fields["type"], unknown)  # chunks.handler_for, inlined: it runs for every chunk
            if name and not handler.named:
                handler = unknown
            if handler.role is not None:
                key = (handler.role, name)
                if key in parts:
                    raise CorruptFileError(f"{self.name}: two {handler.role} chunks named '{name}'")
                parts[key] = (handler, i, handler.check(self, fields) if handler.checks else None)
        if len(parts) != len(index):  # chunks no accessor serves: still, (type, name) is unique in a file
            seen = set()
            for fields in index:
                key = (fields["type"], fields["name"])
                if key in seen:
                    raise CorruptFileError(f"{self.name}: two '{key[0]}' chunks named '{key[1]}'")
                seen.add(key)
        for handler in chunks.REQUIRED:
            if (handler.role, "") not in parts:
                raise CorruptFileError(f"{self.name}: no {handler.type} chunk")

    @property
    def chunks(self) -> tuple:
        """Every chunk as the index describes it, in file order."""
        return tuple(map(self._entry, range(len(self._index))))

    def _entry(self, i: int) -> layout.ChunkEntry:
        entry = self._entries[i]
        if entry is None:
            entry = self._entries[i] = layout.entry(self._index[i])
        return entry

    # -- chunk bytes, for the handlers ----------------------------------------------------------------------

    def describe(self, entry) -> str:
        """'file: tensor chunk 'noise'', for messages; `entry` is a ChunkEntry or the chunk's index object."""
        kind, name = (entry["type"], entry["name"]) if type(entry) is dict else (entry.type, entry.name)
        return f"{self.name}: {kind} chunk" + (f" '{name}'" if name else "")

    def chunk_bytes(self, entry) -> bytes:
        """The chunk's stored bytes, checked against the index's sha256."""
        end = entry.offset + entry.length
        head = self._source.head
        data = head[entry.offset:end] if end <= len(head) else self._source.read(entry.offset, entry.length)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise CorruptFileError(f"{self.describe(entry)} is damaged (sha256 mismatch)")
        return data

    def check_hash(self, entry) -> None:
        if entry.length <= _HASH_BLOCK:
            self.chunk_bytes(entry)
        elif self._source.hash(entry.offset, entry.length) != entry.sha256:  # in blocks: never all in memory
            raise CorruptFileError(f"{self.describe(entry)} is damaged (sha256 mismatch)")

    def decoded(self, entry) -> bytes:
        """The chunk's payload as stored before encoding: hash-checked, then decompressed within the limits."""
        data = self.chunk_bytes(entry)
        if entry.codec == "none":
            return data
        if entry.codec != "zstd":
            raise CorruptFileError(f"{self.describe(entry)} uses codec '{entry.codec}', unknown to this reader")
        limit = self.limits.max_json_bytes
        if entry.size > limit:
            raise LimitExceededError(f"{self.describe(entry)} decodes to {entry.size} bytes, over "
                                     f"Limits.max_json_bytes={limit}")
        return self._unzstd(data, entry)

    def _unzstd(self, data: bytes, entry) -> bytes:
        import zstandard

        try:
            if zstandard.frame_content_size(data) == entry.size:
                # The frame records the size the index gives: decoded in one call into a buffer of that size,
                # which zstd does not let the frame overrun.
                out = _zstd_decompressor().decompress(data)
            else:
                out = self._unzstd_bounded(data, entry.size)
        except zstandard.ZstdError as exc:
            raise CorruptFileError(f"{self.describe(entry)} does not decompress ({exc})") from None
        if len(out) != entry.size:
            raise CorruptFileError(f"{self.describe(entry)} decompressed to {len(out)} bytes, index says {entry.size}")
        return out

    @staticmethod
    def _unzstd_bounded(data: bytes, size: int) -> bytes:
        # Read in blocks, up to one byte past the declared size: memory follows what the frame really decodes
        # to, so a small chunk declaring a huge size cannot make us allocate that size up front. (BytesIO
        # hands its buffer over in getvalue() without a second copy.)
        decoded = io.BytesIO()
        with _zstd_decompressor().stream_reader(io.BytesIO(data)) as stream:
            while decoded.tell() <= size:
                piece = stream.read(min(_HASH_BLOCK, size + 1 - decoded.tell()))
                if not piece:
                    break
                decoded.write(piece)
        return decoded.getvalue()

    # -- public surface -------------------------------------------------------------------------------------

    @property
    def path(self):
        """The file's path, or None for a file object."""
        return self._origin.path

    def _part(self, role: str, name: str = ""):
        """(handler, entry, spec) of the chunk an accessor serves, or None."""
        part = self._parts.get((role, name))
        return None if part is None else (part[0], self._entry(part[1]), part[2])

    def _json(self, kind: str) -> dict:
        value = self._json_cache.get(kind)
        if value is None:
            part = self._part(kind)
            value = self._json_cache[kind] = {} if part is None else part[0].read(self, part[1])
        return value

    @property
    def metadata(self) -> dict:
        return self._json("metadata")

    @property
    def environment(self) -> dict:
        return self._json("environment")

    @property
    def has_image(self) -> bool:
        return self._part("image") is not None

    @property
    def image_format(self):
        part = self._part("image")
        return part[2].format if part else None

    def _image(self) -> tuple:
        part = self._part("image")
        if part is None:
            raise RaiiafError(f"{self.name}: the file holds no image")
        handler, entry, spec = part
        return handler.read(self, entry, spec)

    @property
    def image_size(self):
        """(width, height) from the stored image's own header (the image is read and checked), or None."""
        return self._image()[1] if self.has_image else None

    def image_bytes(self) -> bytes:
        """The image file exactly as stored, checked against its sha256 and the index's format and size."""
        return self._image()[0]

    def image(self):
        """The stored image as a PIL image (needs Pillow); refuses more than Limits.max_image_pixels."""
        data, size = self._image()
        return images.to_pil(data, size, f"{self.name}: image chunk", self.limits.max_image_pixels)

    @property
    def tensor_names(self) -> list:
        return [name for role, name in self._parts if role == "tensor"]

    def _tensor(self, name: str) -> tuple:
        part = self._part("tensor", name)
        if part is None:
            raise RaiiafError(f"{self.name}: no tensor named '{name}' (has: {', '.join(self.tensor_names) or 'none'})")
        return part

    def tensor_info(self, name: str):
        return self._tensor(name)[2]

    def load_tensor(self, name: str, framework: str = "numpy"):
        handler, entry, spec = self._tensor(name)
        return handler.load(self, entry, spec, framework)

    def load_tensors(self, framework: str = "numpy") -> dict:
        return {name: self.load_tensor(name, framework) for name in self.tensor_names}

    def tensor_bytes(self, name: str) -> bytes:
        """The tensor's checked safetensors blob, as stored (a complete .safetensors file of one tensor)."""
        handler, entry, spec = self._tensor(name)
        return handler.payload(self, entry, spec)

    def verify(self) -> list:
        """Read every chunk and check it; raises CorruptFileError naming the first damaged part (a noise recipe
        that draws differently: RecipeMismatchError). Returns what could not be checked here, one line each: a
        noise recipe, when torch is not installed."""
        self._source.verify()
        unchecked = []
        for entry in self.chunks:
            handler = chunks.handler_for(entry.type, entry.name)
            part = self._parts.get((handler.role, entry.name)) if handler.role is not None else None
            note = handler.verify(self, entry, part[2] if part else None)
            if note is not None:
                unchecked.append(note)
        return unchecked

    def tensor_stored_as(self, name: str) -> str:
        """How the file holds a tensor: "tensor" (its bytes) or "tensor_recipe" (drawn again when loaded)."""
        return self._tensor(name)[0].type

    def view(self):
        """One picture of the file as a PIL image: the image, noise, latents, sigma schedule, caption (view.py)."""
        from .view import render

        return render(self).image

    def _repr_png_(self) -> bytes:  # the picture in Jupyter and IPython
        from .view import render

        return render(self).png()

    def __repr__(self) -> str:
        return f"<raiiaf.Artifact {self.name} v{self.version[0]}.{self.version[1]} tensors={self.tensor_names}>"


def open_artifact(source, limits: layout.Limits = layout.DEFAULT_LIMITS) -> Artifact:
    """Open a .raiiaf file, or a PNG made by `raiiaf export` (a path or a seekable binary file object); reads only
    the header and index."""
    return Artifact(source, limits)


def verify(source, limits: layout.Limits = layout.DEFAULT_LIMITS) -> Artifact:
    artifact = Artifact(source, limits)
    artifact.verify()
    return artifact
