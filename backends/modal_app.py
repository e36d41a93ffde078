"""nanochat-runner's Modal app: deployed once per runner version, called once per run.

    modal deploy backends/modal_app.py                              # `runner up --backend modal` does it when needed
    modal run --detach backends/modal_app.py --request run.json     # start a run the Modal way (see the README)

Modal's containers import this file (nothing is pickled): standard library and `modal` only, never this package,
so the laptop's Python version does not matter. The runner runs in the containers as a subprocess (`runner node
run`, in the image built from this repository's Dockerfile). `prep` (data, tokenizer: no GPU billed while shards
download), `gpu_phase` (one GPU phase), `report` (a small CPU container) and the non-preemptible, never retried
`driver`; decorators hold defaults for 8 ranks, each call sets GPUs, CPU, memory, timeout, retries, secrets and
volumes with `with_options`.

A stage runs `runner node run` on the plan cut after its last phase; the Volume is committed every few minutes and
at the end, checked (a failed final commit raises: the stage is retried, no later stage mounts without it). Runs
over 24 h follow Modal's pattern: 24 h timeout, retries without delay, resume from the newest complete checkpoint
(a segmented stage stops its node agent SEGMENT_GRACE_SEC before the cap and raises). Only a call's first attempt
runs the first-call argv (--force/--from/--only); a retry runs the continuing argv, so training resumes. Attempts
are counted per call in a Modal Dict: the one thing that outlives a lost container without touching storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import modal

APP_NAME = os.environ.get("RUNNER_MODAL_APP", "nanochat-runner")
PYTHON = "3.11"  # Modal's interpreter in the image (the runner keeps its own venv and nanochat's Python)
DAY_SEC = 24 * 3600  # Modal's cap on one call
STARTUP_TIMEOUT_SEC = 20 * 60  # pulling a ~15 GB image onto a cold machine; a stuck start fails in minutes, not hours
DISK_MIB = 256 * 1024  # scratch: shards, checkpoints and pre-seeded files of the largest plan (d32: ~145 GB)
REPORT_DISK_MIB = 32 * 1024
DRIVER_STARTUP_SEC = 10 * 60
GPU_DEFAULT = "H100!:8"  # `!`: never silently upgraded to another GPU, so timings compare
GPU_RESOURCES_8 = {"cpu": 34.0, "memory": 139264}  # 4 cores and 16 GiB per rank, plus the node agent's share
PREP_RESOURCES = {"cpu": 8.0, "memory": 32768}  # tokenizer training holds its text sample in memory
REPORT_RESOURCES = {"cpu": 2.0, "memory": 8192}
DRIVER_RESOURCES = {"cpu": 0.25, "memory": 512}
COPY_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")
EXIT_NOT_STARTED = 127  # the stage could not start the node agent: a code failure, never retried
OK_EXITS = (0, 3)  # 3: finished, but evaluation steps failed
COMMIT_EVERY_SEC = 300
COMMIT_TRIES, COMMIT_PAUSE_SEC = 3, 5.0
SEGMENT_GRACE_SEC = 20 * 60  # time to stop the trainer, upload what finished and commit, before the cap
MAX_RETRIES_PER_CALL = 10  # Modal's limit on one call's retries; a longer budget re-spawns the stage
POLL_SEC = 60.0
HANDOVER_AFTER_SEC = DAY_SEC - 3600  # the driver passes the run on an hour before its own cap
ATTEMPTS_DICT = "nanochat-runner-attempts"
CLUSTER_SIZES = (2, 4)  # several nodes: gpu_phase_x<N>, N containers of the GPU stage in one Modal cluster
MASTER_PORT = 29500


def render_dockerfile(text: str, build_args: dict[str, str]) -> str:
    """The Dockerfile with `${VAR:-default}` in COPY sources filled in as Docker would: Modal reads COPY sources
    itself to upload the context, and refuses variables there."""

    def fill(match: re.Match) -> str:
        return build_args.get(match.group(1)) or (match.group(2) or "")

    lines = text.splitlines()
    return "\n".join(COPY_VARIABLE.sub(fill, ln) if ln.lstrip().upper().startswith("COPY ") else ln for ln in lines) + "\n"


def image_settings(environ=os.environ) -> dict:
    """What the image is built from, read from the environment at deploy time (the laptop adapter sets these;
    by hand: `NANOCHAT_REF=<commit> modal deploy backends/modal_app.py`)."""
    if environ.get("RUNNER_MODAL_IMAGE"):
        return {"registry": environ["RUNNER_MODAL_IMAGE"]}
    context = Path(environ.get("RUNNER_MODAL_CONTEXT") or Path(__file__).resolve().parent.parent)
    build_args = {"RUNNER_UID": "0", **json.loads(environ.get("RUNNER_MODAL_BUILD_ARGS") or "{}")}  # root: Modal adds Python
    if environ.get("NANOCHAT_REF"):
        build_args.setdefault("NANOCHAT_REF", environ["NANOCHAT_REF"])
    return {"context": str(context), "build_args": build_args, "force_build": environ.get("RUNNER_MODAL_REBUILD") == "1"}


def _rendered_dockerfile(context: Path, build_args: dict[str, str]) -> Path:
    text = render_dockerfile((context / "Dockerfile").read_text(), build_args)
    folder = Path(tempfile.gettempdir()) / f"nanochat-runner-modal-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text(text)
    return folder / "Dockerfile"


def runner_image(settings: dict) -> modal.Image:
    if "registry" in settings:
        image = modal.Image.from_registry(settings["registry"], add_python=PYTHON)
    else:
        context = Path(settings["context"])
        # Only where the app is defined for deploying is the Dockerfile there to read; a container never builds.
        dockerfile = _rendered_dockerfile(context, settings["build_args"]) if modal.is_local() else context / "Dockerfile"
        image = modal.Image.from_dockerfile(dockerfile, context_dir=context, build_args=settings["build_args"],
                                            add_python=PYTHON, force_build=settings["force_build"])
    return image.entrypoint([])  # the image's ENTRYPOINT is `runner`; Modal starts its own process


app = modal.App(APP_NAME)
image = runner_image(image_settings())
stage_defaults = dict(image=image, timeout=DAY_SEC, startup_timeout=STARTUP_TIMEOUT_SEC, single_use_containers=True)  # fresh disk


@app.function(**stage_defaults, ephemeral_disk=DISK_MIB, **PREP_RESOURCES)
def prep(job: dict) -> dict:
    return run_stage(job, call_id=modal.current_function_call_id())


@app.function(**stage_defaults, ephemeral_disk=DISK_MIB, gpu=GPU_DEFAULT, **GPU_RESOURCES_8)
def gpu_phase(job: dict) -> dict:
    return run_stage(job, call_id=modal.current_function_call_id())


@app.function(**stage_defaults, ephemeral_disk=DISK_MIB, gpu=GPU_DEFAULT, **GPU_RESOURCES_8)
@modal.clustered(size=2)
def gpu_phase_x2(job: dict) -> dict:
    return run_cluster_stage(job, modal.experimental.get_cluster_info(), modal.current_function_call_id())


@app.function(**stage_defaults, ephemeral_disk=DISK_MIB, gpu=GPU_DEFAULT, **GPU_RESOURCES_8)
@modal.clustered(size=4)
def gpu_phase_x4(job: dict) -> dict:
    return run_cluster_stage(job, modal.experimental.get_cluster_info(), modal.current_function_call_id())


@app.function(**stage_defaults, ephemeral_disk=REPORT_DISK_MIB, **REPORT_RESOURCES)
def report(job: dict) -> dict:
    return run_stage(job, call_id=modal.current_function_call_id())


@app.function(image=modal.Image.debian_slim(python_version=PYTHON), timeout=DAY_SEC, startup_timeout=DRIVER_STARTUP_SEC,
              nonpreemptible=True, **DRIVER_RESOURCES)
def driver(run: dict, state: dict | None = None) -> dict:
    """The run: each stage in order (see `Driver`); near its own 24 h cap it hands over to a fresh
    call of itself, passing the stage call in flight, and returns that call's id."""
    stages = {"prep": prep, "gpu_phase": gpu_phase, "gpu_phase_x2": gpu_phase_x2, "gpu_phase_x4": gpu_phase_x4, "report": report}
    return Driver(run, stages, modal.FunctionCall.from_id, driver.spawn).drive(state)


