"""Note-model training throughput on Ray Train against a plain PyTorch loop, and inference latency.

Both loops train the same model (all-MiniLM-L6-v2 with a fresh 2-class head) on the same
pre-tokenized synthetic discharge notes (head+tail truncated to --max-length), with the same
micro-batch, optimizer, schedule and torch threads, in the same run. Throughput is samples per
second of wall clock after two warm-up steps, data loading included: the Ray loop reads its
Ray Data shard, the plain loop a Python list. End-to-end time (with Ray Train's start-up) is
reported too. Inference: NotePredictor latency at batch 1, 8 and 32 (median of --repeats).
GPU figures are a calculation, not a measurement (no GPU here). Run:

    python bench/text_train.py --json bench/results/text_train.json
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import emit  # noqa: E402

log = logging.getLogger("bench.text_train")

# BERT-base (Bio_ClinicalBERT) for the GPU estimate.
BERT_BASE_PARAMS = 110e6
BERT_BASE_LAYERS, BERT_BASE_HIDDEN = 12, 768
GPU_PEAK_BF16_TFLOPS = {"A100-SXM-80GB": 312.0, "H100-SXM": 989.0}  # dense, vendor data sheets
ASSUMED_MFU = 0.40  # model FLOPs utilisation typical of BERT fine-tuning with bf16 and fused kernels
RAY_KNOBS = ("RAY_worker_niceness", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_METRICS_ENABLED")


def gpu_estimate(seq: int = 512) -> dict:
    """Training samples/s for BERT-base at `seq` tokens: FLOPs per sample / (peak x MFU)."""
    dense = 6 * BERT_BASE_PARAMS * seq  # forward + backward, 2 + 4 FLOPs per parameter per token
    attention = 3 * BERT_BASE_LAYERS * 4 * seq * seq * BERT_BASE_HIDDEN  # QK^T and AV, fwd + bwd
    flops = dense + attention
    out = {"flops_per_sample": flops, "assumed_mfu": ASSUMED_MFU, "sequence_length": seq}
    for gpu, peak in GPU_PEAK_BF16_TFLOPS.items():
        train = peak * 1e12 * ASSUMED_MFU / flops
        out[gpu] = {
            "train_samples_per_s": round(train),
            "inference_samples_per_s": round(train * 3),  # forward only: a third of the FLOPs
            "suggested_batch_per_gpu": 32 if "A100" in gpu else 64,
        }
    return out


def notes(features: Path, rows: int) -> tuple[list[str], list[int]]:
    from data.featureset import read_split_pandas

    frame = read_split_pandas(str(features), "train", ["note", "label"]).dropna().head(rows)
    return frame["note"].tolist(), frame["label"].astype(int).tolist()


def plain_loop(texts, labels, args) -> dict:
    """A hand-written PyTorch loop: what the TorchTrainer loop is compared with."""
    import numpy as np
    import torch
    from transformers import get_linear_schedule_with_warmup

    from ml.text import DEFAULT_MODEL, encode, load_model, load_tokenizer, pad_batch

    started = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    ids = [np.asarray(i) for i in encode(tokenizer, texts, args.max_length, args.head_tokens)]
    model = load_model(DEFAULT_MODEL, ["0", "1"]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * args.steps), args.steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    order = np.random.default_rng(0).permutation(len(ids))
    steady_from = None
    for step in range(args.steps):
        rows = [order[(step * args.batch + k) % len(ids)] for k in range(args.batch)]
        batch = {k: torch.from_numpy(v) for k, v in pad_batch([ids[r] for r in rows], 0).items()}
        target = torch.tensor([labels[r] for r in rows])
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(**batch).logits, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step + 1 == 2:
            steady_from = time.perf_counter()
    steady = (args.steps - 2) * args.batch / (time.perf_counter() - steady_from)
    return {"steady_samples_per_s": steady, "end_to_end_s": time.perf_counter() - started}


def ray_loop(texts, labels, args, storage: Path) -> dict:
    import pandas as pd

    from ml.text import TextConfig, TextSplits, fit

    frame = pd.DataFrame({"text": texts, "label": [str(v) for v in labels], "group": range(len(texts))})
    splits = TextSplits("bench", frame, frame.head(32), frame.head(32), ["0", "1"], positive="1")
    config = TextConfig(
        max_length=args.max_length,
        head_tokens=args.head_tokens,
        batch_size=args.batch,
        max_steps=args.steps,
        cpus_per_worker=args.threads,
        warmup_ratio=0.1,
    )
    started = time.perf_counter()
    result = fit(splits, config, storage_path=str(storage))
    return {
        "steady_samples_per_s": result.metrics["steady_rows_per_second"],
        "end_to_end_s": time.perf_counter() - started,
        "fit_s": result.seconds["fit"],
        "tokenize_s": result.seconds["tokenize"],
    }


def latency(texts, args) -> dict:
    import torch

    from ml.text import DEFAULT_MODEL, NotePredictor, TextConfig, load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    config = TextConfig(max_length=args.max_length, head_tokens=args.head_tokens)
    predictor = NotePredictor(
        load_model(DEFAULT_MODEL, ["0", "1"]), load_tokenizer(DEFAULT_MODEL), ["0", "1"], config, positive="1"
    )
    tokens = [len(i) for i in predictor.tokenizer(texts[:64])["input_ids"]]
    out = {"mean_tokens_per_note": statistics.mean(min(t, args.max_length) for t in tokens)}
    for batch in (1, 8, 32):
        predictor.risk(texts[:batch], batch)  # warm-up
        times = []
        for r in range(args.repeats):
            chunk = [texts[(r * batch + k) % len(texts)] for k in range(batch)]
            t0 = time.perf_counter()
            predictor.risk(chunk, batch)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        out[f"batch_{batch}"] = {
            "ms_per_batch": median * 1000,
            "ms_per_note": median * 1000 / batch,
            "notes_per_s": batch / median,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--features", type=Path, default=ROOT / "artifacts" / "features")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--head-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if not (args.features / "manifest.json").exists():
        sys.exit(f"{args.features}: no feature folder; run `make data` first")

    import ray

    texts, labels = notes(args.features, args.rows)
    report: dict = {"setup": {k: v for k, v in vars(args).items() if k != "json"} | {"rows": len(texts)}}
    report["setup"]["features"] = str(args.features)
    # Ray knobs that change how much CPU Ray itself takes beside the Train worker (see bench/README.md)
    report["setup"]["ray_env"] = {k: os.environ[k] for k in RAY_KNOBS if k in os.environ}
    report["plain_pytorch"] = plain_loop(texts, labels, args)
    print("plain", report["plain_pytorch"], flush=True)
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    report["ray_train"] = ray_loop(texts, labels, args, ROOT / "artifacts" / "bench" / "text_train")
    ray.shutdown()
    print("ray", report["ray_train"], flush=True)
    report["throughput_ratio"] = (
        report["ray_train"]["steady_samples_per_s"] / report["plain_pytorch"]["steady_samples_per_s"]
    )
    report["inference"] = latency(texts, args)
    report["gpu_estimate_bio_clinicalbert"] = gpu_estimate(512)
    emit(report, args.json)


if __name__ == "__main__":
    main()
