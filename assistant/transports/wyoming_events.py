"""Wyoming events read from a client's stream, as a server must read them from someone it
does not trust: every length bounded, every part of an event checked, and a client that
begins an event and never finishes it, or sends nothing at all, not waited for forever.

(The ``wyoming`` package's own reader reads whatever lengths a header names and waits as
long as a client likes; the server uses the package for writing only.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from wyoming.event import Event


class EventTooLarge(Exception):
    """An event bigger than the server accepts."""


def _length(header: dict[str, Any], key: str) -> int:
    """A length of an event header: a whole number (absent, null or 0: none)."""
    value = header.get(key) or 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} is a whole number")
    return value


class TooSlow(Exception):
    """An event begun and not finished in time."""


async def read_event(reader: asyncio.StreamReader, limit: int, *, idle: float | None = None,
                     within: float | None = None) -> Event | None:
    """The next event, None at the end of the stream; :class:`EventTooLarge` when its data or
    payload would be over ``limit`` bytes, ValueError when the line is no event.

    ``idle``: seconds to wait for an event to begin (then :class:`TimeoutError`);
    ``within``: seconds it may take to arrive once begun (then :class:`TooSlow`): a client
    that trickles bytes cannot hold a connection open for ever.
    """
    try:
        first = await asyncio.wait_for(reader.readexactly(1), idle)
    except asyncio.IncompleteReadError:
        return None
    try:
        async with asyncio.timeout(within):
            return await _rest_of_event(reader, first, limit)
    except TimeoutError:
        raise TooSlow(f"an event took more than {within:g} s to arrive") from None


async def _rest_of_event(reader: asyncio.StreamReader, first: bytes, limit: int) -> Event:
    line = first if first == b"\n" else first + await reader.readline()
    header = json.loads(line)
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ValueError("an event is a JSON object with a type")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ValueError("event data is a JSON object")
    data_length = _length(header, "data_length")
    payload_length = _length(header, "payload_length")
    if max(data_length, payload_length) > limit or min(data_length, payload_length) < 0:
        raise EventTooLarge(f"an event of more than {limit} bytes")
    if data_length:
        extra = json.loads(await reader.readexactly(data_length))
        if not isinstance(extra, dict):
            raise ValueError("event data is a JSON object")
        data = {**data, **extra}
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=header["type"], data=data, payload=payload)
