"""`runner report` and `runner ls` from a test-double run; the live status summary."""

from __future__ import annotations

import json
import struct

from click.testing import CliRunner

from harness import base_env, make_double, node_run, preseed_files, upload_tree
from runner.cli import main
from runner.live import format_line, summarize
from runner.runlogs import load_run
from runner.storage import open_storage


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG signature, then the IHDR chunk with width and height
    return struct.unpack(">II", data[16:24])


def finished_run(tmp_path, extra_env=None):
    storage = tmp_path / "storage"
    preseed_files(storage)
    result = node_run(str(storage), make_double(tmp_path), base_env(tmp_path, extra_env))
    assert result.code in (0, 3), result.output
    return storage


def test_report_has_metrics_costs_and_plots(tmp_path):
    storage = finished_run(tmp_path)
    out = CliRunner().invoke(main, ["report", "test-run", "--storage", str(storage), "--html"])
    assert out.exit_code == 0, out.output
    folder = storage / "_runner/runs/test-run/report"
    text = (folder / "report.md").read_text()
    for expected in ("state: **succeeded**", "| base/base_train | val_bpb | 0.8293 |", "| base/base_eval | core |", "### Chat evaluations",
                     "| GSM8K |", "compile cache: attempt 1: miss", "newest complete checkpoint: step 20 of base_checkpoints/d4",
                     "## nanochat's own report", "Node time:"):
        assert expected in text, expected
    data = json.loads((folder / "report.json").read_text())
    # base_train prints 20 progress lines and a validation line at steps 0, 10 and 20.
    assert data["series"]["base/base_train"] == {"loss": 20, "val_bpb": 3, "tok_per_sec": 20}
    for name in ("loss.png", "val_bpb.png", "tok_per_sec.png"):
        width, height = png_size((folder / name).read_bytes())
        assert (width, height) == (700, 360)
    page = (folder / "report.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 3 and "<table>" in page


def test_report_counts_eval_failures_and_resumes(tmp_path):
    storage = finished_run(tmp_path, {"NANOCHAT_DOUBLE_FAIL": "chat_eval:sft"})
    CliRunner().invoke(main, ["report", "test-run", "--storage", str(storage)])
    text = (storage / "_runner/runs/test-run/report/report.md").read_text()
    assert "state: **succeeded_with_eval_failures**" in text and "evaluation failures: sft.chat_eval_sft (exit 1)" in text


def test_report_of_an_unknown_run_says_which_exist(tmp_path):
    storage = finished_run(tmp_path)
    out = CliRunner().invoke(main, ["report", "nope", "--storage", str(storage)])
    assert out.exit_code == 1 and "No run 'nope'" in out.output and "test-run" in out.output


def test_live_summary_line(tmp_path):
    storage = finished_run(tmp_path)
    store = open_storage(str(storage))
    status, plan = load_run(store, "test-run")
    summary = summarize(store, status, plan)
    assert summary["state"] == "succeeded" and summary["newest_checkpoint"]["step"] == 20
    line = format_line(summary)
    assert line.startswith("test-run [succeeded]") and "checkpoint 20" in line and "modal $" in line


def test_ls_lists_runs_on_s3(s3_bucket, s3_env, tmp_path):
    local = finished_run(tmp_path)
    upload_tree(local, s3_bucket.url, s3_bucket.storage_options, under="_runner")
    out = CliRunner().invoke(main, ["ls", s3_bucket.url])
    assert out.exit_code == 0, out.output
    assert "test-run" in out.output and "succeeded" in out.output and "report" in out.output and "smoke" in out.output
    rows = json.loads(CliRunner().invoke(main, ["ls", s3_bucket.url, "--json"]).output)
    assert rows[0]["run_id"] == "test-run" and rows[0]["last_phase"] == "report"
