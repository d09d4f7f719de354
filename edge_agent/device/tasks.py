"""Tasks on the device: long actuator jobs a client starts, leaves, and checks on later.

Source: MCP 2025-11-25 ``basic/utilities/tasks`` (experimental in that revision). A tool whose
driver declares it a job (:attr:`edge_agent.drivers.base.ToolSpec.task_support`) lists
``execution.taskSupport``; a ``tools/call`` with ``params.task`` is answered at once with a
``CreateTaskResult`` (status ``working``) and the tool runs in the background. Served here:
``tasks/get``, ``tasks/result`` (blocks until the task is terminal, then returns exactly the
``CallToolResult`` with ``_meta["io.modelcontextprotocol/related-task"]``), ``tasks/list``
(paged), ``tasks/cancel`` (-32602 once terminal), and ``notifications/tasks/status`` to the
creating client on every status change (optional in the spec: clients poll).

State is kept in the device's SQLite state store file (table ``tasks``, created by this
module: additive to :mod:`edge_agent.device.store`'s schema, through a connection of its own
to the same WAL file, so a task row is committed before its ``CreateTaskResult`` leaves,
whatever the store's write-behind setting). A task therefore survives a lost link (it runs on
the device; the broker is not needed) and an agent crash or restart:

- at start (:meth:`TaskManager.recover`, before the broker is reached), a task that was
  ``working`` when the agent died and whose planned end (``started + duration``) has passed
  has its hardware put in the safe state at once (``ToolSpec.stop``: relay off) and ends
  ``failed``, its message saying when and how late; a task before its end whose job is
  ``resumable`` runs on to its original end (the pump stays on for what is left); any other
  is stopped and ends ``failed`` ("interrupted by an agent restart");
- a job's planned end is enforced by a watchdog: ``GRACE_S`` after it, the job is told to
  stop and its ``stop`` is called, even if the handler hangs;
- ``tasks/cancel`` calls ``stop`` at once (the relay is off before the answer leaves) and
  tells the handler to end;
- a later command to the same hardware (any tool of the driver that is not read-only:
  ``pump_relay_off`` during ``pump_relay_run``) supersedes the job: it stops at once and its task
  ends ``cancelled`` ("Superseded by pump_relay_off..."), instead of the command waiting for the
  job's end (:meth:`TaskManager.supersede`, called by the runtime).

Binding (spec "Task Isolation"): a task is bound to the authenticated subject of the session
that made it (``Session.subject``, from a verified token) and only that subject sees it. A
session without a subject (no authentication configured) sees the tasks made without one: on
such a device anyone on the broker may call any tool anyway. Task ids are 128-bit random.
``tasks/cancel`` also needs a role that may call the task's tool. Limits: ``ttl`` at most
``MAX_TTL_MS`` (24 h, default 1 h, never shorter than the job plus 10 minutes); at most
``MAX_ACTIVE`` working tasks per device.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from edge_agent.core import jsonrpc
from edge_agent.core.jsonrpc import FORBIDDEN, INVALID_PARAMS, METHOD_NOT_FOUND, RpcError
from edge_agent.core.results import tool_error
from edge_agent.device.sensors import iso
from edge_agent.server.registry import Tool, ToolContext

if TYPE_CHECKING:
    import sqlite3

    from edge_agent.drivers.base import ToolSpec
    from edge_agent.server.mcp import McpServer, Session

log = logging.getLogger(__name__)

RELATED = "io.modelcontextprotocol/related-task"
IMMEDIATE = "io.modelcontextprotocol/model-immediate-response"
WORKING, INPUT_REQUIRED, COMPLETED, FAILED, CANCELLED = "working", "input_required", "completed", "failed", "cancelled"
TERMINAL = (COMPLETED, FAILED, CANCELLED)
DEFAULT_TTL_MS = 3_600_000  # 1 h
MAX_TTL_MS = 86_400_000  # 24 h
MIN_TTL_AFTER_JOB_S = 600.0  # a task is kept at least this long after its planned end
POLL_INTERVAL_MS = 1000
MAX_ACTIVE = 32  # working tasks per device
GRACE_S = 0.25  # a job still running this long after its planned end is stopped by the watchdog

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    owner TEXT,
    client_id TEXT NOT NULL,
    tool TEXT NOT NULL,
    arguments TEXT NOT NULL,
    status TEXT NOT NULL,
    status_message TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    ttl_ms INTEGER,
    started REAL NOT NULL,
    ends REAL,
    stopped REAL,
    result TEXT
);
"""


