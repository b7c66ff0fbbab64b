"""Bounds on every field a request can carry: documented maxima and character sets.

One table (`FIELD_BOUNDS`, by field name: a name means the same thing in every message) says
how long each string, bytes and repeated field of a request may be and which characters a
string may hold; `INT_BOUNDS` says which integers are allowed. `check_message` walks a decoded
request and refuses the first field out of bounds with `Refused` (`FIELD_TOO_LONG`,
`MALFORMED`, `BAD_PAGE_SIZE` or `INVALID_TIME`, all `INVALID_ARGUMENT`), quoting at most a short
prefix of what was sent. Empty strings pass here: whether a field is required is the domain's
business. The table is documented in docs/encoding.md ("Field bounds").
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from bridge.errors import Reason, Refused

__all__ = [
    "FIELD_BOUNDS",
    "HISTORY_DEFAULT",
    "HISTORY_PAGE",
    "ID_PATTERN",
    "INT_BOUNDS",
    "MAX_ID_LENGTH",
    "MAX_REFERENCE_LENGTH",
    "PREVIEW_LENGTH",
    "Bound",
    "IntBound",
    "check_message",
    "preview",
    "unbounded_fields",
]

PREVIEW_LENGTH = 16
MAX_ID_LENGTH = 64
MAX_REFERENCE_LENGTH = 140  # a trade document number with some words around it
HISTORY_DEFAULT = 100  # GetHistory entries when `limit` is 0
HISTORY_PAGE = 500  # GetHistory's largest `limit`
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_ID = "letters, digits and ._:- (not first)"


def preview(value: str | bytes) -> str:
    """A short quotable prefix of client input: at most 16 characters, then "…"."""
    if isinstance(value, bytes):
        head = value[: PREVIEW_LENGTH // 2].hex()
        return head + ("…" if len(value) > PREVIEW_LENGTH // 2 else "")
    head = repr(value[:PREVIEW_LENGTH])
    return head + ("…" if len(value) > PREVIEW_LENGTH else "")


@dataclass(frozen=True, slots=True)
class Bound:
    """Largest length (characters, bytes or elements) and, for strings, the characters allowed."""

    max_length: int
    pattern: re.Pattern[str] | None = None
    described: str = ""  # the character set in words, for the refusal message
    printable: bool = False  # any printable Unicode (references)
    too_long: Reason = Reason.FIELD_TOO_LONG  # codes of a fixed shape: MALFORMED


@dataclass(frozen=True, slots=True)
class IntBound:
    """Smallest and largest allowed integer, and the reason a value outside is refused."""

    low: int
    high: int
    reason: Reason
    described: str


_ID_BOUND = Bound(MAX_ID_LENGTH, ID_PATTERN, _ID)
_CODE = Reason.MALFORMED  # a code of a fixed shape that is too long is simply not that code
_CURRENCY = Bound(3, re.compile(r"[A-Z]{3}"), "three upper-case letters", too_long=_CODE)
_BYTES_KEY = Bound(65)  # SEC1 uncompressed P-256 point
_BYTES_SIGNATURE = Bound(72)  # raw r||s is 64; room for a DER one (refused as BAD_SIGNATURE)
_BYTES_HASH = Bound(32)  # SHA-256

FIELD_BOUNDS: dict[str, Bound] = {
    # identifiers: instructions, PvPs and participants
    "instruction_id": _ID_BOUND,
    "pvp_id": _ID_BOUND,
    "sender": _ID_BOUND,
    "payee": _ID_BOUND,
    "counterparty": _ID_BOUND,
    "proposer": _ID_BOUND,
    "participant": _ID_BOUND,
    "bank": _ID_BOUND,
    "to": _ID_BOUND,
    "signer": _ID_BOUND,
    "endorses": _ID_BOUND,
    "requester": _ID_BOUND,
    "central_bank": _ID_BOUND,
    "home_central_bank": _ID_BOUND,
    # becomes the instruction id `issue-<bank>-<request_id>` (64 at most in all)
    "request_id": Bound(MAX_ID_LENGTH - len("issue-") - 2, ID_PATTERN, _ID),
    # codes and numbers written as text
    "currency": _CURRENCY,
    "pay_currency": _CURRENCY,
    "receive_currency": _CURRENCY,
    "allowed_jurisdictions": Bound(250),  # ISO 3166-1 has 249 codes
    "rate": Bound(37, re.compile(r"[0-9.]+"), "digits and one decimal point", too_long=_CODE),
    "terms_hash": Bound(64, re.compile(r"[0-9a-f]+"), "lower-case hex digits", too_long=_CODE),
    "reference": Bound(MAX_REFERENCE_LENGTH, printable=True),
    # bytes (exact lengths are checked where they are used)
    "public_key": _BYTES_KEY,
    "value": _BYTES_SIGNATURE,
    "signature": _BYTES_SIGNATURE,
    "block_hash": _BYTES_HASH,
    # repeated messages
    "signatures": Bound(4),  # a dual-signed PvP: two banks' signatures, two endorsements
    # EndorseDualPvps and EndorseStream batches (the nodes send at most 256); a bank's
    # SubmitStream batches
    "instructions": Bound(1024),
    "batch": Bound(1024),  # Submit messages: a central bank node forwards at most 512
    # an endorsement's audit path: at most 32 hashes (batches of up to 2^32 legs)
    "batch_path": Bound(32),
}

# each element of a repeated string field
ELEMENT_BOUNDS: dict[str, Bound] = {
    "allowed_jurisdictions": Bound(
        2, re.compile(r"[A-Z]{2}"), "two upper-case letters", too_long=_CODE
    ),
    "batch_path": _BYTES_HASH,
}

_INT64_MAX = 2**63 - 1
_TIME = IntBound(1, _INT64_MAX, Reason.INVALID_TIME, "a positive time in milliseconds")
_POSITION = IntBound(0, _INT64_MAX, Reason.MALFORMED, "not negative")
INT_BOUNDS: dict[str, IntBound] = {
    "valid_until": _TIME,
    "signed_at": _TIME,
    "settle_by": _TIME,
    "from_seq": _POSITION,
    "from_id": _POSITION,
    "from_height": _POSITION,
    "to_height": _POSITION,
    "height": _POSITION,
    "limit": IntBound(
        0,
        HISTORY_PAGE,
        Reason.BAD_PAGE_SIZE,
        f"0 (the default, {HISTORY_DEFAULT}) to {HISTORY_PAGE}",
    ),
}

_STRING = FieldDescriptor.TYPE_STRING
_BYTES = FieldDescriptor.TYPE_BYTES
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_INTS = frozenset(
    {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64}
)


def check_message(message: Message, path: str = "") -> None:
    """Refuse the first field of `message` (and its sub-messages) that is out of bounds."""
    fits = _FITS.get(type(message))
    if fits is None:
        fits = _FITS[type(message)] = compiled_check(cast(Descriptor, message.DESCRIPTOR))
    if fits(message):  # nearly every request: one pass that builds no message or path
        return
    _walk(message, path)


def _within(message: Message) -> bool:
    """Whether every field of `message` (and its sub-messages) is within bounds: the generic
    pass over `ListFields()` that each message type's compiled check (`_compiled`) equals."""
    for fd, value in message.ListFields():
        test = _TESTS.get(fd, _UNKNOWN)
        if test is _UNKNOWN:
            test = _test(fd)
        if test is not None and not test(value):  # type: ignore[operator]
            return False
    return True


