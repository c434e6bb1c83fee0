"""Training one fold and predicting with it.

    fit_fold(cfg, fold=0, data=FoldData(...), fold_dir=Path("runs/resnet18/x/fold0"))

Loss = cross-entropy(gender) + age_loss_weight * age loss (kit/age.py: regression on the age
standardised by the training fold's mean and std, or a label distribution over age bins).
With --ema-decay, an exponential moving average of the weights is what gets scored and kept: it
averages out the noise of the last steps, as a free ensemble along the trajectory.
Every epoch is scored on the held-out fold with the competition metric; the best epoch's weights
are kept (best.pt) and an epoch checkpoint (last.pt) lets an interrupted fold continue. Each
epoch's shuffling and augmentation draw from a generator seeded by (seed, fold, epoch), so a
resumed fold computes exactly what an uninterrupted one would.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from kit.age import AgeTarget
from kit.augment import prepare, to_device
from kit.config import TrainConfig, UserError
from kit.files import save_torch, write_csv
from kit.metric import Scores, score_probabilities
from kit.models import FaceModel, create_model

MIN_INFERENCE_BATCH = 256  # inference keeps no activations: large batches amortise per-call overhead


@dataclass
class FoldData:
    train: pd.DataFrame          # rows to learn from: id, gender, age, cache_index
    valid: pd.DataFrame          # held-out rows, same columns
    test: pd.DataFrame           # id, cache_index
    train_images: np.ndarray     # uint8 (N, H, W, 3), indexed by cache_index
    test_images: np.ndarray


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    scores: Scores
    oof: pd.DataFrame            # id, fold, gender, age, gender_prob, age_pred
    test: pd.DataFrame           # id, gender_prob, age_pred
    history: list[dict]
    cut_at_epoch: int | None = None   # set when a time limit stopped training early


# ----------------------------------------------------------------------------- device and precision

def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def flush_denormals_to_zero(device: torch.device) -> None:
    """Let the CPU treat floats below 1.2e-38 as zero (x86's FTZ/DAZ) in this thread and the threads it
    starts later: the command line calls it before torch starts its thread pool (kit/__main__.py).

    Pretrained weights make such values in activations and gradients, and x86 computes with them in
    microcode: fine-tuning dlib_age trained at 139 images/s on one core here against 215 with this on
    (and 265 from random init, which makes none). Nothing the metric can see is lost."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def pick_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs CUDA; use bf16 or fp32 on the CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: torch.device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()


class ImageSource:
    """Hands out uint8 batches on the device; on a GPU with room, the whole cache lives there."""

    def __init__(self, images: np.ndarray, device: torch.device, channels_last: bool):
        self.images, self.device, self.channels_last = images, device, channels_last
        self.on_device = None
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if images.nbytes < 0.3 * free:
                self.on_device = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        if self.on_device is not None:
            x = self.on_device[torch.as_tensor(rows, device=self.device)]
            return x if self.channels_last else x.contiguous()
        return to_device(self.images[rows], self.device, self.channels_last)


# ----------------------------------------------------------------------------- schedule

def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """Multiplier of the base learning rate at `step`."""
    t = step / max(1, total_steps)
    if schedule == "constant":
        return 1.0
    if schedule == "onecycle":  # as torch's OneCycleLR: cosine up from 1/25 for 30%, then down to ~0
        if t < 0.3:
            return 0.04 + 0.96 * (1 - math.cos(math.pi * t / 0.3)) / 2
        return max(1e-4, (1 + math.cos(math.pi * (t - 0.3) / 0.7)) / 2)
    if step < warmup_steps:     # cosine with linear warm-up
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(1e-4, (1 + math.cos(math.pi * progress)) / 2)


def make_optimizer(cfg: TrainConfig, model: FaceModel) -> torch.optim.Optimizer:
    head_ids = {id(p) for p in model.head_parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    groups = [{"params": model.head_parameters(), "role": "head"}, {"params": body, "role": "backbone"}]
    optimizer_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=cfg.lr_head, weight_decay=cfg.weight_decay)


def set_phase(model: FaceModel, optimizer, cfg: TrainConfig, epoch: int, factor: float) -> bool:
    """Freeze or unfreeze the backbone for `epoch` and set the group learning rates. True if frozen."""
    frozen = epoch < cfg.unfreeze_epoch
    model.backbone.requires_grad_(not frozen)
    if frozen:
        model.backbone.eval()   # keep BatchNorm statistics too while the backbone is frozen
    for group in optimizer.param_groups:
        base = cfg.lr_head if frozen else cfg.lr_backbone
        group["lr"] = base * factor
    return frozen


# ----------------------------------------------------------------------------- prediction

def inference_batch_size(train_batch_size: int) -> int:
    """The batch that predictions use, and that `best` times them with."""
    return max(MIN_INFERENCE_BATCH, 4 * train_batch_size)


def moving_average(model: FaceModel, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s weights and BatchNorm statistics.

    The decay warms up as (1 + n) / (10 + n) over the first updates (as TensorFlow's and timm's EMA do):
    a fixed 0.998 would keep the random initialisation's weights for the first thousand steps."""
    def update(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():  # BatchNorm's step counter
            return current
        n = int(num_averaged)
        return torch.lerp(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))

    return torch.optim.swa_utils.AveragedModel(model, avg_fn=update, use_buffers=True)


@torch.inference_mode()
def predict(model, source: ImageSource, rows: np.ndarray, *, tta: bool, amp_dtype, age_target: AgeTarget,
            channels_last: bool, batch_size: int = MIN_INFERENCE_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(probability of male, age in years) for the cache rows `rows`."""
    model.eval()
    gender_prob, age = [], []
    for start in range(0, len(rows), batch_size):
        x = prepare(source.batch(rows[start:start + batch_size]), channels_last=channels_last)
        views = [x, x.flip(3)] if tta else [x]
        probs, ages = 0, 0
        for view in views:
            with autocast(source.device, amp_dtype):
                logits, age_output = model(view)
            probs = probs + logits.float().softmax(1)[:, 1]
            ages = ages + age_target.years(age_output)
        gender_prob.append((probs / len(views)).cpu().numpy())
        age.append((ages / len(views)).cpu().numpy())
    return np.concatenate(gender_prob), np.concatenate(age)


# ----------------------------------------------------------------------------- one fold

def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    """A seed for (fold, epoch); epoch -1 seeds the model's initialisation."""
    return int(np.random.default_rng([seed, fold, epoch + 1]).integers(2**62))


def fit_fold(cfg: TrainConfig, *, fold: int, data: FoldData, fold_dir: Path,
             on_epoch: Callable[[int, int, Scores], None] | None = None,
             deadline: float | None = None, log=print) -> FoldResult:
    """Train fold `fold` (resuming from fold_dir/last.pt), then predict its held-out rows and the test set."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = pick_device(cfg.device)
    flush_denormals_to_zero(device)
    amp_dtype = pick_amp_dtype(cfg.precision, device)
    torch.manual_seed(epoch_seed(cfg.seed, fold, -1))
    age_target = AgeTarget.for_training(cfg.age_target, cfg.age_loss, data.train["age"])
    model = create_model(cfg.model, pretrained=bool(cfg.pretrained), weights=cfg.weights,
                         age_outputs=age_target.outputs, stem=cfg.stem)
    model = model.to(device, memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    optimizer = make_optimizer(cfg, model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    forward = torch.compile(model) if cfg.compile else model
    average = moving_average(model, cfg.ema_decay) if cfg.ema_decay else None
    kept_model = average.module if average is not None else model   # what is scored and kept as best.pt
    scored = average.module if average is not None else forward

    train_rows = data.train["cache_index"].to_numpy()
    valid_rows = data.valid["cache_index"].to_numpy()
    gender = torch.tensor(data.train["gender"].to_numpy(), dtype=torch.long)
    ages = torch.tensor(data.train["age"].to_numpy(), dtype=torch.float32)
    train_source = ImageSource(data.train_images, device, cfg.channels_last)

    batch_size = min(cfg.batch_size, len(train_rows))
    steps_per_epoch = len(train_rows) // batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)

    predict_options = dict(tta=cfg.tta, amp_dtype=amp_dtype, age_target=age_target, channels_last=cfg.channels_last,
                           batch_size=inference_batch_size(batch_size))
    # Each epoch is scored on one view of the held-out rows, all epochs alike: the flips would double that
    # cost every epoch (on a CPU at 5 folds, 15% of an epoch). The kept model's final predictions use them.
    epoch_scoring = dict(predict_options, tta=False)
    history, best_score, best_epoch, start_epoch = [], -1.0, -1, 0
    last_path, best_path = fold_dir / "last.pt", fold_dir / "best.pt"
    if last_path.is_file():
        state = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if average is not None:
            average.load_state_dict(state["average"])
        history, best_score, best_epoch = state["history"], state["best_score"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        log(f"fold {fold}: resuming after epoch {state['epoch']} from {last_path}")

    cut_at = None
    for epoch in range(start_epoch, cfg.epochs):
        if deadline is not None and history:
            epoch_seconds = history[-1]["seconds"]
            if time.monotonic() + epoch_seconds > deadline:
                cut_at = epoch
                log(f"fold {fold}: time limit: stopping before epoch {epoch} (best epoch {best_epoch} kept)")
                break
        started = time.monotonic()
        seed = epoch_seed(cfg.seed, fold, epoch)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator().manual_seed(seed)
        order = np.random.default_rng(seed).permutation(len(train_rows))
        model.train()
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        bar = tqdm(range(steps_per_epoch), desc=f"fold {fold} epoch {epoch}", leave=False, disable=None)
        for step in bar:
            global_step = epoch * steps_per_epoch + step
            frozen = set_phase(model, optimizer, cfg, epoch, lr_factor(cfg.schedule, global_step, total_steps, warmup_steps))
            picked = order[step * batch_size:(step + 1) * batch_size]
            x = prepare(train_source.batch(train_rows[picked]), strength=cfg.augment, generator=generator,
                        channels_last=cfg.channels_last)
            y_gender, y_age = gender[picked].to(device), ages[picked].to(device)
            with autocast(device, amp_dtype):
                logits, age_output = forward(x)
            loss = (F.cross_entropy(logits.float(), y_gender, label_smoothing=cfg.label_smoothing)
                    + cfg.age_loss_weight * age_target.loss(age_output, y_age))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if average is not None:
                average.update_parameters(model)
            loss_sum += loss.detach()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}")
        train_seconds = time.monotonic() - started

        gender_prob, age_pred = predict(scored, train_source, valid_rows, **epoch_scoring)
        scores = score_probabilities(data.valid["gender"], gender_prob, data.valid["age"], age_pred)
        improved = scores.score > best_score
        if improved:
            best_score, best_epoch = scores.score, epoch
            save_torch(best_path, {"model": kept_model.state_dict(), "epoch": epoch, "age_mean": age_target.mean,
                                   "age_std": age_target.std, "config": cfg.to_dict()})
        history.append({"fold": fold, "epoch": epoch, "train_loss": loss_sum.item() / max(1, steps_per_epoch),
                        **scores.as_dict(), "lr": optimizer.param_groups[0]["lr"], "frozen": frozen,
                        "train_images_per_s": steps_per_epoch * batch_size / train_seconds,
                        "seconds": time.monotonic() - started})
        save_torch(last_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "average": average.state_dict() if average is not None else None,
                               "epoch": epoch, "history": history, "best_score": best_score,
                               "best_epoch": best_epoch})
        write_csv(fold_dir / "history.csv", pd.DataFrame(history))
        log(f"fold {fold} epoch {epoch:2d}  loss {history[-1]['train_loss']:.4f}  {scores}"
            f"  {history[-1]['train_images_per_s']:.0f} img/s  {history[-1]['seconds']:.0f}s"
            + ("  *" if improved else ""))
        if on_epoch is not None:
            on_epoch(fold, epoch, scores)

    # The kept model: the best epoch's weights predict the held-out rows and the test set.
    best = torch.load(best_path, map_location=device, weights_only=False)
    model.load_state_dict(best["model"])
    oof_prob, oof_age = predict(model, train_source, valid_rows, **predict_options)
    test_prob, test_age = predict(model, ImageSource(data.test_images, device, cfg.channels_last),
                                  data.test["cache_index"].to_numpy(), **predict_options)
    oof = pd.DataFrame({"id": data.valid["id"].to_numpy(), "fold": fold, "gender": data.valid["gender"].to_numpy(),
                        "age": data.valid["age"].to_numpy(), "gender_prob": oof_prob, "age_pred": oof_age})
    test = pd.DataFrame({"id": data.test["id"].to_numpy(), "gender_prob": test_prob, "age_pred": test_age})
    scores = score_probabilities(oof["gender"], oof["gender_prob"], oof["age"], oof["age_pred"])
    return FoldResult(fold, best_epoch, scores, oof, test, history, cut_at)
