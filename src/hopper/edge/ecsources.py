"""Sources of the e-content import: SQL databases (SQLAlchemy) and HTTP JSON endpoints (httpx).

A source reads one table at a time as batches of raw rows (mappings of column name to
value), never the whole answer at once: an SQL query is read through a server-side cursor,
an HTTP table page by page, each page at most ``max_page_bytes``. A source that cannot be
reached raises ``SourceUnreachable`` (the import then skips its other tables); any other
failure of a table raises ``BackendUnavailable`` (retryable) or ``EcSourceError``.
Messages name the source and the table, never a URL's credentials or a secret.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urljoin

import httpx
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from hopper.config import EcHttpSourceSettings, EcSqlSourceSettings, EcTableName
from hopper.errors import BackendMissing, BackendUnavailable, ConfigError, HopperError
from hopper.observe.logs import redact

logger = logging.getLogger(__name__)

RawRows = Sequence[Any]  # a batch of rows: mappings (an item that is not one is a bad row)

# The driver each URL scheme gets when the URL names none (the ones Hopper installs).
_DEFAULT_DRIVERS = {"mysql": "pymysql", "mariadb": "pymysql", "postgresql": "psycopg"}
_DRIVER_EXTRAS = {"pymysql": "mysql", "psycopg": "postgres"}
# HTTP statuses worth another attempt; others fail the table at once.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_ROW_LISTS = ("items", "data", "results", "rows")


class EcSourceError(HopperError):
    """A source answered, but not with rows: bad SQL, an HTTP error, a page too large."""


class SourceUnreachable(BackendUnavailable):
    """The source cannot be reached at all: its other tables are not tried in this run."""


class RowSource(Protocol):
    """Reads the raw rows of the tables one source provides."""

    name: str

    def read(self, table: EcTableName, required: Sequence[str]) -> Generator[RawRows, None, None]:
        """Yield the table's rows in batches; ``required`` columns must be answered."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


def source_url(settings: EcSqlSourceSettings, setting: str) -> sa.URL:
    """Parse a source's URL, giving it Hopper's driver when it names none."""
    try:
        url = make_url(settings.url.get_secret_value())
    except ArgumentError as exc:
        raise ConfigError(f"{setting}.url is not a database URL (e.g. mysql://...).") from exc
    backend, _, driver = url.drivername.partition("+")
    backend = "postgresql" if backend == "postgres" else backend
    driver = driver or _DEFAULT_DRIVERS.get(backend, "")
    return url.set(drivername=f"{backend}+{driver}" if driver else backend)


