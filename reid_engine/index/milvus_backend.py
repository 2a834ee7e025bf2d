"""The Milvus vector backend: vectors and their scalar fields in a Milvus collection.

One collection per index: ``id`` (the SQL row id, primary key), ``vector``
(inner product), the scalar ``FIELDS`` (camera, source, track as VARCHAR,
timestamp as DOUBLE; unknown values are null) and ``generation``, the commit
that inserted the row. Filters run inside Milvus as boolean expressions.

Crash safety without a second commit point: ``prepare`` inserts rows tagged with
the new generation, and every read filters on ``generation <= committed``, so
rows of a commit that died before the SQL transaction stay invisible; the next
``prepare``, ``discard`` or ``cleanup`` deletes them. Removed ids are tombstones
in the state (filtered out of every read) and are deleted from Milvus only by a
later writer, once the removal is committed.

The ``uri`` option is a Milvus Lite file (``*.db``, relative paths resolve in the
index folder; the ``milvus-lite`` package runs the engine in-process) or a server
address such as ``http://HOST:19530`` (``token`` and ``db_name`` options as needed).
"""
from __future__ import annotations

import logging
import math
import secrets
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from pymilvus import DataType, MilvusClient  # ImportError here: backend._load_builtin skips this backend
from pymilvus.exceptions import MilvusException

from ..assets import expand_user
from ..errors import (
    DatabaseUnavailableError,
    IndexCorruptError,
    InvalidInputError,
    UnsupportedOperationError,
)
from .backend import FIELDS, Changes, IdsLike, SearchFilter, SearchParams, VectorBackend, register_backend

log = logging.getLogger(__name__)


