"""A .raiiaf carried inside its own PNG: `raiiaf export` writes it, rc.open reads it, `raiiaf import` gives it back.

An exported PNG is the stored PNG with chunks inserted right after its header chunk (docs/FORMAT.md,
"Shareable PNG"):

    signature, IHDR          the stored PNG's first 33 bytes
    tEXt/iTXt                prompt and workflow (ComfyUI's graph) and parameters (A1111 infotext), each only
                             when the file has it to give and the stored PNG does not hold that keyword already
    raIf                     ancillary, private, safe-to-copy: a container header, then the .raiiaf file
                             without its image payload
    the stored PNG's other chunks, unchanged, through IEND

The stored PNG is the exported one with the inserted run of chunks cut out, so the image is not stored twice
and the .raiiaf is raIf's data with the image put back in at `image_offset`. `PngSource` serves those bytes
to the reader as a .raiiaf file, in place, so every check of a .raiiaf applies to them as they are; its
verify() adds the PNG's own: every chunk's CRC and the sha256 of the inserted text chunks.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path

from . import images, infotext, layout, png
from .atomic import write_atomic
from .errors import CorruptFileError, NoArtifactError, RaiiafError, UnsupportedVersionError
from .reader import Artifact, _FileSource, _MemorySource, _Source, open_artifact

CHUNK_TYPE = b"raIf"  # lowercase r: ancillary; a: private; I: reserved bit clear; f: safe to copy
MAGIC = b"raiiaf.png"
MAJOR, MINOR = 1, 0
# magic, major, minor, inserted_at, image_offset, image_length, texts_sha256; then the CRC-32 of those bytes
_HEADER_BODY = struct.Struct("<10sBBQQQ32s")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER_BODY.size + _CRC.size
# Export inserts at most three text chunks before raIf; a reader looks a little further, for later writers.
MAX_CHUNKS_BEFORE = 16
_STOP = (b"IDAT", b"IEND", b"PLTE")  # raIf comes before these: a PNG that reaches one without it holds none
_FORMAT_NAMES = {"webp": "WebP", "jpeg": "JPEG"}


def holds_artifact(path) -> bool:
    """Whether a file is a PNG with a raiiaf chunk where export puts it: a quick look at its first chunk headers
    (rc.open checks the rest)."""
    try:
        base = _FileSource(path, layout.FIRST_READ)
        if base.head[:len(png.SIGNATURE)] != png.SIGNATURE:
            return False
        _find(_reader(base), base.size, base.name)
    except RaiiafError:
        return False
    return True


def _reader(base: _Source):
    """read(offset, length) on a source that serves what its first read holds from memory."""
    head = base.head

    def read(offset: int, length: int) -> bytes:
        if offset + length <= len(head):
            return head[offset:offset + length]
        return base.read(offset, length)

    return read


def _find(read, size: int, where: str) -> tuple[png.Chunk, bytes]:
    """(the raIf chunk, its container header), found by walking the chunks after IHDR."""
    for i, item in enumerate(png.chunks(read, size, where, max_chunks=size // 12 + 1)):
        if i == 0:
            if item.type != b"IHDR" or item.length != 13:
                raise CorruptFileError(f"{where}: damaged PNG: its first chunk is not a 13-byte IHDR")
            continue
        if item.type == CHUNK_TYPE:
            if item.length < HEADER_SIZE:
                raise CorruptFileError(f"{where}: the PNG's raiiaf chunk is {item.length} bytes, shorter than its "
                                       f"{HEADER_SIZE}-byte header")
            return item, read(item.data_offset, HEADER_SIZE)
        if item.type in _STOP or i > MAX_CHUNKS_BEFORE:
            break
        if item.length >= len(MAGIC) and read(item.data_offset, len(MAGIC)) == MAGIC:
            raise CorruptFileError(f"{where}: the PNG's raiiaf chunk is damaged: its type reads {item.type!r}, not "
                                   f"{CHUNK_TYPE!r}")
    raise NoArtifactError(f"{where}: not a .raiiaf file: a PNG without a raiiaf chunk, not made by `raiiaf export` "
                          "(`raiiaf import` makes a .raiiaf of a ComfyUI or A1111/Forge PNG)")


class PngSource(_Source):
    """The .raiiaf inside an exported PNG, read in place from the PNG's source: raIf's data with the image
    (the PNG without the inserted chunks) put back at its offset."""

    def __init__(self, base: _Source, head_length: int, limits: layout.Limits):
        self._base, self.name, self._limits = base, base.name, limits
        self.path = base.path
        self._file = _reader(base)
        self._chunk, header = _find(self._file, base.size, self.name)
        body = header[:_HEADER_BODY.size]
        magic, major, minor, inserted_at, image_offset, image_length, texts_sha256 = _HEADER_BODY.unpack(body)
        if magic != MAGIC:
            raise CorruptFileError(f"{self.name}: the PNG's raiiaf chunk does not start with {MAGIC!r}")
        if major > MAJOR:
            raise UnsupportedVersionError(f"{self.name}: the PNG's raiiaf chunk is version {major}.{minor}, newer "
                                          f"than this reader ({MAJOR}.{MINOR}); upgrade raiiaf")
        if zlib.crc32(body) != _CRC.unpack(header[_HEADER_BODY.size:])[0]:
            raise CorruptFileError(f"{self.name}: the PNG's raiiaf chunk header is damaged (checksum mismatch)")
        raif = self._chunk
        inserted = raif.end - inserted_at
        rest_start, rest_length = raif.data_offset + HEADER_SIZE, raif.length - HEADER_SIZE
        if not png.IHDR_END <= inserted_at <= raif.offset or base.size - inserted != image_length \
                or image_offset > rest_length:
            raise CorruptFileError(
                f"{self.name}: the PNG's raiiaf chunk does not fit the file (truncated, or chunks were added or "
                f"removed): the image should be {image_length:,} bytes, the PNG leaves {base.size - inserted:,}")
        self._inserted_at, self._texts_sha256 = inserted_at, texts_sha256.hex()
        # (start in the .raiiaf, start in the PNG, length): the .raiiaf before the image, the image's first bytes
        # (signature and IHDR), the rest of the image after the inserted chunks, the .raiiaf after the image.
        self._segments = ((0, rest_start, image_offset),
                          (image_offset, 0, inserted_at),
                          (image_offset + inserted_at, raif.end, image_length - inserted_at),
                          (image_offset + image_length, rest_start + image_offset, rest_length - image_offset))
        self.size = rest_length + image_length
        # The head is what the PNG's first read already holds of the .raiiaf (its header, index and usually
        # metadata, as in a .raiiaf's own first read), so that opening costs no second read; a full read when
        # that is not even the header.
        held = min(len(base.head) - rest_start, image_offset)
        self.head = self.read(0, min(head_length, self.size, held if held >= layout.HEADER_SIZE else head_length))

    def read(self, offset: int, length: int) -> bytes:
        end, pieces = offset + length, []
        for start, file_start, size in self._segments:
            low, high = max(offset, start), min(end, start + size)
            if low < high:
                pieces.append(self._file(file_start + low - start, high - low))
        return self._short(b"".join(pieces), length)

    def verify(self) -> None:
        """The PNG's own checks: every chunk's CRC through IEND, and the inserted text chunks' sha256."""
        for item in png.chunks(self._file, self._base.size, self.name, max_chunks=self._limits.max_chunks):
            png.check_crc(self._file, item, self.name)
        if self._base.hash(self._inserted_at, self._chunk.offset - self._inserted_at) != self._texts_sha256:
            raise CorruptFileError(f"{self.name}: the PNG's text chunks before its raiiaf chunk were changed "
                                   "(sha256 mismatch)")


