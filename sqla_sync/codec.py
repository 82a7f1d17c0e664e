"""JSON codec for column values, chosen once per column from its type.

A synced row travels as a JSON object: stored in the outbox, handed to route
callables, sent to the server, read back from it.  Each column gets an encoder
(Python value -> JSON value) and a decoder (JSON value -> Python value) picked
from its SQLAlchemy type at configure time, so that datetimes (naive and
aware), dates, times, decimals, UUIDs, bytes, enums, JSON documents and None
survive the trip exactly.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import enum
import json
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.sql.schema import Column

__all__ = ["Codec", "codec_for", "dumps", "loads"]

Encoder = Callable[[Any], Any]
Decoder = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _parse_datetime(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, (int, float)):
        # Epoch seconds, as some servers send them; always UTC.
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    text = str(value)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return dt.datetime.fromisoformat(text)


def _datetime_decoder(timezone: bool) -> Decoder:
    def decode(value: Any) -> dt.datetime:
        parsed = _parse_datetime(value)
        if not timezone and isinstance(value, (int, float)):
            # Epoch numbers are UTC; a naive column holds naive UTC.
            return parsed.replace(tzinfo=None)
        return parsed

    return decode


def _enum_codec(type_: sqltypes.Enum) -> tuple[Encoder, Decoder]:
    enum_class = type_.enum_class
    if enum_class is None:
        return _identity, _identity
    members = list(enum_class)
    callable_ = type_.values_callable
    stored = callable_(enum_class) if callable_ is not None else [m.name for m in members]
    to_json = dict(zip(members, stored))
    from_json = dict(zip(stored, members))

    def encode(value: Any) -> Any:
        return to_json[value] if isinstance(value, enum.Enum) else value

    def decode(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value
        try:
            return from_json[value]
        except KeyError:
            return enum_class(value)

    return encode, decode


def _pick(type_: sqltypes.TypeEngine[Any]) -> tuple[Encoder, Decoder]:
    if isinstance(type_, sqltypes.TypeDecorator):
        # The decorated Python type is what the application sees; when it is
        # one we know, use its codec, otherwise trust the impl's.
        return _pick(type_.impl_instance)
    if isinstance(type_, sqltypes.Enum):
        return _enum_codec(type_)
    if isinstance(type_, sqltypes.DateTime):
        return (lambda v: v.isoformat()), _datetime_decoder(bool(type_.timezone))
    if isinstance(type_, sqltypes.Date):
        return (lambda v: v.isoformat()), (
            lambda v: v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v)[:10])
        )
    if isinstance(type_, sqltypes.Time):
        return (lambda v: v.isoformat()), (
            lambda v: v if isinstance(v, dt.time) else dt.time.fromisoformat(str(v))
        )
    if isinstance(type_, sqltypes.Interval):
        return (lambda v: v.total_seconds()), (
            lambda v: v if isinstance(v, dt.timedelta) else dt.timedelta(seconds=float(v))
        )
    if isinstance(type_, sqltypes.Uuid):
        if type_.as_uuid:
            return str, lambda v: v if isinstance(v, uuid.UUID) else uuid.UUID(str(v))
        return str, _decode_text
    if isinstance(type_, sqltypes.Float):
        if type_.asdecimal:
            return str, lambda v: decimal.Decimal(str(v))
        return _identity, lambda v: float(v)
    if isinstance(type_, sqltypes.Numeric):
        if type_.asdecimal:
            # A string keeps every digit and the scale ("12.3400").
            return str, lambda v: v if isinstance(v, decimal.Decimal) else decimal.Decimal(str(v))
        return float, lambda v: float(v)
    if isinstance(type_, sqltypes.Boolean):
        return _identity, _decode_bool
    if isinstance(type_, sqltypes.Integer):
        return _identity, lambda v: v if isinstance(v, int) else int(v)
    if isinstance(type_, sqltypes._Binary):
        return (lambda v: base64.b64encode(bytes(v)).decode("ascii")), (
            lambda v: v if isinstance(v, bytes) else base64.b64decode(v)
        )
    if isinstance(type_, sqltypes.JSON):
        return _identity, _identity
    if isinstance(type_, sqltypes.String):
        return _identity, _decode_text
    return _identity, _identity


def _decode_text(value: Any) -> str:
    # Numbers become their text (an id sent as 5 is the key "5"); anything
    # else is a wrong type, never its Python repr ("[1]", "{'a': 1}", "True").
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected text, got a JSON {_json_kind(value)}")


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _decode_bool(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "t"):
            return True
        if lowered in ("false", "0", "no", "f", ""):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return bool(value)


class Codec:
    """Encoder and decoder of one column; None passes through both unchanged.

    :ivar as_is: the JSON value types the decoder returns unchanged (a ``str``
        for a String column), or None when it returns every value unchanged;
        readers of many rows skip the call for them.
    """

    __slots__ = ("_decode", "_encode", "as_is", "name")

    def __init__(self, name: str, encode: Encoder, decode: Decoder,
                 as_is: frozenset[type] | None = frozenset()) -> None:
        self.name = name
        self._encode = encode
        self._decode = decode
        self.as_is = as_is

    def encode(self, value: Any) -> Any:
        """Turn a column value into a JSON-ready value."""
        return None if value is None else self._encode(value)

    def decode(self, value: Any) -> Any:
        """Turn a JSON value back into the column's Python value.

        Raises ValueError, naming the column, for a value it cannot read.
        """
        if value is None:
            return None
        as_is = self.as_is
        if as_is is None or type(value) in as_is:
            return value
        try:
            return self._decode(value)
        except Exception as exc:
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise ValueError(f"column {self.name!r} cannot hold {shown}: {exc}") from exc


def codec_for(column: Column[Any]) -> Codec:
    """Pick the codec of a column from its type, once, at configure time."""
    encode, decode = _pick(column.type)
    return Codec(column.key, encode, decode, _decoded_as_is(column.type))


_ALL: frozenset[type] | None = None
_NONE: frozenset[type] = frozenset()


def _decoded_as_is(type_: sqltypes.TypeEngine[Any]) -> frozenset[type] | None:
    """The JSON value types the decoder :func:`_pick` chooses returns unchanged
    (None: every value); follows the same dispatch."""
    if isinstance(type_, sqltypes.TypeDecorator):
        return _decoded_as_is(type_.impl_instance)
    if isinstance(type_, sqltypes.Enum):
        return _ALL if type_.enum_class is None else _NONE
    if isinstance(type_, (sqltypes.DateTime, sqltypes.Date, sqltypes.Time, sqltypes.Interval)):
        return _NONE
    if isinstance(type_, sqltypes.Uuid):
        return _NONE if type_.as_uuid else frozenset({str})
    if isinstance(type_, (sqltypes.Float, sqltypes.Numeric)):
        return _NONE if type_.asdecimal else frozenset({float})
    if isinstance(type_, sqltypes.Boolean):
        return frozenset({bool})
    if isinstance(type_, sqltypes.Integer):
        return frozenset({int})
    if isinstance(type_, sqltypes._Binary):
        return _NONE
    if isinstance(type_, sqltypes.JSON):
        return _ALL
    if isinstance(type_, sqltypes.String):
        return frozenset({str})
    return _ALL


# One encoder for every call: json.dumps with keyword arguments builds a new one.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dumps(value: Any) -> str:
    """Compact, deterministic JSON text of an already encoded value."""
    return _ENCODER.encode(value)


def loads(text: str) -> Any:
    """Parse JSON text written by :func:`dumps` or received from a server."""
    return json.loads(text)
