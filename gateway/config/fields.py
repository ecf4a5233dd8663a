"""Custom marshmallow fields and validators of the configuration (see the `gateway.config`
docstring for the rules they implement)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from marshmallow import Schema, ValidationError, fields, validate
from pydicom.datadict import tag_for_keyword

from .. import settings as s

BASE64_PREFIX = "{base64}"

_ID = re.compile(r"[A-Za-z0-9_-]+")
_IDENT = r'(?:[A-Za-z_][A-Za-z0-9_$]*|"[^"]+"|`[^`]+`)'
_COLUMN = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2 token
_TAG = re.compile(r"\(?(?:0[xX])?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?")


class Text(fields.String):
    """A string; a YAML integer is taken as its decimal text (as Spring does)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return str(super()._deserialize(value, attr, data, **kw))


class Secret(Text):
    """A secret: `{base64}<text>` is decoded (UTF-8), anything else is taken literally."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> str:
        text = super()._deserialize(value, attr, data, **kw)
        if not text.startswith(BASE64_PREFIX):
            return text
        try:
            raw = base64.b64decode(text[len(BASE64_PREFIX) :].strip(), validate=True)
            return raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ValidationError(
                "Not valid {base64} text: standard, padded base64 of UTF-8 text expected."
            ) from None


class Int(fields.Integer):
    """An integer; unlike marshmallow's, a float with a fraction is refused, not truncated."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid")
        return super()._validated(value)


class Seconds(fields.Float):
    def __init__(self, **kw: Any) -> None:
        super().__init__(validate=validate.Range(min=0, min_inclusive=False), **kw)


