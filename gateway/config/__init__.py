"""Configuration loader: a YAML file -> `${VAR}` substitution -> marshmallow schemas -> the frozen
dataclasses of `gateway.settings`. Every key is documented in `config/gateway.example.yml`.

Where the file is: the `path` argument, else the environment variable GATEWAY_CONFIG, else
`config/gateway.yml` (relative to the current directory). A file `application-oidc.yml` in the
same directory, if present, may hold more client registrations under the same `oidc:` layout; they
are merged with the main file's (the same id in both files is an error).

Order of processing:

1. `yaml.safe_load`. Quote values that YAML 1.1 would read as numbers in another base
   (`0123`, `0x10`, `12:30`); a plain integer where text is expected is taken as its decimal text.
2. `${VAR}` / `${VAR:-default}` in every string value (not in keys), from `environ`
   (default `os.environ`). As in the shell, `:-` also applies when VAR is set but empty. A
   variable that is not set and has no default is an error naming the key path and the variable.
   `$${` gives a literal `${`; any other `${` that is not a well-formed reference is an error.
3. Secrets (`db-connector.password`, `basic.password`, `keyStore.password`,
   `keyStore.keyStorePassword`, `truststore.password`, `oidc.<id>.client-secret`) may be written
   in the one supported encoding, `{base64}<standard base64 of the UTF-8 text>`, which is decoded;
   any other value is taken literally. Substitution happens first, so `{base64}${VAR}` works.
   Quote such values in YAML (`password: '{base64}c2VjcmV0'`): unquoted, `{` opens a mapping.
   This is an obfuscation, not encryption: keep real secrets in the environment.
4. Schemas: unknown keys are rejected at every depth; an empty value (`key:` or `""`) means the
   key is not set. Errors become one `key.path: problem` line each in a `ConfigError`, which
   never carries a configured value.

Keys follow the connector model of Viewer-Hub (`connector.*`) as spelled there, including
`serie-instance-uid-column`, `additionnalParameters`, `compressionRate`, `keyStore`, `truststore`.
Rules beyond the shape:

- A connector has exactly the block of its `type` (DB -> db-connector, DICOM -> dicom-connector,
  DICOM_WEB -> dicom-web-connector). Connector ids: letters, digits, '-' and '_'.
- Authentication `BASIC` needs basic.login, basic.password and basic.server.url; `OAUTH2` needs
  oauth2.oidc-id naming a registration of `oidc` and oauth2.server.url; `NONE` (unauthenticated
  upstream, a gateway addition) needs server.url. The sub-block the type does not select may be
  present, as Viewer-Hub files fill both: it is loaded when complete and ignored otherwise.
- `dicom-web-connector.wado-rs` defaults to `qido-rs`.
- `db-connector.uri` and `driver` are checked as the DB connector maps them
  (`connectors.db_url.to_sqlalchemy_url`): a SQLAlchemy URL or a JDBC URL of a supported
  database; a DB-API driver name, or a JDBC driver class for the URL's database.
- `db-connector.query.file-path-column` is a label of the select (its alias), not a
  table-qualified column. `db-connector.wado.protocol` (a gateway addition, only in a DB
  connector's `wado`): WADO-URI (default) or WADO-RS.
- TLS material is PEM only: `keyStore.url` is a PEM file with the certificate chain and the
  private key, `keyStorePassword` (default: `password`) the key's passphrase; `truststore.url` is
  a PEM bundle of CA certificates. Another `type` (JKS, PKCS12) is an error.
- AE titles follow PS3.5 6.2 (VR AE): 1 to 16 characters, no backslash, no control characters.
- `connector.default` (comma string or list): used when every id exists; when it is absent,
  empty or names an unknown id, all connectors are used in declaration order (logged by the
  logger "gateway.config", a WARNING for unknown ids).
- At least one connector is required unless `gateway.demo-archive` is set.
- Per-connector `timeouts` override `gateway.timeouts` key by key.
- `dimse.retrieve-method: C-MOVE` needs `gateway.storage-scp` (aet and port required; host an IP
  address or host name, default 127.0.0.1; relay-dir an absolute path short enough for a local
  socket).

Modules of this package: `fields` (the custom marshmallow fields and validators), `schemas` (one
schema per block of the file, each building its part of the settings), and this one (reading the
file, `${VAR}` substitution, running the schemas, assembling `settings.Settings`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import yaml
from marshmallow import Schema, ValidationError

from .. import settings as s
from .schemas import OIDC_IDS, OidcFileSchema, TopSchema

log = logging.getLogger("gateway.config")

DEFAULT_PATH = "config/gateway.yml"
OIDC_FILE = "application-oidc.yml"
MISSING_CONNECTOR = "At least one connector is required (or set gateway.demo-archive)."
NEEDS_SCP = "C-MOVE needs gateway.storage-scp (the storage SCP the PACS sends the objects to)."

_REF = re.compile(r"\$\$\{|\$\{(?:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})?")


class ConfigError(Exception):
    """The configuration cannot be used. `errors` holds (key path, problem) pairs; the message is
    one `key.path: problem` line per pair. It never contains a configured value."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(f"{p}: {m}" if p else m for p, m in self.errors))