def _db_error(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's copy of the statement's parameters."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    return redact(str(exc).strip() or type(exc).__name__)


class SqlSource:
    """A database read with one query per table (``[[ecimport.sources]] kind = "sql"``)."""

    def __init__(
        self, settings: EcSqlSourceSettings, *, setting: str, batch_rows: int, max_rows: int
    ) -> None:
        self.name = settings.name
        self._settings = settings
        self._batch_rows = batch_rows
        self._max_rows = max_rows
        url = source_url(settings, setting)
        self._is_mysql = url.get_backend_name() in ("mysql", "mariadb")
        try:
            # NullPool: a connection per table, closed after it (a daily job keeps none).
            self._engine = sa.create_engine(
                url, poolclass=NullPool, connect_args=_connect_args(url, settings.timeout_secs)
            )
        except ImportError as exc:
            driver = url.get_driver_name()
            raise BackendMissing(
                f"{url.get_backend_name()} source",
                extra=_DRIVER_EXTRAS.get(driver, driver),
                library=driver,
            ) from exc
        except (ArgumentError, SQLAlchemyError) as exc:
            raise ConfigError(f"{setting}.url: {_db_error(exc)}.") from exc

    def read(self, table: EcTableName, required: Sequence[str]) -> Generator[RawRows, None, None]:
        """Run the table's query; yield its rows ``batch_rows`` at a time."""
        try:
            conn = self._engine.connect()
        except DBAPIError as exc:
            raise SourceUnreachable(
                f"cannot connect to source {self.name}: {_db_error(exc)}"
            ) from exc
        result: sa.CursorResult[Any] | None = None
        try:
            if self._is_mysql:
                # The server sends at most one row past the cap: closing a streaming cursor
                # early reads the rest of the answer, which could be endless otherwise.
                conn.exec_driver_sql(f"SET SESSION sql_select_limit = {self._max_rows + 1}")
            # stream_results: a server-side cursor, so memory holds one batch; no_parameters:
            # the query goes to the driver as written (a % or a : in it is just text).
            result = conn.execution_options(
                stream_results=True, no_parameters=True, yield_per=self._batch_rows
            ).exec_driver_sql(self._settings.tables[table])
            columns = set(result.keys())
            missing = [name for name in required if name not in columns]
            if missing:
                raise EcSourceError(
                    f"the query of source {self.name} for {table} returns no column "
                    f"{', '.join(missing)} (name its columns as the table's, with AS)"
                )
            rows = result.mappings()
            while batch := rows.fetchmany(self._batch_rows):
                yield batch
        except DBAPIError as exc:
            problem = f"the query of source {self.name} for {table} failed: {_db_error(exc)}"
            if exc.connection_invalidated:
                raise BackendUnavailable(problem) from exc
            raise EcSourceError(problem) from exc
        finally:
            if result is not None:
                result.close()  # before the connection: a streaming cursor reads to its end
            conn.close()

    def close(self) -> None:
        """Dispose of the engine."""
        self._engine.dispose()


def _connect_args(url: sa.URL, timeout_secs: float) -> dict[str, Any]:
    """The driver's timeouts: connecting, and each read (a statement on PostgreSQL)."""
    secs = max(1, round(timeout_secs))
    backend = url.get_backend_name()
    if backend in ("mysql", "mariadb"):
        return {"connect_timeout": secs, "read_timeout": secs, "write_timeout": secs}
    if backend == "postgresql":
        options = str(url.query.get("options", ""))
        statement = f"-c statement_timeout={round(timeout_secs * 1000)}"
        return {"connect_timeout": secs, "options": f"{options} {statement}".strip()}
    if backend == "sqlite":
        return {"timeout": timeout_secs}
    return {}


class HttpSource:
    """JSON endpoints read page by page (``[[ecimport.sources]] kind = "http"``)."""

    def __init__(self, settings: EcHttpSourceSettings) -> None:
        self.name = settings.name
        self._settings = settings
        self._max_pages = settings.max_pages
        headers = {"Accept": "application/json"}
        if settings.auth_value is not None:
            headers[settings.auth_header] = settings.auth_value.get_secret_value()
        self._client = httpx.Client(
            timeout=settings.timeout_secs, headers=headers, follow_redirects=True
        )

    def read(self, table: EcTableName, required: Sequence[str]) -> Generator[RawRows, None, None]:
        """Yield the table's rows one page at a time."""
        del required  # an answer's objects are checked row by row
        s = self._settings
        url = urljoin(s.base_url, s.tables[table])
        if s.paging == "none":
            yield self._rows(table, self._get(table, url, {})[0], 1)
            return
        if s.paging == "next":
            yield from self._follow_next(table, url)
            return
        number = 1
        position = 0 if s.paging == "offset" else 1
        while True:
            step = {s.offset_param if s.paging == "offset" else s.page_param: position}
            body, _ = self._get(table, url, {**step, s.limit_param: s.page_size})
            rows = self._rows(table, body, number)
            yield rows
            if len(rows) < s.page_size:
                return  # a short (or empty) page is the last
            position += len(rows) if s.paging == "offset" else 1
            number += 1
            self._check_pages(table, number)

    def _follow_next(self, table: str, url: str) -> Generator[RawRows, None, None]:
        seen = set()
        number = 1
        while True:
            seen.add(url)
            body, links = self._get(table, url, {})
            yield self._rows(table, body, number)
            following = _field(body, self._settings.next_field) if isinstance(body, dict) else None
            if not following:
                following = links.get("next", {}).get("url")
            if not following:
                return
            if not isinstance(following, str):
                raise EcSourceError(f"{self._where(table, number)}: the next link is not a URL")
            url = urljoin(url, following)
            if url in seen:
                raise EcSourceError(f"{self._where(table, number)}: the next link goes back")
            number += 1
            self._check_pages(table, number)

    def _check_pages(self, table: str, number: int) -> None:
        if number > self._max_pages:
            raise EcSourceError(
                f"source {self.name} for {table}: more than {self._max_pages} pages "
                f"(max_pages of the source)"
            )

    def _where(self, table: str, page: int) -> str:
        return f"source {self.name} for {table}, page {page}"

    def _rows(self, table: str, body: Any, page: int) -> RawRows:
        """Find the rows of one page's answer."""
        field = self._settings.items_field
        if field is not None:
            rows = _field(body, field) if isinstance(body, dict) else None
        elif isinstance(body, list):
            rows = body
        else:
            lists = (body.get(k) for k in _ROW_LISTS) if isinstance(body, dict) else iter(())
            rows = next((v for v in lists if isinstance(v, list)), None)
        if not isinstance(rows, list):
            wanted = f"a list in field {field}" if field else "a list of rows"
            raise EcSourceError(f"{self._where(table, page)}: the answer has no {wanted}")
        return rows

    def _get(
        self, table: str, url: str, params: Mapping[str, str | int]
    ) -> tuple[Any, Mapping[str | None, Mapping[str, str]]]:
        """GET one page with retries; return its JSON and its Link header's links."""
        s = self._settings
        target = httpx.URL(url)
        path = target.path  # shown in messages: never the query or credentials
        if params:  # merged: httpx's params= would replace the path's own query
            target = target.copy_merge_params(dict(params))
        attempt = 0
        while True:
            delay = min(s.backoff_secs * 2**attempt, s.backoff_max_secs)
            try:
                with self._client.stream("GET", target) as response:
                    status = response.status_code
                    if status not in _RETRY_STATUSES:
                        if status >= 400:
                            hint = " (check auth_value)" if status in (401, 403) else ""
                            raise EcSourceError(
                                f"source {self.name} for {table}: GET {path} answered "
                                f"HTTP {status}{hint}"
                            )
                        body = self._read_body(response, table, path)
                        links = dict(response.links)
                        break
                    problem = f"HTTP {status}"
                    delay = _retry_after(response, delay, s.backoff_max_secs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {redact(str(exc)) or 'no answer'}"
                if attempt >= s.retries:
                    unreachable = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                    error = SourceUnreachable if unreachable else BackendUnavailable
                    raise error(
                        f"source {self.name} for {table}: GET {path} failed "
                        f"{attempt + 1} times, last: {problem}"
                    ) from exc
            if attempt >= s.retries:
                raise BackendUnavailable(
                    f"source {self.name} for {table}: GET {path} failed {attempt + 1} times, "
                    f"last: {problem}"
                )
            attempt += 1
            logger.info(
                "Source %s for %s: GET %s failed (%s); attempt %d of %d in %.1f s.",
                self.name,
                table,
                path,
                problem,
                attempt + 1,
                s.retries + 1,
                delay,
            )
            time.sleep(delay)
        try:
            return orjson.loads(body), links
        except orjson.JSONDecodeError as exc:
            raise EcSourceError(
                f"source {self.name} for {table}: GET {path} did not answer JSON: {exc}"
            ) from exc

    def _read_body(self, response: httpx.Response, table: str, path: str) -> bytes:
        """Read at most ``max_page_bytes`` of the (decoded) body."""
        limit = self._settings.max_page_bytes
        too_large = EcSourceError(
            f"source {self.name} for {table}: GET {path} answered a page larger than "
            f"max_page_bytes ({limit}); ask for smaller pages (page_size) or raise it"
        )
        length = response.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit and "content-encoding" not in response.headers:
            raise too_large
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()


def _retry_after(response: httpx.Response, default: float, cap: float) -> float:
    """The server's Retry-After in seconds (capped), else the backoff."""
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), cap)
    except ValueError:
        return default


def _field(body: Mapping[str, Any], dotted: str) -> Any:
    """Return ``body["a"]["b"]`` for ``"a.b"``, None where a level is missing."""
    value: Any = body
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value
