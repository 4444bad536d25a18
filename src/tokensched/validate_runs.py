"""Ground-truth runs: find them, rebuild the traffic the real server saw, and replay it in the simulator.

A ground-truth directory (``../shared/groundtruth/vllm-h100``) holds, per run ``<run>``::

    workloads/<run>.json                    arrivals, prompt and output token counts, has_error (replay format)
    server_configs/<run>/exp-config.yaml    the vLLM launch settings (model, TP, max_num_seqs, budget, max len)
    server_configs/<run>/workload-profile.json   the inference-perf data generator spec
    measured/<run>_ground_truth.json        per-request client-side ttft_s / e2e_s (optional)
    model_configs/<Model>/config.json       the model's Hugging Face config

Why the traffic has to be *rebuilt* and not just read, and how (each point is measured on the data; see the
"Validation" section of docs/timing.md):

* **Prompts repeat.** inference-perf's ``shared_prefix`` generator pre-builds ``num_groups x
  num_prompts_per_group`` prompts (a group's random system prompt, a space, a random question) and request
  ``i`` sends prompt ``i mod N``. The profiles name the group keys ``num_unique_system_prompts`` /
  ``num_users_per_system_prompt``, which inference-perf's config model does not know and ignores, so the
  defaults 10 x 10 applied (the runs' resolved ``results/config.yaml`` in the source repository say so, and
  ``enable_multi_turn_chat`` is absent there too: single-turn). The data agree: in every run the prompt
  length of request ``i`` equals that of request ``i + 100`` in 98-99.7 % of rows, the rest being adjacent
  pairs sent in swapped order. So vLLM's prefix cache saw each prompt again 100 requests later.
* **Outputs are the nominal length.** Requests were sent with ``max_tokens = output_len`` and ``ignore_eos``;
  the workload's ``output_tokens`` is the client's re-tokenised count of the streamed text (240-261 for 247,
  sometimes 0). Decode time is uncorrelated with that count (slope < 0.001 s/token against 0.008-0.017 s of
  TPOT), so every request is replayed with ``output_len`` tokens.
* **Failed requests loaded the server.** The ``reasoning`` runs' failures are client timeouts (e2e 300-301 s:
  aiohttp's default 300 s total timeout; the client then disconnects and vLLM aborts the request). Their rows
  carry 0 tokens; they are replayed with their slot's prompt length and aborted at ``arrival + 300 s``
  (see :func:`tokensched.validate.simulate_replay`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tokensched.errors import UserError
from tokensched.request import Request

PrefixMode = Literal["reconstructed", "system-only", "none"]
PREFIX_MODES: tuple[str, ...] = ("reconstructed", "system-only", "none")
OutputMode = Literal["nominal", "counted"]
HASH_BLOCK = 16  # tokens per chained hash (vLLM's block size in every run)
CLIENT_TIMEOUT_S = 300.0  # aiohttp's default total timeout; the failed requests' e2e is 300.0-301.0 s
# inference-perf SharedPrefix defaults, used when the profile's group keys are not inference-perf's own
IPERF_DEFAULT_GROUPS, IPERF_DEFAULT_PROMPTS_PER_GROUP = 10, 10


@dataclass(frozen=True)
class RunFiles:
    """The files of one ground-truth run (``measured`` is None when no latencies were published)."""

    name: str
    workload: Path
    exp_config: Path
    profile: Path
    model_config: Path
    measured: Path | None

    @property
    def profile_name(self) -> str:
        """The traffic profile: the run name's last dash-separated word (general, codegen, roleplay, reasoning)."""
        return self.name.rsplit("-", 1)[-1]


