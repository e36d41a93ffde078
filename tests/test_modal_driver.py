"""The Modal driver (backends/modal_app.Driver) over whole runs, against a simulated Modal: a clock, stage calls
that train for simulated hours, Modal's retries (an attempt that raises or times out runs again while retries
remain), the attempts Dict. The run it drives is the real request `runner up --backend modal` would send.
Stand-ins keep the SDK's signatures (checked)."""

from __future__ import annotations

import inspect
import math

import pytest

from backends import modal_request
from backends.base import RunSpec
from backends.modal_backend import ModalBackend
from runner.plan import build_plan

modal = pytest.importorskip("modal")


@pytest.fixture(scope="module")
def app():
    return modal_request.load_app_module()


class World:
    """Modal as the driver sees it. `behaviour[stage]`: ("train", hours) | ("hang",) | ("fail", exit code)."""

    def __init__(self, app, behaviour: dict):
        self.app, self.behaviour, self.clock = app, behaviour, 0.0  # seconds
        self.progress: dict[str, float] = {}  # hours trained, as the checkpoints in storage say
        self.restarts: dict[str, int] = {}  # times a stage started training from zero
        self.calls: dict[str, "SimCall"] = {}
        self.spawned: list[tuple[str, list[str], int]] = []  # (stage, argv, retries)
        self.attempts: dict[str, int] = {}
        self.drivers: dict[str, dict] = {}  # hand-overs: driver call id -> the state it was given
        self.cancelled: list[str] = []

    def from_id(self, function_call_id, client=None):
        return self.calls[function_call_id]

    def spawn_driver(self, run, state):
        call_id = f"fc-driver-{len(self.drivers) + 1}"
        self.drivers[call_id] = state
        return SimCall(self, call_id, math.inf, None)

    def attempts_dict(self):
        world = self

        class Attempts:
            def get(self, key, default=None):
                return world.attempts.get(key, default)

            def put(self, key, value, *, skip_if_exists=False):
                world.attempts[key] = value
                return True

        return Attempts()

    def run_call(self, call_id: str, job: dict, options: dict) -> tuple[float, object]:
        """The whole life of one call with Modal's retries: (when it ends in seconds, its result or exception)."""
        t, stage, kind = self.clock / 3600, job["stage"], self.behaviour.get(job["stage"], ("train", 0.5))
        timeout_h, segment_h = options["timeout"] / 3600, (job["segment_s"] / 3600 or math.inf)
        for _ in range(options["retries"].max_retries + 1):
            argv = self.app.stage_argv(job, self.app.count_attempt(call_id, self.attempts_dict()))
            t += 0.05  # the container starts
            if kind[0] == "fail":
                return (t + 0.1) * 3600, {"stage": stage, "exit_code": kind[1], "attempt": self.attempts[call_id] - 1}
            if kind[0] == "hang":
                t, error = t + timeout_h, modal.exception.FunctionTimeoutError("timed out")
                continue
            if {"--from", "--force", "--only"} & set(argv) or stage not in self.progress:
                self.progress[stage] = 0.0
                self.restarts[stage] = self.restarts.get(stage, 0) + 1
            ran = min(kind[1] - self.progress[stage], segment_h, timeout_h)
            self.progress[stage] += ran
            t += ran
            if self.progress[stage] >= kind[1] - 1e-9:
                return t * 3600, {"stage": stage, "exit_code": 0, "attempt": self.attempts[call_id] - 1}
            error = self.app.SegmentEnded("segment over") if ran == segment_h else modal.exception.FunctionTimeoutError("timed out")
        return t * 3600, error


class SimCall:
    def __init__(self, world, object_id, ends_at, outcome):
        self.world, self.object_id, self.ends_at, self.outcome = world, object_id, ends_at, outcome

    def get(self, timeout=None, *, index=0):
        if self.world.clock + timeout < self.ends_at:
            self.world.clock += timeout
            raise TimeoutError()
        self.world.clock = max(self.world.clock, self.ends_at)
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def cancel(self, terminate_containers=False):
        self.world.cancelled.append(self.object_id)


class SimFunction:
    def __init__(self, world, name):
        self.world, self.name = world, name

    def with_options(self, *, cpu=None, memory=None, gpu=None, env=None, secrets=None,
                     volumes={},  # noqa: B006 - the SDK's own default, kept so the signatures compare
                     retries=None, max_containers=None, buffer_containers=None, scaledown_window=None, timeout=None, region=None,
                     cloud=None, routing_region=None):
        function, options = self, {"gpu": gpu, "timeout": timeout, "retries": retries, "secrets": secrets, "volumes": volumes}

        class Variant:
            def spawn(self, *args, **kwargs):
                job = args[0]
                world = function.world
                call_id = f"fc-{len(world.calls) + 1}-{job['stage']}"
                world.spawned.append((job["stage"], job["argv"], retries.max_retries))
                ends_at, outcome = world.run_call(call_id, job, options)
                world.calls[call_id] = SimCall(world, call_id, ends_at, outcome)
                return world.calls[call_id]

        return Variant()