# -- export -------------------------------------------------------------------------------------------------

def shared_texts(metadata: dict, size: tuple | None = None) -> dict[str, str]:
    """The text chunks an export writes for a file's metadata: ComfyUI's prompt and workflow (as SaveImage
    writes them), and A1111's parameters (`size`: the image's, for a file whose metadata gives none)."""
    texts = {}
    host = metadata.get("host")
    comfy = host.get("comfyui") if isinstance(host, dict) else None
    if isinstance(comfy, dict):
        for key in ("prompt", "workflow"):
            if isinstance(comfy.get(key), dict):
                texts[key] = json.dumps(comfy[key])
    parameters = infotext.build(metadata, size)
    if parameters is not None:
        texts["parameters"] = parameters
    return texts


def export_parts(art: Artifact, image: bytes | None = None) -> list[bytes]:
    """The shareable PNG of a file (checked already), as byte strings to write in order; `image`: the stored
    image's bytes when the caller holds them checked (else they are read)."""
    if not art.has_image:
        raise RaiiafError(f"{art.name}: the file holds no image, so there is no PNG to export")
    image = art.image_bytes() if image is None else image
    if art.image_format != "png":
        name = _FORMAT_NAMES.get(art.image_format, str(art.image_format))
        raise RaiiafError(
            f"{art.name}: the stored image is {name}; export writes PNGs only: a PNG would mean re-encoding the "
            f"image (changing the bytes the file's checksums cover), and {name} has no place a raiiaf chunk "
            "survives the tools that display and upload images (keep the .raiiaf)")
    existing = _check_stored_png(image, art.name, art.limits)
    added = b"".join(png.text_chunk(key, text) for key, text in
                     shared_texts(art.metadata, images.image_size(image, "png")).items() if key not in existing)
    entry = next(c for c in art.chunks if c.type == "image" and c.name == "")
    source = art._source  # noqa: SLF001 - the .raiiaf's own bytes as the reader serves them (from a PNG too)
    image_end = entry.offset + entry.length
    header = _HEADER_BODY.pack(MAGIC, MAJOR, MINOR, png.IHDR_END, entry.offset, len(image),
                               hashlib.sha256(added).digest())
    data = b"".join((header, _CRC.pack(zlib.crc32(header)), source.read(0, entry.offset),
                     source.read(image_end, source.size - image_end)))
    return [image[:png.IHDR_END], added, png.chunk(CHUNK_TYPE, data), image[png.IHDR_END:]]