@dataclass
class TaskRecord:
    """One task. Times are Unix seconds; ``ends``: the job's planned end (None: no duration
    known); ``stopped``: when the runtime put its hardware in the safe state (cancel, watchdog,
    restart), else None; ``result``: the ``CallToolResult`` once terminal."""

    task_id: str
    owner: str | None
    client_id: str
    tool: str
    arguments: dict[str, Any]
    status: str
    status_message: str | None
    created: float
    updated: float
    ttl_ms: int | None
    started: float
    ends: float | None = None
    stopped: float | None = None
    result: dict[str, Any] | None = None

    def task(self) -> dict[str, Any]:
        """The spec's ``Task`` object."""
        out: dict[str, Any] = {"taskId": self.task_id, "status": self.status, "createdAt": iso(self.created),
                               "lastUpdatedAt": iso(self.updated), "ttl": self.ttl_ms}
        if self.status_message:
            out["statusMessage"] = self.status_message
        if self.status not in TERMINAL:
            out["pollInterval"] = POLL_INTERVAL_MS
        return out

    def row(self) -> tuple[Any, ...]:
        return (self.task_id, self.owner, self.client_id, self.tool, json.dumps(self.arguments), self.status,
                self.status_message, self.created, self.updated, self.ttl_ms, self.started, self.ends, self.stopped,
                None if self.result is None else json.dumps(self.result, ensure_ascii=False))

    @property
    def expires(self) -> float | None:
        return None if self.ttl_ms is None else self.created + self.ttl_ms / 1000.0


