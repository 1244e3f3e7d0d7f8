"""Build SpeakerOps's shipped evaluation test set from espeak-ng speech, reproducibly.

Usage::

    .venv/bin/python scripts/build_testset.py --out resources/testset --seed 0

Same seed and same espeak-ng build → byte-identical files: espeak-ng's options are all given
explicitly (voice, speed, pitch, amplitude, word gap), every random draw comes from a numpy
``Generator`` seeded from ``--seed`` and the clip's name, and FLAC encoding is deterministic. The set
and its manifest format are described in ``docs/testset.md``; ``build_info.json`` records the
espeak-ng version and the options used.

Composition (seed 0): 40 commands (27 sampled from the sentence templates, 13 phrasings the
templates do not produce) × 2 voices clean, 60 of those renditions mixed with white, pink or
babble noise at 20/10/0 dB SNR, 16 two-speaker clips, 16 out-of-domain utterances and 16
non-speech clips: 188 clips, 9.6 min, 9.6 MB of 16 kHz mono 16-bit FLAC (built in ~5 s).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inference_core.templates import TemplateSet  # noqa: E402

logger = logging.getLogger(__name__)

SR = 16000
SPEECH_LEVEL_DBFS = -26.0  # active speech level, ITU-T P.56's customary -26 dBov
PEAK_MAX = 0.95
SPEEDS_WPM = (140, 155, 170, 190)
SNRS_DB = (20, 10, 0)
NOISES = ("white", "pink", "babble")
ESPEAK_PITCH = 50       # espeak-ng defaults, given explicitly so a changed default cannot change the set
ESPEAK_AMPLITUDE = 100
ESPEAK_WORD_GAP = 0     # units of 10 ms

FIELD_ORDER = ("text", "intent", "feature", "slots", "speakers", "voice", "gender", "accent", "speed_wpm",
               "snr_db", "noise", "kind", "in_templates")

#: voice → (gender, accent). espeak-ng variants m* are male, f* female (voices/!v/*: "gender").
#: British English is ``en`` (= gmw/en, "English (Great Britain)"): espeak-ng 1.51 silently ignores
#: the variant in ``en-gb+f3`` (same audio as plain ``en-gb``), so ``en+f3`` it is.
#: :func:`check_voices` fails the build if two voices sound the same.
VOICES: dict[str, tuple[str, str]] = {
    "en-us+m3": ("male", "us"),
    "en-us+f2": ("female", "us"),
    "en+m1": ("male", "gb"),
    "en-us+f4": ("female", "us"),
    "en+f3": ("female", "gb"),
    "en-us+m7": ("male", "us"),
}
MALE = [v for v, (g, _) in VOICES.items() if g == "male"]
FEMALE = [v for v, (g, _) in VOICES.items() if g == "female"]

#: Commands the templates do NOT produce (checked at build time): intent, text, slots.
OWN_COMMANDS: list[tuple[str, str, dict[str, str]]] = [
    ("weather.forecast", "is it going to be windy in london tomorrow", {"city": "london", "day": "tomorrow"}),
    ("weather.forecast", "what's the weather looking like in paris", {"city": "paris"}),
    ("news.read", "catch me up on the sports news", {"news_topic": "sports"}),
    ("news.read", "give me today's headlines please", {}),
    ("schedule.add", "put a dentist appointment in my calendar for friday",
     {"event": "dentist appointment", "day": "friday"}),
    ("schedule.remind", "don't let me forget to buy milk tomorrow", {"task": "buy milk", "day": "tomorrow"}),
    ("schedule.alarm", "wake me at seven thirty please", {"time": "seven thirty"}),
    ("schedule.list", "what does my schedule look like tomorrow", {"day": "tomorrow"}),
    ("music.play", "play me some jazz", {"genre": "jazz"}),
    ("music.next", "skip to the next song please", {}),
    ("qa.capital", "what's the capital city of japan", {"country": "japan"}),
    ("qa.author", "who was the author of hamlet", {"book": "hamlet"}),
    ("qa.height", "how high is mount everest exactly", {"landmark": "mount everest"}),
]
#: Out-of-domain phrasings the templates do not list (the [none] section gives the others).
OWN_OOD = [
    "set the thermostat to seventy degrees",
    "how many ounces are in a cup",
    "tell me a bedtime story",
    "add eggs to my shopping list",
    "what's the traffic like on the way to work",
    "turn off the kitchen lights",
    "how far away is the moon",
    "find my phone",
]
BABBLE_VOICES = ["en-us+m2", "en+f1", "en-us+m4", "en+f5"]
#: Unrelated read text for the babble noise (several voices at once).
BABBLE_TEXT = [
    "the old harbour was quiet in the early hours, and the boats rocked gently against the wooden pier",
    "our committee has reviewed the budget and would like to propose a few changes to the plan",
    "she walked along the river for an hour before she noticed that the bridge had been closed",
    "several students asked whether the library would stay open later during the examination period",
    "the recipe calls for flour, butter, two eggs and a pinch of salt, mixed slowly by hand",
    "after the storm the village gathered in the square to count the fallen trees and broken fences",
]


# -- synthesis and signals ----------------------------------------------------------------------
def espeak_version() -> str:
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def synthesize(text: str, voice: str, speed_wpm: int) -> np.ndarray:
    """espeak-ng speech of ``text`` as float32 at 16 kHz, shape ``(n,)``, trimmed of edge silence."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed_wpm), "-p", str(ESPEAK_PITCH),
                        "-a", str(ESPEAK_AMPLITUDE), "-g", str(ESPEAK_WORD_GAP), "-z", "-w", str(wav), text],
                       check=True, capture_output=True)
        x, sr = sf.read(wav, dtype="float32")
    x = soxr.resample(x, sr, SR).astype(np.float32)
    nz = np.flatnonzero(np.abs(x) > 1e-3)
    return x[nz[0]: nz[-1] + 1] if len(nz) else x


