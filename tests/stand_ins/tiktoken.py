"""Stand-in for the `tiktoken` package: get_encoding() 'downloads' into TIKTOKEN_CACHE_DIR."""

import os

from _stand_in import download


def get_encoding(name: str):
    return download("tiktoken", name, os.environ.get("TIKTOKEN_CACHE_DIR", "/tmp/data-gym-cache"))
