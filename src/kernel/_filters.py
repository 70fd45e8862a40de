"""containerd's filter language (pkg/filters): a scanner, a recursive-descent parser and matchers.

``name==foo,labels."my label"`` selects objects whose ``name`` is ``foo`` AND that carry the label;
several filter strings are ORed. The parser mirrors containerd's token by token so that accepted
inputs, parsed values and error messages agree with it. Two deliberate differences: error positions
count code points where Go counts bytes (identical for ASCII input), and ``~=`` patterns are
compiled with Python's ``re`` rather than Go's RE2, so the rare constructs the two dialects
disagree on behave the Python way.
"""

from __future__ import annotations

import enum
import functools
import re
import string
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from corral.kernel._errors import InvalidArgument

FieldSource = Callable[[Sequence[str]], str | None]
"""Resolves a field path to the field's value, or None when the object has no such field."""


class FilterSyntaxError(InvalidArgument):
    """A filter string that does not parse; the message marks the offending character as containerd does."""

    def __init__(self, text: str, position: int, reason: str) -> None:
        self.text = text
        self.position = position
        self.reason = reason
        if position < len(text):
            where = f"{text[:position]} >|{text[position]}|< {text[position + 1 :]}"
        else:
            where = text
        super().__init__(f"filters: parse error: [{where}]: {reason}")

    def __reduce__(self) -> tuple[type[FilterSyntaxError], tuple[str, int, str]]:
        return type(self), (self.text, self.position, self.reason)


class Filter(ABC):
    """Something that accepts or rejects an object, seen through a FieldSource."""

    __slots__ = ()

    @abstractmethod
    def match(self, source: FieldSource) -> bool:
        """True when the object behind ``source`` is selected."""


class Operator(enum.Enum):
    """How a selector compares a field; the values are the operators' spellings."""

    PRESENT = "?"
    EQUAL = "=="
    NOT_EQUAL = "!="
    MATCHES = "~="


@dataclass(frozen=True, slots=True)
class Selector(Filter):
    """``fieldpath [operator value]``: one comparison of one field."""

    fieldpath: tuple[str, ...]
    operator: Operator = Operator.PRESENT
    value: str = ""

    def match(self, source: FieldSource) -> bool:
        found = source(self.fieldpath)
        if self.operator is Operator.PRESENT:
            return found is not None
        if self.operator is Operator.EQUAL:
            return found is not None and found == self.value
        # containerd's adaptors report an absent field as "", so != and ~= test the empty string.
        actual = "" if found is None else found
        if self.operator is Operator.NOT_EQUAL:
            return actual != self.value
        pattern = _compile(self.value)
        return pattern is not None and pattern.search(actual) is not None


@dataclass(frozen=True, slots=True)
class All(Filter):
    """Matches when every member matches; with no members it matches everything."""

    filters: tuple[Filter, ...] = ()

    def match(self, source: FieldSource) -> bool:
        return all(f.match(source) for f in self.filters)


@dataclass(frozen=True, slots=True)
class Any(Filter):
    """Matches when at least one member matches."""

    filters: tuple[Filter, ...] = ()

    def match(self, source: FieldSource) -> bool:
        return any(f.match(source) for f in self.filters)


ALWAYS: Filter = All()
"""The filter that matches every object (what an empty filter string means)."""


def parse_filter(text: str) -> Filter:
    """Parse one filter string (selectors joined by ``,``, all of which must match)."""
    if text == "":
        return ALWAYS
    return _Parser(text).parse()


def parse_filters(texts: Sequence[str]) -> Filter:
    """Parse several filter strings into one filter matching when any of them does; none matches all."""
    if isinstance(texts, str):
        # A bare str is a Sequence[str] too; iterating it would parse each character.
        raise TypeError("parse_filters takes a sequence of filter strings, not a str")
    if not texts:
        return ALWAYS
    return Any(tuple(parse_filter(text) for text in texts))


def adapt_mapping(fields: Mapping[str, object]) -> FieldSource:
    """A FieldSource over nested mappings: str leaves are values, anything else reads as absent.

    Where a mapping has a dotted key equal to the rest of the path, that key wins, as containerd's
    label adaptors join the rest of the path (``labels.a.b`` reads the label ``a.b``).
    """

    def source(fieldpath: Sequence[str]) -> str | None:
        node: object = fields
        for i, name in enumerate(fieldpath):
            if not isinstance(node, Mapping):
                return None
            # containerd's label adaptors look the rest of the path up as one dotted key.
            joined = node.get(".".join(fieldpath[i:])) if i + 1 < len(fieldpath) else None
            if isinstance(joined, str):
                return joined
            if name not in node:
                return None
            node = node[name]
        return node if isinstance(node, str) else None

    return source


