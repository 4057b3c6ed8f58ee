"""The training loop: random augmented crops, AdamW with warmup and cosine decay, evaluation,
checkpoints that survive a kill -9, and several processes through torchrun (DDP).

A run folder holds `run_config.json` (what was asked), `metrics.jsonl`, `latest.json` (which
checkpoint is complete) and `step-XXXXXXX/` checkpoints: the model files of `checkpoint.py` plus
`optimizer.pt` (tensors only, loaded with weights_only=True) and `trainer.json`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .atomic_io import atomic_path, ensure_output_dir, write_json, write_text
from .augment import AugmentConfig
from .errors import DataError, UserFacingError

KEEP_CHECKPOINTS = 2
# [model] settings that a fine-tune (--init) may change: they shape training, not the weights.
FINE_TUNE_MODEL_FIELDS = ("dropout", "attention_dropout", "cross_attend_dropout")


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 16
    crop: int = 0  # tokens per crop incl. the last target; 0 = max_context + 1
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    z_loss: float = 1e-4
    eval_every: int = 500
    eval_crops: int = 64
    save_every: int = 500
    log_every: int = 20
    seed: int = 0
    num_workers: int = 2  # data-loader processes per training process
    # Share of crops drawn wholly inside works longer than a crop. Most corpus works are
    # short folk tunes; without this the long context is mostly other pieces.
    long_work_share: float = 0.0
    # Share of crops from each corpus (`source` of the prepared index: a folder's name or
    # "music21"), normalised; corpora not named get no crops. Empty: uniform over all tokens,
    # so the largest corpus dominates. This is how real performances make half the crops.
    source_weights: dict = field(default_factory=dict)
    # "auto": bfloat16 autocast on a GPU and on a CPU that computes bfloat16 natively
    # (AVX512-BF16 or AMX), else float32; "bfloat16" or "float32" to choose.
    precision: str = "auto"
    compile: bool = False


@dataclass
class RunConfig:
    model: dict = field(default_factory=dict)  # PerceiverARConfig fields; missing ones take defaults
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return {"model": dict(self.model), "train": asdict(self.train), "augment": asdict(self.augment)}


def _typed(cls, values: dict, section: str):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise UserFacingError(f"unknown setting(s) in [{section}]: {', '.join(sorted(unknown))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def _toml():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def _apply_override(raw: dict, override: str) -> None:
    """`table.key=value`, the value in TOML syntax (numbers, true/false, "strings")."""
    tomllib = _toml()
    name, sep, value = override.partition("=")
    table, dot, key = name.strip().partition(".")
    if not sep or not dot or not key:
        raise UserFacingError(f"--set wants TABLE.KEY=VALUE, got {override!r}")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word: take it as a string
    raw.setdefault(table, {})[key] = parsed


def load_run_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> RunConfig:
    """A TOML file with [model], [train] and [augment] tables (every key optional), then
    `table.key=value` overrides."""
    tomllib = _toml()
    raw: dict = {}
    name = "the settings"
    if path is not None:
        path = Path(path)
        name = path.name
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as error:
            raise UserFacingError(f"cannot read config {path}: {error.strerror or error}") from None
        except tomllib.TOMLDecodeError as error:
            raise UserFacingError(f"config {path} is not valid TOML: {error}") from None
    for override in overrides:
        _apply_override(raw, override)
    unknown = set(raw) - {"model", "train", "augment"}
    if unknown:
        raise UserFacingError(f"unknown table(s) in {name}: {', '.join(sorted(unknown))}")
    from .model import PerceiverARConfig

    model = raw.get("model", {})
    _typed(PerceiverARConfig, model, "model")  # validate names early
    return RunConfig(
        model=model,
        train=_typed(TrainConfig, raw.get("train", {}), "train"),
        augment=_typed(AugmentConfig, raw.get("augment", {}), "augment"),
    )


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1 + math.cos(math.pi * progress))


# ---- data ----------------------------------------------------------------------------------------


def source_mix(regions: dict, weights: dict, crop: int) -> tuple[list, np.ndarray]:
    """The corpora to draw crops from and their probabilities, from `train.source_weights`."""
    unknown = set(weights) - set(regions)
    if unknown:
        raise UserFacingError(f"train.source_weights names {', '.join(sorted(unknown))}, not in the data "
                              f"(its sources: {', '.join(sorted(regions))})")
    chosen = [(name, regions[name]) for name, weight in sorted(weights.items()) if weight > 0]
    short = [name for name, (start, end, _) in chosen if end - start < crop]
    if short:
        raise DataError(f"source(s) {', '.join(short)} hold fewer tokens than one crop ({crop:,})")
    if not chosen:
        raise UserFacingError("train.source_weights gives no source a weight above 0")
    p = np.asarray([weights[name] for name, _ in chosen], dtype=np.float64)
    return [region for _, region in chosen], p / p.sum()


def batch_for_step(stream, crop: int, cfg: TrainConfig, step: int, rank: int, augment, works=None,
                   mix: tuple[list, np.ndarray] | None = None) -> np.ndarray:
    """The batch of one step: seeded by (seed, rank, step), so a resumed run sees the same data.

    `mix` (from source_mix) first picks each crop's corpus, then the crop inside it."""
    from .data import sample_crop

    rng = np.random.default_rng([cfg.seed, rank, step])
    crops = []
    for _ in range(cfg.batch_size):
        region_stream, region_works = stream, works
        if mix is not None:
            start, end, spans = mix[0][int(rng.choice(len(mix[1]), p=mix[1]))]
            region_stream, region_works = stream[start:end], spans
        crops.append(sample_crop(region_stream, crop, rng, augment, works=region_works, long_share=cfg.long_work_share))
    return np.stack(crops)


