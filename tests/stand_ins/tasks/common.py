"""Stand-in for nanochat's tasks/common.py at the latest pin: load_hub_dataset() writes $BASE/task_data/."""

import os

from _stand_in import download


def load_hub_dataset(repo_id: str, subset: str = "default", split: str = "train"):
    base = os.environ.get("NANOCHAT_BASE_DIR", os.path.expanduser("~/.cache/nanochat"))
    folder = os.path.join(base, "task_data", repo_id.replace("/", "--"), subset, split)
    download("task_data", f"{repo_id}/{subset}/{split}", folder)
    open(os.path.join(folder, "manifest.json"), "w").write("{}")
