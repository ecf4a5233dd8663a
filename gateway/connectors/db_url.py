"""Database URLs and engines for the DB connector: the `db-connector.uri` (a SQLAlchemy URL or
one of the JDBC URLs Viewer-Hub configurations carry) and `driver` (a SQLAlchemy DB-API name or
a JDBC driver class) as a SQLAlchemy URL; the connector's engine with connect and read
time-outs in each driver's terms; and the mapping of SQLAlchemy's and the drivers' errors to the
gateway's, naming the connector and nothing else (no SQL, no values, no credentials).

`to_sqlalchemy_url` raises ValueError with a message that repeats no configured text (the
configuration loader shows it as it is, beside the key path).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url

from ..errors import ConnectorError, ConnectorTimeout
from ..settings import Timeouts
from .base import boundary

#: The DB-API driver of each database when a URL names none.
_DEFAULT_DRIVERS = {
    "postgresql": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
    "mssql": "pyodbc",
    "oracle": "oracledb",
    "sqlite": "pysqlite",
}
#: The JDBC driver classes Viewer-Hub configurations name, and their database.
_JDBC_CLASSES = {
    "org.postgresql.Driver": "postgresql",
    "com.mysql.cj.jdbc.Driver": "mysql",
    "com.mysql.jdbc.Driver": "mysql",
    "org.mariadb.jdbc.Driver": "mariadb",
    "com.microsoft.sqlserver.jdbc.SQLServerDriver": "mssql",
    "oracle.jdbc.OracleDriver": "oracle",
    "oracle.jdbc.driver.OracleDriver": "oracle",
    "org.sqlite.JDBC": "sqlite",
}
_ODBC_DRIVER = "ODBC Driver 18 for SQL Server"
_SUPPORTED_URLS = ", ".join(_DEFAULT_DRIVERS)
_SUPPORTED_JDBC = ", ".join(
    f"jdbc:{sub}" for sub in ("postgresql", "mysql", "mariadb", "sqlserver", "oracle", "sqlite")
)
_PG_PARAMS = {"sslmode", "sslrootcert", "sslcert", "sslkey", "options", "target_session_attrs"}


def to_sqlalchemy_url(
    uri: str, driver: str | None = None, user: str | None = None, password: str | None = None
) -> URL:
    """The SQLAlchemy URL of a `db-connector`. `uri` is a SQLAlchemy URL or a JDBC URL;
    `driver` is a SQLAlchemy driver name (it replaces the URL's) or a JDBC class name (it must
    be for the URL's database); `user` and `password` replace the URL's. ValueError otherwise."""
    text = uri.strip()
    url = _from_jdbc(text) if text[:5].lower() == "jdbc:" else _from_sqlalchemy(text)
    url = _with_driver(url, driver)
    if url.get_backend_name() != "sqlite":
        if user:
            url = url.set(username=user)
        if password:
            url = url.set(password=password)
    return url


def _family(backend: str) -> str:
    return "mysql" if backend == "mariadb" else backend


def _from_sqlalchemy(uri: str) -> URL:
    try:
        url = make_url(uri)
    except sa_exc.ArgumentError:
        raise ValueError("database uri is neither a SQLAlchemy URL nor a JDBC URL") from None
    except ValueError:  # its text quotes the URL
        raise ValueError("the database uri has an invalid port") from None
    backend = url.get_backend_name()
    if backend not in _DEFAULT_DRIVERS:
        raise ValueError(f"unsupported database in the uri (supported: {_SUPPORTED_URLS})")
    if "+" not in url.drivername:
        url = url.set(drivername=f"{backend}+{_DEFAULT_DRIVERS[backend]}")
    return url


def _from_jdbc(uri: str) -> URL:
    sub, _, body = uri[5:].partition(":")
    sub = sub.lower()
    if sub in ("postgresql", "mysql", "mariadb"):
        return _jdbc_network(sub, body)
    if sub == "sqlserver":
        return _jdbc_sqlserver(body)
    if sub == "oracle":
        return _jdbc_oracle(body)
    if sub == "sqlite":
        return URL.create("sqlite+pysqlite", database=None if body in ("", ":memory:") else body)
    raise ValueError(f"unsupported JDBC URL (supported: {_SUPPORTED_JDBC})")


def _jdbc_network(sub: str, body: str) -> URL:
    """`jdbc:postgresql://host:port/db?params` (or `jdbc:postgresql:db`), `jdbc:mysql://...`,
    `jdbc:mariadb://...`; user and password may be parameters."""
    if not body.startswith("//"):
        if sub != "postgresql":
            raise ValueError(f"jdbc:{sub} URL must be jdbc:{sub}://host[:port]/database")
        body = "//localhost/" + body.lstrip("/")
    parts = urlsplit(body)
    if "," in parts.netloc:
        raise ValueError("JDBC URLs naming several hosts are not supported")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the JDBC URL has an invalid port") from None
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    user = unquote(parts.username) if parts.username else params.pop("user", None)
    password = unquote(parts.password) if parts.password else params.pop("password", None)
    query = _pg_params(params) if sub == "postgresql" else _mysql_params(params)
    return URL.create(
        f"{sub}+{_DEFAULT_DRIVERS[sub]}",
        username=user,
        password=password,
        host=parts.hostname,
        port=port,
        database=unquote(parts.path.lstrip("/")) or None,
        query=query,
    )


def _pg_params(params: Mapping[str, str]) -> dict[str, str]:
    """pgJDBC parameters as libpq ones; those without an equivalent are dropped."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = key.lower()
        if name in _PG_PARAMS:
            out[name] = value
        elif name == "applicationname":
            out["application_name"] = value
        elif name == "currentschema":
            out["options"] = f"-csearch_path={value}"
        elif name == "ssl":  # pgJDBC: ssl=true verifies the server certificate and host
            out.setdefault("sslmode", "verify-full" if value.lower() == "true" else "disable")
    return out


def _mysql_params(params: Mapping[str, str]) -> dict[str, str]:
    """Connector/J parameters for PyMySQL: utf8mb4 always; `sslMode=REQUIRED` or `useSSL=true`
    turn TLS on. Verifying modes need a CA file, which a JDBC URL does not carry."""
    out = {"charset": "utf8mb4"}
    for key, value in params.items():
        name, upper = key.lower(), value.upper()
        if name == "sslmode" and upper.startswith("VERIFY"):
            raise ValueError("sslMode=VERIFY_* needs a SQLAlchemy URL with ssl_ca")
        if (name == "sslmode" and upper in ("REQUIRED", "PREFERRED")) or (
            name == "usessl" and upper == "TRUE"
        ):
            out["ssl_check_hostname"] = "false"
    return out


def _jdbc_sqlserver(body: str) -> URL:
    """`jdbc:sqlserver://[host][\\instance][:port][;property=value]...` for pyodbc."""
    if not body.startswith("//"):
        raise ValueError("jdbc:sqlserver URL must be jdbc:sqlserver://host[:port];...")
    head, *props = body[2:].split(";")
    options: dict[str, str] = {}
    for prop in filter(None, (p.strip() for p in props)):
        key, _, value = prop.partition("=")
        options[key.strip().lower()] = value.strip().strip("{}")
    host, port = _host_port(head or options.get("servername", ""))
    number = options.get("portnumber", "")
    if number and not number.isdigit():
        raise ValueError("the JDBC URL has an invalid port")
    port = port or (int(number) if number else None)
    host, _, instance = host.partition("\\")
    instance = instance or options.get("instancename", "")
    server = f"{host}\\{instance}" if instance else host
    query = {"driver": _ODBC_DRIVER}
    if "encrypt" in options:
        query["Encrypt"] = {"true": "yes", "false": "no"}.get(options["encrypt"].lower(), "strict")
    for jdbc_name, odbc_name in (
        ("trustservercertificate", "TrustServerCertificate"),
        ("integratedsecurity", "Trusted_Connection"),
    ):
        if options.get(jdbc_name, "").lower() == "true":
            query[odbc_name] = "yes"
    return URL.create(
        "mssql+pyodbc",
        username=options.get("user") or options.get("username"),
        password=options.get("password"),
        host=server or None,
        port=port,
        database=options.get("databasename") or options.get("database"),
        query=query,
    )


def _jdbc_oracle(body: str) -> URL:
    """`jdbc:oracle:thin:@host:port:SID`, `jdbc:oracle:thin:@//host:port/service`, or a TNS
    alias or descriptor after `@`; `user/password@` may come before it."""
    flavour, _, rest = body.partition(":")
    creds, at, target = rest.rpartition("@")
    if flavour.lower() not in ("thin", "oci") or not at or not target:
        raise ValueError("jdbc:oracle URL must be jdbc:oracle:thin:@...")
    user, _, password = creds.partition("/")
    common: dict[str, Any] = {"username": user or None, "password": password or None}
    target = target.split("?", 1)[0]
    if target.startswith("(") or ":" not in target and "/" not in target:
        return URL.create("oracle+oracledb", host=target, **common)  # the DSN as it is
    if target.startswith("//") or "/" in target:
        address, _, service = target.removeprefix("//").partition("/")
        host, port = _host_port(address)
        return URL.create(
            "oracle+oracledb", host=host, port=port, query={"service_name": service}, **common
        )
    pieces = target.split(":")
    if len(pieces) != 3 or not pieces[1].isdigit():
        raise ValueError("jdbc:oracle URL needs @host:port:SID or @//host:port/service")
    return URL.create(
        "oracle+oracledb", host=pieces[0], port=int(pieces[1]), database=pieces[2], **common
    )


def _host_port(text: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if not sep or (":" in host and not host.endswith("]")):
        return text.strip("[]"), None
    if not port.isdigit():
        raise ValueError("the JDBC URL has an invalid port")
    return host.strip("[]"), int(port)


def _with_driver(url: URL, driver: str | None) -> URL:
    """A JDBC class name confirms the URL's database; a SQLAlchemy driver name replaces the
    URL's DB-API driver (`psycopg`, `pymysql`, or `postgresql+psycopg`)."""
    name = (driver or "").strip()
    if not name:
        return url
    backend = url.get_backend_name()
    if "." in name:
        expected = _JDBC_CLASSES.get(name)
        if expected is None:
            raise ValueError(f"unknown JDBC driver class (known: {', '.join(_JDBC_CLASSES)})")
        if _family(expected) != _family(backend):
            raise ValueError(f"the driver is for {expected}, but the uri is a {backend} URL")
        return url
    named_backend, plus, dbapi = name.rpartition("+")
    if plus and _family(named_backend) != _family(backend):
        raise ValueError(f"the driver is for another database than the uri ({backend})")
    if not re.fullmatch(r"\w+", dbapi):
        raise ValueError(
            "invalid driver: a DB-API name (psycopg, pymysql, ...) or a JDBC driver class expected"
        )
    return url.set(drivername=f"{backend}+{dbapi}")


def _connect_args(url: URL, timeouts: Timeouts) -> dict[str, Any]:
    """Connect time-outs (and read time-outs where the driver has them) in each driver's terms."""
    dbapi = url.get_driver_name()
    seconds = max(1, math.ceil(timeouts.connect))
    if dbapi in ("psycopg", "psycopg2"):
        args: dict[str, Any] = {"connect_timeout": max(2, seconds)}
        if "options" not in url.query:  # the server cancels a statement running too long
            args["options"] = f"-c statement_timeout={int(timeouts.read * 1000)}"
        return args
    if dbapi in ("pymysql", "mysqldb"):
        read = max(1, math.ceil(timeouts.read))
        return {"connect_timeout": seconds, "read_timeout": read, "write_timeout": read}
    others: dict[str, dict[str, Any]] = {
        "pysqlite": {"timeout": timeouts.connect},
        "pyodbc": {"timeout": seconds},
        "oracledb": {"tcp_connect_timeout": timeouts.connect},
    }
    return others.get(dbapi, {})


def create_engine(url: URL, timeouts: Timeouts, connector: str) -> Engine:
    """The connector's one engine: pooled, pinged before use, parameters hidden from errors
    and logs. Nothing connects until the first query."""
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "hide_parameters": True,
        "connect_args": _connect_args(url, timeouts),
    }
    if url.get_backend_name() != "sqlite":
        options["pool_timeout"] = timeouts.connect
    try:
        return sa.create_engine(url, **options)
    except (ImportError, sa_exc.NoSuchModuleError) as exc:
        raise ConnectorError(
            f"database driver {url.get_driver_name()!r} is not installed", connector
        ) from exc


@contextlib.contextmanager
def sql_errors(connector: str, what: str) -> Iterator[None]:
    """SQLAlchemy's and the drivers' errors as the gateway's, by class name only."""
    with boundary(connector, what):
        try:
            yield
        except sa_exc.TimeoutError as exc:  # no pooled connection in time
            raise ConnectorTimeout(f"{what} timed out waiting for a connection", connector) from exc
        except sa_exc.DBAPIError as exc:
            if _is_timeout(exc.orig):
                raise ConnectorTimeout(f"{what} timed out", connector) from exc
            raise ConnectorError(f"{what} failed: {type(exc).__name__}", connector) from exc
        except sa_exc.SQLAlchemyError as exc:
            raise ConnectorError(f"{what} failed: {type(exc).__name__}", connector) from exc


def _is_timeout(error: BaseException | None) -> bool:
    name = type(error).__name__
    return (
        isinstance(error, TimeoutError)
        or "Timeout" in name
        or name == "QueryCanceled"
        or "timed out" in str(error).lower()
    )
