"""A Modal run found again from its handle: the record in the run's storage (a Modal Volume stand-in), its state
from the driver calls (hand-overs, results, expired results, failures), `runner status` over finished and old runs,
a rerun of the same id, `runner down` cancelling every recorded call, `runner logs` from Modal's logs of the calls
with the node's logs in storage as the fallback. FunctionCall, Function and Volume are stand-ins with the SDK's
signatures (checked); nothing reaches Modal."""

from __future__ import annotations

import inspect
import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from test_modal_fs import FakeVolume, volumes  # noqa: F401  (the fixture)

from backends import modal_record, modal_request
from backends.base import PreflightError, RunSpec, State
from backends.modal_backend import ModalBackend
from runner.cli import main
from runner.plan import build_plan
from runner.storage import open_storage

modal = pytest.importorskip("modal")
from modal.types import InputInfo, InputStatus, LogEntry  # noqa: E402

STORAGE = "modal://vol/runs"
HANDLE = f"modal://r1@{STORAGE}"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Calls:
    """What Modal knows about function calls: results (None: running), call graphs, logs; what was cancelled."""

    def __init__(self):
        self.results, self.graphs, self.logs, self.cancelled, self.asked = {}, {}, {}, [], []


class FakeLogs:
    def __init__(self, entries):
        self.entries = entries

    def fetch(self, *, since=None, until=None, source=None, search_text=""):
        return iter([e for e in self.entries if since is None or e.timestamp >= since])

    def tail(self, entries=100, *, source=None):
        return iter(self.entries[-entries:])


class FakeCall:
    world: Calls = Calls()

    def __init__(self, object_id):
        self.object_id = object_id

    @classmethod
    def from_id(cls, function_call_id, client=None):
        return cls(function_call_id)

    def get(self, timeout=None, *, index=0):
        self.world.asked.append(self.object_id)
        outcome = self.world.results.get(self.object_id)
        if outcome is None:
            raise TimeoutError()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def cancel(self, terminate_containers=False):
        self.world.cancelled.append((self.object_id, terminate_containers))

    def get_call_graph(self):
        return self.world.graphs.get(self.object_id, [])

    @property
    def logs(self):
        if isinstance(self.world.logs, Exception):
            raise self.world.logs
        return FakeLogs(self.world.logs.get(self.object_id, []))


class FakeFunction:
    deployed: set = set()
    spawned: list = []

    @classmethod
    def from_name(cls, app_name, name, *, version=None, environment_name=None, client=None):
        function = cls()
        function.app_name, function.environment_name = app_name, environment_name
        return function

    def hydrate(self, client=None):
        if self.app_name not in self.deployed:
            raise modal.exception.NotFoundError(f"App {self.app_name} not found")
        return self

    def spawn(self, *args, **kwargs):
        self.spawned.append((self.app_name, self.environment_name, args))
        return FakeCall(f"fc-driver-{len(self.spawned)}")


class HydratableVolume(FakeVolume):
    def hydrate(self, client=None):
        return self


@pytest.fixture
def world(volumes, monkeypatch):  # noqa: F811
    FakeCall.world = Calls()
    FakeFunction.deployed, FakeFunction.spawned = set(), []
    monkeypatch.setattr(modal.FunctionCall, "from_id", FakeCall.from_id)
    monkeypatch.setattr(modal.Function, "from_name", FakeFunction.from_name)
    monkeypatch.setattr(modal.Volume, "from_name", HydratableVolume.from_name)
    FakeVolume.volumes["vol"] = HydratableVolume("vol")
    return FakeCall.world


def test_stand_ins_keep_the_sdk_signatures():
    from modal._logs_manager import _FunctionCallLogsManager

    def params(f):
        return [p for p in inspect.signature(f).parameters if p not in ("self", "cls")]

    pairs = [(FakeCall.from_id, modal.FunctionCall.from_id), (FakeCall.get, modal.FunctionCall.get), (FakeCall.cancel, modal.FunctionCall.cancel),
             (FakeCall.get_call_graph, modal.FunctionCall.get_call_graph), (FakeFunction.from_name, modal.Function.from_name),
             (FakeFunction.hydrate, modal.Function.hydrate), (HydratableVolume.hydrate, modal.Volume.hydrate),
             (FakeLogs.fetch, _FunctionCallLogsManager.fetch), (FakeLogs.tail, _FunctionCallLogsManager.tail)]
    for fake, real in pairs:
        assert params(fake) == params(real), fake


def spec(**kw) -> RunSpec:
    return RunSpec(plan=build_plan("seed", "smoke", gpus=1, run_id="r1"), storage=STORAGE, **kw)


def record() -> dict:
    return json.loads(open_storage(STORAGE, check=False).read_text("_runner/runs/r1/modal.json"))


def launch(backend=None, **kw) -> str:
    backend = backend or ModalBackend()
    return backend.launch(backend.preflight(backend.prepare(spec(**kw)), lambda m: None))


