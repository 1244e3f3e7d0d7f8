"""Intent model speed and accuracy: fp32 vs int8, probe vs max-cosine, against the keyword baseline.

Builds both models from the en-us templates into a temporary directory (or ``--model-root``, where
``fp32/`` and ``int8/`` are reused if present), then prints, per model:

* build time and file sizes, model load time (``IntentClassifier(...)``, ms);
* p50 / p95 latency of ``classify`` per query (ms) on the held-out requests (the model path) and on
  exact template sentences (the template-match path), with 1 onnxruntime thread and with all;
* accuracy on the held-out phrasings of ``tests/test_qa.py`` (40 in-domain, 20 out-of-domain) and on
  a second hand-written set below (20 + 10): feature and intent accuracy, out-of-domain rejection;
  for the probe (default) and the per-intent max-cosine scorer, and for the keyword baseline;
* espeak-ng synthesis time of the answers (ms per sentence, real-time factor).

Usage::

    .venv/bin/python benchmarks/qa_speed.py [--repeats 5] [--threads 1 0] [--model-root DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from inference_core.intent_model import build_intent_model
from inference_core.answers import Answerer
from inference_core.qa import IntentClassifier, KeywordIntentMatcher
from inference_core.templates import TemplateSet
from inference_core.tts import Synthesizer

ROOT = Path(__file__).resolve().parents[1]

#: A second held-out set (written before the probe was chosen, to check the choice on other data).
DEV = [
    ("what's it like outside in madrid", "weather.forecast"), ("will i need sunglasses tomorrow", "weather.forecast"),
    ("is there going to be a storm in osaka", "weather.forecast"),
    ("what's the temperature going to be in busan", "weather.forecast"),
    ("what's in the news this morning", "news.read"), ("read me some headlines about health", "news.read"),
    ("pencil in lunch on thursday at noon", "schedule.add"), ("what have i got on this weekend", "schedule.list"),
    ("set my alarm for five in the morning", "schedule.alarm"),
    ("remember to walk the dog tomorrow", "schedule.remind"),
    ("scrap my workout on friday", "schedule.cancel"), ("can you play something by a jazz band", "music.play"),
    ("turn the music off please", "music.pause"), ("change the song", "music.next"),
    ("got any music recommendations", "music.recommend"), ("name the capital of germany", "qa.capital"),
    ("what hour is it", "qa.time"), ("what's ten plus fifteen", "qa.math"),
    ("how high is mount everest exactly", "qa.height"), ("who's the author of hamlet", "qa.author"),
]
DEV_OOD = [
    "how old is the universe", "dim the bedroom lights", "what's the wifi password", "buy tickets for the concert",
    "record my favorite show", "who invented the telephone", "text my sister happy birthday",
    "what's the score of the football game", "how do you say thank you in french", "open the window blinds",
]


def _test_sets() -> tuple[list[tuple[str, str]], list[str]]:
    spec = importlib.util.spec_from_file_location("test_qa_sets", ROOT / "tests" / "test_qa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HELD_OUT, module.OUT_OF_DOMAIN


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def accuracy(clf, held: list[tuple[str, str]], ood: list[str]) -> str:  # noqa: ANN001 - any classify()
    res = [clf.classify(t) for t, _ in held]
    feat = sum(r.feature == i.split(".")[0] for r, (_, i) in zip(res, held, strict=True))
    intent = sum(r.intent == i for r, (_, i) in zip(res, held, strict=True))
    rejected = sum(clf.classify(t).intent == "none" for t in ood)
    return (f"feature {feat}/{len(held)} ({feat / len(held):.1%}), intent {intent}/{len(held)} "
            f"({intent / len(held):.1%}), out-of-domain rejected {rejected}/{len(ood)} ({rejected / len(ood):.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="passes over the queries for latency")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                        help="onnxruntime intra-op threads to time (0: onnxruntime's choice, all cores)")
    parser.add_argument("--model-root", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    templates = TemplateSet.load(ROOT / "resources" / "templates" / "en-us.ini")
    with tempfile.TemporaryDirectory(prefix="qa-speed-") as tmp:   # removed after, unless --model-root
        run(args, templates, args.model_root or Path(tmp))


def run(args: argparse.Namespace, templates: TemplateSet, root: Path) -> None:
    held, ood = _test_sets()
    template_texts = [e.text for i in templates.in_domain_intents for e in templates.examples(i, limit=2, seed=3)]
    queries = [t for t, _ in held] + ood + [t for t, _ in DEV] + DEV_OOD
    print(f"templates: {len(templates.in_domain_intents)} intents; queries: {len(queries)} held-out, "
          f"{len(template_texts)} template sentences; repeats {args.repeats}")

    for name, quantize in (("fp32", False), ("int8", True)):
        target = root / name
        if (target / "meta.json").is_file():
            print(f"\n== {name}: reusing {target}")
        else:
            t0 = time.perf_counter()
            build_intent_model(templates, target, quantize=quantize)
            print(f"\n== {name}: built in {time.perf_counter() - t0:.1f} s")
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.1f} MB" for p in sorted(target.iterdir()) if p.is_file())
        print(f"   files: {sizes}")
        for threads in args.threads:
            t0 = time.perf_counter()
            clf = IntentClassifier(target, templates, num_threads=threads or None)
            print(f"   threads {threads or 'all'}: model load {(time.perf_counter() - t0) * 1000:.0f} ms; "
                  f"threshold {clf.threshold:.3f}")
            for q in queries[:5]:
                clf.classify(q)   # warm-up
            for label, texts in (("model path", queries), ("template match", template_texts)):
                ms = [clf.classify(t).elapsed_ms for _ in range(args.repeats) for t in texts]
                print(f"      classify ({label}): p50 {_pct(ms, 50):.1f} ms, p95 {_pct(ms, 95):.1f} ms per query "
                      f"(n={len(ms)})")
        for method in ("probe", "max_cosine"):
            c = clf if method == "probe" else IntentClassifier(target, templates, method=method)
            print(f"   {method:10s} tests/test_qa.py sets: {accuracy(c, held, ood)}")
            print(f"   {method:10s} second set:          {accuracy(c, DEV, DEV_OOD)}")
    baseline = KeywordIntentMatcher(templates)
    print("\n== keyword baseline")
    print(f"   tests/test_qa.py sets: {accuracy(baseline, held, ood)}")
    print(f"   second set:          {accuracy(baseline, DEV, DEV_OOD)}")

    answerer = Answerer(clock=lambda: datetime(2026, 11, 21, 6, 0, tzinfo=UTC))
    answers = [answerer.answer(clf.classify(t)).text for t, _ in held[::4]]
    synth = Synthesizer()
    runs = [synth.synthesize(a) for a in answers]
    ms = [r.elapsed_ms for r in runs]
    rtf = sum(ms) / 1000 / sum(r.duration_s for r in runs)
    print(f"\n== espeak-ng: {len(runs)} answers, median {statistics.median(ms):.0f} ms per sentence, RTF {rtf:.3f}")


if __name__ == "__main__":
    main()
