"""Training one fold and predicting with it.

    fit_fold(cfg, fold=0, data=FoldData(...), fold_dir=Path("runs/resnet18/x/fold0"))

Phases: build the Trainer (kit/trainer.py), resume from fold_dir/last.pt if an earlier process was
interrupted, then per epoch train, score the held-out rows with the competition metric and checkpoint
(best.pt keeps the best epoch's weights, last.pt the state to continue from), and finally predict the
held-out rows and the test set with the best epoch's weights. Each epoch's shuffling and augmentation
draw from a generator seeded by (seed, fold, epoch), so a resumed fold computes exactly what an
uninterrupted one would.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from kit.age import AgeTarget
from kit.config import TrainConfig
from kit.device import flush_denormals_to_zero, pick_device, set_threads
from kit.errors import RunError
from kit.files import save_torch, write_csv
from kit.inputs import ImageInputs, TrunkInputs
from kit.log import log
from kit.metric import Scores, score_probabilities
from kit.predict import inference_batch_size
from kit.trainer import Trainer, epoch_seed, lr_factor
from kit.trunk import cacheable, trunk_features

WALL_CHECK_STEPS = 4   # how often (in batches) an epoch checks whether its rest still fits before the deadline
# The shortest fold a deadline may plan, in epochs: a fold's length is in steps (Li, Yumer and Ramanan,
# "Budgeted Training", ICLR 2020: a schedule that anneals over the steps that fit beats one cut partway), so a
# short limit trains part of an epoch, its learning rate annealed, rather than refusing or being cut.
MIN_FOLD_EPOCHS = 0.1


@dataclass
class FoldData:
    train: pd.DataFrame          # rows to learn from: id, gender, age, cache_index
    valid: pd.DataFrame          # held-out rows, same columns
    test: pd.DataFrame           # id, cache_index
    train_images: np.ndarray     # uint8 (N, H, W, 3), indexed by cache_index
    test_images: np.ndarray
    # Pseudo-labelled test images this fold also learns from (kit/pseudo.py): cache_index into test_images,
    # gender_prob and age from first-round models that never saw this fold's rows; weight per row.
    pseudo: pd.DataFrame | None = None
    pseudo_weight: float = 1.0
    # The project's .cache/: a frozen trunk's features that memory cannot hold go to memory-mapped files in its
    # trunk/ (kit/trunk.py); None: the current project's.
    cache_dir: Path | None = None


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    scores: Scores
    oof: pd.DataFrame            # id, fold, gender, age, gender_prob, age_pred
    test: pd.DataFrame           # id, gender_prob, age_pred
    history: list[dict]
    cut_at_epoch: int | None = None   # set when a time limit stopped training early
    planned_epochs: float | None = None  # the schedule's length, when a time limit made it other than --epochs
    epochs_trained: float | None = None  # what it trained, in epochs (parts of one when planned or cut so)
    setup_seconds: float = 0.0     # before the first epoch: a frozen trunk's features (0 when this process had them)


def fold_inputs(trainer: Trainer, data: FoldData):
    cfg = trainer.cfg
    if not cacheable(cfg):
        return ImageInputs(data.train_images, data.test_images, trainer.device, cfg.channels_last)
    features = trunk_features(trainer.model, cfg, data.train_images, data.test_images, device=trainer.device,
                              amp_dtype=trainer.amp_dtype, cache_dir=data.cache_dir)
    trainer.from_trunk = cfg.frozen_trunk
    return TrunkInputs(features, cfg.frozen_trunk)


@dataclass
class Progress:
    """What a fold has done so far: restored from last.pt when it resumes."""
    history: list[dict]
    best_score: float = -1.0
    best_epoch: int = -1
    next_epoch: int = 0
    planned_epochs: float | None = None   # the learning-rate schedule's length, fixed when the fold starts


# Inference runs several times faster than training per image (no backward pass, larger batches): 3x is the
# low end of what bench shows, so a reserve made from it is on the safe side before anything was scored.
INFERENCE_SPEEDUP = 3.0


@dataclass(frozen=True)
class FoldPlan:
    """What a time budget's planner (best) tells a fold: the epochs its schedule runs over (at most --epochs),
    and its estimates of one epoch (training and scoring) and of inferring one image, from its measurements
    and the folds seen so far. Without them, a fold under a deadline trains --epochs and guesses its
    predictions' time from its training speed."""
    epochs: float | None = None
    epoch_s: float | None = None
    infer_image_s: float | None = None