def discover_runs(root: str | Path, pattern: str = "*") -> list[RunFiles]:
    """Every run under ``root`` whose name matches the glob ``pattern``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise UserError("ground-truth directory not found (pass --groundtruth DIR)", where=str(root))
    wdir = root / "workloads"
    if not wdir.is_dir():
        raise UserError("no workloads/ folder: not a ground-truth directory", where=str(root))
    runs = []
    for wf in sorted(wdir.glob("*.json")):
        name = wf.stem
        if not fnmatch.fnmatchcase(name, pattern):
            continue
        sdir = root / "server_configs" / name
        exp, prof = sdir / "exp-config.yaml", sdir / "workload-profile.json"
        for p in (exp, prof):
            if not p.is_file():
                raise UserError(f"run {name}: missing {p.name}", where=str(sdir))
        model_id = _read_exp_config(exp).get("model")
        if not isinstance(model_id, str) or not model_id:
            raise UserError("field 'model': expected a Hugging Face model id", where=str(exp))
        mc = root / "model_configs" / model_id.rsplit("/", 1)[-1] / "config.json"
        if not mc.is_file():
            raise UserError(f"run {name}: no model config for {model_id}", where=str(mc))
        meas = root / "measured" / f"{name}_ground_truth.json"
        runs.append(RunFiles(name, wf, exp, prof, mc, meas if meas.is_file() else None))
    if not runs:
        raise UserError(f"no run matches {pattern!r}", where=str(wdir))
    return runs


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"invalid JSON: {e.msg}", where=f"{path}:{e.lineno}") from None
    except OSError as e:
        raise UserError(f"cannot read file: {e.strerror}", where=str(path)) from None


def _read_exp_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"cannot read server config: {e}", where=str(path)) from None
    if not isinstance(data, dict):
        raise UserError("expected a mapping of vLLM settings", where=str(path))
    return data


# ----------------------------------------------------------------------------- the prompt generator


@dataclass(frozen=True)
class PromptLayout:
    """What inference-perf's shared_prefix generator effectively built for a run."""

    num_groups: int
    prompts_per_group: int
    system_prompt_len: int  # in generator tokens (random ids, decoded to text)
    question_len: int
    output_len: int  # max_tokens of every request (ignore_eos)
    notes: tuple[str, ...] = ()

    @property
    def num_prompts(self) -> int:
        return self.num_groups * self.prompts_per_group


def resolve_layout(profile: dict[str, Any], where: str) -> PromptLayout:
    """The generator settings inference-perf actually applied to this profile (see the module docstring)."""
    data = profile.get("data") if isinstance(profile, dict) else None
    sp = data.get("shared_prefix") if isinstance(data, dict) else None
    if not isinstance(sp, dict) or data.get("type") != "shared_prefix":  # type: ignore[union-attr]
        raise UserError("expected data.type 'shared_prefix' with a data.shared_prefix object", where=where)

    def num(key: str, default: int | None = None) -> int:
        v = sp.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserError(f"field 'data.shared_prefix.{key}': expected a non-negative integer, got {v!r}",
                            where=where)
        return v

    notes = []
    if "num_groups" in sp or "num_prompts_per_group" in sp:
        groups, per = num("num_groups", IPERF_DEFAULT_GROUPS), num("num_prompts_per_group", IPERF_DEFAULT_PROMPTS_PER_GROUP)
    else:
        groups, per = IPERF_DEFAULT_GROUPS, IPERF_DEFAULT_PROMPTS_PER_GROUP
        if "num_unique_system_prompts" in sp or "num_users_per_system_prompt" in sp:
            notes.append(f"profile asks for {sp.get('num_unique_system_prompts')} system prompts x "
                         f"{sp.get('num_users_per_system_prompt')} users, keys inference-perf ignores: its "
                         f"defaults {groups} x {per} applied")
    if sp.get("enable_multi_turn_chat"):
        notes.append("enable_multi_turn_chat is not an option of the inference-perf that ran: single-turn prompts")
    out = num("output_len")
    if groups * per < 1 or out < 1:
        raise UserError("shared_prefix needs at least one prompt and output_len >= 1", where=where)
    return PromptLayout(groups, per, num("system_prompt_len", 100), num("question_len", 50), out, tuple(notes))


