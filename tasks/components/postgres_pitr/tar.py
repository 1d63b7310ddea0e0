"""Read a few small members (backup_label, backup_manifest) out of a tar *stream* as it passes.

pg_basebackup writes plain ustar headers; the stream is forwarded untouched, in bounded memory.
It also lists every member (name -> size) and notes what makes the tar unreadable: a header
whose checksum does not match, or a stream that ends before the end-of-archive block (a tar cut
at a member boundary is otherwise a valid, shorter tar: Python's tarfile reads it without a word).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

BLOCK = 512
KEEP_LIMIT = 64 * 1024 * 1024  # backup_manifest grows ~150 bytes per file


class TarPeek:
    def __init__(self, wanted: set[str]) -> None:
        self.wanted = wanted
        self.found: dict[str, bytes] = {}
        self._buf = bytearray()
        self._skip = 0  # payload bytes (incl. padding) of the current member still to pass
        self._keep: bytearray | None = None
        self._keep_name = ""
        self._keep_size = 0
        self.ended = False
        self.members: dict[str, int] = {}
        self.damage: str | None = None  # the first thing that makes the stream no tar

    def feed(self, chunk: bytes) -> None:
        data = memoryview(chunk)
        while data and not self.ended and self.damage is None:
            if self._skip:
                take = min(self._skip, len(data))
                if self._keep is not None:
                    self._keep += data[:take]
                    if len(self._keep) >= self._keep_size:
                        self.found[self._keep_name] = bytes(self._keep[: self._keep_size])
                        self._keep = None
                self._skip -= take
                data = data[take:]
                continue
            need = BLOCK - len(self._buf)
            self._buf += data[:need]
            data = data[need:]
            if len(self._buf) == BLOCK:
                self._header(bytes(self._buf))
                self._buf.clear()

    def _header(self, header: bytes) -> None:
        if header == b"\0" * BLOCK:
            self.ended = True
            return
        # ustar: the checksum field counts as spaces in the unsigned sum of the header's bytes
        try:
            stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"x", 8)
        except ValueError:
            stored = -1
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            self.damage = f"a tar header after {len(self.members)} members has a wrong checksum"
            return
        name = header[:100].split(b"\0", 1)[0].decode(errors="replace")
        prefix = header[345:500].split(b"\0", 1)[0].decode(errors="replace")
        if prefix:
            name = f"{prefix}/{name}"
        size_field = header[124:136].split(b"\0", 1)[0].strip() or b"0"
        size = int(size_field, 8)
        self._skip = (size + BLOCK - 1) // BLOCK * BLOCK
        name = name.removeprefix("./")
        self.members[name] = size
        if name in self.wanted and size <= KEEP_LIMIT:
            self._keep, self._keep_name, self._keep_size = bytearray(), name, size
            if size == 0:
                self.found[name] = b""
                self._keep = None

    def tee(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.feed(chunk)
            yield chunk

    def problem(self) -> str | None:
        """Why what was fed is not one whole tar, or None."""
        if self.damage:
            return self.damage
        if not self.ended:
            return (
                f"the tar ends after {len(self.members)} members without its end-of-archive block (truncated)"
            )
        return None
