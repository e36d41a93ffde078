"""Stand-in for HuggingFace `datasets`: load_dataset() 'downloads' into HF_HOME/datasets."""

import os

from _stand_in import download


def load_dataset(path: str, name: str | None = None, **kwargs):
    folder = os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "datasets")
    return download("datasets", f"{path}/{name or 'default'}", folder)