@app.local_entrypoint()
def main(request: str):
    """`modal run --detach backends/modal_app.py --request run.json`: spawn the driver of a saved run request
    (its secrets' values are taken from this shell's variables of the names it lists)."""
    run = json.loads(Path(request).read_text())
    run["env"] = {name: os.environ[name] for name in run.get("env_names", []) if name in os.environ}
    call = driver.spawn(run)
    print(f"run {run['run_id']}: driver call {call.object_id}")


# -- one stage, inside its container ----------------------------------------------------------------------------


class SegmentEnded(RuntimeError):
    """Raised on purpose when a segment is over and its checkpoints are committed: Modal retries the call at once."""


class VolumeCommitFailed(RuntimeError):
    """The final commit did not land: raised so the stage is retried, and no later stage mounts the Volume without it."""


def say(message: str) -> None:
    print(f"[runner/modal] {message}", flush=True)


def count_attempt(call_id: str | None, attempts=None) -> int:
    """0 on a call's first attempt, n on its n-th retry (after preemption, a timeout or a segment)."""
    if call_id is None:  # not inside a Modal call
        return 0
    attempts = attempts if attempts is not None else modal.Dict.from_name(ATTEMPTS_DICT, create_if_missing=True)
    seen = int(attempts.get(call_id, 0))
    attempts.put(call_id, seen + 1)
    return seen