def assign_slots(lengths: list[int], num_prompts: int) -> tuple[list[int], list[int]]:
    """Prompt slot of each request and the prompt length of each slot.

    Request ``i`` used prompt ``i mod num_prompts``, except that neighbours were sometimes sent in swapped
    order: a row whose length differs from its slot's usual length but equals an adjacent slot's is moved
    there. ``lengths`` are the rows' prompt lengths (0 = unknown, e.g. a failed request); a slot's length is
    the most common known length in it (ties: the smallest), or the median of all known lengths if it has none.
    """
    n = num_prompts
    slots = [i % n for i in range(len(lengths))]
    counts: list[Counter[int]] = [Counter() for _ in range(n)]
    for i, x in enumerate(lengths):
        if x > 0:
            counts[slots[i]][x] += 1
    known = sorted(x for x in lengths if x > 0)
    fallback = known[len(known) // 2] if known else 0
    canon = [min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] if c else fallback for c in counts]
    for i, x in enumerate(lengths):
        s = slots[i]
        if x > 0 and x != canon[s]:
            for d in (-1, 1):
                if canon[(s + d) % n] == x:
                    slots[i] = (s + d) % n
                    break
    return slots, canon


def period_agreement(lengths: list[int], period: int) -> float | None:
    """Fraction of rows whose known prompt length equals the one ``period`` rows later (None: too few)."""
    pairs = [(a, b) for a, b in zip(lengths, lengths[period:]) if a > 0 and b > 0]
    return sum(a == b for a, b in pairs) / len(pairs) if len(pairs) >= 10 else None


def chain_hashes(labels: list[tuple[object, ...]]) -> tuple[int, ...]:
    """Chained 63-bit hashes: hash ``i`` names block ``i`` and, through ``prev``, every block before it."""
    out: list[int] = []
    prev = 0
    for lab in labels:
        d = hashlib.blake2b(repr((prev, *lab)).encode(), digest_size=8).digest()
        prev = int.from_bytes(d, "big") >> 1
        out.append(prev)
    return tuple(out)


