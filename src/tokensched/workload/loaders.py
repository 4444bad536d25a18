"""Load real serving traces into :class:`Workload` objects.

The format is recognised from the file's content (CSV header or first JSON object), because trace files
are routinely renamed. Every problem with the data becomes a one-line :class:`UserError` naming the file,
the line and the column; rows that cannot be served (0 prompt or 0 output tokens, e.g. failed requests in
BurstGPT) are skipped and counted in ``Workload.notes``, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterator
from datetime import date
from functools import partial
from operator import attrgetter
from pathlib import Path

from tokensched.errors import UserError
from tokensched.request import Request
from tokensched.workload.base import Workload

TRACE_FORMATS: dict[str, str] = {
    "azure": "Azure LLM inference 2023 CSV: TIMESTAMP,ContextTokens,GeneratedTokens",
    "burstgpt": "BurstGPT CSV: Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type[,Session ID,...]",
    "mooncake": "Mooncake JSONL: timestamp (ms), input_length, output_length, hash_ids (512-token blocks)",
    "replay": "inference-sim replay JSON: config, model_config, requests[{arrival_time_us, input_tokens, ...}]",
    "lengths": "length table without timestamps: num_prefill_tokens,num_decode_tokens[,...] (offline batch)",
    "vidur": "Vidur trace CSV: arrived_at,num_prefill_tokens,num_decode_tokens",
    "native": "tokensched JSONL: arrival_s, prompt_tokens, output_tokens[, id, block_hashes, tenant, ...]",
}

NATIVE_KEYS = (
    "id", "arrival_s", "prompt_tokens", "output_tokens", "block_hashes", "hash_block_size",
    "tenant", "priority", "slo_ttft_s", "slo_tpot_s", "session_id", "extra",
)
MOONCAKE_BLOCK = 512


def _supported() -> str:
    return ", ".join(TRACE_FORMATS)


# ----------------------------------------------------------------------------- value parsing


def _int_str(s: str, col: str, where: str) -> int:
    """A non-negative integer from a CSV cell; '12.0' is accepted because some tables write floats."""
    try:
        v = int(s)
    except ValueError:
        try:
            f = float(s)
        except ValueError:
            f = math.nan
        if not f.is_integer():
            raise UserError(f"column {col!r}: expected a non-negative integer, got {s!r}", where=where) from None
        v = int(f)
    if v < 0:
        raise UserError(f"column {col!r}: expected a non-negative integer, got {s!r}", where=where)
    return v


def _time_str(s: str, col: str, where: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    if not (v >= 0 and math.isfinite(v)):
        raise UserError(f"column {col!r}: expected a non-negative time in seconds, got {s!r}", where=where)
    return v


def _int_json(v: object, key: str, where: str, *, minimum: int = 0) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        kind = "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}"
        raise UserError(f"field {key!r}: expected {kind}, got {v!r}", where=where)
    return v


def _num_json(v: object, key: str, where: str, *, positive: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (positive and v == 0):  # type: ignore[operator]
        kind = "a positive number" if positive else "a non-negative number"
        raise UserError(f"field {key!r}: expected {kind}, got {v!r}", where=where)
    return float(v)  # type: ignore[arg-type]


def _hashes_json(v: object, key: str, prompt: int, block: int, where: str, *, strict: bool = False) -> tuple[int, ...]:
    """Chained block hashes: a list of ints, exactly one per ``block`` prompt tokens (last may be partial)."""
    if not isinstance(v, list) or not all(type(h) is int for h in v):
        raise UserError(f"field {key!r}: expected a list of integers", where=where)
    want = -(-prompt // block)
    if (v or strict) and len(v) != want:
        raise UserError(
            f"field {key!r}: expected ceil({prompt}/{block}) = {want} hashes, got {len(v)}", where=where
        )
    return tuple(v)


_DAYS: dict[str, int] = {}


def _datetime(s: str, where: str) -> tuple[int, float]:
    """'2023-11-16 18:15:46.6805900' -> (day ordinal, seconds of day); hand-parsed since strptime is slow
    and rejects 7 fractional digits. Day and second are kept apart so that differences stay exact."""
    try:
        if len(s) < 19 or s[4] != "-" or s[7] != "-" or s[10] not in " T" or s[13] != ":" or s[16] != ":":
            raise ValueError
        key = s[:10]
        day = _DAYS.get(key)
        if day is None:
            day = _DAYS[key] = date(int(s[:4]), int(s[5:7]), int(s[8:10])).toordinal()
        h, m, sec = int(s[11:13]), int(s[14:16]), float(s[17:])
        if not (0 <= h < 24 and 0 <= m < 60 and 0 <= sec < 61):
            raise ValueError
    except ValueError:
        raise UserError(
            f"column 'TIMESTAMP': expected a date-time like '2023-11-16 18:15:46.6805900', got {s!r}", where=where
        ) from None
    return day, h * 3600 + m * 60 + sec


# ----------------------------------------------------------------------------- collecting rows


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


class _Collector:
    """Turns validated rows into Requests, counting (not hiding) the ones that cannot be served."""

    def __init__(self, name: str, output_label: str = "output tokens", prompt_label: str = "prompt tokens"):
        self.name = name
        self.requests: list[Request] = []
        self.notes: list[str] = []
        self.rows = 0
        self.zero_output = 0
        self.zero_prompt = 0
        self.output_label = output_label
        self.prompt_label = prompt_label

    def add(self, rid: str, arrival: float, prompt: int, output: int, **kw: object) -> None:
        self.rows += 1
        if output == 0:
            self.zero_output += 1
        elif prompt == 0:
            self.zero_prompt += 1
        else:
            self.requests.append(Request(rid, arrival, prompt, output, **kw))  # type: ignore[arg-type]

    def finish(self, fmt: str, engine_hints: dict[str, object] | None = None) -> Workload:
        if self.rows == 0:
            raise UserError("no requests in file (only a header or blank lines)", where=self.name)
        notes = [f"loaded {len(self.requests)} requests from {self.rows} rows ({fmt} format)"]
        if self.zero_output:
            notes.append(f"skipped {_rows(self.zero_output)} with 0 {self.output_label}")
        if self.zero_prompt:
            notes.append(f"skipped {_rows(self.zero_prompt)} with 0 {self.prompt_label}")
        if not self.requests:
            raise UserError(f"no usable requests: all {self.rows} rows were skipped ({'; '.join(notes[1:])})",
                            where=self.name)
        reqs = self.requests
        if any(reqs[i].arrival_s > reqs[i + 1].arrival_s for i in range(len(reqs) - 1)):
            reqs.sort(key=attrgetter("arrival_s"))  # stable: ties keep file order
            notes.append("rows were not in arrival order; sorted by arrival time")
        return Workload(reqs, self.name, fmt, notes + self.notes, engine_hints or {})


def _csv(text: str, name: str, required: tuple[str, ...]) -> tuple[dict[str, int], Iterator[tuple[str, list[str]]]]:
    """Header map and an iterator of (where, row); checks required columns and row widths."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    cols = {h: i for i, h in enumerate(header)}
    for col in required:
        if col not in cols:
            raise UserError(f"missing column {col!r} (header has: {', '.join(header)})", where=f"{name}:1")
    width = max(cols[c] for c in required) + 1

    def rows() -> Iterator[tuple[str, list[str]]]:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            where = f"{name}:{reader.line_num}"
            if len(row) < width:
                raise UserError(f"expected {len(header)} columns, got {len(row)}", where=where)
            yield where, row

    return cols, rows()


