"""What the node agents of one launch tell each other, through storage only (no shared filesystem).

Node rank 0's agent is the leader: it selects the phases, pre-seeds, writes markers, status and manifests, and runs
every single-process step. Before each step that runs on every GPU of every node it announces the step (its
final arguments, the checkpoint it resumes from) as the next numbered record of the launch; each follower waits
for that record, stages the phase's inputs to its own scratch, joins the same torchrun rendezvous, uploads its own
ranks' checkpoint files and answers with a done record (the leader writes one too). While a step runs every node
watches the others' done records and stops its own part when another node failed it, so no torchrun waits out its
exit barrier. The leader seals a checkpoint only when every node's part record for it is in storage (and the
checkpoints a phase made so far before announcing the phase's next step), and ends the launch with an end record.

Records live under `_runner/runs/<run id>/launches/<launch id>/`, so followers never act on what an earlier launch
of the same run left there. A follower waits for the next record as long as the leader's heartbeat moves; a leader
that never appears, or stops beating, is a `NodesOutOfStep` error after the bound (`--leader-wait-sec`).
"""

from __future__ import annotations

import json
import posixpath
import threading
import time

from .errors import RunnerError
from .status import now_iso, run_dir

POLL_SEC = 1.0
EXIT_INTERRUPTED = 130
HEARTBEAT_SEC = 5.0
END_ACK_SEC = 30.0  # how long a leader that finished waits for the followers to read its end record


class NodesOutOfStep(RunnerError):
    """The nodes of one launch did not meet: a leader that never started, stopped, or a follower that never answered."""

    exit_code = 7