@dataclass
class Wall:
    """A fold's deadline, and what must still fit before it once training stops: scoring the epoch on the
    held-out rows, and the final held-out and test predictions (with the flips when --tta)."""
    deadline: float
    n_train: int
    n_valid: int
    n_test: int
    views: int
    infer_image_s: float | None = None   # the planner's estimate, until the fold has scored an epoch

    def reserve_s(self, history: list[dict], train_image_s: float) -> float:
        """Seconds of inference still to come: timed on the last scored epoch, else the planner's estimate,
        else guessed from training (3x too slow for a cached trunk: a 1-epoch fold was cut at 4% by it)."""
        scored = [h for h in history if h.get("score_seconds")]
        per_image = (scored[-1]["score_seconds"] / self.n_valid if scored
                     else self.infer_image_s or train_image_s / INFERENCE_SPEEDUP)
        return per_image * (self.n_valid + (self.n_valid + self.n_test) * self.views)

    def fits(self, now: float, training_s: float, history: list[dict], train_image_s: float = 0.0) -> bool:
        """Whether `training_s` more of training, then scoring and the final predictions, end by the deadline."""
        return now + training_s + self.reserve_s(history, train_image_s) <= self.deadline

    def planned_epochs(self, now: float, epochs: float, epoch_s: float | None) -> float:
        """The epochs the fold's schedule runs over: all of them, or as many (in hundredths of an epoch) as an
        estimate of one epoch (`epoch_s`, training and scoring) says fit before the deadline with the final
        predictions."""
        if not epoch_s:
            return epochs
        final_s = (self.infer_image_s * (self.n_valid + self.n_test) * self.views if self.infer_image_s
                   else epoch_s * (self.n_valid + self.n_test) * self.views / (self.n_train * INFERENCE_SPEEDUP))
        fits = math.floor(100 * (self.deadline - now - final_s) / epoch_s) / 100
        return max(MIN_FOLD_EPOCHS, min(epochs, fits))


def total_steps(steps_per_epoch: int, planned_epochs: float) -> int:
    return max(1, round(steps_per_epoch * planned_epochs))


def epoch_steps(steps_per_epoch: int, planned_epochs: float, epoch: int) -> int:
    """The steps epoch `epoch` trains when the fold's schedule runs over `planned_epochs` (the last epoch of a
    fractional plan trains part of the rows)."""
    return max(0, min(steps_per_epoch, total_steps(steps_per_epoch, planned_epochs) - epoch * steps_per_epoch))


def batches(cfg: TrainConfig, data: FoldData) -> tuple[int, int]:
    """(batch size, steps per epoch) of a fold: the training rows, pseudo-labelled test images included."""
    n_rows = len(data.train) + (0 if data.pseudo is None else len(data.pseudo))
    batch_size = min(cfg.batch_size, n_rows)
    return batch_size, n_rows // batch_size


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """torch.load with a message that names the file when it is damaged (a kill mid-write cannot do it:
    checkpoints are renamed into place whole, but a full disk or a copy can)."""
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # truncated zip, empty file, not a checkpoint: torch raises many kinds
        raise RunError(f"{path} is damaged and cannot be read ({type(err).__name__}: {err}). Delete it to "
                       f"train this fold again from its start") from None


