"""A pre-seeded item counts as present only with its manifest, written after its files (a real local folder, the
real CLI, downloads from a file server on 127.0.0.1): an upload that was cut is fetched again, a partial hand copy
is named in an --offline run, and a hand copy vouched for with `{}` counts."""

from __future__ import annotations

import json

from harness import base_env, make_double, preseed_files, read_calls
from test_preseed import QUICK_RETRIES, file_server, plan_with_urls, run_plan  # noqa: F401 - file_server is a fixture

MANIFEST = "_runner/preseed/eval_bundle.json"


def test_an_item_whose_upload_was_cut_is_fetched_again(tmp_path, file_server):  # noqa: F811
    url, hits = file_server
    storage, double = tmp_path / "storage", make_double(tmp_path)
    preseed_files(storage)
    (storage / "eval_bundle/eval_meta_data.csv").unlink()  # the upload stopped after one file, before the manifest
    (storage / MANIFEST).unlink()
    result = run_plan(plan_with_urls(tmp_path, url), storage, double, base_env(tmp_path, {"STAND_IN_NETWORK": "down", **QUICK_RETRIES}))
    assert result.code == 0, result.output
    assert f"pre-seed eval_bundle: in storage without its manifest {storage}/{MANIFEST} (an upload that was cut" in result.output
    assert "fetching it again" in result.output
    assert hits == ["/eval_bundle.zip"]  # only the torn item; the whole ones were not fetched
    assert (storage / "eval_bundle/eval_meta_data.csv").is_file()
    manifest = json.loads((storage / MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["core.yaml", "eval_meta_data.csv"]
    assert any(c["module"] == "scripts.base_eval" for c in read_calls(tmp_path / "calls.jsonl"))


def test_a_partial_hand_copy_is_named_offline_and_a_vouched_one_counts(tmp_path):
    storage, double = tmp_path / "storage", make_double(tmp_path)
    preseed_files(storage)
    (storage / "eval_bundle/eval_meta_data.csv").unlink()  # the manifest lists it: the copy is partial
    env = base_env(tmp_path, {"STAND_IN_NETWORK": "down"})
    plan = plan_with_urls(tmp_path, "http://127.0.0.1:9")
    result = run_plan(plan, storage, double, env, "--offline")
    assert result.code == 0, result.output
    assert (f"--offline: eval_bundle is incomplete in storage: 1 of 2 files missing or of another size "
            f"(first: {storage}/eval_bundle/eval_meta_data.csv)") in result.output
    assert "skipped: base.base_eval: eval_bundle missing" in result.output
    assert not any(c["module"] == "scripts.base_eval" for c in read_calls(tmp_path / "calls.jsonl"))

    (storage / "eval_bundle/eval_meta_data.csv").write_text("Eval Task,Random baseline\n")
    (storage / MANIFEST).write_text("{}")  # copied by hand, manifest written last: counts as a whole
    again = run_plan(plan, storage, double, base_env(tmp_path, {"STAND_IN_NETWORK": "down", **QUICK_RETRIES}))
    assert again.code == 0, again.output  # nothing to fetch (the download URL is dead), and the skipped step runs
    assert "pre-seed eval_bundle" not in again.output
    assert any(c["module"] == "scripts.base_eval" for c in read_calls(tmp_path / "calls.jsonl"))
