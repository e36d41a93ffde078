"""The world a plan trains in: nodes × GPUs per node processes, and the per-GPU batch that divides nanochat's total.

nanochat asserts `total_batch_size % (device_batch_size × max_seq_len × world_size) == 0` and accumulates gradients
over the quotient. At d20 on one 8-GPU node there is no accumulation left (32 × 2048 × 8 = 524,288), so two nodes
must halve the device batch; upstream users who added nodes without doing so got no speed-up. `derive_batch` picks
the largest device batch that fits the GPU's memory and divides the total, and refuses a world size no device batch
can serve, with the reason, before anything starts.

The device batch is a runtime placeholder (it changes how a phase runs, not what it makes); the world size is not:
nanochat shards the optimizer state per rank, so a checkpoint resumes only at the world size that wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PlanError

MAX_NODES = 64


@dataclass(frozen=True)
class Batch:
    device_batch: int  # sequences per GPU per micro-step (--device_batch_size)
    grad_accum: int  # micro-steps per optimizer step
    world_size: int

    def to_dict(self) -> dict:
        return {"device_batch_size": self.device_batch, "grad_accum_steps": self.grad_accum, "world_size": self.world_size}


def check_nodes(nodes: int) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise PlanError(f"--nodes {nodes} is out of range.", [f"Use 1 to {MAX_NODES} nodes (1: one machine)."])


def derive_batch(total_batch_tokens: int, seq_len: int, world_size: int, max_device_batch: int, where: str) -> Batch:
    """The largest device batch ≤ `max_device_batch` (what fits in memory) for which nanochat's total batch divides
    into whole micro-steps on every rank; refuses a world size that no device batch serves."""
    per_rank_step = seq_len * world_size
    if total_batch_tokens % per_rank_step:
        raise PlanError(
            f"{where}: {world_size} processes cannot share nanochat's total batch of {total_batch_tokens:,} tokens: "
            f"it must divide by device batch × sequence length {seq_len:,} × {world_size} processes, and "
            f"{total_batch_tokens:,} is not a multiple of {per_rank_step:,}.",
            ["Use a number of nodes × GPUs per node that is a power of two (e.g. --nodes 2 --gpus 8, or --nodes 4)."],
        )
    sequences_per_rank = total_batch_tokens // per_rank_step  # device batch × grad accumulation must equal this
    for device_batch in range(min(max_device_batch, sequences_per_rank), 0, -1):
        if sequences_per_rank % device_batch == 0:
            return Batch(device_batch, sequences_per_rank // device_batch, world_size)
    raise PlanError(f"{where}: no device batch fits in GPU memory.", ["Choose a smaller model or a GPU with more memory."])
