"""What opens every Part-10 file (PS3.10 §7.1): a 128-byte preamble, then ``DICM``.

Huren writes its preamble as zeros, as pydicom and DCMTK do; a file it reads
may carry anything there, so readers look only at the four bytes after it.
"""

PREAMBLE_LENGTH = 128
MAGIC = b"DICM"
# The preamble and the magic as Huren writes them, before the file meta group.
PREFIX = b"\0" * PREAMBLE_LENGTH + MAGIC


def has_magic(head: bytes | bytearray) -> bool:
    """Whether `head`, a file's first bytes, has ``DICM`` after the preamble."""
    return head[PREAMBLE_LENGTH:len(PREFIX)] == MAGIC