class TaskStore:
    """The ``tasks`` table in the state store's file (``path``; ``":memory:"``: a private
    in-memory database). Opened at first use, so a device that never makes a task never
    touches the file. Methods block (call them from a worker thread); they are serialised.

    Raises:
        sqlite3.Error: the file cannot be opened or written.
    """

    def __init__(self, path: str):
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            import sqlite3  # at the first task: a device without tasks never loads it

            if self.path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            self._db = db
        return self._db

    def put(self, record: TaskRecord) -> None:
        """Insert or replace ``record`` (committed when this returns)."""
        with self._lock:
            self._open().execute("INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                 record.row())

    def delete(self, task_ids: list[str]) -> None:
        with self._lock:
            self._open().executemany("DELETE FROM tasks WHERE task_id = ?", [(t,) for t in task_ids])

    def load(self) -> list[TaskRecord]:
        """Every stored task, oldest first ([] when the file does not exist yet)."""
        with self._lock:
            if self._db is None and self.path != ":memory:" and not os.path.exists(self.path):
                return []
            rows = self._open().execute("SELECT * FROM tasks ORDER BY created").fetchall()
        out = []
        for r in rows:
            try:
                out.append(TaskRecord(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7], r[8], r[9], r[10],
                                      r[11], r[12], None if r[13] is None else json.loads(r[13])))
            except (ValueError, TypeError) as exc:
                log.warning("task %s in %s is unreadable (%s): ignored", r[0], self.path, exc)
        return out

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class TaskManager:
    """The device's tasks: serves ``tasks/*`` on ``server`` and task-augmented ``tools/call``
    (``server.tasks`` is set to this), runs jobs in the background, keeps them in ``store``.

    ``job(tool_name)``: the :class:`ToolSpec` of a job tool (its ``stop``, ``duration``,
    ``resumable``), or None. Construct on the event loop; call :meth:`recover` once the drivers
    are built, :meth:`close` at shutdown (running jobs are left running: the process exit or
    the next start handles them).
    """

    def __init__(self, server: McpServer, store: TaskStore, job: Callable[[str], ToolSpec | None]):
        self.server = server
        self.store = store
        self.job = job
        self.tasks: dict[str, TaskRecord] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._running: set[asyncio.Task] = set()
        self._tokens: dict[str, Any] = {}  # task id -> the creating request's progressToken
        add = server.table.add
        for method, handler in (("tasks/get", self._get), ("tasks/result", self._result),
                                ("tasks/list", self._list), ("tasks/cancel", self._cancel_task)):
            add(method, handler, capability=None, before_init=False, durable=False, access="read")
        server.tasks = self

    # ------------------------------------------------------------------ protocol hooks
    @staticmethod
    def capability() -> dict[str, Any]:
        """``capabilities.tasks`` of the initialize result."""
        return {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}

    @staticmethod
    def check_call(tool: Tool, task: Any) -> None:
        """Raise RpcError(-32601) when ``tool``'s ``execution.taskSupport`` forbids a task
        (``task`` given) or requires one (not given); -32602 when ``task`` is not an object."""
        support = tool.task_support or "forbidden"
        if task is not None and not isinstance(task, dict):
            raise RpcError(INVALID_PARAMS, "tools/call: params.task must be an object")
        if task is not None and support == "forbidden":
            raise RpcError(METHOD_NOT_FOUND, f"Tool {tool.name} does not support task-augmented calls "
                                             "(execution.taskSupport is forbidden)")
        if task is None and support == "required":
            raise RpcError(METHOD_NOT_FOUND, f"Tool {tool.name} must be called as a task "
                                             "(execution.taskSupport is required)")

    async def create(self, session: Session, tool: Tool, arguments: dict[str, Any], task: dict[str, Any],
                     meta: dict[str, Any]) -> dict[str, Any]:
        """Start ``tool`` as a task; the ``CreateTaskResult`` once its row is on disk."""
        self._purge()
        if sum(1 for r in self.tasks.values() if r.status not in TERMINAL) >= MAX_ACTIVE:
            raise RpcError(INVALID_PARAMS, f"tools/call: {MAX_ACTIVE} tasks are already working on this device; "
                                           "wait for one to end or cancel one")
        spec = self.job(tool.name)
        now = time.time()
        duration = _duration(spec, arguments)
        ttl = task.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0):
            raise RpcError(INVALID_PARAMS, "tools/call: params.task.ttl must be a number of milliseconds")
        ttl_ms = int(min(MAX_TTL_MS, DEFAULT_TTL_MS if ttl is None else ttl))
        if duration is not None:
            ttl_ms = int(min(MAX_TTL_MS, max(ttl_ms, (duration + MIN_TTL_AFTER_JOB_S) * 1000)))
        record = TaskRecord(
            task_id=secrets.token_hex(16), owner=getattr(session, "subject", None), client_id=session.id,
            tool=tool.name, arguments=dict(arguments), status=WORKING, status_message="The job is running.",
            created=now, updated=now, ttl_ms=ttl_ms, started=now,
            ends=None if duration is None else now + duration)
        await asyncio.to_thread(self.store.put, record)
        self.tasks[record.task_id] = record
        if meta.get("progressToken") is not None:
            self._tokens[record.task_id] = meta["progressToken"]
        log.info("task %s: %s %s started for %s", record.task_id, tool.name, json.dumps(arguments), session.id)
        self._start(record)
        until = f" until {iso(record.ends)}" if record.ends is not None else ""
        return {"task": record.task(),
                "_meta": {IMMEDIATE: f"{tool.name} started as task {record.task_id}{until}; "
                                     "poll tasks/get, fetch the outcome with tasks/result."}}

    # ------------------------------------------------------------------ running
    def _start(self, record: TaskRecord) -> None:
        self._cancel[record.task_id] = threading.Event()
        self._done.setdefault(record.task_id, asyncio.Event())
        job = asyncio.get_running_loop().create_task(self._execute(record))
        self._running.add(job)
        job.add_done_callback(self._running.discard)

    async def _execute(self, record: TaskRecord) -> None:
        tool = self.server.registry.tools.get(record.tool)
        spec = self.job(record.tool)
        cancel = self._cancel[record.task_id]
        loop = asyncio.get_running_loop()
        watchdog = None
        overran: list[float] = []
        if record.ends is not None:
            def overrun() -> None:
                if record.status in TERMINAL:
                    return
                overran.append(time.time())
                cancel.set()
                loop.create_task(self._stop_hardware(record, spec))

            watchdog = loop.call_at(loop.time() + max(0.0, record.ends - time.time()) + GRACE_S, overrun)
        try:
            if tool is None:
                result = tool_error(f"{record.tool} is not available on this device")
            else:
                arguments = dict(record.arguments)
                if spec is not None and spec.resumable:
                    arguments["started_at"] = record.started
                ctx = ToolContext(session_id=record.client_id, progress=self._progress_fn(record), cancelled=cancel,
                                  log=lambda level, text: self._log(record, level, text), meta={})
                from edge_agent.core import tools as core_tools

                result = await core_tools.invoke(record.tool, lambda: tool.handler(arguments, ctx),
                                                 self.server._tool_failed)
        except Exception as exc:  # never lose a task to a bug: it fails, with the reason
            log.exception("task %s failed", record.task_id)
            result = tool_error(f"{record.tool} failed: {type(exc).__name__}: {exc}")
            await self._stop_hardware(record, spec)
        finally:
            if watchdog is not None:
                watchdog.cancel()
        if record.status == CANCELLED or overran:  # the handler may have moved once more after stop(): again
            await self._stop_hardware(record, spec)
        if record.status == CANCELLED:  # it MUST stay cancelled (spec); keep what the job reported
            record.result = result
            await self._save(record, notify=False)
        elif overran:
            await self._finish(record, FAILED, f"{record.tool} overran its planned end ({iso(record.ends or 0)}) "
                                               "and was stopped", result)
        elif result.get("isError"):
            text = " ".join(c.get("text", "") for c in result.get("content", []) if isinstance(c, dict))
            await self._finish(record, FAILED, text or f"{record.tool} failed", result)
        else:
            await self._finish(record, COMPLETED, "The job completed.", result)

    async def _stop_hardware(self, record: TaskRecord, spec: ToolSpec | None) -> None:
        """Put the job's hardware in its safe state now (``spec.stop``), and record when."""
        if spec is None or spec.stop is None:
            return
        try:
            await asyncio.to_thread(spec.stop)
        except Exception as exc:  # the hardware failed: say so in the task, keep going
            log.error("task %s: stopping %s failed: %s", record.task_id, record.tool, exc)
            return
        record.stopped = time.time()
        log.info("task %s: %s put in its safe state", record.task_id, record.tool)

    async def _finish(self, record: TaskRecord, status: str, message: str, result: dict[str, Any]) -> None:
        record.status, record.status_message, record.result = status, message, result
        record.updated = time.time()
        await self._save(record)
        log.info("task %s: %s (%s)", record.task_id, status, message)

    async def _save(self, record: TaskRecord, *, notify: bool = True) -> None:
        try:
            await asyncio.to_thread(self.store.put, record)
        except Exception as exc:  # sqlite3.Error: a full or broken disk must not stop the job's end
            log.error("task %s: could not be stored: %s", record.task_id, exc)
        if record.status in TERMINAL:
            self._cancel.pop(record.task_id, None)
            self._tokens.pop(record.task_id, None)
            self._done.setdefault(record.task_id, asyncio.Event()).set()
        if notify:
            self._notify(record)

    def _session(self, record: TaskRecord) -> Session | None:
        return self.server.sessions.get(record.client_id)

    def _notify(self, record: TaskRecord) -> None:
        session = self._session(record)
        if session is not None:
            session.send(jsonrpc.notification("notifications/tasks/status", record.task()))

    def _progress_fn(self, record: TaskRecord) -> Callable[..., None]:
        """The job's progress, to the client of the task while it is there (its token may
        arrive with tasks/result after a restart)."""
        return self.server.progress_fn(lambda: self._session(record), lambda: self._tokens.get(record.task_id),
                                       {RELATED: {"taskId": record.task_id}})

    def _log(self, record: TaskRecord, level: str, text: str) -> None:
        session = self._session(record)
        if session is not None:
            self.server.log_to(session, level, text, logger=record.tool)

    def owns(self, flag: Any) -> bool:
        """True if ``flag`` is the cancel flag of a working task's job."""
        return any(event is flag for event in self._cancel.values())

    def supersede(self, flag: Any, by: str) -> None:
        """A later command (tool ``by``) to the hardware of the job whose cancel flag is ``flag``:
        the task ends ``cancelled`` ("superseded by ...") and its job is told to stop now (the
        handler ends at its next step; ``stop`` runs once it returned)."""
        for task_id, event in list(self._cancel.items()):
            record = self.tasks.get(task_id)
            if event is not flag or record is None or record.status in TERMINAL:
                continue
            record.status, record.updated = CANCELLED, time.time()
            record.status_message = f"Superseded by {by}, a later command to the same hardware."
            record.result = tool_error(f"{record.tool}: superseded by {by}")
            event.set()
            log.info("task %s: %s superseded by %s", task_id, record.tool, by)
            job = asyncio.get_running_loop().create_task(self._save(record))
            self._running.add(job)
            job.add_done_callback(self._running.discard)

    # ------------------------------------------------------------------ restart
    async def recover(self) -> None:
        """Load the stored tasks (at agent start, drivers built, before the broker is reached):
        stop or resume the ones an agent crash left working (see the module docstring), drop
        the expired ones."""
        records = await asyncio.to_thread(self.store.load)
        now = time.time()
        expired = [r.task_id for r in records if r.expires is not None and r.expires < now and r.status in TERMINAL]
        if expired:
            await asyncio.to_thread(self.store.delete, expired)
        for record in records:
            if record.task_id in expired:
                continue
            self.tasks[record.task_id] = record
            if record.status in TERMINAL:
                self._done.setdefault(record.task_id, asyncio.Event()).set()
                continue
            spec = self.job(record.tool)
            if spec is None:
                await self._finish(record, FAILED, f"interrupted by an agent restart; {record.tool} is not available "
                                                   "now, so its hardware state is unknown",
                                   tool_error(f"{record.tool}: interrupted by an agent restart (tool unavailable)"))
            elif record.ends is not None and now >= record.ends:
                await self._stop_hardware(record, spec)
                late = (record.stopped or now) - record.ends
                message = (f"the agent was down at the job's end ({iso(record.ends)}); {record.tool} was put in its "
                           f"safe state at restart, {late:.1f} s late")
                await self._finish(record, FAILED, message, tool_error(message))
            elif spec.resumable:
                log.info("task %s: %s resumed after an agent restart (ends %s)", record.task_id, record.tool,
                         iso(record.ends) if record.ends else "-")
                record.status_message = "Resumed after an agent restart."
                record.updated = now
                await self._save(record, notify=False)
                self._start(record)
            else:
                await self._stop_hardware(record, spec)
                message = f"interrupted by an agent restart; {record.tool} was put in its safe state"
                await self._finish(record, FAILED, message, tool_error(message))

    # ------------------------------------------------------------------ tasks/*
    def _find(self, session: Session, params: dict[str, Any], method: str) -> TaskRecord:
        task_id = params.get("taskId")
        if not isinstance(task_id, str):
            raise RpcError(INVALID_PARAMS, f"{method}: params.taskId (a string) is required")
        record = self.tasks.get(task_id)
        if record is None or not self._visible(session, record):
            raise RpcError(INVALID_PARAMS, f"Failed to retrieve task: Task not found ({task_id})")
        if record.expires is not None and record.expires < time.time() and record.status in TERMINAL:
            raise RpcError(INVALID_PARAMS, f"Failed to retrieve task: Task has expired ({task_id})")
        return record

    def _visible(self, session: Session, record: TaskRecord) -> bool:
        """May ``session`` see (get, result, list, cancel) ``record``? Only a task of its own subject
        (a task made with a verified token belongs to that subject), and only a task of a tool its
        role may call: a viewer neither lists nor reads an operator's pump run (MCP 2025-11-25
        tasks, "Security": tasks bound to the authorization context)."""
        subject = getattr(session, "subject", None)
        if record.owner is not None and record.owner != subject:
            return False
        role = session.role
        if role is None:
            return True
        tool = self.server.registry.tools.get(record.tool)
        return role.allows_tool(record.tool, tool.annotations if tool else None)

    async def _get(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        return self._find(session, params, "tasks/get").task()

    async def _result(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        record = self._find(session, params, "tasks/result")
        if record.status not in TERMINAL:
            await self._done.setdefault(record.task_id, asyncio.Event()).wait()
        result = dict(record.result or tool_error(f"task {record.task_id} ended without a result"))
        result["_meta"] = {**(result.get("_meta") or {}), RELATED: {"taskId": record.task_id}}
        return result

    async def _list(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        self._purge()
        items = [r.task() for r in sorted(self.tasks.values(), key=lambda r: r.created) if self._visible(session, r)]
        cursor = params.get("cursor")
        start = 0
        if cursor is not None:
            try:
                start = int(base64.urlsafe_b64decode(str(cursor).encode()).decode())
                if not 0 <= start <= len(items):
                    raise ValueError
            except (ValueError, UnicodeDecodeError):
                raise RpcError(INVALID_PARAMS, f"tasks/list: invalid cursor {cursor!r}") from None
        end = start + self.server.page_size
        out: dict[str, Any] = {"tasks": items[start:end]}
        if end < len(items):
            out["nextCursor"] = base64.urlsafe_b64encode(str(end).encode()).decode()
        return out

    async def _cancel_task(self, session: Session, params: dict[str, Any], req: Any = None) -> dict[str, Any]:
        record = self._find(session, params, "tasks/cancel")
        if record.status in TERMINAL:
            raise RpcError(INVALID_PARAMS, f"Cannot cancel task: already in terminal status '{record.status}'")
        tool = self.server.registry.tools.get(record.tool)
        role = session.role
        if role is not None and not role.allows_tool(record.tool, tool.annotations if tool else None):
            raise RpcError(FORBIDDEN, f"Forbidden: role {role.name!r} may not cancel a task of tool {record.tool}",
                           {"role": role.name, "tool": record.tool})
        record.status, record.status_message, record.updated = CANCELLED, "The task was cancelled by request.", time.time()
        event = self._cancel.get(record.task_id)
        if event is not None:
            event.set()
        await self._stop_hardware(record, self.job(record.tool))  # safe state before the answer leaves
        if record.result is None:
            record.result = tool_error(f"{record.tool}: the task was cancelled")
        await self._save(record)
        log.info("task %s: cancelled by %s", record.task_id, session.id)
        return record.task()

    # ------------------------------------------------------------------ housekeeping
    def _purge(self) -> None:
        """Forget terminal tasks past their ttl (the rows go in the background)."""
        now = time.time()
        gone = [t for t, r in self.tasks.items() if r.status in TERMINAL and r.expires is not None and r.expires < now]
        for t in gone:
            self.tasks.pop(t, None)
            self._done.pop(t, None)
        if gone:
            job = asyncio.get_running_loop().create_task(asyncio.to_thread(self.store.delete, gone))
            self._running.add(job)
            job.add_done_callback(self._running.discard)

    async def close(self) -> None:
        """Stop serving: running jobs are cancelled and their hardware stopped (a clean stop
        ends them ``failed``, "the agent stopped"); the store is closed."""
        for record in list(self.tasks.values()):
            if record.status in TERMINAL:
                continue
            event = self._cancel.get(record.task_id)
            if event is not None:
                event.set()
        for job in list(self._running):
            job.cancel()
        for record in list(self.tasks.values()):
            if record.status not in TERMINAL:
                await self._stop_hardware(record, self.job(record.tool))
                message = f"the agent stopped; {record.tool} was put in its safe state"
                record.status, record.status_message, record.result = FAILED, message, tool_error(message)
                record.updated = time.time()
                try:
                    await asyncio.to_thread(self.store.put, record)
                except Exception as exc:  # sqlite3.Error: a full or broken disk must not stop the job's end
                    log.error("task %s: could not be stored: %s", record.task_id, exc)
        await asyncio.to_thread(self.store.close)


def _duration(spec: ToolSpec | None, arguments: dict[str, Any]) -> float | None:
    if spec is None or spec.duration is None:
        return None
    try:
        value = float(spec.duration(**arguments))
    except Exception as exc:  # a driver's bug: the job runs without a hard end
        log.warning("duration of %s for %s failed: %s", spec.name, arguments, exc)
        return None
    return max(0.0, value)