def resume(trainer: Trainer, fold: int, fold_dir: Path, device: torch.device) -> Progress:
    last = fold_dir / "last.pt"
    if not last.is_file():
        return Progress(history=[])
    state = load_checkpoint(last, device)
    trainer.load_state(state)
    # history.csv is written after last.pt: a kill between the two leaves it one epoch short.
    write_csv(fold_dir / "history.csv", pd.DataFrame(state["history"]))
    log(f"fold {fold}: resuming after epoch {state['epoch']} from {last}")
    return Progress(state["history"], state["best_score"], state["best_epoch"], state["epoch"] + 1,
                    state.get("planned_epochs"))


def fit_fold(cfg: TrainConfig, *, fold: int, data: FoldData, fold_dir: Path,
             on_epoch: Callable[[int, int, Scores], None] | None = None,
             deadline: float | None = None, plan: FoldPlan = FoldPlan(),
             clock: Callable[[], float] = time.monotonic) -> FoldResult:
    """Train fold `fold` (resuming from fold_dir/last.pt), then predict its held-out rows and the test set.

    `deadline` is a `clock()` time by which the fold ends, its final predictions included: training stops
    between batches when the rest of the epoch would not fit. The fold's length is decided when it starts,
    and kept in last.pt so that a resumed fold runs the same schedule: `plan.epochs` (at most --epochs; best
    passes what its plan gives this fold), shortened with `plan.epoch_s` (an estimate of one epoch) to the
    epochs that fit before the deadline, so that a slow machine ends the fold with the learning rate
    annealed rather than cut while it is high."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.num_threads)
    device = pick_device(cfg.device)
    flush_denormals_to_zero(device)
    age_target = AgeTarget.for_training(cfg.age_target, cfg.age_loss, data.train["age"])
    trainer = Trainer(cfg, device, age_target, init_seed=epoch_seed(cfg.seed, fold, -1))
    setup_started = clock()
    inputs = fold_inputs(trainer, data)
    setup_seconds = clock() - setup_started
    progress = resume(trainer, fold, fold_dir, device)
    wall = None if deadline is None else Wall(deadline, len(data.train), len(data.valid), len(data.test),
                                              2 if cfg.tta else 1, plan.infer_image_s)
    if progress.planned_epochs is None:
        wanted = min(plan.epochs or cfg.epochs, cfg.epochs)
        progress.planned_epochs = wanted if wall is None else wall.planned_epochs(clock(), wanted, plan.epoch_s)
        if progress.planned_epochs < wanted:
            log(f"fold {fold}: {progress.planned_epochs} of {wanted} epoch(s) fit before the time limit; the "
                "learning-rate schedule runs over those")

    cut_at = None
    steps_per_epoch = batches(cfg, data)[1]
    epochs_to_run = math.ceil(total_steps(steps_per_epoch, progress.planned_epochs) / steps_per_epoch)
    for epoch in range(progress.next_epoch, epochs_to_run):
        last = progress.history[-1] if progress.history else None
        # One more epoch like the last one, or the part of one the plan has left: its time scaled from the
        # last one's fraction (histories written before the wall have no fraction: their epochs were whole).
        part = min(1.0, progress.planned_epochs - epoch)
        next_epoch_s = last and last["seconds"] * part / max(last.get("epoch_fraction", 1.0), 1e-6)
        if wall is not None and last and not wall.fits(clock(), next_epoch_s, progress.history):
            cut_at = epoch
            log(f"fold {fold}: time limit: stopping before epoch {epoch} (best epoch {progress.best_epoch} kept)")
            break
        started = clock()
        loss, frozen, images_per_s, done, cut = train_epoch(trainer, data, inputs, fold=fold, epoch=epoch,
                                                            clock=clock, planned_epochs=progress.planned_epochs,
                                                            wall=wall, history=progress.history)
        record = {"fold": fold, "epoch": epoch, "train_loss": loss, "frozen": frozen,
                  "train_images_per_s": images_per_s, "epoch_fraction": done}
        scores = score_and_checkpoint(trainer, data, inputs, progress, fold_dir, epoch=epoch, record=record,
                                      started=started, clock=clock)
        if on_epoch is not None:
            on_epoch(fold, epoch, scores)
        if cut:
            cut_at = epoch + 1
            log(f"fold {fold}: time limit: epoch {epoch} stopped after {done:.0%} of its batches (best epoch "
                f"{progress.best_epoch} kept)")
            break
    result = final_predictions(trainer, data, inputs, fold=fold, fold_dir=fold_dir, progress=progress, cut_at=cut_at)
    result.setup_seconds = setup_seconds
    return result


def training_rows(data: FoldData):
    """(rows, gender targets, ages, row weights or None): the training rows, and with pseudo-labels the test
    images after them (rows from len(train_images) on), with soft gender targets and their weight."""
    train_rows = data.train["cache_index"].to_numpy()
    if data.pseudo is None:
        return (train_rows, torch.tensor(data.train["gender"].to_numpy(), dtype=torch.long),
                torch.tensor(data.train["age"].to_numpy(), dtype=torch.float32), None)
    rows = np.concatenate([train_rows, len(data.train_images) + data.pseudo["cache_index"].to_numpy()])
    pseudo = data.pseudo
    gender = np.concatenate([data.train["gender"].to_numpy(np.float32), pseudo["gender_prob"].to_numpy(np.float32)])
    ages = np.concatenate([data.train["age"].to_numpy(np.float32), pseudo["age"].to_numpy(np.float32)])
    weights = np.concatenate([np.ones(len(train_rows), np.float32),
                              np.full(len(pseudo), data.pseudo_weight, np.float32)])
    return rows, torch.tensor(gender), torch.tensor(ages), torch.tensor(weights)


def train_epoch(trainer: Trainer, data: FoldData, inputs, *, fold: int, epoch: int, clock: Callable[[], float],
                planned_epochs: float | None = None, wall: Wall | None = None,
                history: list[dict] | None = None) -> tuple[float, bool, float, float, bool]:
    """One pass over the training rows, or the part of one the fold's plan gives its last epoch: (mean loss,
    whether the backbone was frozen, images per second, the fraction of the epoch's batches trained, whether
    `wall` stopped it before the plan's end so that scoring and the final predictions still fit)."""
    cfg, device = trainer.cfg, trainer.device
    train_rows, gender, ages, weights = training_rows(data)
    batch_size, steps_per_epoch = batches(cfg, data)
    planned_epochs = planned_epochs or cfg.epochs
    schedule_steps, steps_planned = total_steps(steps_per_epoch, planned_epochs), epoch_steps(steps_per_epoch,
                                                                                              planned_epochs, epoch)
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)

    started = clock()
    seed = epoch_seed(cfg.seed, fold, epoch)
    torch.manual_seed(seed)  # dropout
    generator = torch.Generator().manual_seed(seed)
    order = np.random.default_rng(seed).permutation(len(train_rows))
    # The targets and the epoch's order on the device once: each step indexes them there, with no host copy.
    gender, ages = gender.to(device), ages.to(device)
    weights = None if weights is None else weights.to(device)
    order_on_device = torch.from_numpy(order).to(device)
    trainer.model.train()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    frozen = False
    bar = tqdm(range(steps_planned), desc=f"fold {fold} epoch {epoch}", leave=False, disable=None)
    steps_done, first_done = steps_planned, started
    for step in bar:
        if wall is not None and step and step % WALL_CHECK_STEPS == 0:
            now = clock()
            per_step = (now - first_done) / (step - 1)   # the first step's one-time costs left out
            if not wall.fits(now, per_step * (steps_planned - step), history or [], per_step / batch_size):
                steps_done = step
                break
        factor = lr_factor(cfg.schedule, epoch * steps_per_epoch + step, schedule_steps, warmup_steps)
        frozen = trainer.set_phase(epoch, factor)
        picked = order[step * batch_size:(step + 1) * batch_size]
        on_device = order_on_device[step * batch_size:(step + 1) * batch_size]
        x = inputs.training(train_rows[picked], cfg.augment, generator)
        loss_sum += trainer.step(x, gender[on_device], ages[on_device], None if weights is None else weights[on_device])
        if step == 0:
            first_done = clock()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}")
    seconds = clock() - started
    return (loss_sum.item() / max(1, steps_done), frozen, steps_done * batch_size / max(seconds, 1e-9),
            steps_done / max(1, steps_per_epoch), steps_done < steps_planned)