def quote_value(value: str) -> str:
    """Double-quote ``value`` as Go's strconv.Quote does, so the parser reads it back unchanged."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0xDC80 <= code <= 0xDCFF:
            # A surrogate-escaped raw byte, as a \x escape decodes to; Go writes the byte back as \x.
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif ch in _NAMED_ESCAPES:
            out.append("\\" + _NAMED_ESCAPES[ch])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str] | None:
    # containerd logs and treats a bad pattern as "no match" rather than failing the request.
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError):
        return None


_NAMED_ESCAPES = {"\a": "a", "\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t", "\v": "v"}
_ESCAPED_BYTES = {v: ord(k) for k, v in _NAMED_ESCAPES.items()} | {"\\": ord("\\")}
_OPERATORS = {op.value: op for op in Operator if op is not Operator.PRESENT}

# Go's unicode.IsSpace, which is narrower than str.isspace (it excludes U+001C..U+001F).
_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(
    chr(c) for c in range(0x2000, 0x200B)
)
_FIELD_CHARS = frozenset(string.ascii_letters + string.digits + "_")
_QUOTES = frozenset('"/|')
_SEPARATORS = frozenset(",.")
_OPERATOR_CHARS = frozenset("=!~")
_OCTAL = frozenset("01234567")
_HEX = frozenset(string.hexdigits)
_HEX_WIDTH = {"x": 2, "u": 4, "U": 8}

_EOF = ""
_NUL = "\0"  # the one character Go's scanner rejects outright ("unexpected null")


def _is_value_char(ch: str) -> bool:
    # Go: not ',' nor space, and a letter, mark, number, punctuation or symbol.
    return ch != "," and ch != _EOF and unicodedata.category(ch)[0] in "LMNPS"


_Tok = enum.Enum("_Tok", "EOF ILLEGAL QUOTED VALUE FIELD SEPARATOR OPERATOR OTHER")


class _Scanner:
    """containerd's scanner: ``pos`` starts the current character, ``ppos`` follows it."""

    def __init__(self, text: str) -> None:
        self.input = text
        self.pos = 0
        self.ppos = 0
        self.value = False  # the previous token was an operator, so a value comes next
        self.err = ""

    def error(self, msg: str) -> None:
        # Only the first problem is reported, as in Go.
        if not self.err:
            self.err = msg

    def next(self) -> str:
        if self.pos >= len(self.input):
            return _EOF
        self.pos = self.ppos
        if self.ppos >= len(self.input):
            return _EOF
        ch = self.input[self.ppos]
        self.ppos += 1
        if ch == _NUL:
            self.error("unexpected null")
        return ch

    def peek(self) -> str:
        pos, ppos = self.pos, self.ppos
        ch = self.next()
        self.pos, self.ppos = pos, ppos
        return ch

    def scan(self) -> tuple[int, _Tok, str]:
        ch = self.next()
        while ch in _SPACE:
            ch = self.next()
        pos = self.pos
        if ch == _EOF:
            return pos, _Tok.EOF, ""
        if ch == _NUL:
            return pos, _Tok.ILLEGAL, ""
        if ch in _QUOTES:
            kind = _Tok.QUOTED if self._scan_quoted(ch) else _Tok.ILLEGAL
            return pos, kind, self.input[pos : self.ppos]
        if ch in _SEPARATORS:
            self.value = False
            return pos, _Tok.SEPARATOR, ch
        if ch in _OPERATOR_CHARS:
            self._scan_while(_OPERATOR_CHARS.__contains__)
            self.value = True
            return pos, _Tok.OPERATOR, self.input[pos : self.ppos]
        if self.value:
            # The first character of a value is not checked, only those that follow it.
            self._scan_while(_is_value_char)
            self.value = False
            return pos, _Tok.VALUE, self.input[pos : self.ppos]
        if ch in _FIELD_CHARS:
            self._scan_while(_FIELD_CHARS.__contains__)
            return pos, _Tok.FIELD, self.input[pos : self.ppos]
        return pos, _Tok.OTHER, ch

    def _scan_while(self, accept: Callable[[str], bool]) -> None:
        while accept(self.peek()):
            self.next()

    def _scan_quoted(self, quote: str) -> bool:
        legal = True
        ch = self.next()
        while ch != quote:
            if ch in (_EOF, _NUL, "\n"):
                self.error("quoted literal not terminated")
                return False
            if ch == "\\":
                ch, ok = self._scan_escape(quote)
                legal = legal and ok
            else:
                ch = self.next()
        return legal

    def _scan_escape(self, quote: str) -> tuple[str, bool]:
        # Returns the character after the escape, which the caller has not examined yet.
        ch = self.next()
        if ch in _ESCAPED_BYTES or ch == quote:
            return self.next(), True
        if ch in _OCTAL:
            return self._scan_digits(ch, _OCTAL, 3)
        if ch in _HEX_WIDTH:
            return self._scan_digits(self.next(), _HEX, _HEX_WIDTH[ch])
        self.error("illegal escape sequence")
        return ch, False

    def _scan_digits(self, ch: str, digits: frozenset[str], count: int) -> tuple[str, bool]:
        while count > 0 and ch in digits:
            ch = self.next()
            count -= 1
        if count > 0:
            self.error("illegal numeric escape sequence")
            return ch, False
        return ch, True