class LaunchBoard:
    """The records of one launch in storage; one per node agent."""

    def __init__(self, storage, run_id: str, rendezvous, wait_sec: float, log=print, poll_sec: float = POLL_SEC):
        self.storage, self.rendezvous, self.wait_sec, self.log, self.poll_sec = storage, rendezvous, wait_sec, log, poll_sec
        self.root = f"{run_dir(run_id)}/launches/{rendezvous.launch_id}"
        self.beats = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    # -- paths -------------------------------------------------------------------------------------------------

    def _step(self, index: int) -> str:
        return f"{self.root}/steps/{index:04d}.json"

    def _done(self, index: int, node: int) -> str:
        return f"{self.root}/steps/{index:04d}.node{node}.done.json"

    def _part(self, rel: str, step: int, node: int) -> str:
        return f"{self.root}/parts/{rel.strip('/')}/{step:06d}/node{node}.json"

    def _read(self, rel: str) -> dict | None:
        try:
            return json.loads(self.storage.read_text(rel))
        except (FileNotFoundError, ValueError):
            return None

    def _write(self, rel: str, record: dict) -> None:
        self.storage.write_text(rel, json.dumps(record, indent=2))

    # -- the leader --------------------------------------------------------------------------------------------

    def check_new(self) -> None:
        """A launch id names one launch: records an earlier launch of that id left would mislead its followers."""
        if self.storage.find(self.root):
            raise NodesOutOfStep(f"Launch {self.rendezvous.launch_id} of this run has been started before ({self.storage.url_of(self.root)} exists).",
                                 ["Start every node again with a new --launch-id (the same on every node): a timestamp, or the job id of the new job."])

    def start_heartbeat(self) -> None:
        """Beat in storage from a thread until `end`: followers wait while it moves."""
        self._beat()
        self.thread = threading.Thread(target=self._beat_loop, name="leader-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        self.beats += 1
        self._write(f"{self.root}/leader.json", {"launch_id": self.rendezvous.launch_id, "beat": self.beats, "at": now_iso(),
                                                 "nnodes": self.rendezvous.nnodes, "master": self.rendezvous.master})

    def _beat_loop(self) -> None:
        while not self.stop.wait(min(HEARTBEAT_SEC, self.wait_sec / 3)):
            try:
                self._beat()
            except Exception as e:  # noqa: BLE001 - storage may blink; the next beat tries again
                self.log(f"leader heartbeat not written ({type(e).__name__}: {e})")

    def announce(self, index: int, event: dict) -> None:
        self._write(self._step(index), {**event, "index": index, "at": now_iso()})

    def wait_followers(self, index: int, what: str) -> dict[int, dict]:
        """Every follower's answer to step `index` (written after its uploads); bounded by the wait."""
        deadline = time.monotonic() + self.wait_sec
        answers: dict[int, dict] = {}
        followers = range(1, self.rendezvous.nnodes)
        while True:
            for node in followers:
                if node not in answers and (record := self._read(self._done(index, node))) is not None:
                    answers[node] = record
            if len(answers) == len(followers):
                return answers
            if time.monotonic() > deadline:
                missing = ", ".join(str(n) for n in followers if n not in answers)
                raise NodesOutOfStep(f"Node(s) {missing} did not finish {what} within {self.wait_sec:.0f} s of the leader "
                                     f"(launch {self.rendezvous.launch_id}).",
                                     ["Read those nodes' logs (`runner logs`, or the engine's own) for why they stopped.",
                                      "Run the same launch again: finished phases are skipped and training resumes."])
            time.sleep(self.poll_sec)

    def end(self, state: str, exit_code: int) -> None:
        """The end record; after a run that finished, wait (briefly) until every follower has read it, because an
        engine may stop the others as soon as the leader exits (Slurm's `srun --kill-on-bad-exit` on exit 3)."""
        self.stop.set()
        try:
            self._write(f"{self.root}/end.json", {"state": state, "exit_code": exit_code, "at": now_iso()})
        except Exception as e:  # noqa: BLE001 - followers then stop at their bound
            self.log(f"end of launch not written ({type(e).__name__}: {e})")
            return
        if state != "succeeded":
            return  # a failed or interrupted leader: the followers are stopped by the engine or by their bound
        deadline = time.monotonic() + END_ACK_SEC
        waiting = set(range(1, self.rendezvous.nnodes))
        while waiting and time.monotonic() < deadline:
            waiting = {node for node in waiting if self._read(self._ended(node)) is None}
            if waiting:
                time.sleep(self.poll_sec)

    def _ended(self, node: int) -> str:
        return f"{self.root}/ended.node{node}.json"

    # -- followers ---------------------------------------------------------------------------------------------

    def next_event(self, index: int, waiting_for: str) -> dict | None:
        """Step record `index`, or None when the leader ended the launch; waits while the leader beats."""
        last_beat, last_change, seen_leader = None, time.monotonic(), False
        while True:
            if (event := self._read(self._step(index))) is not None:
                return event
            end = self._read(f"{self.root}/end.json")
            if end is not None:
                return {"end": end}
            leader = self._read(f"{self.root}/leader.json")
            beat = leader and leader.get("beat")
            seen_leader = seen_leader or leader is not None
            if beat != last_beat:
                last_beat, last_change = beat, time.monotonic()
            if time.monotonic() - last_change > self.wait_sec:
                raise self._leader_missing(seen_leader, waiting_for)
            time.sleep(self.poll_sec)

    def _leader_missing(self, seen: bool, waiting_for: str) -> NodesOutOfStep:
        launch, where = self.rendezvous.launch_id, self.storage.url_of(self.root)
        if not seen:
            return NodesOutOfStep(f"No leader (node rank 0) of launch {launch} appeared in storage within {self.wait_sec:.0f} s "
                                  f"(waited for {where}/leader.json, for {waiting_for}).",
                                  ["Start node rank 0 with the same --launch-id and --storage (the first --host, or Slurm's first node).",
                                   "Check that every node names the same storage URL and run id."])
        return NodesOutOfStep(f"The leader of launch {launch} stopped beating {self.wait_sec:.0f} s ago while this node waited for "
                              f"{waiting_for}.", ["Read node rank 0's log for why it stopped.", "Run the launch again: training resumes."])

    def acknowledge_end(self) -> None:
        """A follower has read the end record (the leader waits for this before it exits)."""
        self._write(self._ended(self.rendezvous.node_rank), {"node": self.rendezvous.node_rank, "at": now_iso()})

    def answer(self, index: int, exit_code: int, error: str = "") -> None:
        self._write(self._done(index, self.rendezvous.node_rank),
                    {"node": self.rendezvous.node_rank, "exit_code": exit_code, "error": error, "at": now_iso()})

    def failed_elsewhere(self, index: int) -> str | None:
        """Why another node of this launch failed step `index` (its done record says a non-zero exit), or None."""
        for node in range(self.rendezvous.nnodes):
            if node != self.rendezvous.node_rank and (record := self._read(self._done(index, node))) and record.get("exit_code"):
                why = f": {record['error']}" if record.get("error") else ""
                return f"node {node} exited with code {record['exit_code']}{why}"
        return None

    # -- checkpoint parts --------------------------------------------------------------------------------------

    def write_part(self, rel: str, step: int, files: dict) -> None:
        """A follower's files of one checkpoint, in storage: {name: {size, sha256}}."""
        self._write(self._part(rel, step, self.rendezvous.node_rank), {"node": self.rendezvous.node_rank, "files": files})

    def parts(self, rel: str, step: int) -> dict[int, dict] | None:
        """Every follower's files of one checkpoint, or None while a follower's part is missing."""
        merged = {}
        for node in range(1, self.rendezvous.nnodes):
            record = self._read(self._part(rel, step, node))
            if record is None:
                return None
            merged.update(record["files"])
        return merged


class StepWatch:
    """While this node runs an announced step: watch the other nodes' done records, and once one says the step
    failed there, say why (`reason`), so this node stops its part at once. Without it torchrun would wait at its
    exit barrier (300 s) for the node that failed, or ranks blocked on it would wait for their collective timeout."""

    def __init__(self, board: LaunchBoard, index: int, what: str):
        self.board, self.index, self.what = board, index, what
        self.why: str | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="step-watch", daemon=True)

    def __enter__(self) -> "StepWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join(timeout=10)

    def reason(self) -> str | None:
        return self.why

    def _loop(self) -> None:
        while not self.done.wait(self.board.poll_sec):
            try:
                why = self.board.failed_elsewhere(self.index)
            except Exception:  # noqa: BLE001 - storage may blink; the next look tries again
                continue
            if why:
                self.why = f"{self.what} failed on another node ({why}); stopping it here too"
                self.board.log(self.why)
                return


