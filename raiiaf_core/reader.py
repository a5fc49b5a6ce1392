"""Lazy, checked reading of .raiiaf files: open reads the header and index, each part is read when asked for."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from . import images, layout, tensors
from .errors import CorruptFileError, LimitExceededError, RaiiafError, ReadError

_HASH_BLOCK = 1 << 20


class _Source:
    """Positional reads from a path (opened per read) or from a seekable binary file object."""

    def __init__(self, source):
        if isinstance(source, (str, os.PathLike)):
            self.path, self.file = Path(source), None
            self.name = str(source)
            try:
                st = os.stat(source)
            except OSError as exc:
                raise ReadError(f"{source}: cannot read ({exc.strerror or exc})") from None
            # Opening a FIFO blocks until someone writes to it; devices and folders have no meaningful size.
            if not stat.S_ISREG(st.st_mode):
                raise ReadError(f"{source}: not a regular file")
            self.size = st.st_size
            # Each read opens the path again (an open handle would keep other processes from replacing the file
            # on Windows), so a save may replace it between two reads: each read checks it still has the file
            # it started with, and a replaced file reads as replaced, not as damaged.
            self.identity = _identity(st)
        else:
            self.path, self.file = None, source
            self.name = str(getattr(source, "name", "<stream>"))
            try:
                self.size = source.seek(0, os.SEEK_END)
            except (OSError, AttributeError, ValueError) as exc:
                raise ReadError(f"{self.name}: not a seekable binary file ({exc})") from None

    def read(self, offset: int, length: int) -> bytes:
        try:
            if self.file is None:
                with open(self.path, "rb") as f:
                    if _identity(os.fstat(f.fileno())) != self.identity:
                        raise ReadError(f"{self.name}: the file was replaced or changed since it was opened; open it "
                                        "again")
                    f.seek(offset)
                    data = f.read(length)
            else:
                self.file.seek(offset)
                data = self.file.read(length)
        except OSError as exc:
            raise ReadError(f"{self.name}: cannot read ({exc.strerror or exc})") from None
        if len(data) != length:
            raise CorruptFileError(f"{self.name}: file changed or was truncated while being read")
        return data

    def hash(self, offset: int, length: int) -> str:
        digest = hashlib.sha256()
        for start in range(offset, offset + length, _HASH_BLOCK):
            digest.update(self.read(start, min(_HASH_BLOCK, offset + length - start)))
        return digest.hexdigest()


def _identity(st) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class Artifact:
    """One .raiiaf file (v2, or v1 from the raiiaf 1.x library). Cheap to open; reads parts on demand."""

    def __init__(self, source, limits: layout.Limits = layout.DEFAULT_LIMITS):
        self._source = _Source(source)
        self._limits = limits
        self._cache: dict = {}
        self.name = self._source.name
        self.path = self._source.path
        first = self._source.read(0, min(layout.FIRST_READ, self._source.size))
        if first[:6] == layout.MAGIC and len(first) > 6 and first[6] == 1:  # written by the raiiaf 1.x library
            self._open_v1()
            return
        header = layout.unpack_header(first, self.name)
        layout.check_header_against_file(header, self._source.size, self.name, limits)
        index_end = header.index_offset + header.index_length
        index = first[header.index_offset:index_end] if index_end <= len(first) else \
            self._source.read(header.index_offset, header.index_length)
        self.version = (header.major, header.minor)
        self.index_sha256 = header.index_sha256.hex()
        self._first = first  # small parts right after the index come from this buffer, not from disk
        self._payloads: dict = {}
        self._set_entries(layout.decode_index(index, header, self.name, limits))

    def _open_v1(self) -> None:
        from . import v1

        contents = v1.parse_v1(self._source.read(0, self._source.size), self.name,
                               max_output=self._limits.max_v1_output)
        self.version = contents.version
        self.index_sha256 = None  # v1 files have no index checksum
        self._first = b""
        self._payloads = {}
        entries = []
        parts = [("metadata", "", layout.canonical_json(contents.metadata), {}),
                 ("environment", "", layout.canonical_json(contents.environment), {})]
        for name, array in contents.tensors.items():
            payload, info = tensors.encode(name, array)
            parts.append(("tensor", name, payload, {"dtype": info.dtype, "shape": list(info.shape)}))
        if contents.image is not None:
            parts.append(("image", "", contents.image, {"format": contents.image_format}))
        for kind, name, payload, info in parts:
            entry = layout.ChunkEntry(kind, name, -1, len(payload), hashlib.sha256(payload).hexdigest(),
                                      "none", len(payload), info)
            self._payloads[(kind, name)] = payload
            entries.append(entry)
        self._set_entries(entries)

    def _set_entries(self, entries) -> None:
        self.chunks = tuple(entries)
        self._entries: dict = {}
        for entry in entries:
            key = (entry.type, entry.name)
            if key in self._entries:
                raise CorruptFileError(f"{self.name}: two '{entry.type}' chunks named '{entry.name}'")
            self._entries[key] = entry
        if ("metadata", "") not in self._entries:
            raise CorruptFileError(f"{self.name}: no metadata chunk")
        self._tensor_infos = {}
        for entry in entries:
            if entry.type == "tensor":
                shape, dtype = entry.info.get("shape"), entry.info.get("dtype")
                if not isinstance(dtype, str) or not isinstance(shape, list) or \
                        not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
                    raise CorruptFileError(f"{self.name}: index entry of tensor '{entry.name}' is malformed")
                self._tensor_infos[entry.name] = tensors.TensorInfo(entry.name, dtype, tuple(shape))

    # -- raw chunk access -------------------------------------------------------------------------

    def _describe(self, entry) -> str:
        what = f"{entry.type} chunk" + (f" '{entry.name}'" if entry.name else "")
        return f"{self.name}: {what}"

    def _raw(self, entry) -> bytes:
        """The chunk's stored bytes, checked against the index's sha256."""
        key = (entry.type, entry.name)
        if key in self._payloads:
            return self._payloads[key]
        end = entry.offset + entry.length
        data = self._first[entry.offset:end] if end <= len(self._first) else \
            self._source.read(entry.offset, entry.length)
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise CorruptFileError(f"{self._describe(entry)} is damaged (sha256 mismatch)")
        return data

    def _decoded(self, entry) -> bytes:
        data = self._raw(entry)
        if entry.codec == "none":
            return data
        if entry.codec != "zstd":
            raise CorruptFileError(f"{self._describe(entry)} uses codec '{entry.codec}', unknown to this reader")
        if entry.size > self._limits.max_json_bytes:
            raise LimitExceededError(f"{self._describe(entry)} decodes to {entry.size} bytes, over "
                                     f"Limits.max_json_bytes={self._limits.max_json_bytes}")
        import io

        import zstandard

        # Read in blocks, up to one byte past the declared size: memory follows what the frame really decodes
        # to, so a small chunk declaring a huge size cannot make us allocate that size up front. (BytesIO
        # hands its buffer over in getvalue() without a second copy.)
        decoded = io.BytesIO()
        try:
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as stream:
                while decoded.tell() <= entry.size:
                    piece = stream.read(min(_HASH_BLOCK, entry.size + 1 - decoded.tell()))
                    if not piece:
                        break
                    decoded.write(piece)
        except zstandard.ZstdError as exc:
            raise CorruptFileError(f"{self._describe(entry)} does not decompress ({exc})") from None
        out = decoded.getvalue()
        if len(out) != entry.size:
            raise CorruptFileError(f"{self._describe(entry)} decompressed to {len(out)} bytes, index says {entry.size}")
        return out

    def _json(self, kind: str) -> dict:
        if kind not in self._cache:
            entry = self._entries.get((kind, ""))
            if entry is None:
                self._cache[kind] = {}
            else:
                value = layout.decode_json(self._decoded(entry), f"{kind} chunk", self.name, self._limits)
                if not isinstance(value, dict):
                    raise CorruptFileError(f"{self._describe(entry)} is not a JSON object")
                self._cache[kind] = value
        return self._cache[kind]

    # -- public surface -------------------------------------------------------------------------------

    @property
    def metadata(self) -> dict:
        return self._json("metadata")

    @property
    def environment(self) -> dict:
        return self._json("environment")

    @property
    def has_image(self) -> bool:
        return ("image", "") in self._entries

    @property
    def image_format(self):
        entry = self._entries.get(("image", ""))
        return entry.info.get("format") if entry else None

    @property
    def image_size(self):
        """(width, height) as recorded in the index, without reading the image."""
        entry = self._entries.get(("image", ""))
        if entry and isinstance(entry.info.get("width"), int) and isinstance(entry.info.get("height"), int):
            return entry.info["width"], entry.info["height"]
        return None

    def image_bytes(self) -> bytes:
        entry = self._entries.get(("image", ""))
        if entry is None:
            raise RaiiafError(f"{self.name}: the file holds no image")
        data = self._decoded(entry)
        if images.sniff_format(data) != entry.info.get("format"):
            raise CorruptFileError(f"{self._describe(entry)} is not the {entry.info.get('format')} image the index says")
        return data

    def image(self):
        """The stored image as a PIL image (needs Pillow)."""
        return images.to_pil(self.image_bytes(), self.name)

    @property
    def tensor_names(self) -> list:
        return list(self._tensor_infos)

    def tensor_info(self, name: str) -> tensors.TensorInfo:
        try:
            return self._tensor_infos[name]
        except KeyError:
            raise RaiiafError(f"{self.name}: no tensor named '{name}' (has: {', '.join(self._tensor_infos) or 'none'})") \
                from None

    def load_tensor(self, name: str, framework: str = "numpy"):
        payload, where = self._checked_tensor(name)
        return tensors.decode(payload, self._tensor_infos[name], framework, where)

    def _checked_tensor(self, name: str) -> tuple:
        """The tensor's blob, hash-checked and with a safetensors header that agrees with the index."""
        info = self.tensor_info(name)
        entry = self._entries[("tensor", name)]
        where = self._describe(entry)
        payload = self._decoded(entry)
        if tensors.parse_header(payload, name, where) != info:
            raise CorruptFileError(f"{where}: safetensors header disagrees with the index")
        return payload, where

    def load_tensors(self, framework: str = "numpy") -> dict:
        return {name: self.load_tensor(name, framework) for name in self._tensor_infos}

    def tensor_bytes(self, name: str) -> bytes:
        """The tensor's checked safetensors blob, as stored (a complete .safetensors file of one tensor)."""
        self.tensor_info(name)
        return self._decoded(self._entries[("tensor", name)])

    def verify(self) -> None:
        """Read every chunk and check it; raises CorruptFileError naming the first damaged part."""
        for entry in self.chunks:
            # The accessors read only the unnamed image, metadata and environment chunks; named ones (from
            # newer writers) are checked below like any chunk this reader does not know.
            part = (entry.type, entry.name)
            if part == ("image", ""):
                self.image_bytes()
            elif entry.type == "tensor":
                tensors.check_loadable(*self._checked_tensor(entry.name))
            elif part in (("metadata", ""), ("environment", "")):
                self._cache.pop(entry.type, None)
                self._json(entry.type)
            elif entry.length > _HASH_BLOCK and part not in self._payloads:
                # Chunk types from newer writers are skipped by readers, but verify still checks their bytes.
                if self._source.hash(entry.offset, entry.length) != entry.sha256:
                    raise CorruptFileError(f"{self._describe(entry)} is damaged (sha256 mismatch)")
            else:
                self._raw(entry)

    def __repr__(self) -> str:
        return f"<raiiaf.Artifact {self.name} v{self.version[0]}.{self.version[1]} tensors={self.tensor_names}>"


def open_artifact(source, limits: layout.Limits = layout.DEFAULT_LIMITS) -> Artifact:
    """Open a .raiiaf file (a path or a seekable binary file object); reads only the header and index."""
    return Artifact(source, limits)


def verify(source, limits: layout.Limits = layout.DEFAULT_LIMITS) -> Artifact:
    artifact = Artifact(source, limits)
    artifact.verify()
    return artifact