def _walk(message: Message, path: str) -> None:
    """`check_message`'s refusal: the first field out of bounds, named with its path."""
    for fd, value in message.ListFields():
        kind, name, bound = _STEPS.get(fd) or _step(fd)
        if kind is _Kind.TEXT:
            _check_value(bound, path, name, value)
        elif kind is _Kind.MESSAGE:
            _walk(value, f"{path}{name}.")
        elif kind is _Kind.INT:
            if not bound.low <= value <= bound.high:
                raise Refused(bound.reason, f"{path}{name} must be {bound.described}: got {value}")
        elif kind is _Kind.MESSAGES:
            _check_count(bound, path, name, len(value))
            for index, item in enumerate(value):
                _walk(item, f"{path}{name}[{index}].")
        elif kind is _Kind.TEXTS:
            _check_count(bound, path, name, len(value))
            element = ELEMENT_BOUNDS[name]
            for index, item in enumerate(value):
                _check_value(element, path, f"{name}[{index}]", item)


class _Kind(Enum):
    MESSAGE = 1
    MESSAGES = 2
    TEXT = 3  # string or bytes
    TEXTS = 4
    INT = 5
    OTHER = 6


# what to check for each field, worked out once per field descriptor
_STEPS: dict[FieldDescriptor, tuple[_Kind, str, Any]] = {}