class Committer:
    """Commits the mounted Volume every `every_s` while the node runs (a sealed checkpoint is durable within that
    time, even if the machine goes next), and once more at the end, checked."""

    def __init__(self, volume, every_s: float):
        self.volume, self.every_s, self.stop = volume, every_s, threading.Event()
        if volume is not None:
            threading.Thread(target=self._loop, name="volume-commit", daemon=True).start()

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                self.volume.commit()
            except Exception as e:  # noqa: BLE001 - the next periodic commit, or the final checked one, catches up
                say(f"periodic volume commit failed ({type(e).__name__}: {e})")

    def final(self) -> bool:
        self.stop.set()
        if self.volume is None:
            return True
        for attempt in range(COMMIT_TRIES):
            try:
                self.volume.commit()
                return True
            except Exception as e:  # noqa: BLE001 - reported, tried again, then raised by the caller
                say(f"final volume commit, try {attempt + 1} of {COMMIT_TRIES}, failed: {type(e).__name__}: {e}")
                time.sleep(COMMIT_PAUSE_SEC * (attempt + 1))
        return False


def _stop_node(node: subprocess.Popen, grace_s: float = 20.0) -> None:
    """Only when this call is interrupted (cancelled, preempted): Modal's grace period is short, the commit follows."""
    if node.poll() is None:
        node.send_signal(signal.SIGTERM)  # the node agent stops its phase; finished checkpoints are uploaded
        try:
            node.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()


def stage_argv(job: dict, attempt: int) -> list[str]:
    """--force/--from/--only restart phases: the first attempt only; every retry resumes."""
    return job["argv"] if attempt == 0 else job["continuing_argv"]


