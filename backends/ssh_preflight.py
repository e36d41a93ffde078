"""Preflight of an SSH host, before anything is installed there: GPUs, driver, free disk, Docker, and the mode.

One read-only script gathers the facts in a single round trip (`nvidia-smi --query-gpu`, `docker info`, `df`
of the storage and scratch folders); the functions below turn them into notes for the log, the mode to use
(`docker` when the host's Docker has the NVIDIA runtime, else `bare`), or a `PreflightError` that says how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import preflight
from .base import PreflightError
from .ssh_conn import q

# CUDA 12.8 (the image's torch) needs an NVIDIA driver of at least 570.26 on Linux.
MIN_DRIVER = (570, 26)
MIN_DRIVER_TEXT = "570.26"
MIN_MEMORY_GIB = 79  # an H100 80GB reports 81559 MiB
DOCKER_FIXES = [
    "Install Docker and the NVIDIA container toolkit on the host "
    "(https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html), then "
    "`sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker`, or",
    "run without Docker: --mode bare installs uv, nanochat and the runner under ~/.nanochat-runner on the host.",
]


@dataclass
class Gpu:
    index: str
    name: str
    memory_mib: int
    driver: str


@dataclass
class Facts:
    home: str = ""
    uid: str = ""
    gid: str = ""
    nvidia_smi: str = ""
    nvidia_smi_exit: int | None = None
    gpus: list[Gpu] = field(default_factory=list)
    gpu_errors: list[str] = field(default_factory=list)
    docker: str = ""
    docker_exit: int | None = None
    docker_info: str = ""
    disks: list[tuple[str, str, int, str]] = field(default_factory=list)  # role, device, free bytes, path
    writable: dict[str, bool] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)  # role -> the absolute path on the host

    @property
    def docker_has_nvidia(self) -> bool:
        return self.docker_exit == 0 and '"nvidia"' in self.docker_info


def facts_script(places: dict[str, str]) -> str:
    """A read-only bash script printing key=value facts; `places` maps a role to a host path (relative: to $HOME)."""
    lines = [
        'echo "home=$HOME"; echo "uid=$(id -u)"; echo "gid=$(id -g)"',
        "if smi=$(command -v nvidia-smi); then",
        '  echo "nvidia_smi=$smi"',
        "  out=$(nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader,nounits 2>&1); code=$?",
        "  printf '%s\\n' \"$out\" | sed 's/^/gpu=/'; echo \"nvidia_smi_exit=$code\"",
        "fi",
        "if command -v docker >/dev/null 2>&1; then",
        '  echo "docker=$(command -v docker)"',
        "  out=$(docker info --format '{{json .Runtimes}} {{.ServerVersion}}' 2>&1); code=$?",
        '  echo "docker_exit=$code"; echo "docker_info=$(printf %s "$out" | head -c 600 | tr "\\n" " ")"',
        "fi",
    ]
    for role, path in places.items():
        lines += [
            f"p={q(path)}",
            'case $p in /*) ;; "~") p=$HOME ;; "~/"*) p=$HOME/${p#"~/"} ;; *) p=$HOME/$p ;; esac',
            "e=$p; while [[ ! -e $e ]]; do e=$(dirname \"$e\"); done",
            f'echo "path={role}|$p"',
            f'echo "disk={role}|$(stat -c %d "$e")|$(df -PB1 "$e" | awk \'NR==2 {{print $4}}\')|$p"',
            f'if [[ -w $e ]]; then echo "writable={role}|1"; else echo "writable={role}|0"; fi',
        ]
    return "\n".join(lines) + "\n"


def parse_facts(text: str) -> Facts:
    facts = Facts()
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key in ("home", "uid", "gid", "nvidia_smi", "docker", "docker_info"):
            setattr(facts, key, value.strip())
        elif key in ("nvidia_smi_exit", "docker_exit"):
            setattr(facts, key, int(value) if value.strip().isdigit() else None)
        elif key == "gpu":
            cells = [c.strip() for c in value.split(",")]
            if len(cells) == 4 and cells[2].isdigit():
                facts.gpus.append(Gpu(cells[0], cells[1], int(cells[2]), cells[3]))
            elif value.strip():
                facts.gpu_errors.append(value.strip())
        elif key == "disk":
            role, device, free, path = value.split("|", 3)
            facts.disks.append((role, device, int(free or 0), path))
        elif key == "writable":
            role, ok = value.split("|", 1)
            facts.writable[role] = ok == "1"
        elif key == "path":
            role, path = value.split("|", 1)
            facts.paths[role] = path
    return facts


def _driver_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())


def check_gpus(facts: Facts, wanted: int, target: str) -> str:
    """nvidia-smi answers, lists enough GPUs, and the driver is new enough for CUDA 12.8."""
    if not facts.nvidia_smi:
        raise PreflightError(
            f"{target} has no nvidia-smi on the PATH of an SSH session, so it has no usable NVIDIA driver (or it is "
            "not on the PATH). Nothing was installed.",
            ["Install the NVIDIA driver (570 or newer) on the host and check `nvidia-smi` lists the GPUs, or",
             "if it is installed elsewhere, put its folder on the PATH sshd gives sessions (e.g. `SetEnv PATH=...` "
             "in /etc/ssh/sshd_config), or", "pick a host with NVIDIA GPUs."],
        )
    if facts.nvidia_smi_exit != 0 or not facts.gpus:
        said = " ".join(facts.gpu_errors)[-400:] or "(no output)"
        raise PreflightError(f"nvidia-smi on {target} fails (exit {facts.nvidia_smi_exit}): {said}. Nothing was installed.",
                             ["Fix the driver on the host until `nvidia-smi` lists every GPU (a reboot after a driver "
                              "update often does it), then run this again."])
    if len(facts.gpus) < wanted:
        raise PreflightError(
            f"The run needs {wanted} GPUs but {target} has {len(facts.gpus)}: "
            + "; ".join(f"{g.index}: {g.name}" for g in facts.gpus) + ". Nothing was installed.",
            [f"Make a plan for {len(facts.gpus)} GPUs (--gpus {len(facts.gpus)}, when that is 1, 2, 4 or 8), or",
             "rent a host with more GPUs."],
        )
    driver = facts.gpus[0].driver
    if _driver_tuple(driver) < MIN_DRIVER:
        raise PreflightError(
            f"The NVIDIA driver on {target} is {driver}; CUDA 12.8 (the runner's torch) needs {MIN_DRIVER_TEXT} or newer.",
            ["Update the driver on the host (e.g. `sudo apt install nvidia-driver-570-server`), reboot, run this again."],
        )
    names = sorted({g.name for g in facts.gpus})
    smallest = min(g.memory_mib for g in facts.gpus[:wanted]) / 1024
    note = f"GPUs: {len(facts.gpus)} × {', '.join(names)} ({smallest:.0f} GiB each), driver {driver}"
    if smallest < MIN_MEMORY_GIB:
        # Not an error: smaller models fit; the recipes' device batch sizes are sized for 80 GB cards.
        note += f"; less than the {MIN_MEMORY_GIB} GiB the recipes' batch sizes assume, so d20 and up may run out of memory"
    return note


def choose_mode(facts: Facts, asked: str, target: str) -> tuple[str, str]:
    """(mode, why): `docker` needs Docker with the NVIDIA runtime; `auto` picks it when present, else `bare`."""
    if asked == "bare":
        return "bare", "bare (asked for with --mode bare)"
    if asked == "docker":
        if not facts.docker:
            raise PreflightError(f"--mode docker, but {target} has no `docker` command.", DOCKER_FIXES)
        if facts.docker_exit != 0:
            raise PreflightError(f"--mode docker, but Docker on {target} does not answer: {facts.docker_info.strip()[:300]}",
                                 ["Start it (`sudo systemctl start docker`) and let your user use it "
                                  "(`sudo usermod -aG docker $USER`), or set DOCKER_HOST for SSH sessions.", *DOCKER_FIXES[1:]])
        return "docker", "docker (asked for with --mode docker)" + ("" if facts.docker_has_nvidia else "; the engine lists no nvidia runtime, a GPU probe container decides")
    if facts.docker_has_nvidia:
        return "docker", "docker (Docker with the NVIDIA runtime is there; --mode bare to install without it)"
    why = "no docker" if not facts.docker else ("Docker does not answer" if facts.docker_exit != 0 else "Docker has no NVIDIA runtime")
    return "bare", f"bare ({why}; uv, nanochat and the runner go under ~/.nanochat-runner)"


def check_disk(plan, facts: Facts, target: str) -> list[str]:
    """Every place (storage folder, scratch) holds a full copy of what the plan writes; places on one disk share it."""
    for role, ok in facts.writable.items():
        if not ok:
            raise PreflightError(f"The {role} folder {facts.paths.get(role)} on {target} is not writable for {target.split('@')[0]}.",
                                 [f"Pick a folder the user can write to (--{'storage' if role == 'storage' else 'scratch'}), or fix its permissions."])
    need = preflight.disk_need(plan)
    by_device: dict[str, list[tuple[str, int, str]]] = {}
    for role, device, free, path in facts.disks:
        by_device.setdefault(device, []).append((role, free, path))
    notes = []
    for group in by_device.values():
        free = group[0][1]
        wanted = need["total"] * len(group)
        where = " and ".join(f"{role} ({path})" for role, _, path in group)
        if free < wanted:
            parts = ", ".join(f"{k} {v / preflight.GB:.1f} GB" for k, v in need.items() if k != "total")
            raise PreflightError(
                f"Not enough free disk on {target} for {plan.model}: {where} need about {wanted / preflight.GB:.1f} GB "
                f"({parts}, +10%), but only {free / preflight.GB:.1f} GB are free. Nothing was installed.",
                ["Free some space there, or", "point --scratch (and a folder --storage) at a bigger disk of the host, or use s3:// storage."],
            )
        notes.append(f"disk: {free / preflight.GB:.0f} GB free for {where}, about {wanted / preflight.GB:.1f} GB needed")
    return notes