def _step(fd: FieldDescriptor) -> tuple[_Kind, str, Any]:
    name: str = fd.name
    repeated = _is_repeated(fd)
    step: tuple[_Kind, str, Any]
    if fd.type == _MESSAGE:
        step = (
            (_Kind.MESSAGES, name, FIELD_BOUNDS[name]) if repeated else (_Kind.MESSAGE, name, None)
        )
    elif fd.type in (_STRING, _BYTES):
        step = (_Kind.TEXTS if repeated else _Kind.TEXT, name, FIELD_BOUNDS[name])
    elif fd.type in _INTS and name in INT_BOUNDS and not repeated:
        step = (_Kind.INT, name, INT_BOUNDS[name])
    else:
        step = (_Kind.OTHER, name, None)
    _STEPS[fd] = step
    return step


# the same checks as a yes/no test per field (None: nothing to check), worked out once
_TESTS: dict[FieldDescriptor, Callable[[Any], bool] | None] = {}
_UNKNOWN = object()  # not worked out yet (None is a field with nothing to check)


def _test(fd: FieldDescriptor) -> Callable[[Any], bool] | None:
    kind, name, bound = _STEPS.get(fd) or _step(fd)
    test: Callable[[Any], bool] | None = None
    if kind is _Kind.TEXT:
        test = _text_test(bound)
    elif kind is _Kind.MESSAGE:
        test = _within
    elif kind is _Kind.INT:
        low, high = int(bound.low), int(bound.high)

        def test(value: int) -> bool:
            return low <= value <= high

    elif kind is _Kind.MESSAGES:
        most = bound.max_length

        def test(values: Sequence[Message]) -> bool:
            return len(values) <= most and all(_within(item) for item in values)

    elif kind is _Kind.TEXTS:
        most, element = bound.max_length, _text_test(ELEMENT_BOUNDS[name])

        def test(values: Sequence[str | bytes]) -> bool:
            return len(values) <= most and all(element(item) for item in values)

    _TESTS[fd] = test
    return test


def _text_test(bound: Bound) -> Callable[[Any], bool]:
    most, pattern, printable = bound.max_length, bound.pattern, bound.printable
    if pattern is not None:
        match = pattern.fullmatch

        def patterned(value: str) -> bool:
            return (
                len(value) <= most
                and (not value or match(value) is not None)
                and (not printable or value.isprintable())
            )

        return patterned
    if printable:

        def printable_text(value: str) -> bool:
            return len(value) <= most and value.isprintable()

        return printable_text

    def short(value: str | bytes) -> bool:
        return len(value) <= most

    return short


def _is_repeated(fd: FieldDescriptor) -> bool:
    repeated: bool = fd.is_repeated
    return repeated


