"""Inference runtimes for the note model: the same fp32 weights run by torch, int8 torch, or ONNX Runtime.

A runtime is a callable `forward(batch) -> logits` over one padded batch (`ml.text.pad_batch`:
int64 `input_ids` and `attention_mask`, shape batch x width); `NotePredictor` keeps the
tokenization, length sorting, softmax and calibration, so every runtime scores alike.

- `torch`: the fine-tuned model as trained (fp32).
- `int8`: `torch.ao.quantization.quantize_dynamic` of every nn.Linear to qint8: int8 weights with
  one scale per output channel (per-tensor moved this model's probabilities 2 to 3 times as much,
  at the same speed), activations quantized per batch. torch 2.13 marks torch.ao.quantization
  deprecated in favour of torchao's `quantize_`; but torchao 0.18's int8 dynamic config without
  torch.compile ran this model only about 10% faster than fp32 (quantize_dynamic: 2.4 times), and
  compiling needs a compile per input shape. The fbgemm kernels behind quantize_dynamic still ship
  in torch 2.13, so they are used, with the deprecation warning silenced here.
- `onnx`: the model exported with the TorchScript (legacy, `dynamo=False`) exporter, which needs
  only the `onnx` package, whereas the default dynamo exporter also needs onnxscript. Batch and
  sequence axes are dynamic; the export happens at load, into a private temporary folder that is
  removed once ONNX Runtime has read the graph, and is checked against torch on a padded batch.
  Attention is exported in its plain ("eager") form: a smaller graph than the SDPA one, and a
  little faster in ONNX Runtime (onnxruntime.transformers' fusions gained nothing measurable).
- `onnx-int8`: that graph through `onnxruntime.quantization.quantize_dynamic` (int8 weights per
  output channel, uint8 activations; no reduced range, which CPUs without VNNI would need).

ONNX Runtime runs with `intra_op_num_threads` = the torch threads and sequential execution, so a
replica with one CPU stays on one core.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, get_args

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedModel

NoteRuntime = Literal["torch", "int8", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = get_args(NoteRuntime)
ONNX_OPSET = 17
EXPORT_CHECK_TOLERANCE = 1e-3  # max abs logit difference, ONNX vs torch, on the export batch


class Forward(Protocol):
    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray: ...


def check_runtime(name: str) -> NoteRuntime:
    if name not in RUNTIMES:
        raise ValueError(f"unknown note runtime {name!r}: choose one of {', '.join(RUNTIMES)}")
    return name  # type: ignore[return-value]


class TorchForward:
    """A torch module (fp32 or dynamically quantized) on padded numpy batches."""

    def __init__(self, model):
        self.model = model.eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        device = next(self.model.parameters(), torch.empty(0)).device
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
            return self.model(**inputs).logits.float().cpu().numpy()


def quantize_int8(model: PreTrainedModel):
    """A copy of `model` with every nn.Linear dynamically quantized to qint8 (the original is kept)."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)  # "quantized tensor creation ... deprecated"
        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}  # qint8 weights, per output channel
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), spec)


def _input_names(model) -> list[str]:
    """The model's inputs among those a padded batch gives, plus token_type_ids if it takes them."""
    accepted = inspect.signature(model.forward).parameters
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]


def _positional(model, names: list[str]):
    """The model as a module of positional inputs in `names` order that returns the logits: what
    the exporter traces. In eval mode: the exporter restores the wrapper's mode afterwards, and a
    wrapper left in training mode would switch the model's dropout back on."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(**dict(zip(names, args, strict=True))).logits

    return Logits().eval()


def _export_batch(model, names: list[str]) -> dict[str, np.ndarray]:
    """Two rows, the second padded: traced with padding, the graph keeps the attention-mask path."""
    vocab = int(getattr(model.config, "vocab_size", 1000))
    ids = (np.arange(16, dtype=np.int64).reshape(2, 8) % max(vocab - 1, 1)) + 1
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {n: batch[n] for n in names}


class OnnxForward:
    """The model exported to ONNX (dynamic batch and sequence axes) and run by ONNX Runtime."""

    def __init__(self, model: PreTrainedModel, threads: int | None = None, int8: bool = False):
        import onnxruntime as ort
        import torch

        model = copy.deepcopy(model).cpu().eval()
        if hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("eager")
        self.names = _input_names(model)
        sample = _export_batch(model, self.names)
        threads = threads or torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only
        with tempfile.TemporaryDirectory(prefix="note-onnx-") as folder:  # mode 0700
            path = Path(folder) / "model.onnx"
            axes = {n: {0: "batch", 1: "sequence"} for n in self.names} | {"logits": {0: "batch"}}
            with warnings.catch_warnings():
                # the legacy exporter's deprecation, and tracer notes on shape checks that the
                # padded sample (and the check below) covers
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _positional(model, self.names),
                    tuple(torch.from_numpy(sample[n]) for n in self.names),
                    str(path),
                    dynamo=False,
                    input_names=self.names,
                    output_names=["logits"],
                    dynamic_axes=axes,
                    opset_version=ONNX_OPSET,
                )
            self._check(
                ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), model, sample
            )
            if int8:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantized = Path(folder) / "model-int8.onnx"
                with _without_root_warning("Please consider to run pre-processing"):
                    quantize_dynamic(path, quantized, per_channel=True, weight_type=QuantType.QInt8)
                path = quantized
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def _check(self, session, model, sample: dict[str, np.ndarray]) -> None:
        """A traced graph can bake in a shape-dependent branch: compare it with torch once."""
        got = session.run(["logits"], sample)[0]
        want = TorchForward(model)({k: v for k, v in sample.items() if k != "token_type_ids"})
        gap = float(np.abs(got - want).max())
        if gap > EXPORT_CHECK_TOLERANCE:
            raise RuntimeError(f"ONNX export differs from torch by {gap:.2g} on the export batch")

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {n: batch[n] for n in self.names if n in batch}
        if "token_type_ids" in self.names:
            inputs["token_type_ids"] = np.zeros_like(batch["input_ids"])  # one segment, as torch assumes
        return self.session.run(["logits"], inputs)[0].astype(np.float32, copy=False)


@contextlib.contextmanager
def _without_root_warning(prefix: str):
    """onnxruntime.quantization advises pre-processing on the root logger at every quantization; its
    symbolic shape inference fails on this graph (the quantized graph is checked by the tests)."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def make_forward(model: PreTrainedModel, runtime: str, threads: int | None = None) -> Forward:
    """The forward pass of `runtime` for the fp32 `model` (which is left unchanged)."""
    runtime = check_runtime(runtime)
    if runtime == "torch":
        return TorchForward(model)
    if runtime == "int8":
        return TorchForward(quantize_int8(model))
    return OnnxForward(model, threads, int8=runtime == "onnx-int8")
