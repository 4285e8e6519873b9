"""A JSON array decoded item by item, so that a large one never holds the GIL (and so
the reactor) for long at once."""

import json
import re

_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def json_array_items(text: str) -> list:
    """The items of the JSON array ``text``, decoded one at a time: ``json.loads`` of a
    listing of 50,000 entries holds the GIL (and so the reactor) for about 100 ms at once.
    ValueError when ``text`` is not a JSON array."""
    decoder, items = json.JSONDecoder(), []
    at = _JSON_SPACE.match(text).end()
    if text[at:at + 1] != "[":
        raise ValueError("not a JSON array")
    at = _JSON_SPACE.match(text, at + 1).end()
    if text[at:at + 1] == "]":
        at += 1
    else:
        while True:
            item, at = decoder.raw_decode(text, at)
            items.append(item)
            at = _JSON_SPACE.match(text, at).end()
            separator, at = text[at:at + 1], at + 1
            if separator == "]":
                break
            if separator != ",":
                raise ValueError("malformed JSON array")
            at = _JSON_SPACE.match(text, at).end()
    if _JSON_SPACE.match(text, at).end() != len(text):
        raise ValueError("extra data after the JSON array")
    return items
