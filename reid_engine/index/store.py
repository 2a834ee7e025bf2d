"""The on-disk index: a vector backend + SQL rows + index-time hook state, kept in step.

Every change is one commit (see docs/architecture.md): the backend and the
hooks write new immutable files for the next generation, then one SQL
transaction changes the rows and records the generation and the new state.
That SQL commit is the single commit point: a crash anywhere leaves the last
committed state, and the next writer removes what the crash left behind.

Opening never writes. Readers pick up newer generations on their next query
(``refresh``); writers hold the index's write lock (``index/lock.py``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..assets import resolved
from ..errors import DatabaseURLError, IndexCorruptError, IndexNotFoundError, InvalidInputError, ReidEngineError
from . import db
from .backend import Changes, IdsLike, SearchFilter, SearchParams, VectorBackend, fields_of, get_backend
from .lock import WriteLock
from .manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest

log = logging.getLogger(__name__)

DEFAULT_DB_URL = "sqlite:///{index}/crops.db"
#: a hook whose state spans more files than this is folded (hook.compact) after a commit
HOOK_FOLD_FILES = 32
#: larger adds are committed in blocks of this many rows (each block its own atomic commit)
MAX_COMMIT_ROWS = 4096
#: FAISS threads of a merge built in the background: one core is left to the commits and queries meanwhile
MERGE_THREADS = max(1, (os.cpu_count() or 1) - 1)
#: called inside an add's transaction with (connection, new ids, rows, features)
SqlHook = Callable[[Connection, list[int], Sequence[dict[str, Any]], np.ndarray], None]


def _after_vectors_written() -> None:
    """Hook between writing the new files and the SQL commit (tests simulate crashes here)."""


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder``, each file once however many names it has (a grown graph's vectors file
    is a hard link of the one it grew from until that is retired)."""
    seen: set[tuple[int, int]] = set()
    size = 0
    for p in folder.iterdir():
        try:
            st = p.stat()
        except FileNotFoundError:  # retired meanwhile
            continue
        if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            size += st.st_size
    return size


def _hooks_registry() -> Any:
    from ..rerank import base as rerank_base

    return rerank_base


class _RowsRefused(Exception):
    """The database refused a commit's rows (a unique or not-null rule): raised out of the void transaction."""