def check_voices(voices: list[str]) -> None:
    """Fail if two voices give identical audio (an ignored variant, see :data:`VOICES`)."""
    seen: dict[str, str] = {}
    for voice in voices:
        digest = hashlib.sha256(synthesize("one two three", voice, 160).tobytes()).hexdigest()
        if digest in seen:
            raise SystemExit(f"espeak-ng voices {seen[digest]!r} and {voice!r} sound the same: "
                             "a variant was ignored; use a voice name of the form en+f3")
        seen[digest] = voice


def active_power(x: np.ndarray) -> float:
    """Mean power of the 20 ms frames within 40 dB of the loudest one (a simple active speech level)."""
    n = SR // 50
    k = max(1, len(x) // n)
    if len(x) < n:
        return float(np.mean(x.astype(np.float64) ** 2))
    p = np.mean(x[: k * n].reshape(k, -1).astype(np.float64) ** 2, axis=1)
    return float(np.mean(p[p >= p.max() * 1e-4]))


def set_level(x: np.ndarray, dbfs: float = SPEECH_LEVEL_DBFS) -> np.ndarray:
    """Scale to an active level of ``dbfs``; then down if the peak would pass :data:`PEAK_MAX`."""
    y = x * np.sqrt(10 ** (dbfs / 10) / max(active_power(x), 1e-20))
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    return (y * (PEAK_MAX / peak) if peak > PEAK_MAX else y).astype(np.float32)


def white(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f power noise: white noise shaped by 1/sqrt(f) in the frequency domain, unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[1:] /= np.sqrt(f[1:] / f[1])
    spec[0] = 0
    y = np.fft.irfft(spec, n)
    return (y / (np.sqrt(np.mean(y ** 2)) or 1.0)).astype(np.float32)


def babble_track(seed: int) -> np.ndarray:
    """~20 s of four espeak-ng voices reading unrelated text at once, unit RMS."""
    rng = np.random.default_rng([seed, 7])
    tracks = []
    for i, voice in enumerate(BABBLE_VOICES):
        parts = [synthesize(BABBLE_TEXT[(i + k) % len(BABBLE_TEXT)], voice, 165) for k in range(3)]
        y = np.concatenate(parts)
        tracks.append(np.roll(set_level(y, -26), int(rng.integers(len(y)))))
    n = min(len(t) for t in tracks)
    y = np.sum([t[:n] for t in tracks], axis=0)
    return (y / np.sqrt(np.mean(y ** 2))).astype(np.float32)


def noise_of(kind: str, rng: np.random.Generator, n: int, babble: np.ndarray) -> np.ndarray:
    if kind == "white":
        return white(rng, n)
    if kind == "pink":
        return pink(rng, n)
    start = int(rng.integers(0, len(babble) - n)) if len(babble) > n else 0
    return np.resize(babble[start:], n).astype(np.float32)


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``speech + g·noise`` with g set for ``snr_db`` (active speech power over noise power);
    the mix is scaled down as a whole if its peak would pass :data:`PEAK_MAX` (SNR kept)."""
    g = np.sqrt(active_power(speech) / (np.mean(noise.astype(np.float64) ** 2) * 10 ** (snr_db / 10)))
    y = speech + g * noise
    peak = float(np.max(np.abs(y)))
    return (y * (PEAK_MAX / peak) if peak > PEAK_MAX else y).astype(np.float32)


def pad(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lead and tail silence of 0.3–0.6 s each (VAD and noise floor need non-speech)."""
    a, b = (int(rng.uniform(0.3, 0.6) * SR) for _ in range(2))
    return np.concatenate([np.zeros(a, np.float32), x, np.zeros(b, np.float32)])


def chord_clip(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Music-like: a sequence of triads of harmonic tones with attack/decay envelopes."""
    roots = [220.0, 246.94, 261.63, 293.66, 329.63, 349.23, 392.0]
    out = np.zeros(int(seconds * SR), np.float32)
    step = int(0.5 * SR)
    t = np.arange(step) / SR
    env = np.minimum(1, t / 0.02) * np.exp(-t * 3)
    for start in range(0, len(out) - step + 1, step):
        root = roots[int(rng.integers(len(roots)))]
        tone = sum(np.sin(2 * np.pi * root * r * h * t) / h for r in (1, 1.26, 1.5) for h in (1, 2, 3))
        out[start: start + step] += (env * tone).astype(np.float32)
    return out


def nonspeech(kind: str, level_dbfs: float | None, rng: np.random.Generator, seconds: float,
              freq_hz: float = 1000.0) -> np.ndarray:
    """A non-speech clip of ``kind`` at an RMS level of ``level_dbfs``."""
    n = int(seconds * SR)
    t = np.arange(n) / SR
    if kind == "white":
        y = white(rng, n)
    elif kind == "pink":
        y = pink(rng, n)
    elif kind == "tone":
        y = np.sin(2 * np.pi * freq_hz * t)
    elif kind == "sweep":
        y = np.sin(2 * np.pi * (100 * t + (4000 - 100) / (2 * seconds) * t ** 2))
    elif kind == "hum":
        y = sum(np.sin(2 * np.pi * 60 * h * t) / h for h in (1, 2, 3, 5))
    elif kind == "chord":
        y = chord_clip(rng, seconds)
    elif kind == "silence":
        return np.zeros(n, np.float32)
    else:
        raise ValueError(kind)
    y = np.asarray(y, np.float64)
    return (y * np.sqrt(10 ** (level_dbfs / 10) / np.mean(y ** 2))).astype(np.float32)


def write_flac(path: Path, x: np.ndarray, rng: np.random.Generator) -> None:
    """16-bit FLAC with TPDF dither (±1 LSB): no exact-zero silence, as a real converter gives."""
    d = rng.random(len(x)) - rng.random(len(x))
    q = np.clip(np.round(x.astype(np.float64) * 32767 + d), -32768, 32767).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, q, SR, format="FLAC", subtype="PCM_16")


# -- the set ------------------------------------------------------------------------------------
def pick_commands(ts: TemplateSet, seed: int, n_templates: int = 27,
                  own: list[tuple[str, str, dict[str, str]]] | None = None) -> list[dict]:
    """Template sentences round-robin over the in-domain intents, then ``own`` (default
    :data:`OWN_COMMANDS`)."""
    rng = np.random.default_rng([seed, 1])
    pools = {i: ts.examples(i, limit=60, seed=seed) for i in ts.in_domain_intents}
    out: list[dict] = []
    seen: set[str] = set()
    while len(out) < n_templates:
        for intent, pool in pools.items():
            if len(out) >= n_templates:
                break
            candidates = [e for e in pool if e.text not in seen]
            ex = candidates[int(rng.integers(len(candidates)))]
            seen.add(ex.text)
            out.append({"text": ex.text, "intent": intent, "slots": dict(ex.slots), "in_templates": True})
    for intent, text, slots in OWN_COMMANDS if own is None else own:
        if ts.match(text) is not None:
            raise SystemExit(f"{text!r} is produced by the templates: replace it in OWN_COMMANDS "
                             "(or in the --phrasings file)")
        out.append({"text": text, "intent": intent, "slots": slots, "in_templates": False})
    return out


def clip_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def load_phrasings(path: Path) -> tuple[list[tuple[str, str, dict[str, str]]], list[str]]:
    """Commands and out-of-domain requests to use instead of :data:`OWN_COMMANDS` and :data:`OWN_OOD`.

    ``path`` is JSON: ``{"commands": [{"intent": "news.read", "text": "...", "slots": {...}}, ...],
    "ood": ["...", ...]}``. A held-out set for calibration (another ``--seed``) uses its own
    phrasings, so that nothing tuned on it has heard the shipped set's out-of-template sentences.

    Raises
    ------
    SystemExit
        The file is unreadable or a field is missing or of the wrong type (the message names it).
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        commands = [(str(c["intent"]), " ".join(str(c["text"]).lower().split()),
                     {str(k): str(v) for k, v in (c.get("slots") or {}).items()}) for c in data["commands"]]
        ood = [" ".join(str(t).lower().split()) for t in data["ood"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SystemExit(f"--phrasings {path}: {exc!r}; expected JSON {{\"commands\": [{{\"intent\", \"text\", "
                         f"\"slots\"}}, ...], \"ood\": [\"...\", ...]}}") from None
    if not commands or not ood:
        raise SystemExit(f"--phrasings {path}: needs at least one command and one out-of-domain request")
    shipped = {t for _, t, _ in OWN_COMMANDS} | set(OWN_OOD)
    repeated = sorted(shipped & ({t for _, t, _ in commands} | set(ood)))
    if repeated:
        raise SystemExit(f"--phrasings {path}: {repeated} are phrasings of the shipped test set; "
                         "a held-out set needs phrasings of its own")
    return commands, ood


def build(out: Path, seed: int, phrasings: Path | None = None) -> list[dict]:
    ts = TemplateSet.load(ROOT / "resources" / "templates" / "en-us.ini")
    own_commands, own_ood = load_phrasings(phrasings) if phrasings is not None else (OWN_COMMANDS, OWN_OOD)
    check_voices(list(VOICES) + BABBLE_VOICES)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rows: list[dict] = []
    rng = np.random.default_rng([seed, 0])

    def add(name: str, audio: np.ndarray, **fields) -> None:
        path = out / f"{name}.flac"
        write_flac(path, audio, clip_rng(seed, name + "/dither"))
        fields.setdefault("feature", fields["intent"].split(".")[0])
        row = {"audio": path.relative_to(out).as_posix()}
        row.update({k: fields.pop(k) for k in FIELD_ORDER if k in fields})
        row.update(fields)
        rows.append(row)

    def speaker(voice: str) -> dict:
        gender, accent = VOICES[voice]
        return {"voice": voice, "gender": gender, "accent": accent}

    # clean commands: each by one male and one female voice, speeds rotating
    commands = pick_commands(ts, seed, own=own_commands)
    renditions = []
    for i, cmd in enumerate(commands):
        for j, voice in enumerate((MALE[i % len(MALE)], FEMALE[(i + i // len(FEMALE)) % len(FEMALE)])):
            speed = SPEEDS_WPM[(i + 2 * j) % len(SPEEDS_WPM)]
            name = f"clean/c{i:02d}_{voice.replace('+', '_')}_{speed}"
            speech = set_level(synthesize(cmd["text"], voice, speed))
            audio = pad(speech, clip_rng(seed, name))
            add(name, audio, text=cmd["text"], intent=cmd["intent"], slots=cmd["slots"], speakers=1,
                **speaker(voice), speed_wpm=speed, snr_db=None, noise="none", kind="command",
                in_templates=cmd["in_templates"])
            renditions.append((i, cmd, voice, speed, audio, name))

    # noisy copies of 60 renditions: every (noise, SNR) pair 6-7 times
    babble = babble_track(seed)
    order = rng.permutation(len(renditions))[:60]
    for k, r in enumerate(sorted(order)):
        i, cmd, voice, speed, audio, clean_name = renditions[r]
        kind, snr = NOISES[k % 3], SNRS_DB[(k // 3) % 3]
        name = f"noisy/{clean_name.split('/')[1]}_{kind}_{snr}db"
        noise = noise_of(kind, clip_rng(seed, name), len(audio), babble)
        add(name, mix(audio, noise, snr), text=cmd["text"], intent=cmd["intent"], slots=cmd["slots"],
            speakers=1, **speaker(voice), speed_wpm=speed, snr_db=snr, noise=kind, kind="command",
            in_templates=cmd["in_templates"])

    # two speakers taking turns, male/female alternating first; reference = the first command
    for k in range(16):
        first, second = commands[(3 * k) % len(commands)], commands[(3 * k + 7) % len(commands)]
        pair = (MALE[k % len(MALE)], FEMALE[(k + 1) % len(FEMALE)])
        v1, v2 = pair if k % 2 == 0 else pair[::-1]
        speed = SPEEDS_WPM[k % len(SPEEDS_WPM)]
        name = f"two_speaker/t{k:02d}_{v1.replace('+', '_')}__{v2.replace('+', '_')}"
        r = clip_rng(seed, name)
        gap = np.zeros(int(r.uniform(0.25, 0.5) * SR), np.float32)
        audio = pad(np.concatenate([set_level(synthesize(first["text"], v1, speed)), gap,
                                    set_level(synthesize(second["text"], v2, speed))]), r)
        add(name, audio, text=first["text"], intent=first["intent"], slots=first["slots"], speakers=2,
            voice=f"{v1},{v2}", gender=f"{VOICES[v1][0]},{VOICES[v2][0]}",
            accent=f"{VOICES[v1][1]},{VOICES[v2][1]}", speed_wpm=speed, snr_db=None, noise="none",
            kind="two_speaker", in_templates=first["in_templates"])

    # out of domain: 8 from the templates' [none] section, 8 of our own
    listed = [ex.text for ex in ts.examples("none", limit=200, seed=seed)]
    picked = [listed[int(j)] for j in sorted(rng.choice(len(listed), 8, replace=False))]
    for k, (text, listed_here) in enumerate([(t, True) for t in picked] + [(t, False) for t in own_ood]):
        if not listed_here and ts.match(text) is not None:
            raise SystemExit(f"{text!r} is produced by the templates: replace it in OWN_OOD")
        voice = list(VOICES)[k % len(VOICES)]
        speed = SPEEDS_WPM[k % len(SPEEDS_WPM)]
        name = f"ood/o{k:02d}_{voice.replace('+', '_')}_{speed}"
        audio = pad(set_level(synthesize(text, voice, speed)), clip_rng(seed, name))
        add(name, audio, text=text, intent="none", slots={}, speakers=1, **speaker(voice), speed_wpm=speed,
            snr_db=None, noise="none", kind="ood", in_templates=listed_here)

    # non-speech
    specs = [("white", -50, 0), ("white", -35, 0), ("white", -20, 0), ("pink", -50, 0), ("pink", -35, 0),
             ("pink", -20, 0), ("pink", -28, 0), ("tone", -30, 440), ("tone", -20, 1000), ("sweep", -25, 0),
             ("hum", -35, 0), ("chord", -40, 0), ("chord", -30, 0), ("chord", -22, 0), ("silence", None, 0),
             ("silence", None, 0)]
    for k, (kind, level, freq) in enumerate(specs):
        name = f"nonspeech/n{k:02d}_{kind}" + ("" if level is None else f"_{-level}dbfs")
        r = clip_rng(seed, name)
        audio = nonspeech(kind, level, r, float(r.uniform(2.0, 4.0)), freq_hz=freq or 1000.0)
        add(name, audio, intent="none", slots={}, speakers=0, voice=None, gender=None, accent=None,
            speed_wpm=None, snr_db=None, noise=kind, kind="nonspeech", in_templates=None)

    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
    info = {"seed": seed, "espeak_ng": espeak_version(), "sample_rate": SR, "clips": len(rows),
            "espeak_options": {"pitch": ESPEAK_PITCH, "amplitude": ESPEAK_AMPLITUDE, "word_gap": ESPEAK_WORD_GAP,
                               "speeds_wpm": list(SPEEDS_WPM), "voices": VOICES},
            "speech_level_dbfs": SPEECH_LEVEL_DBFS,
            "manifest_sha256": hashlib.sha256((out / "manifest.jsonl").read_bytes()).hexdigest()}
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "resources" / "testset", help="output directory (replaced)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phrasings", type=Path, default=None,
                   help="JSON of commands and out-of-domain requests to use instead of the built-in "
                        "out-of-template ones (for a held-out calibration set; see load_phrasings)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("espeak-ng") is None:
        logger.error("espeak-ng is not installed: apt-get install espeak-ng (scripts/bootstrap.sh does)")
        return 2
    rows = build(args.out, args.seed, args.phrasings)
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    seconds = sum(sf.info(args.out / r["audio"]).duration for r in rows)
    logger.info("%d clips (%s), %.1f min, %.1f MB in %s", len(rows),
                ", ".join(f"{k} {v}" for k, v in kinds.items()), seconds / 60, size / 1e6, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
