"""nanochat's log lines at both pins become progress fields and metrics."""

from runner.progress import parse_line


def test_seed_base_train_line():
    progress, metrics = parse_line("step 00123/21400 (0.57%) | loss: 3.210000 | lrm: 1.00 | dt: 512.00ms | tok/sec: 1,234,567 | mfu: 48.10 | total time: 3.21m | eta: 180.5m")
    assert progress == {"step": 123, "total": 21400, "percent": 0.57, "loss": 3.21, "tok_per_sec": 1234567, "mfu": 48.1, "eta_min": 180.5}
    assert metrics == {}


def test_latest_base_train_line_says_bf16_mfu():
    progress, _ = parse_line("step 00010/05568 (0.18%) | loss: 7.1 | lrm: 1.00 | dt: 900.00ms | tok/sec: 1,100,000 | bf16_mfu: 51.20 | epoch: 1 pq: 0 rg: 3 | total time: 0.20m")
    assert progress["mfu"] == 51.2 and progress["total"] == 5568


def test_mid_train_line_has_no_total_and_seed_sft_is_capitalised():
    assert parse_line("step 00012 (40.00%) | loss: 2.5 | tok/sec: 9,000 | mfu: 30.00")[0]["percent"] == 40.0
    progress, _ = parse_line("Step 00003/00005 | Training loss: 1.250000| lrm: 1.000000| num_tokens: 1,024")
    assert progress == {"step": 3, "total": 5, "loss": 1.25}


def test_metrics():
    assert parse_line("Step 00250 | Validation bpb: 0.8123") == ({}, {"val_bpb": 0.8123})
    assert parse_line("Step 02000 | CORE metric: 0.2219")[1] == {"core": 0.2219}
    assert parse_line("ChatCORE metric: 0.3000")[1] == {"chatcore": 0.3}
    assert parse_line("GSM8K accuracy: 4.55%")[1] == {"gsm8k_acc": 0.0455}
    assert parse_line("ARC-Easy accuracy: 25.00%")[1] == {"arc_easy_acc": 0.25}
    assert parse_line("val bpb: 0.9000")[1] == {"val_bpb": 0.9}


def test_ordinary_output_is_ignored():
    assert parse_line("Step 00001 is not how nanochat prints progress") == ({}, {})
    assert parse_line("Downloading shard_00003.parquet...") == ({}, {})