def slot_hashes(slot: int, prompt_tokens: int, layout: PromptLayout, system_tokens: int,
                mode: PrefixMode, request_id: str = "") -> tuple[int, ...]:
    """Block hashes of one request: its group's system-prompt blocks, then the blocks after them.

    ``mode`` "reconstructed": requests of the same slot share every block (they sent the same text);
    "system-only": only the group's full system-prompt blocks are shared, the rest is unique to
    ``request_id`` (as if every question were new); "none": no hashes at all. Which group a slot belongs to
    is not recorded anywhere (inference-perf may shuffle its prompts); group-major order is assumed, which
    only matters for a slot's first request and for requests whose prompt was evicted.
    """
    if mode == "none":
        return ()
    nblocks = -(-prompt_tokens // HASH_BLOCK)
    group = slot // layout.prompts_per_group
    nsys = min(system_tokens // HASH_BLOCK, nblocks)
    owner: tuple[object, ...] = ("prompt", slot) if mode == "reconstructed" else ("request", request_id)
    labels: list[tuple[object, ...]] = [("system", group, b) for b in range(nsys)]
    labels += [(*owner, b) for b in range(nsys, nblocks)]
    return chain_hashes(labels)


# ----------------------------------------------------------------------------- the replayed traffic


@dataclass
class Replay:
    """One run's traffic rebuilt for the simulator, with what the measurement says about each request."""

    run: RunFiles
    layout: PromptLayout
    requests: list[Request]  # sorted by arrival; ids are the workload's ``index``
    server: dict[str, Any]  # tp, max_num_seqs, max_batched_tokens, kv_blocks, block_size, max_model_len
    failed: set[str] = field(default_factory=set)  # ids that failed (timed out) in the real run
    notes: list[str] = field(default_factory=list)


def build_replay(run: RunFiles, *, prefix: PrefixMode = "reconstructed", outputs: OutputMode = "nominal") -> Replay:
    """Rebuild ``run``'s requests (every row, failed ones included) with prompt slots and prefix hashes."""
    from tokensched.workload import load_trace

    if prefix not in PREFIX_MODES:
        raise UserError(f"unknown prefix mode {prefix!r}; choose one of: {', '.join(PREFIX_MODES)}")
    w = load_trace(run.workload, fmt="replay")  # validates every row; it drops 0-token rows, so re-read them
    rows = _read_json(run.workload)["requests"]
    hints = w.engine_hints
    exp = _read_exp_config(run.exp_config)
    layout = resolve_layout(_read_json(run.profile), str(run.profile))
    lengths = [int(r["input_tokens"]) for r in rows]
    slots, canon = assign_slots(lengths, layout.num_prompts)
    agree = period_agreement(lengths, layout.num_prompts)
    notes = list(layout.notes)
    if agree is not None:
        notes.append(f"prompt lengths repeat every {layout.num_prompts} requests in {agree:.1%} of rows")
    known = sorted(x for x in lengths if x > 0)
    med = known[len(known) // 2] if known else 1
    # Tokens the shared system prompt takes in the served prompt: BOS + its share of the re-tokenised text.
    ratio = (med - 1) / max(1, layout.system_prompt_len + layout.question_len)
    system_tokens = 1 + round(layout.system_prompt_len * ratio)
    reqs: list[Request] = []
    failed: set[str] = set()
    filled = recount = 0
    for i, r in enumerate(rows):
        rid = str(r.get("index", i))
        has_error = bool(r.get("has_error", False))
        prompt = lengths[i] if lengths[i] > 0 else canon[slots[i]]
        filled += lengths[i] == 0
        counted = int(r["output_tokens"])
        out = layout.output_len if outputs == "nominal" or counted == 0 else counted
        recount += outputs == "nominal" and counted != out
        if prompt < 1:
            continue  # no prompt length known anywhere in the run (cannot happen with real data)
        if has_error:
            failed.add(rid)
        reqs.append(Request(rid, float(r["arrival_time_us"]) / 1e6, prompt, out,
                            block_hashes=slot_hashes(slots[i], prompt, layout, system_tokens, prefix, rid),
                            hash_block_size=HASH_BLOCK, extra={"has_error": has_error, "slot": slots[i]}))
    reqs.sort(key=lambda q: q.arrival_s)  # stable: the loader's order for equal arrivals
    if filled:
        notes.append(f"{filled} rows without a prompt length (failed requests) get their slot's length")
    if recount:
        notes.append(f"every request decodes output_len = {layout.output_len} tokens (max_tokens, ignore_eos); "
                     f"{recount} rows counted otherwise by the client")
    if prefix != "none":
        notes.append(f"prefix: {prefix}; {layout.num_groups} system prompts of ~{system_tokens} served tokens "
                     f"({system_tokens // HASH_BLOCK} full blocks)")
    server = {
        "tp": int(exp.get("tensor_parallelism", hints.get("tensor_parallelism", 1))),
        "max_num_seqs": int(exp.get("max_num_seqs", hints.get("max_num_seqs", 256))),
        "max_batched_tokens": int(exp.get("max_num_batched_tokens", hints.get("max_num_batched_tokens", 2048))),
        "max_model_len": int(exp["max_model_len"]) if "max_model_len" in exp else None,
        "kv_blocks": hints.get("kv_blocks"),
        "block_size": int(hints.get("block_size", HASH_BLOCK)),  # type: ignore[call-overload]
    }
    return Replay(run, layout, reqs, server, failed, notes)


def load_measured(path: Path) -> dict[str, tuple[bool, float | None, float | None]]:
    """``{id: (has_error, ttft_s, e2e_s)}`` from a ``measured/<run>_ground_truth.json`` file."""
    doc = _read_json(path)
    if not isinstance(doc, list):
        raise UserError("expected a JSON list of per-request records", where=str(path))
    out: dict[str, tuple[bool, float | None, float | None]] = {}
    for k, r in enumerate(doc):
        if not isinstance(r, dict) or "index" not in r:
            raise UserError("expected an object with 'index'", where=f"{path}:[{k}]")
        err = bool(r.get("has_error", False))
        vals = []
        for key in ("ttft_s", "e2e_s"):
            v = r.get(key)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            if not err and not ok:
                raise UserError(f"field {key!r}: expected a non-negative number, got {v!r}", where=f"{path}:[{k}]")
            vals.append(float(v) if ok else None)  # type: ignore[arg-type]
        out[str(r["index"])] = (err, vals[0], vals[1])
    return out
