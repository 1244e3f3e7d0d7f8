"""Voice-loop verbs of the ``speakerops`` CLI: ``diagnose``, ``evaluate``, ``models build``.

Model bundles live in ``<SPEAKEROPS_DATA_DIR>/models/<kind>/<version>/`` unless ``--models-dir``
says otherwise; the default versions are built on first use.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

logger = logging.getLogger(__name__)

models_app = typer.Typer(help="Model versions as artifacts: build bundles.", no_args_is_help=True)

ModelsDir = Annotated[Path | None, typer.Option("--models-dir", help="Bundle root (default DATA_DIR/models).")]


def models_root(models_dir: Path | None) -> Path:
    from speakerops.settings import CoreSettings

    return models_dir or CoreSettings().data_dir / "models"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _progress(fraction: float, message: str) -> None:
    sys.stderr.write(f"\r[{fraction * 100:5.1f} %] {message[:70]:<70}")
    if fraction >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _versions_by_kind(root: Path, spec: str) -> dict[str, str]:
    """``"stt-1.0.0,qa-1.0.0-fp32"`` → ``{"stt": "stt-1.0.0", "qa": "qa-1.0.0-fp32"}``, by looking
    each version up under the bundle root."""
    from inference_core.bundles import MODEL_KINDS, bundle_dir

    out: dict[str, str] = {}
    for version in [v.strip() for v in spec.split(",") if v.strip()]:
        kinds = [k for k in MODEL_KINDS if (bundle_dir(root, k, version) / "manifest.json").is_file()]
        if not kinds:
            raise _fail(f"no bundle named {version!r} under {root}; `speakerops models build` lists what is built")
        out[kinds[0]] = version
    return out


def _load_loop(root: Path, versions: dict[str, str] | None, *, mos: bool = True, general: bool = True,
               denoise: str = "auto"):
    from inference_core.errors import InferenceError
    from inference_core.pipeline import LoopOptions, VoiceLoop

    try:
        return VoiceLoop.from_root(root, versions, LoopOptions(denoise=denoise, mos=mos, general_transcript=general))
    except InferenceError as exc:
        raise _fail(str(exc)) from exc


@models_app.command("build")
def models_build(models_dir: ModelsDir = None,
                 force: Annotated[bool, typer.Option("--force", help="Rebuild bundles that exist.")] = False,
                 as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Build the default model bundles: stt language pack, qa int8 and fp32, tts voice."""
    from inference_core.bundles import build_default_bundles

    root = models_root(models_dir)
    bundles = build_default_bundles(root, overwrite=force)
    rows = [{"kind": b.kind, "version": b.version, "path": str(b.path), "artifact_bytes": b.artifact_bytes,
             "files": len(b.manifest["files"]), "created_at": b.manifest["created_at"]} for b in bundles]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            typer.echo(f"{r['kind']:<4} {r['version']:<16} {r['artifact_bytes'] / 1e6:8.2f} MB  {r['path']}")