def _check_count(bound: Bound, path: str, name: str, count: int) -> None:
    if count > bound.max_length:
        raise Refused(
            Reason.FIELD_TOO_LONG,
            f"{path}{name}: at most {bound.max_length} elements, got {count:,}",
        )


def _check_value(bound: Bound, path: str, name: str, value: str | bytes) -> None:
    if len(value) > bound.max_length:
        unit = "bytes" if isinstance(value, bytes) else "characters"
        raise Refused(
            bound.too_long,
            f"{path}{name}: at most {bound.max_length} {unit}, got {len(value):,} "
            f"({preview(value)})",
        )
    pattern = bound.pattern
    if pattern is not None and value and pattern.fullmatch(value) is None:  # type: ignore[arg-type]
        raise Refused(
            Reason.MALFORMED, f"{path}{name}: {bound.described} only, got {preview(value)}"
        )
    if bound.printable and not value.isprintable():  # type: ignore[union-attr]
        raise Refused(
            Reason.MALFORMED, f"{path}{name}: printable characters only, got {preview(value)}"
        )


# ---------------------------------------------------------------------------- compiled checks
#
# `_within` asks protobuf for the fields a message has set (`ListFields()`) and looks a test up
# per field. `compiled_check` writes the same pass out once per message type as one function
# that reads the bounded fields by name, holds the bounds as constants and calls the function
# of each nested message type directly; a field no bound applies to (amounts, flags, enums,
# correlation ids) is not read at all. A type this cannot express (a field the tables do not
# bound, a map, a scalar with explicit presence, a name Python cannot spell) keeps `_within`.
# Like `_within` it only says yes or no: a refusal is still named by `_walk`, so refusals are
# exactly what they were; a property test holds the two to the same verdict.

_FITS: dict[type[Message], Callable[[Any], bool]] = {}  # by message class, for check_message
# by descriptor, not by full name: two descriptor pools may each hold a type of the same name
_COMPILED: dict[Descriptor, Callable[[Any], bool]] = {}


def compiled_check(root: Descriptor) -> Callable[[Any], bool]:
    """Whether a message of type `root` is within bounds, as `_within` says: compiled once."""
    known = _COMPILED.get(root)
    if known is not None:
        return known
    functions: dict[str, str] = {}  # full name -> function name, every type `root` reaches
    reached: list[Descriptor] = []
    pending = [root]
    while pending:
        descriptor = pending.pop()
        if descriptor.full_name in functions:
            continue
        functions[descriptor.full_name] = f"fits_{len(functions)}"
        reached.append(descriptor)
        pending.extend(fd.message_type for fd in descriptor.fields if fd.message_type)
    namespace: dict[str, Any] = {}
    sources: list[str] = []
    tails: list[str] = []  # the oneof dispatch tables, once every function exists
    for descriptor in reached:
        function = functions[descriptor.full_name]
        known = _COMPILED.get(descriptor)
        source = (
            None
            if known is not None
            else _source(descriptor, function, functions, namespace, tails)
        )
        if source is None:
            namespace[function] = known or _within
        else:
            sources.append(source)
    code = compile("\n".join([*sources, *tails]), f"<bounds of {root.full_name}>", "exec")
    exec(code, namespace)  # source written above from the descriptors and the tables
    for descriptor in reached:
        _COMPILED.setdefault(descriptor, namespace[functions[descriptor.full_name]])
    return _COMPILED[root]