class Choice(Text):
    """One of `choices`, compared after `fold` (upper case by default, as Spring binds enums)."""

    def __init__(
        self,
        choices: Sequence[str],
        fold: Callable[[str], str] = str.upper,
        message: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.choices, self.fold = tuple(choices), fold
        self.message = message or "Must be one of: " + ", ".join(self.choices) + "."

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> str:
        text = self.fold(super()._deserialize(value, attr, data, **kw).strip())
        if text not in self.choices:
            raise ValidationError(self.message)
        return text


class AeTitle(Text):
    """PS3.5 6.2, VR AE: 1-16 characters of the default repertoire, no backslash, no control
    characters; leading and trailing spaces are not significant (removed)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> str:
        text = super()._deserialize(value, attr, data, **kw).strip(" ")
        if not 1 <= len(text) <= 16 or any(c == "\\" or not " " <= c <= "~" for c in text):
            raise ValidationError(
                "Not a valid AE title: 1 to 16 characters, no backslash or control characters "
                "(PS3.5 6.2)."
            )
        return text


def _items(value: Any, what: str) -> list[Any]:
    """A YAML list, or a comma-separated string, as a list of non-empty items."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list):
        return [v.strip() if isinstance(v, str) else v for v in value if v not in (None, "")]
    raise ValidationError(f"Not a list or a comma-separated string of {what}.")


class IdList(fields.Field[tuple[str, ...]]):
    """`connector.default`: connector ids as a list or a comma string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> tuple[str, ...]:
        ids = [str(v) if isinstance(v, int) else v for v in _items(value, "connector ids")]
        if not all(isinstance(v, str) for v in ids):
            raise ValidationError("Not a list or a comma-separated string of connector ids.")
        return tuple(dict.fromkeys(ids))


class Criteria(fields.Field[frozenset[str]]):
    """`search-criteria.deactivated`: names from settings.CRITERIA, list or comma string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> frozenset[str]:
        names = [v.upper() if isinstance(v, str) else v for v in _items(value, "criteria")]
        if any(name not in s.CRITERIA for name in names):
            raise ValidationError("Unknown criterion; expected any of: " + ", ".join(s.CRITERIA))
        return frozenset(names)


def _tag(item: Any) -> int | None:
    if isinstance(item, int) and not isinstance(item, bool):  # YAML reads 0x00100020 as int
        return item if 0 <= item <= 0xFFFFFFFF else None
    if not isinstance(item, str):
        return None
    match = _TAG.fullmatch(item)
    if match:
        return int(match.group(1) + match.group(2), 16)
    found = tag_for_keyword(item)
    return int(found) if found is not None else None


class TagList(fields.Field[tuple[str, ...]]):
    """`overrideDicomTags`: tags as 0xGGGGEEEE, GGGGEEEE, (GGGG,EEEE) or a keyword, in a list
    or a comma string; normalised to "0xGGGGEEEE" (the manifest's overrideDicomTagsList form)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> tuple[str, ...]:
        tags = [_tag(item) for item in _items(value, "DICOM tags")]
        bad = [str(i) for i, tag in enumerate(tags) if tag is None]
        if bad:
            raise ValidationError(
                "Not a DICOM tag (0xGGGGEEEE, GGGGEEEE or a keyword) at item " + ", ".join(bad)
            )
        return tuple(dict.fromkeys(f"0x{tag:08X}" for tag in tags if tag is not None))


class HttpTags(fields.Field[tuple[tuple[str, str], ...]]):
    """`httpTags`: header name -> value. An entry without a value is ignored; names must be
    RFC 9110 tokens and values free of control characters (no header injection)."""

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kw: Any
    ) -> tuple[tuple[str, str], ...]:
        if not isinstance(value, Mapping):
            raise ValidationError("Not a mapping of HTTP header name -> value.")
        pairs, errors = [], {}
        for name, text in value.items():
            if text is None:
                continue
            text = str(text) if isinstance(text, int) and not isinstance(text, bool) else text
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                errors[str(name)] = ["Not a valid HTTP header name."]
            elif not isinstance(text, str) or any(c < " " and c != "\t" for c in text):
                errors[name] = ["Not a valid HTTP header value (text without control characters)."]
            else:
                pairs.append((name, text))
        if errors:
            raise ValidationError(errors)
        return tuple(pairs)


class Scope(fields.Field[str]):
    """An OAuth 2.0 scope: a string, or a list joined with spaces (RFC 6749 3.3)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> str:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = " ".join(value)
        if not isinstance(value, str):
            raise ValidationError("Not a scope string or a list of scopes.")
        return value


class NamedMap(fields.Field[dict[str, Any]]):
    """A mapping id -> block (`connector.config`, `oidc`); ids must be URL-path safe. The result
    keeps the declaration order; each block is loaded with `schema`."""

    def __init__(self, schema: type[Schema], **kw: Any) -> None:
        super().__init__(**kw)
        self.schema_class = schema

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kw: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValidationError("Not a mapping of id -> block.")
        loaded: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for key, block in value.items():
            name = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
            if not isinstance(name, str) or not _ID.fullmatch(name):
                errors[str(key)] = ["Not a valid id: letters, digits, '-' and '_' only."]
                continue
            try:
                loaded[name] = self.schema_class().load({} if block is None else block)
            except ValidationError as err:
                errors[name] = err.messages
        if errors:
            raise ValidationError(errors)
        return loaded


def http_url(value: str) -> None:
    """An absolute http(s) URL with a host, without query or fragment."""
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and not parts.query and not parts.fragment and (parts.port or 1) > 0
    except ValueError:
        ok = False
    if not ok:
        raise ValidationError("Not a valid http(s) URL (scheme and host; no query or fragment).")


def ts_uid(value: str) -> None:
    """A transfer syntax UID (PS3.5 9.1) or "*" (as stored)."""
    if value != "*" and not (len(value) <= 64 and re.fullmatch(r"[0-9]+(\.[0-9]+)*", value)):
        raise ValidationError("Not a UID (PS3.5 9.1) or '*'.")


def label_name(value: str) -> None:
    """A label of the select (a column alias as the database reports it), not table-qualified."""
    if not _LABEL.fullmatch(value):
        raise ValidationError(
            "Not a label of the select (a column alias such as file_path, not table-qualified)."
        )


def column_name(value: str) -> None:
    """A SQL column name, optionally table-qualified (plain, "quoted" or `quoted` parts)."""
    if not _COLUMN.fullmatch(value):
        raise ValidationError("Not a column name (identifier, optionally table-qualified).")
