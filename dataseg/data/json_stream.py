"""Reading the parts of a COCO json that are needed, without parsing all of it.

``json.load`` of an Objects365-sized json (several GB) costs minutes and tens of GB, while the
callers need one list of it, or one element at a time:

* :func:`read_coco_list` finds one top-level list (``categories``, ``images``) by a byte search
  and decodes only that list (registration reads the categories; loading checks image ids).
* :class:`JsonStream` walks the whole file decoding the elements of its ``images`` and
  ``annotations`` arrays one at a time, so memory stays at one read chunk (the columnar
  cache's builder, ``dataseg.data.columnar``).
"""

import json
import mmap
import re
from typing import Dict, List, Optional, Sequence

__all__ = ["JsonStream", "read_coco_list"]

_WS = re.compile(r"[ \t\n\r]*")
_COLON = re.compile(r"\s*:\s*")


class JsonStream:
    """Walk a top-level json object, decoding the elements of its ``images`` and ``annotations``
    arrays one at a time (other values whole); memory stays at one read chunk.

    Args:
        f: the json, opened as text.
        chunk_chars: characters read at a time.
    """

    # The top-level arrays whose elements are yielded one by one.
    STREAMED = ("images", "annotations")

    def __init__(self, f, chunk_chars: int = 1 << 22):
        self.f, self.chunk = f, chunk_chars
        self.buf, self.pos, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _fill(self, at_least: int = 0):
        data = self.f.read(max(self.chunk, at_least))
        if not data:
            self.eof = True
        self.buf = self.buf[self.pos:] + data
        self.pos = 0

    def _peek(self) -> str:
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos:self.pos + 1]
            self._fill()

    def _expect(self, chars: str) -> str:
        c = self._peek()
        if not c or c not in chars:
            raise json.JSONDecodeError(f"expected one of {chars!r}", self.buf, self.pos)
        self.pos += 1
        return c

    def _value(self):
        self._peek()  # raw_decode does not skip leading whitespace
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if self.eof:
                    raise
                self._fill(len(self.buf) - self.pos)  # doubling: a large value costs O(n)
                continue
            if end == len(self.buf) and not self.eof:
                self._fill()  # a number may continue in the next chunk: decode it again
                continue
            self.pos = end
            return value

    def __iter__(self):
        """Yields ``(key, value, is_element)``: elements of the streamed arrays, else values."""
        self._fill()
        self._expect("{")
        if self._peek() == "}":
            return
        while True:
            key = self._value()
            self._expect(":")
            if key in self.STREAMED and self._peek() == "[":
                self.pos += 1
                if self._peek() == "]":
                    self.pos += 1
                else:
                    while True:
                        yield key, self._value(), True
                        if self._expect(",]") == "]":
                            break
            else:
                yield key, self._value(), False
            if self._expect(",}") == "}":
                return


# What each top-level list's elements must hold to be taken for that list (a key of the same
# name elsewhere in the file, inside a string or a nested object, is skipped).
_LIST_KEYS = {"categories": ("id", "name"), "images": ("id", "file_name")}


def read_coco_list(json_file: str, key: str, window: int = 1 << 20) -> Optional[List[Dict]]:
    """The top-level list ``key`` ("categories", "images") of a COCO json, without parsing
    the rest of it: registration needs only the categories, and ``json.load`` of an
    Objects365-sized file costs minutes and tens of GB.

    Looks for the ``"<key>"`` key in the file's first and last ``window`` bytes (where writers
    put it), then in the whole file, and decodes the list that follows. Returns ``None`` when
    no such list is found (the caller parses the whole json).
    """
    needle = f'"{key}"'.encode()
    with open(json_file, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        size = len(m)
        ranges = [(0, min(size, window)), (max(0, size - window), size), (0, size)]
        for lo, hi in ranges:
            pos = m.find(needle, lo, hi)
            while pos != -1:
                found = _decode_list(m, pos + len(needle), _LIST_KEYS[key],
                                     allow_empty=key != "categories")
                if found is not None:
                    return found
                pos = m.find(needle, pos + 1, hi)
    return None


def _decode_list(m, start: int, required: Sequence[str],
                 allow_empty: bool) -> Optional[List[Dict]]:
    """The list after a key found at ``start`` of ``m`` (``: [...]``), if its elements are
    dicts holding ``required``; else ``None``. Decodes a growing prefix of the file, so a
    list costs about its own size."""
    text_len = 1 << 16
    decoder = json.JSONDecoder()
    while True:
        text = m[start:start + text_len].decode("utf-8", errors="replace")
        match = _COLON.match(text)
        if not match or text[match.end():match.end() + 1] != "[":
            return None
        try:
            value, _ = decoder.raw_decode(text, match.end())
        except json.JSONDecodeError:
            if start + text_len >= len(m):
                return None
            text_len *= 4
            continue
        ok = isinstance(value, list) and (value or allow_empty) and all(
            isinstance(c, dict) and all(k in c for k in required) for c in value)
        return value if ok else None