def _source(
    descriptor: Descriptor,
    function: str,
    functions: dict[str, str],
    namespace: dict[str, Any],
    tails: list[str],
) -> str | None:
    """The source of `descriptor`'s check, or None when it keeps `_within`."""

    def constant(value: object) -> str:
        name = f"c_{len(namespace)}"
        namespace[name] = value
        return name

    lines = [f"def {function}(m):"]
    oneofs: dict[str, dict[str, str]] = {}  # oneof name -> member name -> function
    for fd in descriptor.fields:
        name: str = fd.name
        if keyword.iskeyword(name) or not name.isidentifier():
            return None
        message_type = fd.message_type
        if message_type is not None and message_type.GetOptions().map_entry:
            return None
        try:
            kind, _, bound = _STEPS.get(fd) or _step(fd)
            element = ELEMENT_BOUNDS[name] if kind is _Kind.TEXTS else None
        except KeyError:  # a field the tables do not bound: `_within` raises as it always did
            return None
        if kind is _Kind.OTHER:
            continue
        if kind in (_Kind.MESSAGE, _Kind.MESSAGES) and message_type is None:
            return None
        if kind is _Kind.MESSAGE and message_type is not None:
            oneof = fd.containing_oneof
            if oneof is not None:
                oneofs.setdefault(oneof.name, {})[name] = functions[message_type.full_name]
                continue
            check = functions[message_type.full_name]
            lines.append(f"    if m.HasField({name!r}) and not {check}(m.{name}): return False")
            continue
        if fd.has_presence:  # a scalar set to its default still counts as set
            return None
        lines.append(f"    v = m.{name}")
        if kind is _Kind.TEXT:
            lines.extend(_text_lines(bound, "v", "    ", constant))
        elif kind is _Kind.INT:  # 0 is a field not set (`ListFields` leaves it out)
            lines.append(f"    if v and not {bound.low} <= v <= {bound.high}: return False")
        elif kind is _Kind.MESSAGES and message_type is not None:
            check = functions[message_type.full_name]
            most = bound.max_length
            lines.append(f"    if len(v) > {most} or not all(map({check}, v)): return False")
        elif kind is _Kind.TEXTS and element is not None:
            lines.append(f"    if len(v) > {bound.max_length}: return False")
            lines.append("    for x in v:")
            lines.extend(_text_lines(element, "x", "        ", constant))
    for oneof_name, members in oneofs.items():
        table = f"{function}_{oneof_name}"
        tails.append(f"{table} = {{{', '.join(f'{k!r}: {v}' for k, v in members.items())}}}")
        # a member with nothing to check (a flag, an enum) is not in the table
        lines.append(f"    w = m.WhichOneof({oneof_name!r})")
        lines.append(f"    f = {table}.get(w)")
        lines.append("    if f is not None and not f(getattr(m, w)): return False")
    lines.append("    return True")
    return "\n".join(lines)


def _text_lines(
    bound: Bound, var: str, indent: str, constant: Callable[[object], str]
) -> list[str]:
    """The lines of `_text_test(bound)` on the value in `var`."""
    lines = [f"{indent}if len({var}) > {bound.max_length}: return False"]
    if bound.pattern is not None:
        match = constant(bound.pattern.fullmatch)
        lines.append(f"{indent}if {var} and {match}({var}) is None: return False")
    if bound.printable:
        lines.append(f"{indent}if not {var}.isprintable(): return False")
    return lines


def unbounded_fields(root: Descriptor) -> list[str]:
    """Fields reachable from `root` that the table does not bound (a test keeps it empty)."""
    missing: list[str] = []
    seen: set[str] = set()

    def walk(descriptor: Descriptor) -> None:
        if descriptor.full_name in seen:
            return
        seen.add(descriptor.full_name)
        for fd in descriptor.fields:
            repeated = _is_repeated(fd)
            if fd.type == _MESSAGE:
                if repeated and fd.name not in FIELD_BOUNDS:
                    missing.append(f"{descriptor.full_name}.{fd.name}")
                if fd.message_type is not None:
                    walk(fd.message_type)
            elif fd.type in (_STRING, _BYTES):
                table = ELEMENT_BOUNDS if repeated else FIELD_BOUNDS
                if fd.name not in table or (repeated and fd.name not in FIELD_BOUNDS):
                    missing.append(f"{descriptor.full_name}.{fd.name}")

    walk(root)
    return missing
