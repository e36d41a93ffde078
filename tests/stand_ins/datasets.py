"""Stand-in for HuggingFace `datasets`: load_dataset() 'downloads' into the Arrow cache where the real one puts
it: <cache>/<org>___<name>/<config>/0.0.0/<revision>/, the cache being HF_DATASETS_CACHE, else $HF_HOME/datasets."""

import os

from _stand_in import download


# A repo with one named config loads it when no name is given; the cache folder is named after it.
ONLY_CONFIG = {"openai/openai_humaneval": "openai_humaneval"}


def load_dataset(path: str, name: str | None = None, **kwargs):
    name = name or ONLY_CONFIG.get(path)
    cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "datasets")
    folder = os.path.join(cache, path.replace("/", "___"), name or "default", "0.0.0", "stand-in")
    return download("datasets", f"{path}/{name or 'default'}", folder)