def run_stage(job: dict, call_id: str | None = None, attempts=None, volume_factory=None) -> dict:
    """`runner node run` for one stage, with the first-call or the continuing argv, the Volume committed."""
    attempt = count_attempt(call_id, attempts)
    argv = stage_argv(job, attempt)
    volume = (volume_factory or modal.Volume.from_name)(job["volume"]) if job.get("volume") else None
    committer = Committer(volume, job.get("commit_every_s", COMMIT_EVERY_SEC))
    say(f"stage {job['stage']}, attempt {attempt + 1}: runner {' '.join(argv)}")
    try:
        node = subprocess.Popen(["runner", *argv], env={**os.environ, "RUNNER_PLAN_JSON": job["plan_json"]})
    except OSError as e:  # no runner in the image: a code failure, returned (never retried)
        committer.final()
        return {"stage": job["stage"], "exit_code": EXIT_NOT_STARTED, "attempt": attempt, "error": f"{type(e).__name__}: {e}"}
    segment_over = threading.Event()

    def end_segment() -> None:
        segment_over.set()
        say(f"stage {job['stage']}: segment of {job['segment_s'] / 3600:.1f} h over; stopping the node agent to resume in a retry")
        node.send_signal(signal.SIGTERM)

    timer = threading.Timer(job["segment_s"], end_segment) if job.get("segment_s") else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        code = node.wait()
    finally:  # also when this call is cancelled: the node agent gets to stop its phase, and the Volume is committed
        if timer:
            timer.cancel()
        _stop_node(node)
        committed = committer.final()
    if not committed:
        raise VolumeCommitFailed(f"stage {job['stage']}: the Volume {job['volume']} could not be committed")
    if segment_over.is_set() and code not in OK_EXITS:
        raise SegmentEnded(f"stage {job['stage']}: segment over (node exit {code}); the retry resumes from the newest checkpoint")
    say(f"stage {job['stage']}: node agent exited {code}")
    return {"stage": job["stage"], "exit_code": code, "attempt": attempt}


def cluster_job(job: dict, info) -> dict:
    """One container's job in a Modal cluster: both argv lists with this container's place among the nodes (its
    rank, rank 0's address as torchrun's master, the cluster's id as the launch, new on every retry)."""
    ips = list(getattr(info, "container_ipv4_ips", None) or info.container_ips)
    place = ["--nnodes", str(len(ips)), "--node-rank", str(info.rank), "--master", f"{ips[0]}:{MASTER_PORT}", "--launch-id", info.cluster_id]
    return {**job, "argv": [*job["argv"], *place], "continuing_argv": [*job["continuing_argv"], *place], "stage": f"{job['stage']} node {info.rank}"}


def run_cluster_stage(job: dict, info, call_id: str | None, **kwargs) -> dict:
    """A GPU stage on several nodes: every container runs the node agent; rank 0 (the leader) counts the attempts
    (the others run the first-call argv: --force and the like only change what the leader selects)."""
    return run_stage(cluster_job(job, info), call_id=call_id if info.rank == 0 else None, **kwargs)


# -- the driver -------------------------------------------------------------------------------------------------


TRANSIENT = (modal.exception.ConnectionError, modal.exception.ServiceError, modal.exception.InternalError, OSError)