def _batches(data_dir, crop, cfg: TrainConfig, augment, rank: int, start_step: int):
    """Batches from start_step on; with workers, worker w makes every W-th step and the
    DataLoader's round-robin keeps them in order."""
    from torch.utils.data import DataLoader, IterableDataset, get_worker_info

    from .data import TokenData

    class Steps(IterableDataset):
        def __iter__(self):
            info = get_worker_info()
            worker, workers = (info.id, info.num_workers) if info else (0, 1)
            data = TokenData(data_dir)
            stream, works = data.tokens("train"), data.work_spans("train")
            mix = source_mix(data.source_spans("train"), cfg.source_weights, crop) if cfg.source_weights else None
            for step in range(start_step + worker, cfg.steps, workers):
                yield torch.from_numpy(batch_for_step(stream, crop, cfg, step, rank, augment, works, mix))

    workers = cfg.num_workers
    return iter(DataLoader(Steps(), batch_size=None, num_workers=workers, persistent_workers=False,
                           prefetch_factor=4 if workers else None, pin_memory=False))


def _eval_crops(stream, crop: int, count: int) -> np.ndarray:
    """Fixed crops spread evenly over the validation stream, the same at every evaluation."""
    if len(stream) < crop:
        return np.zeros((0, crop), dtype=np.int64)
    starts = np.linspace(0, len(stream) - crop, num=min(count, max(1, len(stream) // crop * 4)), dtype=np.int64)
    return np.stack([np.asarray(stream[s : s + crop], dtype=np.int64) for s in starts])


def evaluate_crops(model, crops: np.ndarray, batch_size: int, device, autocast) -> float:
    if len(crops) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast():
        for i in range(0, len(crops), batch_size):
            batch = torch.from_numpy(crops[i : i + batch_size]).to(device)
            _, metrics = model.loss(batch)
            n = int((batch[:, 1:][:, -model.config.num_latents :] != 0).sum())
            total += metrics["nll"] * n
            count += n
    model.train(was_training)
    return total / max(1, count)


# ---- checkpoints ---------------------------------------------------------------------------------


def _latest(out: Path) -> Path | None:
    pointer = out / "latest.json"
    if not pointer.exists():
        return None
    folder = out / json.loads(pointer.read_text())["dir"]
    return folder if folder.is_dir() else None


def _save(out: Path, model, optimizer, step: int, state: dict, run_config: dict) -> None:
    from .checkpoint import save_checkpoint

    folder = out / f"step-{step:07d}"
    if folder.exists():
        shutil.rmtree(folder)
    save_checkpoint(model, folder, metadata={"step": step, "tokens_seen": state["tokens_seen"], "run": run_config})
    with atomic_path(folder / "optimizer.pt") as tmp:
        torch.save(optimizer.state_dict(), tmp)
    write_json(folder / "trainer.json", {"step": step, **state})
    write_json(out / "latest.json", {"dir": folder.name, "step": step})  # the commit point
    for old in sorted(out.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)


def _trim_metrics(path: Path, step: int) -> None:
    """After a resume, drop lines logged after the checkpoint: they will be logged again."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    write_text(path, "".join(line + "\n" for line in kept))


# ---- the loop ------------------------------------------------------------------------------------


class LossForward(torch.nn.Module):
    """DDP's gradient hooks run on forward(); this makes the model's loss its forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, z_loss: float):
        return self.model.loss(ids, z_loss=z_loss)


def _distributed() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _pick_device(requested: str | None, local_rank: int):
    if requested in (None, "auto"):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise UserFacingError("--device cuda was asked for, but torch sees no GPU")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def train(
    run: RunConfig,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    init: str | os.PathLike | None = None,
    device: str | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume, or fine-tune from `init`) and return a summary of the run."""
    import contextlib

    from .checkpoint import load_checkpoint, read_config
    from .data import TokenData
    from .model import PerceiverAR, PerceiverARConfig

    rank, world, local_rank = _distributed()
    dev = _pick_device(device, local_rank)
    # The zero-initialised head makes the first gradients tiny: denormal floats make CPU
    # steps ~100x slower until they grow. Flushing them to zero changes nothing else.
    torch.set_flush_denormal(True)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    lead = rank == 0
    out = ensure_output_dir(out_dir)
    data = TokenData(data_dir)
    cfg = run.train

    model_fields = dict(run.model)
    if init is not None:  # fine-tuning: the architecture is the checkpoint's; regularisation may change
        model_fields = {**read_config(init)["model"],
                        **{k: v for k, v in run.model.items() if k in FINE_TUNE_MODEL_FIELDS}}
    model_cfg = PerceiverARConfig.from_dict(model_fields)
    crop = cfg.crop or model_cfg.max_context + 1
    if crop < model_cfg.num_latents + 1:
        raise UserFacingError(f"crop {crop} is shorter than num_latents + 1 = {model_cfg.num_latents + 1}")
    train_tokens = data.tokens("train")
    if len(train_tokens) < crop:
        crop = len(train_tokens)
        if crop < model_cfg.num_latents + 1:
            raise DataError(f"{data_dir} has only {len(train_tokens):,} training tokens; "
                            f"need at least {model_cfg.num_latents + 1} (num_latents + 1)")
    if cfg.source_weights:  # checked here: the data-loader workers would fail with a traceback
        source_mix(data.source_spans("train"), cfg.source_weights, crop)
    resolved = {"model": model_cfg.to_dict(), "train": asdict(cfg), "augment": asdict(run.augment),
                "init": str(init) if init else None, "crop": crop, "world_size": world}
    resolved = json.loads(json.dumps(resolved))  # as it reads back from run_config.json

    torch.manual_seed(cfg.seed + rank)
    model = PerceiverAR(model_cfg)
    if init is not None:
        model.load_state_dict(load_checkpoint(init).model.state_dict())
    model.to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=tuple(cfg.betas), fused=dev.type in ("cuda", "cpu"),
    )

    state = {"tokens_seen": 0, "elapsed_s": 0.0, "best_val_nll": None}
    start_step = 0
    latest = _latest(out)
    if latest is not None:
        saved = json.loads((out / "run_config.json").read_text())
        same = ("model", "train", "augment", "crop")
        if {k: saved.get(k) for k in same} != {k: resolved[k] for k in same}:
            raise UserFacingError(f"{out} holds a run with other settings; resume with the same config or use a new --out")
        model.load_state_dict(load_checkpoint(latest).model.state_dict())
        optimizer.load_state_dict(torch.load(latest / "optimizer.pt", map_location=dev, weights_only=True))
        trainer = json.loads((latest / "trainer.json").read_text())
        start_step = trainer.pop("step")
        state.update(trainer)
        if lead:
            _trim_metrics(out / "metrics.jsonl", start_step)
            print(f"resuming {out} from step {start_step}", file=sys.stderr)
    elif lead:
        write_json(out / "run_config.json", resolved)

    forward = LossForward(model)
    if world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=[local_rank] if dev.type == "cuda" else None)
    if cfg.compile:
        forward = torch.compile(forward)

    use_bfloat16 = _use_bfloat16(cfg.precision, dev)

    def autocast():
        if use_bfloat16:
            return torch.autocast(dev.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    val_crops = _eval_crops(data.tokens("val"), crop, cfg.eval_crops) if lead else None
    metrics_file = open(out / "metrics.jsonl", "a") if lead else None
    board = _tensorboard(out) if lead else None
    batches = _batches(data.root, crop, cfg, run.augment, rank, start_step)

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=start_step, disable=not (progress and lead), unit="step", dynamic_ncols=True)
    started = time.time()
    elapsed_before = state["elapsed_s"]
    targets_per_step = cfg.batch_size * min(model_cfg.num_latents, crop - 1) * world
    step = start_step
    window_tokens, window_start = 0, time.time()
    stopped_early = False
    model.train()
    try:
        while step < cfg.steps:
            lr = learning_rate(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches).to(dev, non_blocking=True)
            # Dropout draws from a generator seeded by the step: a resumed run is the same run.
            torch.manual_seed(cfg.seed * 1_000_003 + rank * 7_919 + step)
            with autocast():
                loss, metrics = forward(batch, cfg.z_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            optimizer.step()
            step += 1
            state["tokens_seen"] += targets_per_step
            window_tokens += targets_per_step
            state["elapsed_s"] = elapsed_before + time.time() - started
            if lead and (step % cfg.log_every == 0 or step == cfg.steps):
                rate = window_tokens / max(1e-9, time.time() - window_start)
                window_tokens, window_start = 0, time.time()
                record = {"step": step, "loss": float(loss.detach()), **metrics, "lr": lr, "grad_norm": grad_norm,
                          "tokens_seen": state["tokens_seen"], "tokens_per_s": round(rate, 1),
                          "elapsed_s": round(state["elapsed_s"], 1)}
                _log(metrics_file, board, record)
                bar.set_postfix(loss=f"{metrics['nll']:.3f}", tok_s=f"{rate:,.0f}")
            bar.update(1)
            out_of_time = _agree(max_minutes is not None and time.time() - started > max_minutes * 60, world, dev)
            if lead and (step % cfg.eval_every == 0 or step == cfg.steps or out_of_time):
                val = evaluate_crops(model, val_crops, cfg.batch_size, dev, autocast)
                if not math.isnan(val):
                    state["best_val_nll"] = val if state["best_val_nll"] is None else min(state["best_val_nll"], val)
                _log(metrics_file, board, {"step": step, "val_nll": val, "tokens_seen": state["tokens_seen"]})
            if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
                if lead:
                    _save(out, model, optimizer, step, state, resolved)
                if world > 1:
                    torch.distributed.barrier()
            if out_of_time:
                stopped_early = True
                break
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
        if board:
            board.close()
    if world > 1:
        torch.distributed.destroy_process_group()
    return {"step": step, "steps": cfg.steps, "stopped_early": stopped_early, "out": str(out), **state}


def _use_bfloat16(precision: str, dev) -> bool:
    if precision not in ("auto", "bfloat16", "float32"):
        raise UserFacingError(f"train.precision is 'auto', 'bfloat16' or 'float32', not {precision!r}")
    if precision != "auto":
        return precision == "bfloat16"
    if dev.type == "cuda":
        return True
    from .cpu_precision import native_bfloat16

    return dev.type == "cpu" and native_bfloat16()


def _agree(flag: bool, world: int, dev) -> bool:
    """Every process stops at the same step, or DDP would wait forever for the ones gone."""
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=dev)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _log(file, board, record: dict) -> None:
    file.write(json.dumps(record) + "\n")
    file.flush()
    if board is not None:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                board.add_scalar(key, value, record["step"])


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def final_checkpoint(out_dir: str | os.PathLike) -> Path:
    latest = _latest(Path(out_dir))
    if latest is None:
        raise UserFacingError(f"{out_dir} has no complete checkpoint yet")
    return latest
