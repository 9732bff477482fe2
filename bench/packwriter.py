"""Write git objects straight into a pack file (and its .idx), for generated benchmarks.

Writing millions of loose objects through libgit2 (one file each, then ``git repack``) is
what made generating a large fleet take a quarter of an hour; appending zlib-compressed
objects to one pack and writing its index here takes a fraction of that. Objects are
stored whole (no deltas): a server's repacked repository would deltify them, which makes
reading them a little dearer, not cheaper.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

from gitops.trust import sshsig
from gitops.trust.sshsig import PrivateKeyTypes

COMMIT, TREE, BLOB = 1, 2, 3
_NAMES = {COMMIT: b"commit", TREE: b"tree", BLOB: b"blob"}


class PackWriter:
    """Append objects to ``<objects>/pack/tmp-<pid>.pack``; :meth:`close` names it by its
    checksum and writes the index, so git and libgit2 see the objects."""

    def __init__(self, objects: Path) -> None:
        self.dir = objects / "pack"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dir / f"tmp-{os.getpid()}-{id(self)}.pack"
        self.file = self.tmp.open("wb", buffering=1 << 20)
        self.file.write(b"PACK" + struct.pack(">II", 2, 0))  # count fixed in close()
        self.offset = 12
        self.entries: dict[bytes, tuple[int, int]] = {}  # sha -> (offset, crc32)

    def add(self, kind: int, data: bytes) -> str:
        """Store one object; returns its id (hex)."""
        sha = hashlib.sha1(b"%s %d\0" % (_NAMES[kind], len(data)) + data).digest()
        if sha in self.entries:
            return sha.hex()
        size = len(data)
        header = bytearray([(kind << 4) | (size & 0x0F)])
        size >>= 4
        while size:
            header[-1] |= 0x80
            header.append(size & 0x7F)
            size >>= 7
        packed = bytes(header) + zlib.compress(data, 1)
        self.entries[sha] = (self.offset, zlib.crc32(packed))
        self.file.write(packed)
        self.offset += len(packed)
        return sha.hex()

    def blob(self, data: bytes) -> str:
        return self.add(BLOB, data)

    def tree(self, entries: dict[str, tuple[str, str]]) -> str:
        """``entries``: name -> (mode, hex id); modes as git writes them (``100644``,
        ``40000``); sorted as git sorts (a tree's name as if it ended in ``/``)."""

        def order(name: str) -> bytes:
            mode = entries[name][0]
            return name.encode() + (b"/" if mode == "40000" else b"")

        body = b"".join(
            entries[n][0].encode() + b" " + n.encode() + b"\0" + bytes.fromhex(entries[n][1])
            for n in sorted(entries, key=order)
        )
        return self.add(TREE, body)

    def signed_commit(
        self,
        *,
        tree: str,
        parents: list[str],
        name: str,
        email: str,
        when: int,
        message: str,
        key: PrivateKeyTypes,
    ) -> str:
        """A commit signed as gitops.trust.commits.create_signed_commit signs it (the same
        bytes: ``git commit -S`` with ``gpg.format=ssh``)."""
        head = [f"tree {tree}", *(f"parent {p}" for p in parents)]
        person = f"{name} <{email}> {when} +0000"
        head += [f"author {person}", f"committer {person}"]
        content = "\n".join(head) + "\n\n" + message
        armored = sshsig.sign(content.encode(), key).rstrip("\n")
        signed = "\n".join([*head, "gpgsig " + armored.replace("\n", "\n ")]) + "\n\n" + message
        return self.add(COMMIT, signed.encode())

    def close(self) -> Path | None:
        """Finish the pack and write its index; None when nothing was added."""
        self.file.close()
        if not self.entries:
            self.tmp.unlink()
            return None
        with self.tmp.open("r+b") as handle:
            handle.seek(8)
            handle.write(struct.pack(">I", len(self.entries)))
            handle.seek(0)
            digest = hashlib.sha1()
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
            checksum = digest.digest()
            handle.seek(0, os.SEEK_END)
            handle.write(checksum)
        names = sorted(self.entries)
        fanout = [0] * 256
        for sha in names:
            fanout[sha[0]] += 1
        total = 0
        for index in range(256):
            total += fanout[index]
            fanout[index] = total
        small, large = bytearray(), bytearray()
        for sha in names:
            offset = self.entries[sha][0]
            if offset < 0x80000000:
                small += struct.pack(">I", offset)
            else:
                small += struct.pack(">I", 0x80000000 | (len(large) // 8))
                large += struct.pack(">Q", offset)
        index_data = (
            b"\377tOc"
            + struct.pack(">I", 2)
            + struct.pack(">256I", *fanout)
            + b"".join(names)
            + b"".join(struct.pack(">I", self.entries[s][1]) for s in names)
            + bytes(small)
            + bytes(large)
            + checksum
        )
        index_data += hashlib.sha1(index_data).digest()
        final = self.dir / f"pack-{checksum.hex()}"
        final.with_suffix(".idx").write_bytes(index_data)
        self.tmp.rename(final.with_suffix(".pack"))
        return final.with_suffix(".pack")