def _jsonl(text: str, name: str) -> Iterator[tuple[str, dict[str, object]]]:
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{name}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e.msg} at column {e.colno}", where=where) from None
        if not isinstance(obj, dict):
            raise UserError(f"expected a JSON object, got {type(obj).__name__}", where=where)
        yield where, obj


def _require(obj: dict[str, object], keys: tuple[str, ...], where: str) -> None:
    for k in keys:
        if k not in obj:
            raise UserError(f"missing field {k!r}", where=where)


# ----------------------------------------------------------------------------- formats


def _load_azure(text: str, name: str, _doc: object) -> Workload:
    cols, rows = _csv(text, name, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    it, ic, ig = cols["TIMESTAMP"], cols["ContextTokens"], cols["GeneratedTokens"]
    raw = []
    for where, row in rows:
        day, sod = _datetime(row[it].strip(), where)
        raw.append((day, sod, _int_str(row[ic], "ContextTokens", where), _int_str(row[ig], "GeneratedTokens", where)))
    c = _Collector(name, "'GeneratedTokens'", "'ContextTokens'")
    if raw:
        d0, s0 = min((r[0], r[1]) for r in raw)
        for i, (day, sod, p, o) in enumerate(raw):
            c.add(str(i), (day - d0) * 86400 + (sod - s0), p, o)
        c.notes.append("arrival times are relative to the earliest TIMESTAMP")
    return c.finish("azure")


def _load_burstgpt(text: str, name: str, _doc: object) -> Workload:
    cols, rows = _csv(text, name, ("Timestamp", "Request tokens", "Response tokens"))
    it, ip, io_ = cols["Timestamp"], cols["Request tokens"], cols["Response tokens"]
    optional = {"Model": "model", "Log Type": "log_type", "Elapsed time": "elapsed_time"}
    iopt = {key: cols[col] for col, key in optional.items() if col in cols}
    isess = cols.get("Session ID")
    c = _Collector(name, "response tokens (failed requests)", "request tokens")
    for i, (where, row) in enumerate(rows):
        extra: dict[str, object] = {k: row[j].strip() for k, j in iopt.items() if j < len(row)}
        sess = row[isess].strip() if isess is not None and isess < len(row) else ""
        c.add(str(i), _time_str(row[it], "Timestamp", where), _int_str(row[ip], "Request tokens", where),
              _int_str(row[io_], "Response tokens", where), session_id=sess or None, extra=extra)
    return c.finish("burstgpt")


def _load_mooncake(text: str, name: str, _doc: object) -> Workload:
    c = _Collector(name, "output_length", "input_length")
    for i, (where, obj) in enumerate(_jsonl(text, name)):
        _require(obj, ("timestamp", "input_length", "output_length"), where)
        ms = _num_json(obj["timestamp"], "timestamp", where)
        p = _int_json(obj["input_length"], "input_length", where)
        o = _int_json(obj["output_length"], "output_length", where)
        h: tuple[int, ...] = ()
        if "hash_ids" in obj:
            h = _hashes_json(obj["hash_ids"], "hash_ids", p, MOONCAKE_BLOCK, where, strict=True)
        c.add(str(i), ms / 1000.0, p, o, block_hashes=h, hash_block_size=MOONCAKE_BLOCK)
    return c.finish("mooncake")


def _load_replay(text: str, name: str, doc: object) -> Workload:
    if doc is None:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"invalid JSON: {e.msg}", where=f"{name}:{e.lineno}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("requests"), list):
        raise UserError("expected a JSON object with a 'requests' list", where=name)
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise UserError("field 'config': expected an object", where=name)
    rename = {"kv_blocks_total_gpu": "kv_blocks"}
    hints: dict[str, object] = {rename.get(k, k): v for k, v in config.items()}
    if "model_id" in doc:
        hints["model"] = doc["model_id"]
    if isinstance(doc.get("model_config"), dict):
        hints["model_config"] = doc["model_config"]
    c = _Collector(name)
    seen: set[str] = set()
    errors = skipped_errors = 0
    groups = False
    for i, r in enumerate(doc["requests"]):
        where = f"{name}:requests[{i}]"
        if not isinstance(r, dict):
            raise UserError("expected a JSON object", where=where)
        _require(r, ("arrival_time_us", "input_tokens", "output_tokens"), where)
        rid = str(_int_json(r.get("index", i), "index", where))
        if rid in seen:
            raise UserError(f"duplicate index {rid}", where=where)
        seen.add(rid)
        has_error = bool(r.get("has_error", False))
        extra: dict[str, object] = {"has_error": has_error}
        if r.get("prefix_group"):
            extra["prefix_group"] = r["prefix_group"]
            groups = True
        before = len(c.requests)
        c.add(rid, _num_json(r["arrival_time_us"], "arrival_time_us", where) / 1e6,
              _int_json(r["input_tokens"], "input_tokens", where),
              _int_json(r["output_tokens"], "output_tokens", where), extra=extra)
        kept = len(c.requests) > before
        errors += has_error and kept
        skipped_errors += has_error and not kept
    if "experiment" in doc:
        c.notes.append(f"replay of experiment {doc['experiment']} (profile {doc.get('profile', '?')})")
    if skipped_errors:
        c.notes.append(f"{skipped_errors} of the skipped rows failed in the measured run (has_error) and got no "
                       "output: they are not simulated although they loaded the real server")
    if errors:
        c.notes.append(f"{errors} kept requests failed in the measured run (extra['has_error'] = True)")
    if not groups:
        c.notes.append("prefix_group is empty for every request: no prefix-sharing information")
    return c.finish("replay", hints)


def _load_lengths(text: str, name: str, _doc: object, *, timed: bool = False) -> Workload:
    """Length tables; with ``timed`` (the vidur format) an ``arrived_at`` column gives the arrival times."""
    cols, rows = _csv(text, name, ("arrived_at",) * timed + ("num_prefill_tokens", "num_decode_tokens"))
    it, ip, id_ = cols.get("arrived_at", 0), cols["num_prefill_tokens"], cols["num_decode_tokens"]
    c = _Collector(name, "num_decode_tokens", "num_prefill_tokens")
    for i, (where, row) in enumerate(rows):
        c.add(str(i), _time_str(row[it], "arrived_at", where) if timed else 0.0,
              _int_str(row[ip], "num_prefill_tokens", where), _int_str(row[id_], "num_decode_tokens", where))
    if not timed:
        c.notes.append("no timestamps: every request arrives at t=0 (an offline batch); set a rate to make it online")
    return c.finish("vidur" if timed else "lengths")


def _load_native(text: str, name: str, _doc: object) -> Workload:
    c = _Collector(name)
    first_line: dict[str, str] = {}
    for i, (where, obj) in enumerate(_jsonl(text, name)):
        for k in obj:
            if k not in NATIVE_KEYS:
                raise UserError(f"unknown field {k!r} (allowed: {', '.join(NATIVE_KEYS)})", where=where)
        _require(obj, ("arrival_s", "prompt_tokens", "output_tokens"), where)
        rid = obj.get("id", str(i))
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = str(rid)
        if not isinstance(rid, str) or not rid:
            raise UserError(f"field 'id': expected a non-empty string, got {rid!r}", where=where)
        if rid in first_line:
            raise UserError(f"duplicate id {rid!r} (first used at {first_line[rid]})", where=where)
        first_line[rid] = where
        p = _int_json(obj["prompt_tokens"], "prompt_tokens", where)
        kw: dict[str, object] = {}
        hbs = kw["hash_block_size"] = _int_json(obj.get("hash_block_size", 16), "hash_block_size", where, minimum=1)
        if "block_hashes" in obj:
            kw["block_hashes"] = _hashes_json(obj["block_hashes"], "block_hashes", p, hbs, where)
        for key, kind in (("tenant", str), ("session_id", (str, int)), ("extra", dict)):
            v = obj.get(key)
            if v is not None:
                if not isinstance(v, kind) or isinstance(v, bool):
                    raise UserError(f"field {key!r}: expected {'an object' if kind is dict else 'a string'}, "
                                    f"got {v!r}", where=where)
                kw[key] = str(v) if key == "session_id" else v
        if "priority" in obj:
            v = obj["priority"]
            if isinstance(v, bool) or not isinstance(v, int):
                raise UserError(f"field 'priority': expected an integer, got {v!r}", where=where)
            kw["priority"] = v
        for key in ("slo_ttft_s", "slo_tpot_s"):
            if obj.get(key) is not None:
                kw[key] = _num_json(obj[key], key, where, positive=True)
        c.add(rid, _num_json(obj["arrival_s"], "arrival_s", where), p,
              _int_json(obj["output_tokens"], "output_tokens", where), **kw)
    return c.finish("native")


_LOADERS: dict[str, Callable[[str, str, object], Workload]] = {
    "azure": _load_azure, "burstgpt": _load_burstgpt, "mooncake": _load_mooncake, "replay": _load_replay,
    "lengths": _load_lengths, "vidur": partial(_load_lengths, timed=True), "native": _load_native,
}


def _detect(text: str, name: str) -> tuple[str, object]:
    """Recognise the format from the first line (CSV header) or first JSON object."""
    s = text.lstrip()
    first = s.split("\n", 1)[0].strip()
    if s.startswith("{"):
        try:
            obj: object = json.loads(first)
        except json.JSONDecodeError:
            try:  # a multi-line (pretty-printed) JSON document
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise UserError(f"invalid JSON: {e.msg}", where=f"{name}:{e.lineno}") from None
        if isinstance(obj, dict):
            keys = set(obj)
            if "requests" in keys:
                return "replay", obj
            if {"input_length", "output_length"} <= keys:
                return "mooncake", None
            if {"arrival_s", "prompt_tokens"} & keys:
                return "native", None
    elif not s.startswith("["):
        cols = {c.strip() for c in next(csv.reader([first]), [])}
        if {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} <= cols:
            return "azure", None
        if {"Request tokens", "Response tokens"} <= cols:
            return "burstgpt", None
        if {"num_prefill_tokens", "num_decode_tokens"} <= cols:
            return ("vidur" if "arrived_at" in cols else "lengths"), None
    raise UserError(f"unrecognised trace content (first line {first[:60]!r}); supported formats: {_supported()}",
                    where=name)


def load_trace(path: str | Path, *, fmt: str | None = None) -> Workload:
    """Load a trace file; ``fmt`` forces a format instead of detecting it from the content."""
    name = str(path)
    p = Path(path)
    if fmt is not None and fmt not in TRACE_FORMATS:
        raise UserError(f"unknown trace format {fmt!r}; supported formats: {_supported()}")
    if not p.exists():
        raise UserError(f"no such file: {name}")
    if p.is_dir():
        raise UserError(f"{name} is a directory, not a trace file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"not UTF-8 text (byte {e.start}); supported formats: {_supported()}", where=name) from None
    except OSError as e:
        raise UserError(f"cannot read file: {e.strerror}", where=name) from None
    if not text.strip():
        raise UserError("empty file", where=name)
    doc: object = None
    if fmt is None:
        fmt, doc = _detect(text, name)
    return _LOADERS[fmt](text, name, doc)


def write_native(requests: list[Request], path: str | Path) -> None:
    """Write requests as tokensched native JSONL (the inverse of the ``native`` loader)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in requests:
            obj: dict[str, object] = {"id": r.id, "arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens,
                                      "output_tokens": r.output_tokens}
            if r.block_hashes:
                obj["block_hashes"] = list(r.block_hashes)
                obj["hash_block_size"] = r.hash_block_size
            for key in ("tenant", "priority", "slo_ttft_s", "slo_tpot_s", "session_id"):
                v = getattr(r, key)
                if v is not None and v != {"tenant": "default", "priority": 0}.get(key):
                    obj[key] = v
            if r.extra:
                obj["extra"] = r.extra
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")
