"""The one way a phase's checkpoints reach storage.

A `CheckpointPublisher` owns one checkpoint folder a phase makes, for the whole phase: for a step that resumes
(base training) it uploads each checkpoint in the background as soon as it is complete, so a preemption loses at
most one interval (on several nodes each node uploads its own ranks' files and the leader seals); when the phase's
steps end, however they ended, it uploads what is left and writes the manifest of every whole checkpoint (the only
mark storage readers trust); on several nodes also between two steps of a phase. Nothing else pushes or seals
checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoints import is_checkpoint_dir, seal
from .uploader import CheckpointUploader
from .transfer import push


class CheckpointPublisher:
    def __init__(self, ctx, rel: str, log, share=None):
        self.ctx, self.rel, self.log = ctx, rel, log
        self.share = share  # several nodes: this node's share of each checkpoint (checkpoints.NodeShare)
        self.local: Path = ctx.base_dir / rel
        self.uploader: CheckpointUploader | None = None
        self.uploaded: list[int] = []

    @classmethod
    def for_phase(cls, ctx, phase, log, share=None) -> list["CheckpointPublisher"]:
        return [cls(ctx, rel, log, share) for rel in phase.makes if is_checkpoint_dir(rel)]

    def watch(self, nproc: int) -> None:
        """Upload checkpoints while a resumable step trains (every rank's optimizer shard is part of one)."""
        if self.uploader is None:
            self.uploader = CheckpointUploader(self.ctx.storage, self.local, self.rel, nproc, self.ctx.state, log=self.log, share=self.share).start()

    def stop_watching(self) -> list[int]:
        """The step has ended: upload what it completed before anything else happens to the node."""
        if self.uploader is None:
            return []
        uploaded, self.uploader = self.uploader.finish(), None
        self.uploaded += uploaded
        return uploaded

    def publish(self) -> None:
        """Put every whole checkpoint made so far into storage, sealed: when the phase's steps have ended, and on
        several nodes also before the leader announces the phase's next step: the other nodes stage what that step loads (mid's and SFT's evaluation
        load the checkpoint their training step wrote on rank 0 only) from storage, never from the leader's disk."""
        self.stop_watching()
        push(self.ctx.storage, self.local, self.rel, self.ctx.state, log=self.log)
        seal(self.ctx.storage, self.local, self.rel, log=self.log, board=self.share.board if self.share else None)