def prediction_options(trainer: Trainer, *, tta: bool) -> dict:
    cfg = trainer.cfg
    return dict(tta=tta, amp_dtype=trainer.amp_dtype, age_target=trainer.age_target, channels_last=cfg.channels_last,
                batch_size=inference_batch_size(cfg.batch_size))


def score_and_checkpoint(trainer: Trainer, data: FoldData, inputs, progress: Progress, fold_dir: Path,
                         *, epoch: int, record: dict, started: float, clock: Callable[[], float]) -> Scores:
    """Score the epoch on one view of the held-out rows, keep best.pt if it improved, write last.pt and
    history.csv. All epochs are scored alike on one view: the flips would double that cost every epoch
    (on a CPU at 5 folds, 15% of an epoch). The kept model's final predictions use them."""
    cfg = trainer.cfg
    scoring_started = clock()
    gender_prob, age_pred = inputs.predict(trainer.scored_model, "train", data.valid["cache_index"].to_numpy(),
                                           **prediction_options(trainer, tta=False))
    record = {**record, "score_seconds": clock() - scoring_started}
    scores = score_probabilities(data.valid["gender"], gender_prob, data.valid["age"], age_pred)
    improved = scores.score > progress.best_score
    if improved:
        progress.best_score, progress.best_epoch = scores.score, epoch
        save_torch(fold_dir / "best.pt", {"model": trainer.kept_model.state_dict(), "epoch": epoch,
                                          "age_mean": trainer.age_target.mean, "age_std": trainer.age_target.std,
                                          "config": cfg.to_dict()})
    progress.history.append({**record, **scores.as_dict(), "lr": trainer.optimizer.param_groups[0]["lr"],
                             "seconds": clock() - started})
    save_torch(fold_dir / "last.pt", {**trainer.state(), "epoch": epoch, "history": progress.history,
                                      "best_score": progress.best_score, "best_epoch": progress.best_epoch,
                                      "planned_epochs": progress.planned_epochs})
    write_csv(fold_dir / "history.csv", pd.DataFrame(progress.history))
    last = progress.history[-1]
    log(f"fold {record['fold']} epoch {epoch:2d}  loss {last['train_loss']:.4f}  {scores}"
        f"  {last['train_images_per_s']:.0f} img/s  {last['seconds']:.0f}s" + ("  *" if improved else ""))
    return scores