def _unquote(quoted: str) -> str:
    """Decode a quoted token the scanner accepted, with Go's escapes and range checks."""
    quote, body = quoted[0], quoted[1:-1]
    if "\\" not in body:
        return body
    # Go strings are bytes: \x and octal escapes may build UTF-8 sequences or leave stray bytes,
    # which surrogateescape keeps (and quote_value writes back as \x).
    buf = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            buf += ch.encode("utf-8", "surrogatepass")
            i += 1
            continue
        esc = body[i + 1]
        i += 2
        if esc in _ESCAPED_BYTES:
            buf.append(_ESCAPED_BYTES[esc])
        elif esc == quote:
            buf += esc.encode()
        elif esc in _HEX_WIDTH:
            width = _HEX_WIDTH[esc]
            code = int(body[i : i + width], 16)
            i += width
            if esc == "x" or code >= 0x80000000:
                # Go's int32 rune overflows to a negative value there, which it appends as one byte.
                buf.append(code & 0xFF)
            elif code > 0x10FFFF:
                raise ValueError("quote syntax error")
            else:
                # Go encodes a surrogate code point as U+FFFD.
                buf += (chr(code) if not 0xD800 <= code <= 0xDFFF else "\ufffd").encode()
        else:
            code = int(body[i - 1 : i + 2], 8)
            i += 2
            if code > 0xFF:
                raise ValueError("quote syntax error")
            buf.append(code)
    return buf.decode("utf-8", "surrogateescape")


class _Parser:
    """Recursive descent over the scanner, one method per grammar rule, as in containerd."""

    def __init__(self, text: str) -> None:
        self.input = text
        self.scanner = _Scanner(text)

    def error(self, pos: int, reason: str) -> FilterSyntaxError:
        return FilterSyntaxError(self.input, pos, reason)

    def parse(self) -> Filter:
        selectors = [self.selector()]
        while True:
            ch = self.scanner.peek()
            if ch == ",":
                self.scanner.scan()
                selectors.append(self.selector())
            elif ch == _EOF:
                return All(tuple(selectors))
            else:
                # Go prints its illegal-token sentinel as U+FFFD.
                shown = "\ufffd" if ch == _NUL else ch
                raise self.error(self.scanner.ppos, f"unexpected input: {shown}")

    def selector(self) -> Selector:
        fieldpath = self.fieldpath()
        if self.scanner.peek() in (",", _EOF):
            return Selector(fieldpath)
        op = self.operator()
        return Selector(fieldpath, op, self.value(alt_quotes=op is Operator.MATCHES))

    def fieldpath(self) -> tuple[str, ...]:
        fields = [self.field()]
        while self.scanner.peek() == ".":
            self.scanner.scan()
            fields.append(self.field())
        return tuple(fields)

    def field(self) -> str:
        return self.literal((_Tok.FIELD,), alt_quotes=False, expected="expected field or quoted")

    def operator(self) -> Operator:
        pos, tok, text = self.scanner.scan()
        if tok is _Tok.OPERATOR:
            if text in _OPERATORS:
                return _OPERATORS[text]
            raise self.error(pos, f"unsupported operator {quote_value(text)}")
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        raise self.error(pos, 'expected an operator ("=="|"!="|"~=")')

    def value(self, *, alt_quotes: bool) -> str:
        return self.literal(
            (_Tok.VALUE, _Tok.FIELD), alt_quotes=alt_quotes, expected="expected value or quoted"
        )

    def literal(self, plain: tuple[_Tok, ...], *, alt_quotes: bool, expected: str) -> str:
        pos, tok, text = self.scanner.scan()
        if tok in plain:
            return text
        if tok is _Tok.ILLEGAL:
            raise self.error(pos, self.scanner.err)
        if tok is not _Tok.QUOTED:
            raise self.error(pos, expected)
        if not alt_quotes and text[0] != '"':
            raise self.error(pos, "invalid quote encountered")
        try:
            return _unquote(text)
        except ValueError as exc:
            raise self.error(pos, f"unquoting failed: {exc}") from None