def test_launch_deploys_once_spawns_the_driver_and_records_the_run(world, monkeypatch):
    deploys = []

    def deploy(self, *, name=None, environment_name=None, tag="", client=None, strategy="rolling"):
        deploys.append((name, environment_name, tag))
        FakeFunction.deployed.add(name)

    assert list(inspect.signature(deploy).parameters) == list(inspect.signature(modal.App.deploy).parameters)
    monkeypatch.setattr(modal.App, "deploy", deploy)
    monkeypatch.setenv("MODAL_ENVIRONMENT", "dev")
    handle = launch()
    assert handle == f"{HANDLE}@dev" and len(deploys) == 1 and deploys[0][0].startswith("nanochat-runner-0.1.0-") and deploys[0][1] == "dev"
    app_name, environment, (argument,) = FakeFunction.spawned[0]
    assert app_name == deploys[0][0] and environment == "dev" and argument["run_id"] == "r1" and argument["stages"]
    saved = record()
    assert saved["drivers"] == ["fc-driver-1"] and saved["state"] == "running" and saved["environment"] == "dev"
    assert [s["name"] for s in saved["stages"]] == [s["name"] for s in argument["stages"]]
    world.results["fc-driver-1"] = {"exit_code": 0, "reason": "", "calls": [], "budget_left": 3}
    launch(from_phase="base")  # a rerun of the finished run: the app is there, nothing is deployed again
    assert len(deploys) == 1 and record()["drivers"] == ["fc-driver-2"]
    first = [s for s in FakeFunction.spawned[1][2][0]["stages"] if s["name"] == "base"][0]["job"]
    assert first["argv"][-2:] == ["--from", "base"] and "--from" not in first["continuing_argv"]
    world.results["fc-driver-2"] = {"exit_code": 0, "reason": "", "calls": [], "budget_left": 3}
    launch(rebuild=True)  # --rebuild: the image is built again, so the app is deployed again
    assert len(deploys) == 2


def test_a_run_still_going_is_not_started_twice(world):
    FakeFunction.deployed.add(ModalBackend().prepare(spec()).request.app_name)
    launch()
    with pytest.raises(PreflightError, match="still going"):
        launch(force=True)  # before: the stale Dict flags made this do nothing and exit 0
    world.results["fc-driver-1"] = RuntimeError("container lost")
    launch(force=True)
    assert record()["drivers"] == ["fc-driver-2"]
    assert FakeFunction.spawned[1][2][0]["stages"][0]["job"]["argv"][-2:] == ["--from", "data"]


def write(rec: dict) -> None:
    open_storage(STORAGE, check=False).write_text(f"_runner/runs/{rec['run_id']}/modal.json", json.dumps(rec))


def base_record(run_id="r1", **kw) -> dict:
    return {**modal_record.new_record(run_id, "nanochat-runner-0.1.0-x", None, STORAGE, "fc-d1", []), **kw}


def test_state_follows_hand_overs_to_the_end_and_is_kept(world, token_env):
    write(base_record())
    backend = ModalBackend()
    assert backend.describe(HANDLE).state == State.RUNNING
    world.results["fc-d1"] = {"handed_over_to": "fc-d2", "calls": [{"stage": "base", "call_id": "fc-s1", "retries": 10}], "budget_left": 9}
    info = backend.describe(HANDLE)
    assert info.state == State.RUNNING and record()["drivers"] == ["fc-d1", "fc-d2"] and "fc-s1" in record()["calls"]
    world.results["fc-d2"] = {"exit_code": 3, "reason": "", "calls": [{"stage": "base", "call_id": "fc-s1", "exit_code": 0}], "budget_left": 9}
    info = backend.describe(HANDLE)
    assert info.state == State.SUCCEEDED and info.exit_code == 3 and record()["finished_at"]
    world.results.clear()
    world.asked.clear()
    assert backend.describe(HANDLE).state == State.SUCCEEDED and world.asked == []  # the record answers; Modal is not asked


def test_an_unreachable_modal_records_nothing_and_a_cancelled_driver_reads_cancelled(world, token_env):
    write(base_record())
    world.results["fc-d1"] = modal.exception.ConnectionError("network down")
    info = ModalBackend().describe(HANDLE)
    assert info.state == State.RUNNING and "could not be asked" in info.detail and record()["state"] == "running"
    world.results["fc-d1"] = modal.exception.InputCancellation("cancelled")
    assert ModalBackend().describe(HANDLE).state == State.CANCELLED and record()["state"] == "cancelled"


def test_status_lists_finished_old_and_broken_runs_without_crashing(world, token_env, monkeypatch):
    write(base_record("done", state="succeeded", exit_code=0))
    write(base_record("expired"))
    write({"run_id": "old", "state": "weird", "calls": {"x": True}})  # an older or foreign record
    open_storage(STORAGE, check=False).write_text("_runner/runs/garbage/modal.json", "{not json")
    world.results["fc-d1"] = modal.exception.OutputExpiredError()
    monkeypatch.setenv("RUNNER_STORAGE", STORAGE)
    result = CliRunner().invoke(main, ["status", "--backend", "modal"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1] for line in result.output.splitlines()[1:]}
    assert rows == {"done": "succeeded", "expired": "unknown", "old": "unknown", "garbage": "unknown"}