def final_predictions(trainer: Trainer, data: FoldData, inputs, *, fold: int, fold_dir: Path,
                      progress: Progress, cut_at: int | None) -> FoldResult:
    """The kept model: the best epoch's weights predict the held-out rows and the test set."""
    best = load_checkpoint(fold_dir / "best.pt", trainer.device)
    trainer.model.load_state_dict(best["model"])
    options = prediction_options(trainer, tta=trainer.cfg.tta)
    oof_prob, oof_age = inputs.predict(trainer.model, "train", data.valid["cache_index"].to_numpy(), **options)
    test_prob, test_age = inputs.predict(trainer.model, "test", data.test["cache_index"].to_numpy(), **options)
    oof = pd.DataFrame({"id": data.valid["id"].to_numpy(), "fold": fold, "gender": data.valid["gender"].to_numpy(),
                        "age": data.valid["age"].to_numpy(), "gender_prob": oof_prob, "age_pred": oof_age})
    test = pd.DataFrame({"id": data.test["id"].to_numpy(), "gender_prob": test_prob, "age_pred": test_age})
    scores = score_probabilities(oof["gender"], oof["gender_prob"], oof["age"], oof["age_pred"])
    planned = progress.planned_epochs if progress.planned_epochs != trainer.cfg.epochs else None
    trained = round(sum(h.get("epoch_fraction", 1.0) for h in progress.history), 4)
    return FoldResult(fold, progress.best_epoch, scores, oof, test, progress.history, cut_at, planned, trained)