def _describe(r: Any) -> str:
    from inference_core.turns import turns_summary

    lines = [f"{r.audio}  ({r.duration_s:.1f} s{', speech ' + ', '.join(f'{a:.1f}–{b:.1f} s' for a, b in r.segments) if r.segments else ', no speech'})"]
    if r.error:
        return lines[0] + f"\n  error        {r.error}"
    lines.append(f"  transcript   {r.transcript or '(nothing)'}   (confidence {r.transcript_confidence:.2f}"
                 f"{', rejected' if r.rejected else ''})")
    if r.transcribed_span_s is not None:
        start, end = r.transcribed_span_s
        lines.append(f"               first speaker only ({start:.2f}–{end:.2f} s; turns {turns_summary(r.turns)}); "
                     "the other speaker is not answered")
    if r.rejected and r.intent_source != "rejected":
        lines.append(f"               doubtful; intent from: {r.intent_source}")
    if r.general_transcript is not None:
        lines.append(f"  general LM   {r.general_transcript or '(nothing)'}")
    if r.reference is not None:
        lines.append(f"  reference    {r.reference}   WER {r.wer:.2f}" if r.wer is not None else f"  reference    {r.reference}")
        if r.alignment:
            lines += ["               " + a for a in r.alignment.splitlines()]
    slots = ", ".join(f"{k}={v}" for k, v in r.slots.items())
    lines.append(f"  intent       {r.intent}{'  {' + slots + '}' if slots else ''}   (confidence {r.intent_confidence:.2f})")
    if r.answer:
        lines.append(f"  answer       {r.answer}")
    env = r.environment
    mos = f", MOS in {r.mos_input['ovrl']:.2f}" if r.mos_input else ""
    lines.append(f"  room         noise {env.get('noise_floor_dbfs', float('nan')):.0f} dBFS, SNR "
                 f"{env['snr_db']:.0f} dB" if env.get("snr_db") is not None else
                 f"  room         noise {env.get('noise_floor_dbfs', float('nan')):.0f} dBFS")
    lines[-1] += f", {r.speakers} speaker(s){mos}" if r.speakers is not None else mos
    lines.append("  timings ms   " + " · ".join(f"{k} {v:.0f}" for k, v in r.timings_ms.items()))
    for c in r.checks:
        mark = "–" if c.passed is None else ("✔" if c.passed else "✖")
        value = "" if c.value is None else (f" ({c.value:.0f} ms)" if "latency" in c.key else f" ({c.value:.2f})")
        lines.append(f"  {mark} {c.label}{value}{'  — ' + c.note if c.note and c.passed is None else ''}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the voice-loop verbs to the main CLI."""
    app.add_typer(models_app, name="models")

    @app.command()
    def diagnose(files: Annotated[list[Path], typer.Argument(help="Recordings (WAV/FLAC/OGG, any rate).")],
                 reference: Annotated[str | None, typer.Option("--reference", help="What was said (for WER).")] = None,
                 json_out: Annotated[Path | None, typer.Option("--json", help="Write the results as JSON here.")] = None,
                 audio_out: Annotated[Path | None, typer.Option("--audio-out", help="Write answer WAVs here.")] = None,
                 denoise: Annotated[str, typer.Option(help="auto (RNNoise when SNR < 15 dB) | rnnoise | noisereduce | none")] = "auto",
                 models_dir: ModelsDir = None) -> None:
        """Run recordings through the whole loop and show each stage, the room and the requirement checks."""
        from inference_core.audio import save_wav
        from inference_core.pipeline import Utterance

        loop = _load_loop(models_root(models_dir), None, denoise=denoise)
        results = list(loop.run_batch([Utterance(f, reference) for f in files]))
        out = []
        for i, r in enumerate(results):
            typer.echo(_describe(r) + "\n")
            d = r.to_dict()
            if audio_out is not None and r.answer_audio is not None:
                audio_out.mkdir(parents=True, exist_ok=True)
                path = audio_out / f"{Path(r.audio).stem}.{i}.answer.wav"
                save_wav(path, r.answer_audio)
                d["answer_audio_path"] = str(path)
            out.append(d)
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps({"models": loop.versions, "results": out}, indent=2, default=str))
        if any(r.error for r in results):
            raise typer.Exit(2)

    @app.command("evaluate")
    def evaluate_cmd(manifest: Annotated[Path, typer.Argument(help="JSONL manifest (docs/testset.md).")],
                     json_out: Annotated[Path | None, typer.Option("--json", help="Write the report JSON here.")] = None,
                     html_out: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")] = None,
                     models: Annotated[list[str] | None, typer.Option(
                         "--models", help="Versions to evaluate, comma-separated (e.g. stt-1.0.0,qa-1.0.0-fp32); "
                                          "give it twice to compare two configurations.")] = None,
                     limit: Annotated[int | None, typer.Option(help="Only the first N lines.")] = None,
                     no_mos: Annotated[bool, typer.Option("--no-mos", help="Skip DNSMOS (faster).")] = False,
                     models_dir: ModelsDir = None) -> None:
        """Evaluate the loop on a test-set manifest against the service requirements, beside the baseline."""
        from inference_core.evaluate import compare, evaluate
        from inference_core.report_html import render_evaluation

        if not manifest.is_file():
            raise _fail(f"manifest {manifest} does not exist (the shipped one: resources/testset/manifest.jsonl)")
        root = models_root(models_dir)
        configs = models or [""]
        if len(configs) > 2:
            raise _fail("--models takes one configuration, or two to compare")
        reports = []
        for spec in configs:
            loop = _load_loop(root, _versions_by_kind(root, spec) if spec else None, mos=not no_mos)
            reports.append(evaluate(manifest, loop, report=_progress, limit=limit))
        report = reports[-1] if len(reports) == 1 else reports[0]
        comparison = compare(reports[0], reports[1]) if len(reports) == 2 else None
        payload = {**report, "comparison": comparison} if comparison else report
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(payload, indent=2, default=str))
        if html_out is not None:
            render_evaluation(report, html_out, comparison)
        s = report["summary"]
        typer.echo(f"{s['utterances']} utterances, {s['errors']} unreadable · models {', '.join(report['models'].values())}")
        for r in s.get("requirements", []):
            mark = "–" if r["passed"] is None else ("✔" if r["passed"] else "✖")
            typer.echo(f"  {mark} {r['label']:<32} {r['value'] if r['value'] is not None else '—'}")
        b = report["baseline"]
        typer.echo(f"  baseline: WER {b.get('wer')}, intent accuracy {b.get('intent_accuracy')}")
        if comparison:
            for name, d in comparison["differences"].items():
                typer.echo(f"  {name} B−A {d['b_minus_a']} (95 % CI {d['ci95'][0]:.4f} … {d['ci95'][1]:.4f})")