class _UnimplementedCalls(logging.Filter):
    """Drops the embedded Milvus Lite server's tracebacks for calls it does not implement.

    The client asks for such calls (``AllocTimestamp`` while it waits for an index) and
    expects the refusal, but the in-process gRPC server logs each one as an error with a traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, NotImplementedError)


def _quiet_embedded_server() -> None:
    server_log = logging.getLogger("grpc._server")
    if not any(isinstance(f, _UnimplementedCalls) for f in server_log.filters):
        server_log.addFilter(_UnimplementedCalls())

#: index types the ``index`` option accepts ("auto" picks FLAT or IVF_FLAT by size)
INDEX_TYPES = ("auto", "FLAT", "IVF_FLAT", "HNSW")
_STRING_FIELDS = ("camera", "source", "track")
_MAX_VARCHAR = 65535
_INSERT_BATCH = 4096  # rows per insert call (keeps gRPC messages well under their limit)
_EXPR_IDS = 8192  # ids per ``id in [...]`` expression
_MAX_TOPK = 16384  # Milvus' limit on k and on queries per call
_MISSING = -np.inf
_TIE_MARGIN = 8


# -- pure helpers (expressions, index choice) -------------------------------------------------
def quote(value: str) -> str:
    """A Milvus expression string literal for ``value`` (double-quoted, backslash-escaped)."""
    text = str(value)
    out = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def _str_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def _int_list(values: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(v)) for v in values) + "]"


def visible_expr(generation: int, tombstones: Sequence[int] = ()) -> str:
    """Rows a state makes visible: committed generations, minus older rows of its tombstoned ids.

    A state's tombstones are the removals of its own commit (earlier ones are deleted
    from Milvus by the next writer), so a row that commit added under a removed id
    (a replacement) stays visible.
    """
    expr = f"generation <= {int(generation)}"
    if len(tombstones):
        expr += f" and not (id in {_int_list(tombstones)} and generation < {int(generation)})"
    return expr


def filter_expr(where: Optional[SearchFilter], ids: Optional[IdsLike] = None) -> str:
    """The boolean expression of a ``SearchFilter`` (without the id allow-list unless ``ids`` is given)."""
    parts: list[str] = []
    if ids is not None:
        parts.append(f"id in {_int_list(ids)}")
    if where is None:
        return " and ".join(parts)
    for name, values in (("camera", where.cameras), ("source", where.sources), ("track", where.tracks)):
        if values is not None:
            parts.append(f"{name} in {_str_list(values)}" if len(values) else "false")
    if where.exclude_cameras:
        parts.append(f"(camera is null or camera not in {_str_list(where.exclude_cameras)})")
    if where.time_from is not None:
        parts.append(f"timestamp >= {float(where.time_from)!r}")
    if where.time_to is not None:
        parts.append(f"timestamp <= {float(where.time_to)!r}")
    return " and ".join(parts)


def choose_index(n: int, kind: str = "auto", exact_threshold: int = 20_000) -> dict[str, Any]:
    """Index type, build and search parameters for ``n`` vectors (like the FAISS backend's choice)."""
    if kind not in INDEX_TYPES:
        raise InvalidInputError(f"Milvus index type {kind!r}: expected one of {', '.join(INDEX_TYPES)}")
    if kind == "auto":
        kind = "FLAT" if n <= exact_threshold else "IVF_FLAT"
    if kind == "FLAT":
        return {"type": "FLAT", "params": {}, "search": {}, "built_for": int(n)}
    if kind == "IVF_FLAT":
        nlist = int(min(65536, max(16, 4 * round(math.sqrt(max(n, 1))))))
        return {"type": "IVF_FLAT", "params": {"nlist": nlist}, "search": {"nprobe": max(8, nlist // 16)},
                "built_for": int(n)}
    return {"type": "HNSW", "params": {"M": 32, "efConstruction": 200}, "search": {"ef_search": 128},
            "built_for": int(n)}


def _needs_rebuild(current: dict[str, Any], n: int, kind: str, exact_threshold: int) -> bool:
    """True when ``n`` vectors call for another index than ``current`` (type change or 4x growth of IVF)."""
    wanted = choose_index(n, kind, exact_threshold)
    if wanted["type"] != current.get("type"):
        return True
    return wanted["type"] == "IVF_FLAT" and n > 4 * max(1, int(current.get("built_for", 0)))


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.ascontiguousarray(x, np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return x / n


def top_k(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of one row of candidates: similarity descending, then id ascending; pads -inf / -1."""
    keep = ids >= 0
    sims, ids = sims[keep], ids[keep]
    order = np.lexsort((ids, -sims))[:k]
    out_s = np.full(k, _MISSING, np.float32)
    out_i = np.full(k, -1, np.int64)
    out_s[: len(order)], out_i[: len(order)] = sims[order], ids[order]
    return out_s, out_i


def _field_value(name: str, value: Any) -> Any:
    if name == "timestamp":
        if value is None:
            return None
        v = float(value)
        return None if math.isnan(v) else v
    if value is None:
        return None
    text = str(value)
    if len(text.encode("utf-8")) > _MAX_VARCHAR:
        raise InvalidInputError(f"{name} value of {len(text)} characters: Milvus stores at most {_MAX_VARCHAR} bytes")
    return text


@register_backend
class MilvusBackend(VectorBackend):
    """Vectors in a Milvus collection (Milvus Lite file or server), generations as a scalar field."""

    name = "milvus"

    def __init__(self, folder: Path, dim: int, options: dict[str, Any]):
        super().__init__(folder, dim, {**self.default_options(dim), **dict(options)})
        if self.options["index"] not in INDEX_TYPES:
            raise InvalidInputError(
                f"Milvus index type {self.options['index']!r}: expected one of {', '.join(INDEX_TYPES)}"
            )
        self._client: Optional[MilvusClient] = None
        self._state: Optional[dict[str, Any]] = None

    @classmethod
    def default_options(cls, dim: int) -> dict[str, Any]:
        return {"uri": "milvus.db", "collection": None, "index": "auto", "exact_threshold": 20_000}

    # -- connection ---------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        """The Milvus address: a server URL, or the absolute path of the Milvus Lite file."""
        text = str(self.options["uri"])
        if "://" in text:
            return text
        p = expand_user(text)
        return str(p if p.is_absolute() else (self.folder / p).resolve())

    @property
    def client(self) -> MilvusClient:
        if self._client is None:
            uri = self.uri
            if "://" not in uri:  # a Milvus Lite file: its server runs in this process
                Path(uri).parent.mkdir(parents=True, exist_ok=True)
                _quiet_embedded_server()
            kwargs = {k: self.options[k] for k in ("token", "db_name") if self.options.get(k)}
            try:
                self._client = MilvusClient(uri=uri, **kwargs)
            except MilvusException as exc:
                raise DatabaseUnavailableError(f"Milvus at {uri}: cannot connect ({exc.message})") from None
            except Exception as exc:  # milvus-lite start-up errors are not MilvusExceptions
                raise DatabaseUnavailableError(f"Milvus at {uri}: cannot connect ({exc})") from None
        return self._client

    @property
    def collection(self) -> str:
        if self._state is not None:
            return str(self._state["collection"])
        if self.options.get("collection"):
            return str(self.options["collection"])
        raise IndexCorruptError(f"{self.folder}: Milvus backend used before a state was loaded")

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client call; Milvus errors become typed errors naming the collection."""
        try:
            return fn(*args, **kwargs)
        except MilvusException as exc:
            raise IndexCorruptError(
                f"Milvus collection {kwargs.get('collection_name', '?')}: {what} failed ({exc.message})"
            ) from None

    # -- lifecycle ------------------------------------------------------------------------------
    def empty_state(self) -> dict[str, Any]:
        name = self.options.get("collection") or f"reid_{uuid.uuid4().hex[:16]}"
        c = self.client
        if c.has_collection(name):
            n = self._raw_count(name)
            if n:
                raise InvalidInputError(f"Milvus collection {name} at {self.uri} already holds {n} vectors")
            c.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        for f in _STRING_FIELDS:
            schema.add_field(f, DataType.VARCHAR, max_length=_MAX_VARCHAR, nullable=True)
        schema.add_field("timestamp", DataType.DOUBLE, nullable=True)
        schema.add_field("generation", DataType.INT64)
        schema.add_field("batch", DataType.INT64)  # random token of the prepare that wrote the row
        schema.add_field("written_at", DataType.DOUBLE)  # epoch seconds, for cleanup's grace period
        index = choose_index(0, self.options["index"], int(self.options["exact_threshold"]))
        self._call("create", c.create_collection, collection_name=name, schema=schema,
                   index_params=self._index_params(index), consistency_level="Strong")
        log.info("created Milvus collection %s at %s", name, self.uri)
        return {
            "collection": name, "generation": 0, "batch": None, "count": 0, "max_id": -1, "tombstones": [],
            "index": index,
        }

    def _index_params(self, index: dict[str, Any]) -> Any:
        ip = self.client.prepare_index_params()
        ip.add_index("vector", index_type=index["type"], metric_type="IP", params=dict(index["params"]))
        return ip

    def load(self, state: dict[str, Any]) -> None:
        name = str(state["collection"])
        c = self.client
        if not c.has_collection(name):
            raise IndexCorruptError(f"{self.folder}: Milvus collection {name} is missing at {self.uri}")
        if self._state is None or self._state["collection"] != name:
            desc = c.describe_collection(name)
            dims = [f.get("params", {}).get("dim") for f in desc["fields"] if f["name"] == "vector"]
            if not dims or int(dims[0]) != self.dim:
                raise IndexCorruptError(
                    f"{self.folder}: Milvus collection {name} holds vectors of dimension {dims[:1]}, "
                    f"expected {self.dim}"
                )
        self._ensure_loaded(name)
        self._state = _copy_state(state)

    def _ensure_loaded(self, name: str) -> None:
        st = self.client.get_load_state(name)
        if "Loaded" not in str(st.get("state")):
            self._call("load", self.client.load_collection, collection_name=name)

    def _committed(self) -> dict[str, Any]:
        if self._state is None:
            raise IndexCorruptError(f"{self.folder}: Milvus backend used before a state was loaded")
        return self._state

    def prepare(self, generation: int, changes: Changes) -> dict[str, Any]:
        st = self._committed()
        gen = int(generation)
        if gen <= int(st["generation"]):
            raise InvalidInputError(f"generation {gen}: expected more than the committed {st['generation']}")
        name = self.collection
        add_ids = np.asarray(changes.add_ids, np.int64).reshape(-1)
        remove_ids = np.unique(np.asarray(changes.remove_ids, np.int64).reshape(-1))
        if len(add_ids):
            if add_ids.min() < 0:
                raise InvalidInputError(f"id {int(add_ids.min())}: ids are SQL row ids, expected >= 0")
            if np.unique(add_ids).size != add_ids.size:
                raise InvalidInputError("changes add the same id twice")
            clash = self.contains(add_ids) & ~np.isin(add_ids, remove_ids)
            if clash.any():
                raise InvalidInputError(f"ids already in the index: {add_ids[clash][:10].tolist()}")
        removed = remove_ids[self.contains(remove_ids)] if len(remove_ids) else remove_ids
        # leftovers of a writer that died before its commit, and committed removals, go first:
        # neither is visible in the committed state, and ids may be reused by this change
        self._purge(st)
        batch = secrets.randbits(62)
        if len(add_ids):
            self._insert(gen, batch, add_ids, changes.add_vectors, changes.add_fields)
        count = int(st["count"]) - len(removed) + len(add_ids)
        index = dict(st["index"])
        kind, threshold = self.options["index"], int(self.options["exact_threshold"])
        if _needs_rebuild(index, count, kind, threshold):
            index = choose_index(count, kind, threshold)
            self._rebuild_index(name, index)
        # durable before the SQL commit, and sealed: Milvus Lite searches unsealed rows far slower
        self._call("flush", self.client.flush, collection_name=name)
        max_id = max(int(st.get("max_id", -1)), int(add_ids.max()) if len(add_ids) else -1)
        return {"collection": name, "generation": gen, "batch": batch, "count": count, "max_id": max_id,
                "tombstones": sorted(int(i) for i in removed), "index": index}

    def _insert(
        self, gen: int, batch: int, ids: np.ndarray, vectors: Optional[np.ndarray], fields: dict[str, np.ndarray]
    ) -> None:
        if vectors is None:
            raise InvalidInputError("changes add ids without vectors")
        vecs = np.asarray(vectors)
        if vecs.ndim != 2 or vecs.shape != (len(ids), self.dim):
            raise InvalidInputError(f"vectors of shape {vecs.shape}: expected ({len(ids)}, {self.dim})")
        if not np.isfinite(vecs).all():
            raise InvalidInputError("vectors contain NaN or infinite values")
        vecs = l2_rows(vecs)
        cols = {f: fields.get(f) for f in FIELDS}
        for f, arr in cols.items():
            if arr is not None and len(arr) != len(ids):
                raise InvalidInputError(f"field {f} has {len(arr)} values for {len(ids)} vectors")
        now = time.time()
        for start in range(0, len(ids), _INSERT_BATCH):
            stop = min(len(ids), start + _INSERT_BATCH)
            rows = []
            for j in range(start, stop):
                row: dict[str, Any] = {"id": int(ids[j]), "vector": vecs[j], "generation": gen, "batch": batch,
                                       "written_at": now}
                for f, arr in cols.items():
                    row[f] = None if arr is None else _field_value(f, arr[j])
                rows.append(row)
            self._call("insert", self.client.insert, collection_name=self.collection, data=rows)

    def _purge(self, st: dict[str, Any]) -> None:
        """Delete what state ``st`` does not show: uncommitted rows and the rows its tombstones hide."""
        gen = int(st["generation"])
        self._delete(f"generation > {gen}")
        tomb = st["tombstones"]
        for i in range(0, len(tomb), _EXPR_IDS):
            self._delete(f"id in {_int_list(tomb[i : i + _EXPR_IDS])} and generation < {gen}")

    def _delete(self, expr: str) -> None:
        self._call("delete", self.client.delete, collection_name=self.collection, filter=expr)

    def _rebuild_index(self, name: str, index: dict[str, Any]) -> None:
        log.info("Milvus collection %s: building a %s index %s", name, index["type"], index["params"])
        c = self.client
        self._call("release", c.release_collection, collection_name=name)
        self._call("drop index", c.drop_index, collection_name=name, index_name="vector")
        self._call("create index", c.create_index, collection_name=name, index_params=self._index_params(index))
        self._call("load", c.load_collection, collection_name=name)

    def discard(self, state: dict[str, Any]) -> None:
        if state.get("batch") is not None and int(state["generation"]) > int(self._committed()["generation"]):
            self._delete(f"batch == {int(state['batch'])} and generation == {int(state['generation'])}")

    def cleanup(self, state: dict[str, Any], grace_seconds: float = 60.0) -> None:
        name = str(state["collection"])
        if self.client.has_collection(name):
            cutoff = time.time() - float(grace_seconds)
            self._call("delete", self.client.delete, collection_name=name,
                       filter=f"generation > {int(state['generation'])} and written_at <= {cutoff!r}")

    def compact(self, generation: int, force: bool = False) -> Optional[dict[str, Any]]:
        st = self._committed()
        kind, threshold = self.options["index"], int(self.options["exact_threshold"])
        rebuild = _needs_rebuild(st["index"], int(st["count"]), kind, threshold)
        if not (force or st["tombstones"] or rebuild):
            return None
        self._purge(st)
        index = dict(st["index"])
        if rebuild:
            index = choose_index(int(st["count"]), kind, threshold)
            self._rebuild_index(self.collection, index)
        self._call("flush", self.client.flush, collection_name=self.collection)
        try:
            self.client.compact(self.collection)
        except (MilvusException, NotImplementedError, AttributeError) as exc:  # Milvus Lite may not compact
            log.debug("Milvus compaction not run: %s", exc)
        return {**_copy_state(st), "generation": int(generation), "batch": None, "tombstones": [], "index": index}

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # closing twice or after the server went away
                pass
            self._client = None

    # -- reading --------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self._committed()["count"])

    def _visible(self) -> str:
        st = self._committed()
        return visible_expr(st["generation"], st["tombstones"])

    def _raw_count(self, name: str) -> int:
        self._ensure_loaded(name)
        res = self.client.query(name, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    def _search_params(self, params: Optional[SearchParams], filtered: bool = False) -> dict[str, Any]:
        index = self._committed()["index"]
        p = (params or SearchParams()).merged(index.get("search", {}))
        kind = index["type"]
        if kind == "FLAT":
            return {"metric_type": "IP", "params": {}}
        if kind == "IVF_FLAT":
            nlist = int(index["params"]["nlist"])
            # a filtered search probes every list, as the FAISS backend does: a selective
            # filter would leave the few probed lists with too few passing rows
            nprobe = nlist if (p.exact or (filtered and p.exact is not False)) else int(p.nprobe or 8)
            return {"metric_type": "IP", "params": {"nprobe": min(nprobe, nlist)}}
        if p.exact:
            raise UnsupportedOperationError(
                "an exact search on a Milvus HNSW index is not possible; use IVF_FLAT or FLAT"
            )
        return {"metric_type": "IP", "params": {"ef": int(p.ef_search or 128)}}

    def search(
        self,
        queries: np.ndarray,
        k: int,
        where: Optional[SearchFilter] = None,
        params: Optional[SearchParams] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInputError(f"queries of shape {q.shape}: expected (N, {self.dim})")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k={k!r}: expected a positive integer")
        k = int(k)
        sims = np.full((len(q), k), _MISSING, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        kk = min(k + _TIE_MARGIN, _MAX_TOPK)  # a few extra so that ties at the k-th place resolve by id
        allow = None if where is None else where.ids
        if not len(q) or self.count == 0 or (allow is not None and not len(allow)):
            return sims, ids
        sp = self._search_params(params, filtered=where is not None and not where.is_empty)
        base = self._visible()
        extra = filter_expr(where)
        chunks: list[Optional[np.ndarray]] = (
            [None] if allow is None else [allow[i : i + _EXPR_IDS] for i in range(0, len(allow), _EXPR_IDS)]
        )
        for chunk in chunks:
            expr = " and ".join(x for x in (base, extra, filter_expr(None, chunk) if chunk is not None else "") if x)
            for qs in range(0, len(q), _MAX_TOPK):
                block = q[qs : qs + _MAX_TOPK]
                res = self._call("search", self.client.search, collection_name=self.collection, data=list(block),
                                 filter=expr, limit=kk, output_fields=["id"], search_params=sp, anns_field="vector")
                for r, hits in enumerate(res):
                    row = qs + r
                    got_s = np.array([h["distance"] for h in hits], np.float32)
                    got_i = np.array([h["id"] for h in hits], np.int64)
                    # merged with the running top-k (several allow-list chunks)
                    sims[row], ids[row] = top_k(np.concatenate([sims[row], got_s]),
                                                np.concatenate([ids[row], got_i]), k)
        return sims, ids

    def _fetch(self, ids: np.ndarray, fields: list[str]) -> dict[int, dict[str, Any]]:
        """Visible rows of ``ids`` by id."""
        out: dict[int, dict[str, Any]] = {}
        base = self._visible()
        for i in range(0, len(ids), _EXPR_IDS):
            chunk = ids[i : i + _EXPR_IDS]
            res = self._call("query", self.client.query, collection_name=self.collection,
                             filter=f"{base} and id in {_int_list(chunk)}", output_fields=["id", *fields])
            for r in res:
                out[int(r["id"])] = r
        return out

    def reconstruct(self, ids: IdsLike) -> np.ndarray:
        want = np.asarray(ids, np.int64).reshape(-1)
        if not len(want):
            return np.zeros((0, self.dim), np.float32)
        rows = self._fetch(np.unique(want), ["vector"])
        missing = [int(i) for i in want if int(i) not in rows]
        if missing:
            raise InvalidInputError(f"ids not in the index: {missing[:5]}{'...' if len(missing) > 5 else ''}")
        return np.stack([np.asarray(rows[int(i)]["vector"], np.float32) for i in want])

    def contains(self, ids: IdsLike) -> np.ndarray:
        want = np.asarray(ids, np.int64).reshape(-1)
        if not len(want):
            return np.zeros(0, bool)
        found = self._fetch(np.unique(want), [])
        return np.array([int(i) in found for i in want], bool)

    def live_ids(self) -> np.ndarray:
        st = self._committed()
        base = self._visible()
        out: list[int] = []
        for lo in range(0, int(st.get("max_id", -1)) + 1, _MAX_TOPK):  # id windows hold at most 16384 rows
            res = self._call("query", self.client.query, collection_name=self.collection,
                             filter=f"{base} and id >= {lo} and id < {lo + _MAX_TOPK}", output_fields=["id"])
            out.extend(int(r["id"]) for r in res)
        return np.unique(np.asarray(out, np.int64))

    def describe(self) -> dict[str, Any]:
        st = self._committed()
        uri = self.uri
        return {
            "backend": self.name,
            "uri": uri if "://" in uri else str(Path(uri)),
            "server": "milvus-lite" if "://" not in uri else "milvus",
            "collection": st["collection"],
            "index_type": st["index"]["type"],
            "index_params": dict(st["index"]["params"]),
            "search_params": dict(st["index"].get("search", {})),
            "vectors": int(st["count"]),
            "tombstones": len(st["tombstones"]),
            "generation": int(st["generation"]),
            "dim": self.dim,
            "bytes_on_disk": _lite_size(uri),
        }


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "collection": str(state["collection"]),
        "generation": int(state["generation"]),
        "batch": None if state.get("batch") is None else int(state["batch"]),
        "count": int(state["count"]),
        "max_id": int(state.get("max_id", -1)),
        "tombstones": [int(i) for i in state.get("tombstones", [])],
        "index": dict(state["index"]),
    }


def _lite_size(uri: str) -> Optional[int]:
    """Bytes of a Milvus Lite file (and its side folder), None for a server."""
    if "://" in uri:
        return None
    total = 0
    for p in sorted(set(Path(uri).parent.glob(Path(uri).name + "*"))):
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total