def _check_stored_png(image: bytes, name: str, limits: layout.Limits) -> set[str]:
    """The keywords of the stored PNG's text chunks, after checking it is a PNG an export can extend: IHDR
    first, every chunk's CRC right (the exported PNG must pass verify)."""
    def read(offset: int, length: int) -> bytes:
        return image[offset:offset + length]

    where = f"{name}: the stored PNG"
    keywords, first = set(), True
    for item in png.chunks(read, len(image), where, max_chunks=limits.max_chunks):
        if first and (item.type != b"IHDR" or item.length != 13):
            raise CorruptFileError(f"{where} does not start with a 13-byte IHDR chunk")
        first = False
        png.check_crc(read, item, where)
        if item.type in png.TEXT_TYPES:
            keywords.add(read(item.data_offset, min(item.length, 80)).partition(b"\0")[0].decode("latin-1"))
    return keywords


def export_png(source, output=None, *, exclusive: bool = False, limits: layout.Limits = layout.DEFAULT_LIMITS):
    """Write the shareable PNG of a .raiiaf (a path, an Artifact, or an exported PNG) and return its path.

    The file is verified first; `output` defaults to the file's path with the suffix .png. Atomic like
    rc.write; `exclusive=True` refuses to replace an existing file.
    """
    art = source if isinstance(source, Artifact) else open_artifact(source, limits)
    if output is None:
        if art.path is None:
            raise RaiiafError(f"{art.name}: give the output path (the file has no path to name the PNG after)")
        output = art.path.with_suffix(".png")
    art.verify()
    return write_atomic(Path(output), export_parts(art), exclusive=exclusive)


def from_parts(parts: list[bytes], name: str) -> list[bytes]:
    """The shareable PNG of a .raiiaf given as the writer's byte strings (rc.write(..., png=True)): its last
    part is the image, just hashed by the writer, so it is not read back and hashed again."""
    art = Artifact(_MemorySource(b"".join(parts), name, None, layout.FIRST_READ))
    last = art.chunks[-1] if art.chunks else None
    image = parts[-1] if last is not None and last.type == "image" and last.length == len(parts[-1]) else None
    return export_parts(art, image)


def raiiaf_bytes(art: Artifact, block: int = 1 << 20):
    """The .raiiaf file of an opened artifact, byte for byte, in blocks (from an exported PNG: the original)."""
    source = art._source  # noqa: SLF001 - see export_parts
    for start in range(0, source.size, block):
        yield source.read(start, min(block, source.size - start))
