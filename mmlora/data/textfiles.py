"""Text data files as spreadsheet programs and Windows tools write them: byte-order marks.

Excel's "CSV UTF-8" and many Windows tools start files with a UTF-8 byte-order mark
(EF BB BF); Excel's "Unicode text" export is UTF-16 with its own BOM (FF FE). A BOM says how
the file is encoded and is not part of the first row, so it is removed and the file decoded
accordingly; UTF-16 without a BOM is recognised by its zero bytes. Any other file is read as
UTF-8 (JSON Lines line by line, so one bad line is one bad row).
"""

from __future__ import annotations

import codecs
from pathlib import Path

from mmlora.errors import MmloraError

# Longest first: the UTF-32 LE mark starts with the UTF-16 LE one.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def sniff_encoding(path: Path) -> str:
    """`utf-8` for a file without a byte-order mark, else the codec its BOM names (the
    returned codec removes the BOM when decoding)."""
    with path.open("rb") as handle:
        head = handle.read(4)
    for bom, codec in BOMS:
        if head.startswith(bom):
            return codec
    # UTF-16 without a BOM: ASCII text (every file's first characters here: `{`, `[`, a header)
    # has a zero byte beside each character, the way JSON's RFC 4627 tells encodings apart.
    if len(head) == 4 and head[0] and not head[1] and head[2] and not head[3]:
        return "utf-16-le"
    if len(head) == 4 and not head[0] and head[1] and not head[2] and head[3]:
        return "utf-16-be"
    return "utf-8"


def read_text(path: Path) -> str:
    """The whole file as text, its BOM removed; an MmloraError naming the line for bad bytes."""
    data = path.read_bytes()
    codec = sniff_encoding(path)
    try:
        return data.decode(codec)
    except UnicodeDecodeError as err:
        line = data[: err.start].decode(codec, errors="replace").count("\n") + 1
        raise MmloraError(f"{path}: not valid {codec.upper().removesuffix('-SIG')} text ({err.reason} "
                          f"at byte {err.start}, near line {line}); re-export the file as UTF-8.") from None


def check_decodes(path: Path, chunk_size: int = 1 << 20) -> None:
    """read_text's MmloraError when the file does not decode, without holding the file: it is
    decoded in chunks and nothing kept (for a file then read line by line)."""
    decoder = codecs.getincrementaldecoder(sniff_encoding(path))()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(chunk_size):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        read_text(path)  # raises, naming the byte and line exactly as a whole read does


def first_text(path: Path, size: int = 64) -> str:
    """The first characters of a file (BOM removed, undecodable bytes replaced), to sniff its shape."""
    with path.open("rb") as handle:
        head = handle.read(size * 4)
    return head.decode(sniff_encoding(path), errors="replace")[:size]