class IndexStore:
    """One index folder: vectors (through a backend), rows and hook state, always consistent."""

    def __init__(self, folder: Path, manifest: Manifest, sql: sa.engine.Engine, backend: VectorBackend):
        self.folder = folder
        self.manifest = manifest
        self.sql = sql
        self.backend = backend
        self.generation = -1
        self.committed: dict[str, Any] = {}
        self.lock = WriteLock(folder, sql)
        #: a merge due after a single-block add (or a removal) is built by a background thread and committed
        #: as a generation of its own (by that thread, or by this process's next commit if it comes first), so
        #: the add does not wait for it; the blocks of a larger add merge inside their commits (a bulk load is
        #: faster and smaller that way: nothing is searched while a graph grows). False (or the environment's
        #: REID_ENGINE_BACKGROUND_MERGES=0): always inside, which bounds memory (docs/storage.md)
        self.background_merges = os.environ.get("REID_ENGINE_BACKGROUND_MERGES", "1").strip() != "0"
        self._bulk = False  # inside a multi-block add
        self._writer = threading.RLock()  # one thread of this process writes at a time
        self._merge_thread: Optional[threading.Thread] = None
        self._merge_built = threading.Event()  # set when the background merge is built (or failed)
        self._merge_ready: Optional[Any] = None  # a built merge waiting for the write lock
        #: the last background merge: {"build_s": seconds to build it, "applied": committed yet} (for benchmarks)
        self.last_merge: Optional[dict[str, Any]] = None
        self.merges_started = 0
        self._hook_objects = {name: _hooks_registry().get_hook(name) for name in manifest.hooks}
        self._hook_cache: dict[str, tuple[int, Any]] = {}

    # -- opening ----------------------------------------------------------------------
    @staticmethod
    def discard_if_empty(folder: Path) -> bool:
        """Delete the index folder ``folder`` when it holds no crop and keeps everything inside itself (SQLite rows
        and FAISS vectors in the folder); True when it went. For a command that created the index and then failed:
        the empty index would refuse a retry with another encoder."""
        try:
            manifest = read_manifest(folder)
        except ReidEngineError:
            return False
        if manifest.db_url != DEFAULT_DB_URL or manifest.backend != "faiss":
            return False  # rows or vectors live elsewhere: not this call's to delete
        crops_db = folder / "crops.db"
        if crops_db.exists():
            try:
                with contextlib.closing(sqlite3.connect(f"file:{crops_db}?mode=ro", uri=True)) as con:
                    if con.execute("SELECT COUNT(*) FROM crops").fetchone()[0]:
                        return False
            except sqlite3.Error:
                return False
        shutil.rmtree(folder, ignore_errors=True)
        return not folder.exists()

    @staticmethod
    def resolve_db_url(folder: Path, template: str) -> str:
        return template.replace("{index}", str(resolved(folder)))

    @classmethod
    def create(
        cls,
        folder: Path,
        encoder_info: dict[str, Any],
        dim: int,
        factory: Optional[str] = None,
        db_url: Optional[str] = None,
        annotators: Sequence[str] = (),
        backend: str = "faiss",
        backend_options: Optional[dict[str, Any]] = None,
        hooks: Sequence[str] = (),
        search: Optional[dict[str, Any]] = None,
    ) -> "IndexStore":
        """Make a new empty index folder.

        ``factory`` overrides the backend's automatic index type (e.g. "Flat", "IVF1024,Flat");
        ``hooks`` name the index-time state kept for re-ranking (``rerank.base.IndexHook``).
        """
        folder = Path(folder)
        if (folder / MANIFEST_NAME).exists():
            raise InvalidInputError(f"{folder}: an index already exists here")
        if folder.exists() and not folder.is_dir():
            raise InvalidInputError(f"{folder}: is a file, not an index folder")
        if db_url is not None and (not isinstance(db_url, str) or not db_url.strip()):
            raise DatabaseURLError(f"db_url {db_url!r}: expected a database URL text")
        db.check_lasting(cls.resolve_db_url(folder, db_url or DEFAULT_DB_URL))
        if backend_options is not None and not isinstance(backend_options, Mapping):
            raise InvalidInputError(f"backend_options {backend_options!r}: expected a mapping of names to values")
        backend_cls = get_backend(backend)
        options = {**backend_cls.default_options(int(dim)), **(backend_options or {})}
        if factory:
            options["factory"] = factory
        if dim <= 0:
            raise InvalidInputError(f"dimension {dim}: expected a positive integer")
        for name in hooks:
            _hooks_registry().get_hook(name)  # unknown names fail before anything is written
        now = time.time()
        manifest = Manifest(
            encoder=encoder_info, dim=int(dim), factory=factory or "auto", db_url=db_url or DEFAULT_DB_URL,
            annotators=list(annotators), backend=backend, backend_options=options, hooks=list(hooks),
            search=dict(search or {}), created_at=now, updated_at=now,
        )
        be = backend_cls(folder, int(dim), options)  # validates options before anything is written
        made = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise InvalidInputError(f"{folder}: cannot create an index folder there (a file is in the way)") from None
        except OSError as exc:  # a read-only file system, no permission, no space
            raise InvalidInputError(f"{folder}: cannot create an index folder there ({exc.strerror or exc})") from None
        try:
            sql = db.connect(cls.resolve_db_url(folder, manifest.db_url), wal=True)
        except ReidEngineError:
            if made:  # a database that cannot be used leaves no empty folder behind
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        store = cls(folder, manifest, sql, be)
        with sql.begin() as conn:
            if db.count_rows(conn) or db.get_meta(conn, "generation") is not None:
                raise InvalidInputError(
                    f"{cls.resolve_db_url(folder, manifest.db_url)}: the database already holds an index; "
                    "remove it or pass another --db-url"
                )
            state = {"backend": be.empty_state(), "hooks": {n: h.empty_state() for n, h in store._hook_objects.items()}}
            db.set_meta(conn, "generation", "0")
            db.set_meta(conn, "state", json.dumps(state))
            db.set_meta(conn, "dim", str(dim))
        write_manifest(folder, manifest)
        store._load(0, state)
        return store

    @classmethod
    def open(cls, folder: Path) -> "IndexStore":
        """Open an index folder read-only (writes take the write lock later)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise IndexNotFoundError(f"{folder}: no such index folder")
        manifest = read_manifest(folder)
        sql = db.connect(cls.resolve_db_url(folder, manifest.db_url), create=False)
        backend_cls = get_backend(manifest.backend)
        try:
            backend = backend_cls(folder, manifest.dim, manifest.backend_options)
        except InvalidInputError as exc:  # an option the manifest holds, edited or damaged
            sql.dispose()
            raise IndexCorruptError(f"{folder / MANIFEST_NAME}: {exc}") from None
        store = cls(folder, manifest, sql, backend)
        gen, state, n_rows = store._read_committed(with_count=True)
        store._load(gen, state)
        store._check(n_rows)
        return store

    def _read_committed(self, with_count: bool = False) -> tuple[int, dict[str, Any], int]:
        """The committed (generation, state) and, when asked, the number of rows: one statement, so one
        snapshot (SQLite gives every statement outside an explicit transaction its own)."""
        try:
            with self.sql.connect() as conn:
                gen_text, state_text, n_rows = db.committed(conn, with_count)
        except sa.exc.SQLAlchemyError as exc:
            raise IndexCorruptError(f"{self.folder}: cannot read the index database ({db.short_error(exc)})") from None
        if gen_text is None or state_text is None:
            raise IndexCorruptError(
                f"{self.folder}: the database holds no committed index state (wrong --db-url, or an index "
                "made by an older reid-engine: rebuild it)"
            )
        try:
            gen = int(gen_text)
            state = json.loads(state_text)
            if not isinstance(state, dict) or "backend" not in state:
                raise ValueError("not a state object")
        except ValueError as exc:
            raise IndexCorruptError(f"{self.folder}: the committed index state is damaged ({exc})") from None
        return gen, state, n_rows

    def _load(self, generation: int, state: dict[str, Any]) -> None:
        try:
            if not isinstance(state.get("backend"), dict) or not isinstance(state.get("hooks", {}), dict):
                raise ValueError("the backend and hook states must be JSON objects")
            self.backend.load(state["backend"])
        except ReidEngineError:
            raise
        except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
            what = getattr(exc, "filename", None)
            detail = f"{Path(what).name}: " if what else ""
            raise IndexCorruptError(
                f"{self.folder}: cannot load the committed vector state of generation {generation} "
                f"({detail}{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        self.generation = generation
        self.committed = state

    def _check(self, n_rows: int) -> None:
        """Refuse vectors and rows of the same committed generation that disagree."""
        if n_rows != self.backend.count:
            raise IndexCorruptError(
                f"{self.folder}: vectors and rows disagree: {self.backend.count} vectors, {n_rows} rows "
                f"(generation {self.generation})"
            )

    def refresh(self) -> bool:
        """Load a generation committed by another process since; True when it changed."""
        with self.sql.connect() as conn:
            current = db.get_meta(conn, "generation")
        if current is None or current == str(self.generation):
            return False
        for attempt in range(3):
            gen, state, _ = self._read_committed()
            try:
                self._load(gen, state)
                break
            except IndexCorruptError:
                # a file of that state went away: only possible if yet newer commits retired it long enough ago
                # for a writer's cleanup, so read the committed state again
                again, _, _ = self._read_committed()
                if again == gen or attempt == 2:
                    raise
        log.debug("%s: now at generation %d", self.folder, self.generation)
        return True

    def _files(self, state: dict[str, Any]) -> set[str]:
        names = set(self.backend.files(state.get("backend") or {}))
        for name, hook in self._hook_objects.items():
            names.update(hook.files((state.get("hooks") or {}).get(name) or {}))
        return names

    def _retire(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Stamp the files the new state no longer refers to: cleanup's grace period runs from now."""
        for name in self._files(old) - self._files(new):
            try:
                os.utime(self.folder / name)
            except OSError:
                pass

    # -- writing ------------------------------------------------------------------------
    @contextmanager
    def writing(self, timeout: Optional[float] = None) -> Iterator["IndexStore"]:
        """Hold the index's write lock (re-entrant); on first entry catch up and clean up after crashed writers."""
        with self._writer:
            first = not self.lock.held
            self.lock.acquire(timeout)
            try:
                if first:
                    self.refresh()
                    self._cleanup()
                yield self
            finally:
                self.lock.release()

    def _cleanup(self) -> None:
        try:
            self.backend.cleanup(self.committed["backend"])
        except ReidEngineError:
            raise
        except Exception as exc:  # cleanup is best effort: the committed state is intact
            log.warning("%s: cleanup after an earlier writer failed: %s", self.folder, exc)
        keep = {f for n, h in self._hook_objects.items() for f in h.files(self.committed["hooks"].get(n, {}))}
        prefixes = tuple(f"hook-{n}-" for n in self._hook_objects)
        now = time.time()
        for p in self.folder.iterdir():
            if p.name.startswith(prefixes) and p.name not in keep and now - p.stat().st_mtime > 60:
                p.unlink(missing_ok=True)

    def _commit(
        self,
        changes: Changes,
        sql_work: Callable[[Connection], object],  # its result is ignored
    ) -> None:
        """Apply one change to rows, vectors and hook state as a single atomic commit."""
        with self.writing():
            new_gen = self.generation + 1
            backend_state = self.backend.prepare(new_gen, changes)
            try:
                hook_states = {
                    name: hook.prepare(
                        self.folder, new_gen, self.committed["hooks"].get(name) or hook.empty_state(), self,
                        changes.add_ids, changes.add_vectors if changes.add_vectors is not None
                        else np.zeros((0, self.manifest.dim), np.float32),
                        changes.add_fields, changes.remove_ids,
                    )
                    for name, hook in self._hook_objects.items()
                }
                state = {"backend": backend_state, "hooks": hook_states}
                self._commit_sql(new_gen, state, sql_work)
            except BaseException:
                self.backend.discard(backend_state)
                raise
            self._retire(self.committed, state)
            self._load(new_gen, state)
            background = self.background_merges and not self._bulk
            try:  # this change is committed: a merge that fails to commit now must not make it look failed
                if not background and self._merge_building() and self.backend.plan_merge(self.generation) is not None:
                    self._merge_built.wait()  # a merge is due here: the one being built first
                self._apply_ready_merge()
            except Exception as exc:
                log.warning("%s: a background merge could not be committed, the index is unchanged: %s",
                            self.folder, exc)
            if background:
                self._maybe_compact(force=False, backend=False)  # hook state only
                self._start_merge()
            else:
                self._maybe_compact(force=False)

    def _commit_sql(self, new_gen: int, state: dict[str, Any], sql_work: Callable[[Connection], object]) -> None:
        """The commit point: one transaction runs ``sql_work`` and records ``new_gen`` and ``state``."""
        with self.sql.begin() as conn:
            current = db.get_meta(conn, "generation")
            if current != str(self.generation):
                raise IndexCorruptError(
                    f"{self.folder}: changed by another writer (generation {current}, expected {self.generation})"
                )
            sql_work(conn)
            _after_vectors_written()
            db.set_meta(conn, "generation", str(new_gen))
            db.set_meta(conn, "state", json.dumps(state))

    def _checked(self, feats: np.ndarray, what: str) -> np.ndarray:
        """``feats`` as contiguous float32 (N, dim) with finite values, or InvalidInputError naming ``what``."""
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.manifest.dim:
            raise InvalidInputError(f"{what} of shape {feats.shape}: expected (N, {self.manifest.dim})")
        if not np.isfinite(feats).all():
            raise InvalidInputError(f"{what} hold NaN or infinite values")
        return feats

    def observe(self, feats: np.ndarray, cameras: Sequence[Optional[str]]) -> int:
        """Let the hooks learn from context crops that are not rows (``IndexHook.observe``); one commit.

        The crops never become results and change no row; today only ``camera_stats``
        uses them (the per-camera means of cameras whose crops are not indexed).
        Returns the new generation (the current one when no hook changed).
        """
        feats = self._checked(feats, "context features")
        if len(cameras) != len(feats):
            raise InvalidInputError(f"{len(feats)} context vectors but {len(cameras)} cameras")
        if not len(feats):
            return self.generation
        fields = fields_of([{"camera": c} for c in cameras])
        with self.writing():
            new_gen = self.generation + 1
            hook_states = dict(self.committed["hooks"])
            for name, hook in self._hook_objects.items():
                before = hook_states.get(name) or hook.empty_state()
                st = hook.observe(self.folder, new_gen, before, self, feats, fields)
                if st is not None:
                    hook_states[name] = st
            if hook_states == self.committed["hooks"]:
                return self.generation
            state = {"backend": self.committed["backend"], "hooks": hook_states}
            self._commit_sql(new_gen, state, lambda conn: None)
            self._retire(self.committed, state)
            self._load(new_gen, state)
        return self.generation

    # -- merges ---------------------------------------------------------------------------
    def _merge_building(self) -> bool:
        return self._merge_thread is not None and self._merge_thread.is_alive() and not self._merge_built.is_set()

    @property
    def merging(self) -> bool:
        """Whether a background merge is being built or waits to be committed."""
        return self._merge_building() or self._merge_ready is not None

    def _start_merge(self) -> None:
        """Plan the merge due on the state just committed and build it in a background thread (one at a time)."""
        if self._merge_ready is not None or self._merge_building():
            return
        job = self.backend.plan_merge(self.generation, background=True)
        if job is None:
            return
        self.merges_started += 1
        self._merge_built = threading.Event()
        self._merge_thread = threading.Thread(target=self._build_merge, args=(job, self._merge_built), daemon=False,
                                              name=f"reid-engine-merge-{self.generation}")
        self._merge_thread.start()

    def _build_merge(self, job: Any, built: threading.Event) -> None:
        """Background thread: build the merge without the write lock, then commit it, unless a commit of this
        process takes it first (or another process holds the lock: then the next commit here applies it)."""
        t0 = time.perf_counter()
        try:
            self.backend.build_merge(job, threads=MERGE_THREADS)
        except Exception as exc:  # a merge is an optimisation: the committed state stays as it is
            log.warning("%s: background merge failed, the index is unchanged: %s", self.folder, exc)
            built.set()
            return
        seconds = time.perf_counter() - t0
        self.last_merge = {"build_s": round(seconds, 2), "applied": False}
        log.info("%s: merge built in the background in %.1f s", self.folder, seconds)
        self._merge_ready = job
        built.set()
        # a thread of this process that holds the writer lock may be waiting for this merge: never block on it
        while self._merge_ready is job:
            if not self._writer.acquire(timeout=0.2):
                continue
            try:
                if self._merge_ready is job:
                    with self.writing():
                        self._apply_ready_merge()
            except Exception as exc:
                log.info("%s: built merge left for the next commit (%s)", self.folder, exc)
                return
            finally:
                self._writer.release()

    def _apply_ready_merge(self) -> bool:
        """Commit a built background merge as its own generation (under the write lock); True when one was."""
        job, self._merge_ready = self._merge_ready, None
        if job is None:
            return False
        new_gen = self.generation + 1
        backend_state = self.backend.apply_merge(job, new_gen)
        if backend_state is None:
            return False
        state = {"backend": backend_state, "hooks": self.committed["hooks"]}
        try:
            self._commit_sql(new_gen, state, lambda conn: None)
        except BaseException:
            self.backend.discard(backend_state)
            raise
        self._retire(self.committed, state)
        self._load(new_gen, state)
        if self.last_merge is not None:
            self.last_merge["applied"] = True
        return True

    def wait_for_merges(self) -> None:
        """Wait for a background merge and commit it (if it still applies)."""
        thread = self._merge_thread
        if thread is not None and thread is not threading.current_thread():
            self._merge_built.wait()
        if self._merge_ready is not None:
            try:
                with self.writing():
                    self._apply_ready_merge()
            except ReidEngineError as exc:
                job, self._merge_ready = self._merge_ready, None
                if job is not None:
                    self.backend.abandon_merge(job)
                log.warning("%s: a built merge was dropped: %s", self.folder, exc)
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # it only has to notice that its merge was taken

    def _maybe_compact(self, force: bool, backend: bool = True) -> bool:
        new_gen = self.generation + 1
        backend_state = self.backend.compact(new_gen, force=force) if backend else None
        hook_states = dict(self.committed["hooks"])
        for name, hook in self._hook_objects.items():
            st = hook_states.get(name) or hook.empty_state()
            if force or len(hook.files(st)) > HOOK_FOLD_FILES:
                hook_states[name] = hook.compact(self.folder, new_gen, st, self)
        if backend_state is None and hook_states == self.committed["hooks"]:
            return False
        state = {
            "backend": backend_state if backend_state is not None else self.committed["backend"], "hooks": hook_states
        }
        try:
            with self.sql.begin() as conn:
                db.set_meta(conn, "generation", str(new_gen))
                db.set_meta(conn, "state", json.dumps(state))
        except BaseException:
            if backend_state is not None:
                self.backend.discard(backend_state)
            raise
        self._retire(self.committed, state)
        self._load(new_gen, state)
        return True

    def compact(self) -> dict[str, Any]:
        """Merge segments and drop removed vectors now; returns ``describe()`` after."""
        self.wait_for_merges()
        with self.writing():
            self._maybe_compact(force=True)
            self.backend.cleanup(self.committed["backend"], grace_seconds=60.0)
        return self.backend.describe()

    def add(
        self,
        feats: np.ndarray,
        rows: Sequence[dict[str, Any]],
        sql_hook: Optional[SqlHook] = None,
    ) -> list[int]:
        """Add L2-normalised vectors with their rows; returns the new ids.

        At most ``MAX_COMMIT_ROWS`` rows go in one commit; a larger add is several commits, so a
        crash keeps the blocks committed before it.
        ``sql_hook(conn, ids, rows, feats)`` runs inside the same transaction, so
        tables kept beside the crops (tracks, ingest progress) commit with them.
        """
        feats = self._checked(feats, "features")
        if len(rows) != len(feats):
            raise InvalidInputError(f"{len(feats)} vectors but {len(rows)} metadata rows")
        if not len(rows):
            return []
        if len(rows) > MAX_COMMIT_ROWS:  # index-time work per commit grows faster than its size
            with self.writing():
                bulk, self._bulk = self._bulk, True
                try:
                    return [i for b in range(0, len(rows), MAX_COMMIT_ROWS)
                            for i in self.add(feats[b : b + MAX_COMMIT_ROWS], rows[b : b + MAX_COMMIT_ROWS], sql_hook)]
                finally:
                    self._bulk = bulk
        with self.writing():
            with self.sql.connect() as conn:
                # ids are never reused: a removed id may still be a tombstone in the backend
                start = max(db.next_id(conn), int(db.get_meta(conn, "next_id") or 0))
            ids = list(range(start, start + len(rows)))
            full = [{**r, "id": i} for r, i in zip(rows, ids)]
            changes = Changes(
                add_ids=np.asarray(ids, np.int64), add_vectors=feats, add_fields=fields_of(full),
            )

            def sql_work(conn: Connection) -> None:
                try:
                    db.insert_rows(conn, full)
                except sa.exc.IntegrityError as exc:  # the transaction is void: named after its rollback
                    raise _RowsRefused(db.short_error(exc)) from None
                db.set_meta(conn, "next_id", str(ids[-1] + 1))
                if sql_hook is not None:
                    sql_hook(conn, ids, rows, feats)

            try:
                self._commit(changes, sql_work)
            except _RowsRefused as refused:
                known = self.rows_by_hash([r["sha256"] for r in rows])
                first = next((r for r in rows if r["sha256"] in known), None)
                if first is not None:
                    raise InvalidInputError(
                        f"{first['path']}: already indexed (crop {known[first['sha256']]['id']}); "
                        "nothing of its block of the call was added") from None
                raise InvalidInputError(f"the crops' rows break a rule of the database ({refused})") from None
        return ids

    def remove(self, where: Optional[sa.ColumnElement[bool]]) -> int:
        """Remove the crops matching a filter clause; returns how many went."""
        if where is None:
            raise InvalidInputError("remove needs a filter (ids, cameras or sources)")
        with self.writing():
            with self.sql.connect() as conn:
                ids = db.select_ids(conn, where)
            if not ids:
                return 0
            self._commit(Changes(remove_ids=np.asarray(ids, np.int64)), lambda conn: db.delete_ids(conn, ids))
        return len(ids)

    def set_manifest(self, **changes: Any) -> None:
        """Change static manifest facts (e.g. search defaults) under the write lock."""
        with self.writing():
            for k, v in changes.items():
                setattr(self.manifest, k, v)
            self.manifest.updated_at = time.time()
            write_manifest(self.folder, self.manifest)

    # -- reading (also the rerank.base.GalleryView protocol) -----------------------------
    @property
    def count(self) -> int:
        return int(self.backend.count)

    def search_params(self, params: Optional[SearchParams | dict[str, Any]] = None) -> SearchParams:
        """Per-query parameters over the manifest's defaults."""
        p = params if isinstance(params, SearchParams) else SearchParams.from_dict(params)
        return p.merged(self.manifest.search)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: Optional[SearchFilter] = None,
        params: Optional[SearchParams] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, ids) through the vector backend; missing results are id -1."""
        k = max(1, min(int(k), max(1, self.count)))
        return self.backend.search(np.asarray(queries, np.float32), k, where, self.search_params(params))

    def contains(self, ids: IdsLike) -> np.ndarray:
        """Which ids are crops of the loaded generation (a bool mask)."""
        return np.asarray(self.backend.contains(ids), bool)

    def vectors(self, ids: IdsLike) -> np.ndarray:
        return self.backend.reconstruct(ids)

    def fields(self, ids: IdsLike) -> dict[str, np.ndarray]:
        """Camera, time, source and track of crops: from the backend when it keeps them, else from SQL."""
        kept = self.backend.stored_fields(ids)
        if kept is not None:
            return kept
        rows = self.rows(ids)
        missing = [int(i) for i in ids if int(i) not in rows]
        if missing:
            raise InvalidInputError(f"no crops with ids {missing[:5]}")
        return fields_of([rows[int(i)] for i in ids])

    def state(self, hook: str) -> Any:
        """The loaded state of an index-time hook for the current generation (None if not kept)."""
        obj = self._hook_objects.get(hook)
        if obj is None:
            return None
        cached = self._hook_cache.get(hook)
        if cached is None or cached[0] != self.generation:
            cached = (self.generation, obj.load(self.folder, self.committed["hooks"].get(hook) or obj.empty_state()))
            self._hook_cache[hook] = cached
        return cached[1]

    def knn(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k (similarities, row numbers) of given vectors, through the backend's exact search."""
        return self.backend.knn(np.asarray(queries, np.float32), np.asarray(rows, np.float32), int(k))

    def track_members(self, tracks: Sequence[str]) -> dict[str, np.ndarray]:
        """Live crop ids of each named track: from the backend when it keeps tracks, else from SQL."""
        out: dict[str, list[int]] = {str(t): [] for t in tracks}
        if not out:
            return {}
        kept = self.backend.track_members(list(out))
        if kept is not None:
            return kept
        with self.sql.connect() as conn:
            for part in db.chunks(list(out), 500):
                stmt = sa.select(db.crops.c.track, db.crops.c.id).where(db.crops.c.track.in_(part))
                for t, i in conn.execute(stmt):
                    out[str(t)].append(int(i))
        return {t: np.asarray(sorted(v), np.int64) for t, v in out.items()}

    def known_hashes(self, hashes: Sequence[str]) -> set[str]:
        with self.sql.connect() as conn:
            return db.known_sha256(conn, hashes)

    def ids_where(self, where: Optional[sa.ColumnElement[bool]]) -> np.ndarray:
        with self.sql.connect() as conn:
            return np.asarray(db.select_ids(conn, where), dtype=np.int64)

    def rows(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        with self.sql.connect() as conn:
            return db.fetch_rows(conn, ids)

    def rows_by_hash(self, hashes: Sequence[str]) -> dict[str, dict[str, Any]]:
        with self.sql.connect() as conn:
            out: dict[str, dict[str, Any]] = {}
            for part in db.chunks(list(hashes), 500):
                stmt = sa.select(db.crops).where(db.crops.c.sha256.in_(part))
                for row in conn.execute(stmt).mappings():
                    out[row["sha256"]] = dict(row)
            return out

    def stats(self) -> dict[str, Any]:
        with self.sql.connect() as conn:
            cams = conn.execute(
                sa.select(db.crops.c.camera, sa.func.count()).group_by(db.crops.c.camera).order_by(db.crops.c.camera)
            ).all()
            tmin, tmax = conn.execute(
                sa.select(sa.func.min(db.crops.c.timestamp), sa.func.max(db.crops.c.timestamp))
            ).one()
            n_pids = len(db.distinct_values(conn, "pid"))
            n_tracks = len(db.distinct_values(conn, "track"))
            n_sources = len(db.distinct_values(conn, "source"))
        size = folder_bytes(self.folder)
        return {
            "path": str(self.folder),
            "crops": self.count,
            "tracks": n_tracks,
            "sources": n_sources,
            "identities": n_pids,
            "cameras": {("" if c is None else str(c)): int(n) for c, n in cams},
            "time_range": [tmin, tmax],
            "encoder": self.manifest.encoder.get("name"),
            "runtime": self.manifest.encoder.get("runtime"),
            "weights_sha256": self.manifest.encoder.get("weights_sha256"),
            "dim": self.manifest.dim,
            "factory": self.manifest.factory,
            "backend": self.backend.describe(),
            "hooks": list(self.manifest.hooks),
            "search": dict(self.manifest.search),
            "db_url": self.manifest.db_url,
            "generation": self.generation,
            "bytes_on_disk": size,
        }

    def close(self) -> None:
        self.wait_for_merges()
        self.lock.release()
        self.backend.close()
        self.sql.dispose()
