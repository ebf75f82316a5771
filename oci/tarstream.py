"""A strict, streaming reader of tar headers (ustar, PAX and GNU long names).

``tarfile`` treats a damaged header in the middle of an archive as its end,
which would turn a corrupt layer into a silently partial one; it also costs
more per member than the extractor can afford. This reader accepts what
container layers use (POSIX ustar, PAX records, GNU long names) and raises
``TarFormatError`` on anything it cannot read with certainty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

BLOCK = 512

REG = b"0"
AREG = b"\0"
CONTIG = b"7"
LINK = b"1"
SYMLINK = b"2"
CHR = b"3"
BLK = b"4"
DIR = b"5"
FIFO = b"6"
PAX = b"x"
PAX_GLOBAL = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"
GNU_SPARSE = b"S"
GNU_VOLHDR = b"V"
REGULAR = (REG, AREG, CONTIG)
# A long name or PAX record larger than this is hostile, not a path.
_MAX_META = 1 << 20


def clean_name(name: str) -> tuple[str, ...]:
    """An entry name cleaned as text: ``a/../b`` is ``b``; leading ``/`` and ``..`` go."""
    out: list[str] = []
    for c in name.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if out:
                out.pop()
            continue
        out.append(c)
    return tuple(out)


class TarFormatError(Exception):
    """The stream is not a tar archive ocikit can read with certainty."""


@dataclass(slots=True)
class Member:
    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def is_dir(self) -> bool:
        return self.type == DIR

    def is_file(self) -> bool:
        return self.type in REGULAR


def _num(field_: bytes, what: str) -> int:
    if field_ and field_[0] & 0x80:
        # GNU base-256: big-endian two's complement with the top bit as flag.
        n = int.from_bytes(field_[1:], "big")
        if field_[0] == 0xFF:
            n -= 1 << (8 * (len(field_) - 1))
        elif field_[0] != 0x80:
            raise TarFormatError(f"bad base-256 number in {what}")
        return n
    s = field_.split(b"\0", 1)[0].strip(b" ")
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        raise TarFormatError(f"bad number {s!r} in {what}") from None


def _str(b: bytes) -> str:
    return os.fsdecode(b.split(b"\0", 1)[0])


def _parse_pax(data: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # trailing NUL padding some writers leave
            break
        sp = data.find(b" ", pos)
        if sp < 0:
            raise TarFormatError("bad PAX record")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise TarFormatError("bad PAX record length") from None
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1:end] != b"\n":
            raise TarFormatError("bad PAX record")
        kv = data[sp + 1:end - 1]
        eq = kv.find(b"=")
        if eq < 0:
            raise TarFormatError("bad PAX record")
        out[kv[:eq].decode("utf-8", "surrogateescape")] = kv[eq + 1:]
        pos = end
    return out


class TarReader:
    """Yields members of a tar stream; ``read`` returns the current member's data."""

    def __init__(self, stream: BinaryIO) -> None:
        self._f = stream
        self._left = 0  # data bytes of the current member not read yet
        self._pad = 0
        self._global: dict[str, bytes] = {}

    def _read_exact(self, n: int) -> bytes:
        data = self._f.read(n)
        if len(data) != n:
            raise TarFormatError("unexpected end of the tar stream")
        return data

    def _skip_rest(self) -> None:
        left = self._left + self._pad
        while left:
            got = self._f.read(min(left, 1 << 20))
            if not got:
                raise TarFormatError("unexpected end of the tar stream")
            left -= len(got)
        self._left = self._pad = 0

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current member's data (b"" at its end)."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        data = self._f.read(n)
        if len(data) != n:
            raise TarFormatError("unexpected end of the tar stream inside a file")
        self._left -= n
        return data

    def readinto(self, buf: memoryview) -> int:
        n = min(len(buf), self._left)
        if n <= 0:
            return 0
        got = self._f.readinto(buf[:n])  # type: ignore[attr-defined]
        if got != n:
            raise TarFormatError("unexpected end of the tar stream inside a file")
        self._left -= n
        return n

    def _meta_data(self, size: int) -> bytes:
        if size > _MAX_META:
            raise TarFormatError(f"extended header of {size} bytes")
        data = self._read_exact(size)
        self._read_exact(-size % BLOCK)
        return data

    def next(self) -> Member | None:
        """The next member, or None at the end-of-archive marker."""
        self._skip_rest()
        pax: dict[str, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        while True:
            block = self._f.read(BLOCK)
            if not block:
                # EOF without end-of-archive blocks: accepted as GNU tar does,
                # the diff_id check still covers truncation at a boundary.
                if pax or longname is not None or longlink is not None:
                    raise TarFormatError("unexpected end of the tar stream")
                return None
            if len(block) != BLOCK:
                raise TarFormatError("unexpected end of the tar stream")
            if block.count(0) == BLOCK:
                if pax or longname is not None or longlink is not None:
                    raise TarFormatError("end of archive after an extended header")
                return None
            chk = _num(block[148:156], "checksum")
            unsigned = sum(block) - sum(block[148:156]) + 8 * 32
            if chk != unsigned:
                signed = unsigned - 256 * sum(1 for b in block if b > 127)
                if chk != signed:
                    raise TarFormatError("bad header checksum")
            typ = block[156:157]
            size = _num(block[124:136], "size")
            if size < 0:
                raise TarFormatError("negative size")
            if typ == PAX:
                pax.update(_parse_pax(self._meta_data(size)))
                continue
            if typ == PAX_GLOBAL:
                self._global.update(_parse_pax(self._meta_data(size)))
                continue
            if typ == GNU_LONGNAME:
                longname = self._meta_data(size).split(b"\0", 1)[0]
                continue
            if typ == GNU_LONGLINK:
                longlink = self._meta_data(size).split(b"\0", 1)[0]
                continue
            break
        if self._global:
            pax = {**self._global, **pax}
        magic = block[257:265]
        if longname is not None:
            name = os.fsdecode(longname)
        elif magic[:6] == b"ustar\0" and block[345] != 0:
            name = _str(block[345:500]) + "/" + _str(block[0:100])
        else:
            name = _str(block[0:100])
        linkname = os.fsdecode(longlink) if longlink is not None else _str(block[157:257])
        m = Member(
            name=name, type=typ, mode=_num(block[100:108], "mode") & 0o7777,
            uid=_num(block[108:116], "uid"), gid=_num(block[116:124], "gid"), size=size,
            mtime_ns=_num(block[136:148], "mtime") * 1_000_000_000, linkname=linkname,
            devmajor=_num(block[329:337], "devmajor"), devminor=_num(block[337:345], "devminor"),
        )
        if pax:
            self._apply_pax(m, pax)
        if typ in (GNU_SPARSE,) or any(k.startswith("GNU.sparse.") for k in pax):
            raise TarFormatError(f"{m.name}: sparse files are not supported")
        # Only regular files (and unknown types, as tarfile reads them) carry
        # data; a size on a link or directory header is no data at all.
        if typ in (LINK, SYMLINK, CHR, BLK, DIR, FIFO):
            m.size = 0
        self._left = m.size
        self._pad = -m.size % BLOCK
        return m

    @staticmethod
    def _apply_pax(m: Member, pax: dict[str, bytes]) -> None:
        for k, v in pax.items():
            if k == "path":
                m.name = os.fsdecode(v)
            elif k == "linkpath":
                m.linkname = os.fsdecode(v)
            elif k == "size":
                m.size = _pax_int(v, k)
            elif k == "uid":
                m.uid = _pax_int(v, k)
            elif k == "gid":
                m.gid = _pax_int(v, k)
            elif k == "mtime":
                m.mtime_ns = _pax_time_ns(v)
            elif k.startswith("SCHILY.xattr."):
                m.xattrs[k[len("SCHILY.xattr."):]] = v


def _pax_int(v: bytes, k: str) -> int:
    try:
        n = int(v)
    except ValueError:
        raise TarFormatError(f"bad PAX {k}") from None
    if n < 0:
        raise TarFormatError(f"negative PAX {k}")
    return n


def _pax_time_ns(v: bytes) -> int:
    """A PAX decimal time ("1700000000.123456789") in nanoseconds, exactly."""
    sec, _, frac = v.partition(b".")
    try:
        whole = int(sec)
        part = int((frac[:9] or b"0").ljust(9, b"0")) if frac else 0
    except ValueError:
        raise TarFormatError("bad PAX mtime") from None
    if sec.startswith(b"-") and part:
        return whole * 1_000_000_000 - part
    return whole * 1_000_000_000 + part