class Driver:
    """The run's stages in order: each spawned with its options, then awaited. One retry budget for the whole run
    (`run["budget"]`): a stage call gets what is left as Modal retries (no delay: infrastructure loss, timeouts
    and segment ends); a stage whose node agent exits non-zero ends the run and is never retried."""

    def __init__(self, run: dict, functions: dict, call_from_id, spawn_self, clock=time.monotonic, poll_s: float = POLL_SEC):
        self.run, self.functions, self.call_from_id, self.spawn_self = run, functions, call_from_id, spawn_self
        self.clock, self.poll_s = clock, poll_s

    def options(self, stage: dict, retries: int) -> dict:
        """What `with_options` gets for one stage call: the stage's plain settings as SDK objects."""
        env_name = self.run.get("environment")
        secrets = [modal.Secret.from_dict(self.run["env"])] if self.run.get("env") else []
        secrets += [modal.Secret.from_name(name, environment_name=env_name) for name in self.run.get("secrets", [])]
        volumes = {mount: modal.Volume.from_name(name, environment_name=env_name) for mount, name in self.run.get("volumes", {}).items()}
        return {**stage["options"], "retries": modal.Retries(max_retries=retries, initial_delay=0.0, backoff_coefficient=1.0),
                "secrets": secrets, "volumes": volumes}

    def drive(self, state: dict | None = None) -> dict:
        state = dict(state) if state else {"index": 0, "call_id": None, "first": True, "retries": 0, "exit_code": 0,
                                           "budget_left": int(self.run["budget"]), "calls": [], "transient": 0}
        started = self.clock()
        try:
            while state["index"] < len(self.run["stages"]):
                stage = self.run["stages"][state["index"]]
                if state["call_id"] is None:
                    self._spawn(stage, state)
                try:
                    result = self.call_from_id(state["call_id"]).get(timeout=self.poll_s)
                except TimeoutError:  # still running
                    if self.clock() - started >= HANDOVER_AFTER_SEC:
                        return self._hand_over(state)
                    continue
                except TRANSIENT as e:  # could not ask: ask again; the stage goes on meanwhile
                    state["transient"] += 1
                    if state["transient"] > 30:
                        raise
                    say(f"driver: polling stage {stage['name']} failed ({type(e).__name__}: {e}); trying again")
                    continue
                except Exception as e:  # noqa: BLE001 - the call failed after its retries: infrastructure, timeouts, segments
                    state["calls"][-1]["error"] = f"{type(e).__name__}: {e}"
                    self.call_from_id(state["call_id"]).cancel(terminate_containers=True)  # never two writers
                    state["budget_left"] -= state["retries"] + 1
                    if state["budget_left"] < 0:
                        return self._end(state, 1, f"stage {stage['name']} failed ({type(e).__name__}: {e}) and the run's retry budget is spent")
                    say(f"driver: stage {stage['name']} failed after its retries ({type(e).__name__}: {e}); calling it again to resume")
                    state.update(call_id=None, first=False)
                    continue
                state["transient"] = 0
                used = int(result.get("attempt", 0))
                state["budget_left"] -= used
                state["calls"][-1].update(exit_code=result["exit_code"], attempts=used + 1)
                if result["exit_code"] not in OK_EXITS:
                    return self._end(state, result["exit_code"], f"stage {stage['name']}: the node agent exited {result['exit_code']}")
                state["exit_code"] = max(state["exit_code"], result["exit_code"])
                state.update(index=state["index"] + 1, call_id=None, first=True)
            return self._end(state, state["exit_code"])
        except BaseException:  # this driver is cancelled or broken: its stage must not run on unwatched
            if state.get("call_id"):
                self.call_from_id(state["call_id"]).cancel(terminate_containers=True)
            raise

    def _spawn(self, stage: dict, state: dict) -> None:
        retries = max(0, min(MAX_RETRIES_PER_CALL, state["budget_left"]))  # restarts Modal does not count may overdraw it
        job = {**stage["job"], "argv": stage["job"]["argv"] if state["first"] else stage["job"]["continuing_argv"]}
        for attempt in range(3):
            try:
                call = self.functions[stage["function"]].with_options(**self.options(stage, retries)).spawn(job)
                break
            except TRANSIENT:
                if attempt == 2:
                    raise
                time.sleep(COMMIT_PAUSE_SEC)
        state.update(call_id=call.object_id, retries=retries)
        state["calls"].append({"stage": stage["name"], "call_id": call.object_id, "retries": retries})
        say(f"driver: stage {stage['name']} started as call {call.object_id} ({retries} retries left in the run's budget)")

    def _hand_over(self, state: dict) -> dict:
        successor = self.spawn_self(self.run, state)
        say(f"driver: handing the run over to driver call {successor.object_id} (stage call {state['call_id']} goes on)")
        return {"handed_over_to": successor.object_id, "calls": state["calls"], "budget_left": state["budget_left"]}

    def _end(self, state: dict, exit_code: int, reason: str = "") -> dict:
        say(f"driver: run {self.run['run_id']} ended with exit {exit_code}" + (f": {reason}" if reason else ""))
        state["call_id"] = None  # nothing in flight is left to cancel
        return {"exit_code": exit_code, "reason": reason, "calls": state["calls"], "budget_left": state["budget_left"]}