class Crew:
    """The leader's side of a launch on several nodes: it numbers and announces the steps every node runs, waits
    for the other nodes' answers, and owns the leader's share of each checkpoint."""

    def __init__(self, board: LaunchBoard, gpus_per_node: int):
        self.board, self.index = board, 0
        self.ranks = node_ranks(board.rendezvous, gpus_per_node)

    def share(self):
        from .checkpoints import NodeShare

        return NodeShare(leader=True, ranks=self.ranks, board=self.board, wait_sec=self.board.wait_sec)

    def announce(self, phase, step, args: list[str], resumed_from: int | None) -> int:
        self.index += 1
        self.board.announce(self.index, {"phase": phase.name, "step": step.name, "module": step.module, "args": list(args),
                                         "resume_from": resumed_from})
        return self.index

    def watch(self, index: int, what: str) -> StepWatch:
        return StepWatch(self.board, index, what)

    def finished(self, index: int, exit_code: int) -> None:
        """The leader's own answer to a step, which the other nodes watch while they run it."""
        self.board.answer(index, exit_code)

    def lead(self, run) -> int:
        """Run the leader's `run()` between the first heartbeat and the end record the followers stop at."""
        self.board.check_new()
        self.board.start_heartbeat()
        code, state = 1, "failed"
        try:
            code = run()
            state = "interrupted" if code == EXIT_INTERRUPTED else "succeeded"
            return code
        except BaseException as e:
            code = getattr(e, "exit_code", 1)
            raise
        finally:
            self.board.end(state, code)

    def wait(self, index: int, what: str, failed: bool = False) -> None:
        """Every other node's answer; when the step already failed here, a silent node is only reported."""
        try:
            answers = self.board.wait_followers(index, what)
        except NodesOutOfStep as e:
            if not failed:
                raise
            self.board.log(f"{what}: {e.message.splitlines()[0]}")
            return
        for node, answer in sorted(answers.items()):
            if answer.get("exit_code"):
                why = f": {answer['error']}" if answer.get("error") else ""
                self.board.log(f"{what}: node {node} exited with code {answer['exit_code']}{why} (its log: {follower_log_hint(node)})")


def follower_log_hint(node: int) -> str:
    return f"logs/<phase>.node{node}.log in the run's folder"


def check_nodes_match(plan, rendezvous) -> None:
    """The plan's batch was derived for its world size: a node count other than the plan's would break it."""
    if rendezvous.nnodes != plan.nodes:
        from .errors import PlanError

        raise PlanError(f"This plan is for {plan.nodes} node(s), but this agent was started as one of {rendezvous.nnodes}.",
                        [f"Start {plan.nodes} node agent(s) (--nnodes {plan.nodes}), or make the plan with --nodes {rendezvous.nnodes}."])


def crew_for(ctx, log=print):
    """The leader's side of several nodes, or None on one node."""
    rendezvous = ctx.options.rendezvous
    if not rendezvous.multinode:
        return None
    return Crew(LaunchBoard(ctx.storage, ctx.run_id, rendezvous, ctx.options.leader_wait_sec, log=log), ctx.plan.gpus)


def node_ranks(rendezvous, gpus_per_node: int) -> range:
    """The global ranks torchrun gives this node's processes (node rank × GPUs per node onwards)."""
    first = rendezvous.node_rank * gpus_per_node
    return range(first, first + gpus_per_node)


def follower_log(run_id: str, phase: str, node_rank: int) -> str:
    return posixpath.join(run_dir(run_id), "logs", f"{phase}.node{node_rank}.log")
