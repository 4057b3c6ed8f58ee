"""Training: a tiny model learns real music; kill -9 and resume is the same run; DDP; fine-tuning; eval."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app.cli import main
from perceiver_music.checkpoint import load_checkpoint, save_checkpoint
from perceiver_music.errors import UserFacingError
from perceiver_music.evaluate import evaluate, load_eval_works, unigram_nll, uniform_nll
from perceiver_music.model import PerceiverAR, PerceiverARConfig
from perceiver_music.train import final_checkpoint, load_run_config, train

TINY_TOML = """
[model]
max_context = 256
num_latents = 64
d_model = 64
n_heads = 2
cross_heads = 2
n_layers = 2
dropout = 0.0
cross_attend_dropout = 0.25

[train]
steps = {steps}
batch_size = 8
lr = 3e-3
warmup = 20
eval_every = {eval_every}
save_every = {save_every}
log_every = 10
eval_crops = 16
num_workers = 0

[augment]
transpose = 3
humanize = 0.0
"""


def tiny_config(tmp_path: Path, steps=200, eval_every=50, save_every=50) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML.format(steps=steps, eval_every=eval_every, save_every=save_every))
    return path


def cli_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_tiny_model_learns_a_tiny_real_corpus(tiny_data, tmp_path):
    run = tmp_path / "run"
    summary = train(load_run_config(tiny_config(tmp_path)), tiny_data, run, device="cpu", progress=False)
    assert summary["step"] == 200
    val = [m["val_nll"] for m in metrics(run) if "val_nll" in m]
    assert len(val) == 4
    # From a uniform guess (ln 391 = 5.97 nats) to well below a unigram model of the same data
    # (about 4.8 nats here): it learned more than which tokens are common.
    works, train_tokens = load_eval_works(tiny_data, "val")
    assert val[-1] < uniform_nll() - 1.5
    assert val[-1] < unigram_nll(train_tokens, works) - 0.4
    train_nll = [m["nll"] for m in metrics(run) if "nll" in m]
    assert np.mean(train_nll[-3:]) < np.mean(train_nll[:3]) - 0.8


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_kill_9_then_resume_is_the_same_run(tiny_data, tmp_path):
    config = tiny_config(tmp_path, steps=60, eval_every=30, save_every=10)

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "app.cli", "train", "--config", str(config), "--data", str(tiny_data),
                "--out", str(out), "--device", "cpu", "--quiet"]

    straight = tmp_path / "straight"
    done = subprocess.run(command(straight), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        pointer = killed / "latest.json"
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped_at = json.loads((killed / "latest.json").read_text())["step"]
    assert 20 <= stopped_at < 60

    resumed = subprocess.run(command(killed), env=cli_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed} from step {stopped_at}" in resumed.stderr
    a, b = _weights(final_checkpoint(straight)), _weights(final_checkpoint(killed))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    steps = [m["step"] for m in metrics(killed) if "nll" in m]
    assert steps == sorted(set(steps))  # no step logged twice


def test_resume_refuses_other_settings(tiny_data, tmp_path):
    run = tmp_path / "run"
    train(load_run_config(tiny_config(tmp_path, steps=10, save_every=10)), tiny_data, run, device="cpu", progress=False)
    other = load_run_config(tiny_config(tmp_path, steps=20, save_every=10))
    with pytest.raises(UserFacingError, match="other settings"):
        train(other, tiny_data, run, device="cpu", progress=False)


def test_two_processes_with_gloo(tiny_data, tmp_path):
    config = tiny_config(tmp_path, steps=20, eval_every=20, save_every=20)
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "app.cli", "train", "--config", str(config), "--data", str(tiny_data), "--out", str(out),
               "--device", "cpu", "--quiet"]
    proc = subprocess.run(command, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((out / "run_config.json").read_text())
    assert saved["world_size"] == 2
    tokens = [m["tokens_seen"] for m in metrics(out) if "nll" in m]
    assert tokens[-1] == 20 * 8 * 64 * 2  # steps x batch x latents x processes
    assert math.isfinite(metrics(out)[-1]["val_nll"])


def test_fine_tune_from_a_checkpoint(tiny_data, tiny_corpus, tmp_path, capsys):
    base = tmp_path / "base"
    model = PerceiverAR(PerceiverARConfig(max_context=256, num_latents=64, d_model=64, n_heads=2, cross_heads=2, n_layers=2))
    torch.nn.init.normal_(model.head.weight, std=0.02)
    save_checkpoint(model, base)
    finetune_data = tmp_path / "mine"
    assert main(["prepare", str(tiny_corpus / "chorales"), "-o", str(finetune_data), "--workers", "1", "--quiet"]) == 0
    config = tmp_path / "ft.toml"
    config.write_text("[model]\nattention_dropout = 0.0\nd_model = 96\n"  # regularisation may change, the shape not
                      "[train]\nsteps = 20\nbatch_size = 4\nlr = 1e-3\nwarmup = 5\neval_every = 20\nsave_every = 20\nnum_workers = 0\n")
    out = tmp_path / "ft"
    assert main(["train", "--config", str(config), "--data", str(finetune_data), "--out", str(out),
                 "--init", str(base), "--device", "cpu", "--quiet"]) == 0
    tuned = load_checkpoint(final_checkpoint(out))
    assert tuned.config.d_model == model.config.d_model == 64  # the architecture comes from the checkpoint
    assert tuned.config == dataclasses.replace(model.config, attention_dropout=0.0)
    assert json.loads((out / "run_config.json").read_text())["init"] == str(base)
    moved = (tuned.model.head.weight - model.head.weight).abs().max()
    assert 0 < moved < 1  # started from those weights and learned a little
    assert "finished step 20/20" in capsys.readouterr().out


def test_eval_of_a_known_model_gives_the_known_figure(tiny_data, tmp_path):
    """A model with a zero output head predicts uniformly: exactly ln(391) nats at every context."""
    model = PerceiverAR(PerceiverARConfig(max_context=256, num_latents=64, d_model=64, n_heads=2, cross_heads=2, n_layers=2))
    works, train_tokens = load_eval_works(tiny_data, "val")
    report = evaluate(model, works, contexts=[64, 128, 256], train_tokens=train_tokens)
    assert report.nll == pytest.approx(math.log(391), abs=1e-4)
    assert [row.context for row in report.by_context] == [64, 128, 256]
    for row in report.by_context:
        assert row.nll == pytest.approx(math.log(391), abs=1e-4)
        assert row.tokens == sum(len(w) - 1 for w in works)
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=391) + 1.0
    counts[0] = counts[2] = 0
    targets = np.concatenate([w[1:] for w in works])
    with np.errstate(divide="ignore"):
        expected = float(-np.log(counts / counts.sum())[targets].mean())
    assert report.unigram_nll == pytest.approx(expected, abs=1e-4)


def test_eval_scores_each_token_with_the_context_it_is_allowed(tiny_data):
    """Context limit C must change nothing for tokens with fewer than C before them, and the
    scores must equal a plain forward that predicts them."""
    from perceiver_music.evaluate import score_tokens

    torch.manual_seed(0)
    model = PerceiverAR(PerceiverARConfig(max_context=256, num_latents=64, d_model=64, n_heads=2, cross_heads=2, n_layers=2, dropout=0.0))
    torch.nn.init.normal_(model.head.weight, std=0.5)
    model.eval()
    works, _ = load_eval_works(tiny_data, "val")
    ids = works[0][:300]
    (scores,) = score_tokens(model, [ids], context=128, batch_size=4, device="cpu")
    # Target 200 is scored in a chunk of `stride` targets (128 // 4 = 32), with a window that
    # ends just before the chunk's last target and holds at most 128 tokens.
    stride = 32
    first = 1 + ((200 - 1) // stride) * stride
    count = min(stride, len(ids) - first)
    end = first + count - 1
    start = max(0, end - 128)
    logits = model(torch.as_tensor(ids[start:end])[None], num_latents=count)[0]
    expected = torch.nn.functional.cross_entropy(logits, torch.as_tensor(ids[first : first + count]), reduction="none")
    np.testing.assert_allclose(scores[first - 1 : first - 1 + count], expected.detach().numpy(), rtol=1e-4, atol=1e-5)


def test_config_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 3\n")
    assert main(["train", "--config", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "unknown setting(s) in [train]: stepz" in capsys.readouterr().err
    bad.write_text("[train\n")
    assert main(["train", "--config", str(bad), "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_eval_by_source_with_a_baseline_on_the_same_tokens(tiny_corpus, tmp_path, capsys):
    """A folder's subfolders are its corpora: one report each and one for all, each next to a
    unigram model of its own tokens; a baseline checkpoint is scored on exactly those tokens."""
    uniform = PerceiverAR(PerceiverARConfig(max_context=256, num_latents=64, d_model=64, n_heads=2, cross_heads=2, n_layers=2))
    save_checkpoint(uniform, tmp_path / "uniform")
    torch.manual_seed(1)
    other = PerceiverAR(uniform.config)
    torch.nn.init.normal_(other.head.weight, std=0.3)
    save_checkpoint(other, tmp_path / "other")
    assert main(["eval", str(tmp_path / "other"), "--data", str(tiny_corpus), "--by-source", "--contexts", "64,256",
                 "--baseline", str(tmp_path / "uniform"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    reports, baseline = result["reports"], result["baseline"]["reports"]
    assert set(reports) == {"all", "chorales", "piano"} == set(baseline)
    assert reports["chorales"]["tokens"] + reports["piano"]["tokens"] == reports["all"]["tokens"]
    for name, report in baseline.items():
        assert report["tokens"] == reports[name]["tokens"]
        assert report["nll"] == pytest.approx(math.log(391), abs=1e-4)
        assert report["nll"] > report["unigram_self_nll"] > 1.0  # the unigram of these very tokens
        assert reports[name]["nll"] != pytest.approx(report["nll"], abs=1e-3)
    assert result["nll"] == reports["all"]["nll"]  # the old top-level figures stay


def test_precision_setting_is_checked(tiny_data, tmp_path, capsys):
    config = tiny_config(tmp_path, steps=2)
    assert main(["train", "--config", str(config), "--data", str(tiny_data), "--out", str(tmp_path / "o"),
                 "--set", "train.precision=half", "--quiet"]) == 2
    assert "train.precision is 'auto', 'bfloat16' or 'float32'" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--data", str(tiny_data), "--out", str(tmp_path / "o"),
                 "--set", "train.source_weights={nope = 1.0}", "--quiet"]) == 2
    assert "names nope, not in the data" in capsys.readouterr().err


def test_bfloat16_training_on_the_cpu_learns(tiny_data, tmp_path):
    from perceiver_music.train import RunConfig, TrainConfig, _use_bfloat16

    assert _use_bfloat16("float32", torch.device("cpu")) is False
    assert _use_bfloat16("bfloat16", torch.device("cpu")) is True
    run = load_run_config(tiny_config(tmp_path, steps=60, eval_every=60, save_every=60),
                          ["train.precision=\"bfloat16\"", "train.lr=3e-3"])
    assert isinstance(run, RunConfig) and isinstance(run.train, TrainConfig)
    summary = train(run, tiny_data, tmp_path / "bf16", device="cpu", progress=False)
    logged = metrics(tmp_path / "bf16")
    losses = [m["nll"] for m in logged if "nll" in m]
    assert summary["step"] == 60 and losses[-1] < losses[0] - 1.0
