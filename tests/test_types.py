"""Every column type round-trips exactly through the JSON payload, on every dialect."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import sessionmaker

from sqla_sync import track
from sqla_sync.codec import dumps, loads
from sqla_sync.mixin import model_info
from sqla_sync.outbox import pending_ops
from sqla_sync.tables import outbox
from tests.models import Color, Typed

VALUES: dict[str, Any] = {
    "id": 1,
    "naive": dt.datetime(2026, 11, 26, 9, 37, 18, 123456),
    "aware": dt.datetime(2026, 11, 26, 9, 37, 18, 654321,
                         tzinfo=dt.timezone(dt.timedelta(hours=2))),
    "day": dt.date(2026, 2, 28),
    "clock": dt.time(23, 59, 58, 999999),
    "amount": decimal.Decimal("12.3400"),
    "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "blob": bytes(range(256)),
    "color": Color.GREEN,
    "doc": {"a": [1, 2.5, {"b": None, "c": "ü"}], "d": True},
    "flag": True,
    "ratio": 0.1,
    "note": None,
}


def same(a: Any, b: Any) -> bool:
    """Equal, of the same type, and for datetimes and decimals with the same offset/scale."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dt.datetime):
        return a == b and a.utcoffset() == b.utcoffset()
    if isinstance(a, dt.time):
        return a == b and a.tzinfo == b.tzinfo
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    return bool(a == b)


def roundtrip(values: dict[str, Any]) -> dict[str, Any]:
    info = model_info(Typed)
    assert info is not None
    return info.decode_row(loads(dumps(info.encode_row(values))))


@pytest.mark.parametrize("key", [k for k in VALUES if k != "id"])
def test_codec_round_trip(key: str) -> None:
    back = roundtrip(VALUES)
    assert same(back[key], VALUES[key]), (key, back[key], VALUES[key])


def test_none_round_trips_for_every_column() -> None:
    nones = {k: None for k in VALUES}
    assert roundtrip(nones) == nones


def test_payloads_from_the_database(engine: Engine) -> None:
    maker = track(sessionmaker(engine, expire_on_commit=False))
    with maker() as s:
        s.add(Typed(**VALUES))
        s.commit()
    info = model_info(Typed)
    assert info is not None
    # What a push reads: the row as the database returns it, through JSON and back.
    with engine.connect() as conn:
        row = conn.execute(select(Typed.__table__)).one()._asdict()
    stored = {k: row[info.columns[k].name] for k in info.keys}
    back = info.decode_row(loads(dumps(info.encode_row(stored))))
    for key in info.keys:
        assert same(back[key], stored[key]), (key, back[key], stored[key])
    # What a delete keeps: the values the deleted object held, exactly.
    with engine.begin() as conn:
        conn.execute(delete(outbox))
    with maker() as s:
        obj = s.get(Typed, 1)
        held = {key: getattr(obj, key) for key in info.keys}
        s.delete(obj)
        s.commit()
    with engine.connect() as conn:
        [op] = pending_ops(conn)
    assert op.op == "delete" and op.state is not None
    kept = info.decode_row(op.state)
    for key in info.keys:
        assert same(kept[key], held[key]), (key, kept[key], held[key])


def test_epoch_numbers_decode_as_utc() -> None:
    info = model_info(Typed)
    assert info is not None
    back = info.decode_row({"naive": 0, "aware": 1.5})
    assert back["naive"] == dt.datetime(1970, 1, 1)
    assert back["aware"] == dt.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=dt.timezone.utc)
