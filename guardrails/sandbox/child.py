"""The sandbox in a child process of its own, driven from the parent by function calls.

A benchmark that measures the memory or the CPU of the process under test (the sweep) must not
count the simulators: a tenant of 100,000 seeded mailboxes, the request log and the server
threads that parse every request and serialize every page. :class:`SandboxChild` starts a fresh
interpreter (``spawn``, never ``fork``: the parent may already run threads), builds a
:class:`~guardrails.sandbox.environment.Sandbox` there and serves its HTTPS endpoints on loopback
from that process. The parent drives it with :meth:`SandboxChild.call`: a module-level function
and its arguments are pickled to the child, run there as ``function(sandbox, *args)`` and the
result pickled back. So seeding, counting requests and reading rows all happen where the state
lives, and only small answers cross the pipe; the URLs and the CA bundle the worker needs come
back the same way (``child.call(Sandbox.environment, policy_path)``).

The guardrail's state can live there too (:meth:`SandboxChild.table_store`): in-memory tables in
the child, out of the process under test as Table Storage is in production, and far faster than
Azurite for a benchmark that writes tens of thousands of ledger entries.

Calls are served one at a time, in order. An exception raised in the child is raised in the
parent as the same type with the same attributes (so ``EntityExists`` stays ``EntityExists``),
the child's traceback in a note; one that cannot be sent comes back as
:class:`SandboxChildError` with that traceback. Either way the child keeps serving. The child
dies with the parent: it reads end-of-file on the pipe when the parent goes away.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

from guardrails.clients.tables import (
    DEFAULT_TABLE_PREFIX,
    Entity,
    FilterValue,
    MemoryTable,
    Operation,
    TableStore,
    UpdateMode,
)
from guardrails.sandbox.environment import Sandbox

__all__ = ["SandboxChild", "SandboxChildError"]

P = ParamSpec("P")
T = TypeVar("T")
START_TIMEOUT = 120.0  # seconds: a fresh interpreter imports the sandbox and issues a CA


class SandboxChildError(RuntimeError):
    """The child failed a call (the message is its traceback), or is gone."""


class SandboxChild:
    """A :class:`Sandbox` built and served in a child process; ``options`` go to its constructor.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, **options: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        self._lock = threading.Lock()
        self._process = context.Process(
            target=_serve, args=(theirs, options), name="guardrails-sandbox", daemon=True
        )
        self._process.start()
        theirs.close()  # only the child holds its end, so its exit reads as EOF here
        try:
            self._answer(START_TIMEOUT)
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return self._process.pid

    def call(
        self, function: Callable[Concatenate[Sandbox, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``function(sandbox, *args, **kwargs)`` run in the child; returns its result.

        ``function`` must be importable by name (a module-level function, or a method such as
        ``Sandbox.environment``) and its arguments and result picklable; what cannot be sent is
        refused here, before anything reaches the child.
        """
        with self._lock:
            if self._connection.closed:
                raise SandboxChildError("the sandbox child is closed")
            self._connection.send((function, args, kwargs))
            result: T = self._answer(None)
            return result

    def table_store(self, *, prefix: str = DEFAULT_TABLE_PREFIX) -> TableStore:
        """The guardrail's tables, kept in memory in the child (one set per child)."""
        return TableStore(lambda name: _ChildTable(self, name), prefix=prefix)

    def close(self) -> None:
        """Stop the child (it closes the sandbox's servers) and wait for it to exit."""
        with self._lock:
            if not self._connection.closed:
                with contextlib.suppress(OSError):  # already gone
                    self._connection.send(None)
                self._connection.close()
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _answer(self, timeout: float | None) -> Any:
        """The child's next answer, waiting at most ``timeout`` seconds (None: while it lives)."""
        ready = wait([self._connection, self._process.sentinel], timeout)
        if self._connection not in ready:
            if ready:
                raise SandboxChildError(f"the sandbox child exited (code {self._process.exitcode})")
            raise SandboxChildError(f"the sandbox child did not answer in {timeout} s")
        try:
            ok, value = self._connection.recv()
        except EOFError as exc:
            raise SandboxChildError("the sandbox child closed the connection") from exc
        if not ok:
            raise value.exception()
        return value


@dataclass(frozen=True)
class _Failure:
    """An exception raised in the child, by value: its type, ``args`` and attributes."""

    kind: type[BaseException]
    args: tuple[Any, ...]
    attributes: dict[str, Any]
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> _Failure:
        text = "".join(traceback.format_exception(exc))
        return cls(type(exc), exc.args, dict(getattr(exc, "__dict__", {})), text)

    @classmethod
    def untold(cls, text: str) -> _Failure:
        """What the parent gets when the exception itself cannot be sent."""
        return cls(SandboxChildError, (f"in the sandbox child:\n{text}",), {}, text)

    def exception(self) -> BaseException:
        """The exception again, built without its constructor (whose arguments are gone)."""
        exc = self.kind.__new__(self.kind)
        exc.args = self.args
        exc.__dict__.update(self.attributes)
        exc.add_note(f"raised in the sandbox child:\n{self.traceback}")
        return exc


def _serve(connection: Connection, options: dict[str, Any]) -> None:
    """The child's life: build the sandbox, then answer calls until told to stop or orphaned."""
    try:
        sandbox = Sandbox(**options)
    except Exception as exc:
        _send(connection, (False, _Failure.of(exc)))
        return
    with sandbox:
        connection.send((True, None))
        while True:
            try:
                request = connection.recv()
            except EOFError:
                return  # the parent is gone
            except Exception as exc:  # a function that cannot be imported here
                _send(connection, (False, _Failure.of(exc)))
                continue
            if request is None:
                return
            function, args, kwargs = request
            try:
                answer: tuple[bool, Any] = (True, function(sandbox, *args, **kwargs))
            except Exception as exc:
                answer = (False, _Failure.of(exc))
            _send(connection, answer)


def _send(connection: Connection, answer: tuple[bool, Any]) -> None:
    """Send an answer; one that cannot be pickled becomes a :class:`SandboxChildError`."""
    try:
        connection.send(answer)
    except Exception:
        connection.send((False, _Failure.untold(traceback.format_exc())))


# -- the guardrail's state, in the child ------------------------------------------------------

_TABLES: dict[str, MemoryTable] = {}  # in the child: its tables, by full name


def _reduce_entity(entity: Entity) -> tuple[type[Entity], tuple[Any, ...]]:
    """Entities cross the pipe as their fields (their read-only properties view cannot)."""
    return Entity, (entity.partition_key, entity.row_key, dict(entity.properties), entity.etag)


ForkingPickler.register(Entity, _reduce_entity)


def _table(name: str) -> MemoryTable:
    table = _TABLES.get(name)
    if table is None:
        table = _TABLES[name] = MemoryTable(name)
    return table


def _create(sandbox: Sandbox, name: str, entity: Entity) -> str:
    return _table(name).create(entity)


def _get(sandbox: Sandbox, name: str, partition_key: str, row_key: str) -> Entity | None:
    return _table(name).get(partition_key, row_key)


def _update(sandbox: Sandbox, name: str, entity: Entity, etag: str, mode: UpdateMode) -> str:
    return _table(name).update(entity, etag=etag, mode=mode)


def _upsert(sandbox: Sandbox, name: str, entity: Entity, mode: UpdateMode) -> str:
    return _table(name).upsert(entity, mode=mode)


def _delete(
    sandbox: Sandbox, name: str, partition_key: str, row_key: str, etag: str | None
) -> None:
    _table(name).delete(partition_key, row_key, etag=etag)


def _query(
    sandbox: Sandbox,
    name: str,
    filter: str,
    parameters: dict[str, FilterValue] | None,
    select: list[str] | None,
    page_size: int | None,
) -> list[Entity]:
    found = _table(name).query(filter, parameters=parameters, select=select, page_size=page_size)
    return list(found)


def _transact(sandbox: Sandbox, name: str, operations: list[Operation]) -> list[str | None]:
    return _table(name).transact(operations)


class _ChildTable:
    """A :class:`~guardrails.clients.tables.Table` whose rows are in the child: each call is
    one round trip, and the child's errors are raised here unchanged."""

    def __init__(self, child: SandboxChild, name: str) -> None:
        self._child = child
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def create(self, entity: Entity) -> str:
        return self._child.call(_create, self._name, entity)

    def get(self, partition_key: str, row_key: str) -> Entity | None:
        return self._child.call(_get, self._name, partition_key, row_key)

    def update(self, entity: Entity, *, etag: str, mode: UpdateMode = UpdateMode.MERGE) -> str:
        return self._child.call(_update, self._name, entity, etag, mode)

    def upsert(self, entity: Entity, *, mode: UpdateMode = UpdateMode.MERGE) -> str:
        return self._child.call(_upsert, self._name, entity, mode)

    def delete(self, partition_key: str, row_key: str, *, etag: str | None = None) -> None:
        self._child.call(_delete, self._name, partition_key, row_key, etag)

    def query(
        self,
        filter: str,
        *,
        parameters: Mapping[str, FilterValue] | None = None,
        select: Sequence[str] | None = None,
        page_size: int | None = None,
    ) -> Iterator[Entity]:
        given = None if parameters is None else dict(parameters)
        names = None if select is None else list(select)
        return iter(self._child.call(_query, self._name, filter, given, names, page_size))

    def transact(self, operations: Sequence[Operation]) -> list[str | None]:
        return self._child.call(_transact, self._name, list(operations))