def test_down_cancels_every_recorded_call_and_says_which(world, token_env, capsys):
    write(base_record(drivers=["fc-d1", "fc-d2"], calls={"fc-s1": {"stage": "base", "exit_code": 0}}))
    world.graphs["fc-d2"] = [InputInfo("in-1", "fc-d2", "ta-1", InputStatus.PENDING, "driver", "modal_app", [
        InputInfo("in-2", "fc-s2", "ta-2", InputStatus.PENDING, "gpu_phase", "modal_app", [])])]
    info = ModalBackend().cancel(HANDLE)
    assert [c for c, _ in world.cancelled] == ["fc-d1", "fc-d2", "fc-s1", "fc-s2"] and all(t for _, t in world.cancelled)
    assert info.state == State.CANCELLED and record()["cancelled"] == ["fc-d1", "fc-d2", "fc-s1", "fc-s2"]
    assert "cancelled 4 Modal call(s): fc-d1 (driver), fc-d2 (driver), fc-s1 (base), fc-s2 (gpu_phase)" in capsys.readouterr().err


def entry(call: str, minute: int, text: str) -> LogEntry:
    return LogEntry(message=text, timestamp=T0 + timedelta(minutes=minute), source="stdout", object_id=call, context_ids=[])


def test_logs_are_modals_logs_of_every_call_in_time_order(world, token_env):
    write(base_record(calls={"fc-s1": {"stage": "base"}}))
    world.logs = {"fc-d1": [entry("fc-d1", 0, "driver: stage base started"), entry("fc-d1", 9, "driver: done\n")],
                  "fc-s1": [entry("fc-s1", 1, "image pulled\n"), entry("fc-s1", 2, "step 1\n")]}
    world.results["fc-d1"] = {"exit_code": 0, "calls": []}
    lines = list(ModalBackend().logs(HANDLE))
    assert lines == ["driver: stage base started\n", "image pulled\n", "step 1\n", "driver: done\n"]
    assert list(ModalBackend().logs(HANDLE, tail=2)) == ["step 1\n", "driver: done\n"]


def test_logs_follow_until_the_run_ends(world, token_env, monkeypatch):
    write(base_record())
    world.logs = {"fc-d1": [entry("fc-d1", 0, "one\n")]}
    naps = []

    def nap(seconds):  # the run ends while the follower waits
        naps.append(seconds)
        world.logs["fc-d1"].append(entry("fc-d1", 5, "two\n"))
        world.results["fc-d1"] = {"exit_code": 0, "calls": []}

    from backends import modal_watch

    store = modal_record.RecordStore(STORAGE)
    lines = list(modal_watch.logs(store, store.read("r1"), modal, HANDLE, follow=True, sleep=nap))
    assert lines == ["one\n", "two\n"] and len(naps) == 1


def test_logs_fall_back_to_the_nodes_logs_in_storage(world, token_env):
    write(base_record())
    open_storage(STORAGE, check=False).write_text("_runner/runs/r1/logs/base.log", "node: base started\n")
    world.logs = modal.exception.PermissionDeniedError("no logs for you")
    lines = list(ModalBackend().logs(HANDLE))
    assert "Modal's logs are not available" in lines[0] and lines[1:] == ["node: base started\n"]


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")


def test_handles_name_their_storage_and_a_bare_id_reads_runner_storage(monkeypatch):
    assert modal_record.parse_handle("modal://r1@s3://bucket-1/x") == ("r1", "s3://bucket-1/x", None)
    assert modal_record.parse_handle(modal_record.make_handle("r1", "modal://v/p", "prod")) == ("r1", "modal://v/p", "prod")
    monkeypatch.setenv("RUNNER_STORAGE", "modal://v/p")
    assert modal_record.parse_handle("modal://r1") == ("r1", "modal://v/p", None)
    monkeypatch.delenv("RUNNER_STORAGE")
    with pytest.raises(modal_record.BackendError, match="which storage"):
        modal_record.parse_handle("modal://r1")
    assert modal_request  # the request module is what launch deploys from


def test_the_commands_end_to_end_with_the_handle_alone(world, token_env):
    """`runner up -d` prints the handle; `status`, `logs` and `down` work from it alone, as from another terminal."""
    FakeFunction.deployed.add(ModalBackend().prepare(spec()).request.app_name)
    up = CliRunner().invoke(main, ["up", "--backend", "modal", "--smoke", "--storage", STORAGE, "--run-id", "r1", "-d"])
    assert up.exit_code == 0, up.output
    handle = up.output.strip().splitlines()[-1]
    assert handle == HANDLE
    world.logs = {"fc-driver-1": [entry("fc-driver-1", 0, "driver: stage prep started as call fc-9\n")]}
    status = CliRunner().invoke(main, ["status", handle])
    assert status.exit_code == 0 and "state:    running" in status.output, status.output
    assert CliRunner().invoke(main, ["logs", handle]).output == "driver: stage prep started as call fc-9\n"
    down = CliRunner().invoke(main, ["down", handle])
    assert down.exit_code == 0 and "cancelled" in down.output and world.cancelled == [("fc-driver-1", True)], down.output