def test_the_stand_ins_keep_the_sdk_signatures():
    def params(f):
        return [p for p in inspect.signature(f).parameters if p not in ("self", "cls")]

    assert params(SimFunction.with_options) == params(modal.Function.with_options)
    for name in ("get", "cancel"):
        assert params(getattr(SimCall, name)) == params(getattr(modal.FunctionCall, name))
    assert params(World.from_id) == params(modal.FunctionCall.from_id)


def drive(app, world: World, spec: RunSpec) -> tuple[dict, list[float]]:
    """The run start to end, each hand-over continued by a fresh Driver; returns the result and each driver's hours."""
    run = {**ModalBackend().prepare(spec).request.driver_argument()}
    functions = {name: SimFunction(world, name) for name in ("prep", "gpu_phase", "report")}
    state, lives = None, []
    for _ in range(200):
        started = world.clock
        result = app.Driver(run, functions, world.from_id, world.spawn_driver, clock=lambda: world.clock).drive(state)
        lives.append((world.clock - started) / 3600)
        if "handed_over_to" not in result:
            return result, lives
        state = world.drivers[result["handed_over_to"]]
    raise AssertionError("the driver never ended")


def spec(model="d32", gpus=1, **kw) -> RunSpec:
    return RunSpec(plan=build_plan("seed", model, gpus=gpus, run_id="r1"), storage="modal://vol/runs", **kw)


def test_a_segmented_base_phase_is_reached_and_ends(app):
    """d32 on one GPU: base is ~280 h, so the 24 h driver hands over a dozen times and base runs in segments, each
    retry resuming; the run ends (before: every driver spawned another driver, base never started)."""
    the_spec = spec(from_phase="base")
    need = {"base": 280.0, "mid": 5.0, "sft": 6.5, "report": 0.1}
    world = World(app, {k: ("train", v) for k, v in need.items()})
    result, lives = drive(app, world, the_spec)
    assert result["exit_code"] == 0 and result["reason"] == ""
    assert [s for s, _, _ in world.spawned if s != "base"] == ["mid", "sft", "report"]  # --from base: prep skipped
    assert world.progress["base"] >= need["base"] and world.restarts == {"base": 1, "mid": 1, "sft": 1, "report": 1}
    assert len(lives) > 10 and max(lives) < 24  # every driver gave the run on before Modal's cap
    base_spawns = [(argv, retries) for s, argv, retries in world.spawned if s == "base"]
    assert "--from" in base_spawns[0][0] and all("--from" not in argv for argv, _ in base_spawns[1:])
    assert all(retries <= app.MAX_RETRIES_PER_CALL for _, retries in base_spawns) and result["budget_left"] >= 0


def test_a_hanging_stage_is_bounded_by_the_run_budget(app):
    """Before: Retries(6) in a driver with Retries(6) — 49 runs of 4.7 h. Now: the run's budget, here 3 spare."""
    world = World(app, {"base": ("train", 0.5), "mid": ("hang",)})
    result, _ = drive(app, world, spec("d20", 8))
    assert result["exit_code"] != 0 and "budget is spent" in result["reason"]
    assert sum(v for c, v in world.attempts.items() if c.endswith("-mid")) == 3 + 1
    assert [s for s, _, _ in world.spawned].count("sft") == 0


def test_a_failing_phase_stops_the_run_and_is_never_retried(app):
    world = World(app, {"base": ("fail", 1)})
    result, _ = drive(app, world, spec("d20", 8))
    assert result["exit_code"] == 1 and [s for s, _, _ in world.spawned] == ["prep", "base"]
    assert world.attempts == {c: 1 for c in world.calls}


def test_a_cancelled_driver_cancels_its_stage_and_polling_errors_respawn_nothing(app):
    world = World(app, {"prep": ("train", 5.0)})
    run = ModalBackend().prepare(spec("d20", 8)).request.driver_argument()
    polls = {"n": 0}

    class Flaky(SimCall):
        def get(self, timeout=None, *, index=0):
            polls["n"] += 1
            if polls["n"] <= 3:
                raise modal.exception.ServiceError("unavailable")
            raise KeyboardInterrupt  # what a cancelled input looks like to the code inside it

    functions = {name: SimFunction(world, name) for name in ("prep", "gpu_phase", "report")}
    with pytest.raises(KeyboardInterrupt):
        app.Driver(run, functions, lambda i: Flaky(world, i, 0, None) if i in world.calls else None, world.spawn_driver,
                   clock=lambda: world.clock).drive()
    assert [s for s, _, _ in world.spawned] == ["prep"] and world.cancelled == [next(iter(world.calls))]
