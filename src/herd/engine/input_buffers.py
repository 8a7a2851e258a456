"""`InputBuffers`: the step's model inputs (token ids, positions, KV slots, context lengths,
block tables) written into one preallocated host buffer and sent to the device in one
asynchronous copy, instead of a `torch.tensor(...)` (a synchronous host-to-device copy on CUDA)
per input per step. The device regions sit at fixed addresses, which CUDA graphs replay from.
"""

from dataclasses import dataclass

import numpy as np
import torch

from herd.engine.attention import AttentionMetadata
from herd.engine.scheduler import ScheduledRequest


@dataclass
class StepInputs:
    """One step's inputs as device tensors (views into `InputBuffers`), the first `num_rows`
    sequences real and any rows after them padding that owns only the scratch block."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slot_mapping: torch.Tensor  # [T]
    seq_lens: torch.Tensor  # [S] context length after the step, per sequence
    decode_table: torch.Tensor | None  # [num_decodes, width], padded with the scratch block
    prefill_tables: list[torch.Tensor]  # per prefill sequence: the blocks its context needs
    query_lens: list[int]
    seq_lens_list: list[int]
    num_decodes: int
    num_rows: int  # real sequences (the rest, up to len(query_lens), are padding)

    def metadata(self) -> AttentionMetadata:
        """The attention metadata of the step, every tensor a view of the buffers."""
        nd = self.num_decodes
        return AttentionMetadata(
            slot_mapping=self.slot_mapping,
            num_decodes=nd,
            query_lens=self.query_lens,
            seq_lens=self.seq_lens_list,
            prefill_block_ids=self.prefill_tables,
            decode_block_table=self.decode_table,
            decode_seq_lens=self.seq_lens[:nd] if nd else None,
        )


class InputBuffers:
    """Preallocated inputs for steps of up to `max_tokens` tokens and `max_seqs` sequences, each
    with up to `max_blocks` blocks. Regions of one int64 buffer (ids, positions, slots, context
    lengths, tables), filled on the host with numpy (pinned memory when the device is CUDA) and
    copied with one `non_blocking` copy; on the CPU the host buffer is the device buffer. The host
    side is not rewritten before the previous step's copy has finished (an event), so an
    asynchronous copy never reads a half-written step."""

    def __init__(
        self,
        max_tokens: int,
        max_seqs: int,
        max_blocks: int,
        block_size: int,
        scratch_block: int,
        device: torch.device,
    ) -> None:
        self.block_size, self.scratch_block = block_size, scratch_block
        self.max_blocks, self.device = max_blocks, device
        t, s = max_tokens, max_seqs
        # region offsets: ids, positions, slots [t each], seq_lens [s], tables [s * max_blocks]
        self.offsets = {"ids": 0, "pos": t, "slots": 2 * t, "lens": 3 * t, "tables": 3 * t + s}
        size = 3 * t + s + s * max_blocks
        cuda = device.type == "cuda"
        self.host = torch.zeros(size, dtype=torch.long, pin_memory=cuda)
        self.dev = torch.zeros(size, dtype=torch.long, device=device) if cuda else self.host
        self.np = self.host.numpy()
        self.copied = torch.cuda.Event() if cuda else None

    def prepare(
        self, items: list[ScheduledRequest], pad_to: int | None = None, full_width: bool = False
    ) -> StepInputs:
        """Fill and send the inputs of `items` (decodes first). `pad_to` pads a batch of decodes
        with rows that read and write only the scratch block; `full_width` gives the decode table
        every column (`max_blocks`), the fixed shape a captured graph reads."""
        if self.copied is not None:
            self.copied.synchronize()
        nd = sum(1 for s in items if s.num_new_tokens == 1)
        rows = pad_to if pad_to is not None else len(items)
        assert rows >= len(items) and (pad_to is None or nd == len(items))
        padded = rows - len(items) + nd  # decode rows, padding included
        width = self._fill_decodes(items[:nd], padded, full_width)
        used_tables, prefill = self._fill_prefills(items[nd:], nd, padded * width)
        end = self.offsets["tables"] + used_tables
        if self.dev is not self.host:
            self.dev[:end].copy_(self.host[:end], non_blocking=True)
            self.copied.record()
        return self._views(items, nd, padded, width, prefill)

    def _fill_decodes(self, dec: list[ScheduledRequest], rows: int, full_width: bool) -> int:
        """Decode rows (and padding rows after them) in whole-array numpy operations."""
        o, n, bs = self.offsets, len(dec), self.block_size
        width = self.max_blocks if full_width else max([len(s.block_ids) for s in dec] or [1])
        table = self.np[o["tables"] : o["tables"] + rows * width].reshape(rows, width)
        table.fill(self.scratch_block)
        for i, s in enumerate(dec):
            table[i, : len(s.block_ids)] = s.block_ids
        pos = np.fromiter((s.start for s in dec), dtype=np.int64, count=n)
        self.np[o["ids"] : o["ids"] + n] = [s.token_ids[0] for s in dec]
        self.np[o["pos"] : o["pos"] + n] = pos
        self.np[o["slots"] : o["slots"] + n] = table[np.arange(n), pos // bs] * bs + pos % bs
        self.np[o["lens"] : o["lens"] + n] = pos + 1
        pad = slice(n, rows)  # padding: token 0 at position 0 in the scratch block
        self.np[o["ids"] :][pad] = 0
        self.np[o["pos"] :][pad] = 0
        self.np[o["slots"] :][pad] = self.scratch_block * bs
        self.np[o["lens"] :][pad] = 1
        return width

    def _fill_prefills(
        self, chunks: list[ScheduledRequest], nd: int, table_start: int
    ) -> tuple[int, list[tuple[int, int]]]:
        """Prefill chunks one sequence each (a numpy slice per chunk, not per token); their
        tables follow the decode table. Returns the table entries used and each chunk's
        (offset, length) in the table region."""
        o, bs = self.offsets, self.block_size
        tok, at, spans = nd, table_start, []
        for i, s in enumerate(chunks, start=nd):
            n, end = s.num_new_tokens, s.start + s.num_new_tokens
            blocks = np.asarray(s.block_ids[: -(-end // bs)], dtype=np.int64)
            pos = np.arange(s.start, end, dtype=np.int64)
            self.np[o["ids"] + tok : o["ids"] + tok + n] = s.token_ids
            self.np[o["pos"] + tok : o["pos"] + tok + n] = pos
            self.np[o["slots"] + tok : o["slots"] + tok + n] = blocks[pos // bs] * bs + pos % bs
            self.np[o["lens"] + i] = end
            self.np[o["tables"] + at : o["tables"] + at + len(blocks)] = blocks
            spans.append((at, len(blocks)))
            tok, at = tok + n, at + len(blocks)
        return at, spans

    def _views(self, items, nd, padded, width, prefill) -> StepInputs:
        o, d = self.offsets, self.dev
        pad = padded - nd
        t = padded + sum(s.num_new_tokens for s in items[nd:])
        seqs = padded + len(items) - nd
        tables = d[o["tables"] :]
        return StepInputs(
            input_ids=d[o["ids"] : o["ids"] + t],
            positions=d[o["pos"] : o["pos"] + t],
            slot_mapping=d[o["slots"] : o["slots"] + t],
            seq_lens=d[o["lens"] : o["lens"] + seqs],
            decode_table=tables[: padded * width].view(padded, width) if padded else None,
            prefill_tables=[tables[a : a + n] for a, n in prefill],
            query_lens=[1] * padded + [s.num_new_tokens for s in items[nd:]],
            seq_lens_list=[s.start + s.num_new_tokens for s in items] + [1] * pad,
            num_decodes=padded,
            num_rows=len(items),
        )
