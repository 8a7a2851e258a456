"""Workloads: the prompts a run sends, seeded and content-hashed so two runs are comparable.

synthetic (length distributions), shared-prefix (groups sharing a long prefix), multi-turn
(conversations whose history grows with the real replies) and a JSONL file of prompts. A
salt in front of every conversation (its own, unless the workload shares prefixes on purpose)
keeps a warm prefix cache from inflating results."""

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from herd.bench.config import BenchConfigError, Workload
from herd.bench.request import Conversation, RequestInput
from herd.bench.tokenizer import Tokenizer


def sample_lengths(
    rng: np.random.Generator, mean: int, n: int, dist: str, spread: float
) -> list[int]:
    if dist == "uniform":
        lo, hi = max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread)))
        return rng.integers(lo, hi + 1, size=n).tolist()
    if dist == "normal":
        return np.maximum(1, np.rint(rng.normal(mean, spread * mean, size=n))).astype(int).tolist()
    return [mean] * n


SHARED_KINDS = (
    "shared-prefix",
)  # workloads whose prompts share a prefix on purpose: one tag a run


@dataclass
class Dataset:
    """The conversations a run sends, built once from the workload and a seed; `content_hash`
    identifies them across runs. `conversation(i)` cycles through the pool, salting each request
    (each conversation apart; shared-prefix groups with one tag a run, so their sharing stays)
    so that prompts stay distinct when the workload asks for unique prompts."""

    kind: str
    pool: list[Conversation]  # unsalted, in order; cycled (with a new salt) when exhausted
    content_hash: str
    salt: str  # "" when prompts are not made unique

    def conversation(self, index: int) -> Conversation:
        conv = self.pool[index % len(self.pool)]
        cycle = index // len(self.pool)
        if self.salt and self.kind not in SHARED_KINDS:
            # Each conversation gets its own tag, different from its first character, so no two
            # requests share a first KV block (a per-run tag made every prompt share one).
            tag = hashlib.sha256(f"{self.salt}:{index}".encode()).hexdigest()[:8]
        else:
            tag = "-".join(p for p in (self.salt, str(cycle) if cycle else "") if p)
        if not tag:
            return conv
        first = conv.turns[0]
        salted = RequestInput(f"[{tag}] {first.prompt}", first.input_tokens, first.output_tokens)
        return Conversation(f"{conv.conv_id}.{cycle}", (salted, *conv.turns[1:]))

    @property
    def num_requests(self) -> int:
        return sum(len(c.turns) for c in self.pool)

    def describe(self) -> dict:
        inputs = [t.input_tokens for c in self.pool for t in c.turns]
        return {
            "kind": self.kind,
            "conversations": len(self.pool),
            "requests": self.num_requests,
            "mean_input_tokens": float(np.mean(inputs)),
            "content_hash": self.content_hash,
            "salt": self.salt,
        }

    def save(self, path: Path) -> None:
        with path.open("w") as f:
            for conv in self.pool:
                turns = [t.__dict__ for t in conv.turns]
                f.write(json.dumps({"id": conv.conv_id, "turns": turns}) + "\n")


def _hash(kind: str, pool: list[Conversation]) -> str:
    digest = hashlib.sha256(kind.encode())
    for conv in pool:
        for t in conv.turns:
            digest.update(json.dumps([t.prompt, t.input_tokens, t.output_tokens]).encode())
    return "sha256:" + digest.hexdigest()[:16]


def build_dataset(cfg: Workload, tok: Tokenizer, size: int) -> Dataset:
    """`size` conversations (turns for multi-turn count as requests, so fewer conversations)."""
    rng = np.random.default_rng(cfg.seed)
    builders = {
        "synthetic": _synthetic,
        "shared-prefix": _shared_prefix,
        "multi-turn": _multi_turn,
        "jsonl": _jsonl,
    }
    pool = builders[cfg.kind](cfg, tok, rng, max(1, size))
    if not pool:
        raise BenchConfigError(f"the {cfg.kind} workload produced no prompts")
    salt = secrets.token_hex(4) if cfg.unique else ""
    return Dataset(cfg.kind, pool, _hash(cfg.kind, pool), salt)


def _lengths(cfg: Workload, rng, n: int) -> tuple[list[int], list[int]]:
    ins = sample_lengths(rng, cfg.input_len, n, cfg.length_dist, cfg.length_spread)
    outs = sample_lengths(rng, cfg.output_len, n, cfg.length_dist, cfg.length_spread)
    return ins, outs


def _synthetic(cfg: Workload, tok: Tokenizer, rng, n: int) -> list[Conversation]:
    ins, outs = _lengths(cfg, rng, n)
    return [
        Conversation(f"s{i}", (RequestInput(tok.make_text(rng, li), li, lo),))
        for i, (li, lo) in enumerate(zip(ins, outs, strict=True))
    ]


def _shared_prefix(cfg: Workload, tok: Tokenizer, rng, n: int) -> list[Conversation]:
    prefixes = [tok.make_text(rng, cfg.prefix_len) for _ in range(cfg.num_groups)]
    ins, outs = _lengths(cfg, rng, n)
    convs = []
    for i, (li, lo) in enumerate(zip(ins, outs, strict=True)):
        prompt = f"{prefixes[i % cfg.num_groups]}\n{tok.make_text(rng, li)}"
        convs.append(
            Conversation(
                f"g{i % cfg.num_groups}.{i}", (RequestInput(prompt, cfg.prefix_len + li, lo),)
            )
        )
    return convs


def _multi_turn(cfg: Workload, tok: Tokenizer, rng, n: int) -> list[Conversation]:
    convs = []
    for c in range(max(1, -(-n // cfg.turns))):
        ins, outs = _lengths(cfg, rng, cfg.turns)
        turns = tuple(
            RequestInput(tok.make_text(rng, li), li, lo) for li, lo in zip(ins, outs, strict=True)
        )
        convs.append(Conversation(f"c{c}", turns))
    return convs


def _jsonl(cfg: Workload, tok: Tokenizer, rng, n: int) -> list[Conversation]:
    path = Path(cfg.dataset)
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchConfigError(f"cannot read dataset {path}: {exc}") from None
    convs = []
    for i, row in enumerate(lines):
        if "messages" in row:
            texts = [m["content"] for m in row["messages"] if m.get("role") == "user"]
        else:
            texts = [row.get("prompt", "")]
        out = int(row.get("output_len") or row.get("max_tokens") or cfg.output_len)
        turns = tuple(RequestInput(t, tok.count(t), out) for t in texts if t)
        if turns:
            convs.append(Conversation(str(row.get("id", i)), turns))
    return convs