#: Exit status of a start refused for its configuration: gunicorn stops instead of respawning
#: workers (gunicorn.conf.py checks for it too).
EXIT_CONFIG = 3


def exit_with(error: ConfigError) -> NoReturn:
    """Ends the process with the message, not a traceback, and EXIT_CONFIG."""
    print(f"configuration error:\n{error}", file=sys.stderr)
    sys.exit(EXIT_CONFIG)


# --------------------------------------------------------------------------------------------
# Public entry points


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> s.Settings:
    """Read, substitute, validate and build the settings (see the module docstring)."""
    env = os.environ if environ is None else environ
    source = Path(path if path is not None else env.get("GATEWAY_CONFIG") or DEFAULT_PATH)
    data = _read_yaml(source)
    extra = _load_oidc_file(source.parent / OIDC_FILE, env)
    return _load(data, env, extra)


def load_settings_from_dict(
    data: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> s.Settings:
    """The same as `load_settings` for data already parsed (tests, the app)."""
    return _load(data, os.environ if environ is None else environ, {})


# --------------------------------------------------------------------------------------------
# YAML and `${VAR}` substitution


def _read_yaml(source: Path) -> Any:
    """`yaml.safe_load` of `source`. A syntax error is reported by position only: the parser's
    own text quotes the offending line, which may hold a secret."""
    try:
        with open(source, encoding="utf-8") as stream:
            return yaml.safe_load(stream)
    except OSError as err:
        raise ConfigError([("", f"{source}: cannot read the file ({err.strerror})")]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or "not valid YAML"
        raise ConfigError([("", f"{source}: {where}{problem}")]) from None


def _substitute(
    node: Any, env: Mapping[str, str], path: tuple[str, ...], errors: list[tuple[str, str]]
) -> Any:
    if isinstance(node, str):
        return _expand(node, env, ".".join(path), errors)
    if isinstance(node, Mapping):
        return {k: _substitute(v, env, (*path, str(k)), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, env, (*path, str(i)), errors) for i, v in enumerate(node)]
    return node


def _expand(text: str, env: Mapping[str, str], path: str, errors: list[tuple[str, str]]) -> str:
    """Expand `${VAR}`, `${VAR:-default}` and `$${` in one string; errors name the variable."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name is None:
            errors.append((path, "Malformed ${...} reference (write $${ for a literal ${)."))
            return ""
        value = env.get(name)
        if default is not None and not value:
            return default
        if value is None:
            errors.append((path, f"Environment variable {name} is not set."))
            return ""
        return value

    return _REF.sub(one, text) if "$" in text else text


# --------------------------------------------------------------------------------------------
# Loading and assembling


def _flatten(messages: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """marshmallow's nested error dict -> (dotted key path, message) pairs."""
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            yield from _flatten(value, path if key == "_schema" else (*path, str(key)))
    elif isinstance(messages, (list, tuple)):
        for message in messages:
            yield from _flatten(message, path)
    else:
        yield ".".join(path), str(messages)


def _validate(
    schema: Schema, data: Any, env: Mapping[str, str], oidc_ids: frozenset[str], prefix: str = ""
) -> dict[str, Any]:
    """Substitute, then load with `schema`; any error -> ConfigError (paths after `prefix`)."""
    if not isinstance(data, Mapping):
        raise ConfigError([(prefix.rstrip(": "), "Not a mapping of keys at the top level.")])
    errors: list[tuple[str, str]] = []
    data = _substitute(data, env, (), errors)
    if not errors:
        token = OIDC_IDS.set(oidc_ids | _raw_ids(data.get("oidc")))
        try:
            loaded: dict[str, Any] = schema.load(data)
            return loaded
        except ValidationError as err:
            errors = list(_flatten(err.messages))
        finally:
            OIDC_IDS.reset(token)
    raise ConfigError([(prefix + p, m) for p, m in errors])


def _raw_ids(block: Any) -> frozenset[str]:
    return frozenset(str(k) for k in block) if isinstance(block, Mapping) else frozenset()


def _load_oidc_file(path: Path, env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    loaded = _validate(
        OidcFileSchema(), _read_yaml(path) or {}, env, frozenset(), prefix=f"{path.name}: "
    )
    registrations: dict[str, dict[str, Any]] = loaded.get("oidc", {})
    return registrations


def _load(data: Any, env: Mapping[str, str], extra_oidc: dict[str, dict[str, Any]]) -> s.Settings:
    loaded = _validate(TopSchema(), data if data is not None else {}, env, frozenset(extra_oidc))
    both = sorted(set(loaded.get("oidc", {})) & set(extra_oidc))
    if both:
        raise ConfigError([(f"oidc.{i}", f"Also defined in {OIDC_FILE}.") for i in both])
    options: s.GatewayOptions = loaded.get("gateway") or s.GatewayOptions()
    block = loaded.get("connector") or {}
    connectors = tuple(
        _connector(cid, c, options.timeouts, options.cache.bounds)
        for cid, c in block.get("config", {}).items()
    )
    if not connectors and options.demo_archive is None:
        raise ConfigError([("connector.config", MISSING_CONNECTOR)])
    if options.storage_scp is None:
        _no_c_move(connectors)
    _direct_needs_wado(connectors)
    oidc = {**loaded.get("oidc", {}), **extra_oidc}
    return s.Settings(
        connectors=connectors,
        default=_resolve_default(block.get("default"), tuple(c.id for c in connectors)),
        dicom_web_level_limit=block.get("dicom_web_level_limit"),
        gateway=options,
        oidc=tuple(s.OidcClient(id=oid, **reg) for oid, reg in oidc.items()),
    )


def _connector(
    cid: str, data: dict[str, Any], timeouts: s.Timeouts, cache: s.CacheBounds
) -> s.ConnectorSettings:
    values = _present(data)
    values["timeouts"] = replace(timeouts, **values.get("timeouts", {}))
    if "cache" in values:  # merged over gateway.cache's bounds; absent: those bounds
        values["cache"] = replace(cache, **values["cache"])
    return s.ConnectorSettings(id=cid, **values)


def _no_c_move(connectors: Sequence[s.ConnectorSettings]) -> None:
    """Without `gateway.storage-scp` no PACS can send C-MOVE sub-operations to the gateway."""
    moving = [
        c.id
        for c in connectors
        if c.dicom is not None and c.dicom.dimse.retrieve_method == "C-MOVE"
    ]
    if moving:
        raise ConfigError(
            [
                (f"connector.config.{cid}.dicom-connector.dimse.retrieve-method", NEEDS_SCP)
                for cid in moving
            ]
        )


def _direct_needs_wado(connectors: Sequence[s.ConnectorSettings]) -> None:
    """`weasis.direct` points Weasis at the archive's own WADO endpoint, so the connector must
    say where it is: `wado` (DB, DICOM) or `wado-rs` (DICOM_WEB)."""
    missing = []
    for c in connectors:
        if not c.weasis.direct:
            continue
        if c.dicom_web is not None and c.dicom_web.wado_rs is None:
            missing.append((c.id, "dicom-web-connector.wado-rs"))
        elif c.dicom is not None and c.dicom.wado is None:
            missing.append((c.id, "dicom-connector.wado"))
        elif c.db is not None and c.db.wado is None:
            missing.append((c.id, "db-connector.wado"))
        elif c.db is not None and c.db.wado_protocol != "WADO-URI":
            missing.append((c.id, "db-connector.wado with protocol WADO-URI"))
    if missing:
        raise ConfigError(
            [
                (
                    f"connector.config.{cid}.weasis.direct",
                    f"Needs {block} (the archive's endpoint and credentials Weasis is given).",
                )
                for cid, block in missing
            ]
        )


def _resolve_default(requested: tuple[str, ...] | None, ids: tuple[str, ...]) -> tuple[str, ...]:
    """Viewer-Hub's rule: `connector.default` is honoured only when every id exists; otherwise
    all connectors, in declaration order."""
    if not ids:
        return ()
    if not requested:
        log.info("connector.default is not set: using all connectors: %s", ", ".join(ids))
        return ids
    unknown = [i for i in requested if i not in ids]
    if unknown:
        log.warning(
            "connector.default names unknown connector id(s) %s: using all connectors: %s",
            ", ".join(unknown),
            ", ".join(ids),
        )
        return ids
    log.info("connector.default: using %s", ", ".join(requested))
    return requested


def _present(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}
