"""Rendering speed: real-time factor (seconds of audio per second of work) at 44.1 kHz.

For each soundfont here (the embedded TimGM6mb; FluidR3_GM when installed) and two pieces (a
5-minute piano performance built with pretty_midi, and Bach's BWV 66.6 from the music21
corpus) it measures:

- in process: `render()` with a new synth (soundfont load included) and with a pooled one;
- the CLI: `perceiver-music render FILE.mid -o OUT.wav` as a subprocess, wall time, so Python
  start-up, imports, reading the MIDI and writing the WAV are all included;
- a reference in the same run: pretty_midi's own `PrettyMIDI.fluidsynth()` on the piano piece.

Each figure is a real-time factor from wall time (median and best of --repeats runs) and
seconds of audio per CPU second (all threads), which moves less when other jobs share the
machine; the load average at start and end says how busy it was.

With --settings it also measures, in process, what reverb and a second fluidsynth thread cost.

Prints JSON. Usage: .venv/bin/python bench/render.py [--repeats N] [--settings]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perceiver_music import render as R  # noqa: E402

SAMPLE_RATE = 44100


def piano_performance(seconds: float = 300.0, seed: int = 0):
    """A pianist-like texture: left-hand chords and broken chords under a sixteenth-note right
    hand with chords on the beats; velocities swell and vary, the pedal changes every bar,
    onsets are slightly humanised. About 14 notes a second, up to ~90 fluidsynth voices."""
    import pretty_midi

    rng = np.random.default_rng(seed)
    pm = pretty_midi.PrettyMIDI(initial_tempo=100)
    piano = pretty_midi.Instrument(program=0, name="piano")
    beat, t = 0.6, 0.0
    roots = [48, 53, 55, 50, 45, 52]
    scale = [0, 2, 4, 5, 7, 9, 11, 12, 14, 16]

    def velocity(mean: float, spread: float, low: int = 15, high: int = 127) -> int:
        return int(np.clip(rng.normal(mean, spread), low, high))

    while t < seconds - 3:
        bar = 4 * beat
        root = roots[int(t / bar) % len(roots)]
        piano.control_changes.append(pretty_midi.ControlChange(64, 127, t + 0.03))
        for offset in (0, 7, 12):
            piano.notes.append(pretty_midi.Note(velocity(65, 15, 20), root + offset, t, t + bar * 0.5))
        for k, offset in enumerate([0, 7, 12, 16, 19, 16, 12, 7]):  # left hand, broken chord
            start = t + k * beat / 2
            piano.notes.append(pretty_midi.Note(velocity(55, 10, 20, 110), root + offset, start, start + beat * 0.4))
        swell = 80 + 30 * np.sin(t / 20)
        for k in range(16):  # right hand in sixteenths
            start = max(0.0, t + k * beat / 4 + rng.normal(0, 0.005))
            pitch = int(root + 24 + rng.choice(scale))
            v = velocity(swell, 12)
            piano.notes.append(pretty_midi.Note(v, pitch, start, start + beat * 0.22))
            if k % 4 == 0:
                for down in (3, 7):
                    piano.notes.append(pretty_midi.Note(v, pitch - down, start, start + beat * 0.9))
        piano.control_changes.append(pretty_midi.ControlChange(64, 0, t + bar - 0.05))
        t += bar
    pm.instruments.append(piano)
    return pm


def bach_chorale_midi(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from music21 import corpus

        corpus.parse("bach/bwv66.6").write("midi", fp=str(path))
    return path


def soundfonts() -> dict[str, Path]:
    found = {"TimGM6mb": R.embedded_soundfont()}
    for system in R.SYSTEM_SOUNDFONTS:
        if system.is_file():
            found[system.stem] = system
    return found


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cpu_seconds() -> float:
    """CPU time of this process (all its threads) and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result): CPU time says what the work costs when other jobs
    share the machine; wall time is what a person waits."""
    cpu = cpu_seconds()
    wall, result = timed(fn)
    return wall, cpu_seconds() - cpu, result


def summary(audio_seconds: float, runs: list[tuple[float, float]]) -> dict:
    walls = [wall for wall, _ in runs]
    cpus = [cpu for _, cpu in runs]
    return {
        "rtf_median": round(audio_seconds / statistics.median(walls), 1),
        "rtf_best": round(audio_seconds / min(walls), 1),
        "wall_seconds": [round(t, 2) for t in walls],
        "audio_per_cpu_second": round(audio_seconds / statistics.median(cpus), 1),
    }


def bench_piece(midi_path: Path, soundfont: Path, repeats: int, workdir: Path) -> dict:
    def render():
        return R.render(midi_path, soundfont=soundfont, sample_rate=SAMPLE_RATE)

    R.clear_synth_cache()
    *cold, audio = measured(render)
    audio_seconds = len(audio) / SAMPLE_RATE
    pooled = [measured(render)[:2] for _ in range(repeats)]
    cli = []
    exe = Path(sys.executable).parent / "perceiver-music"
    for i in range(repeats):
        out = workdir / f"cli-{i}.wav"
        command = [str(exe), "render", str(midi_path), "-o", str(out), "--soundfont", str(soundfont)]
        wall, cpu, result = measured(lambda: subprocess.run(command, capture_output=True, text=True))
        if result.returncode != 0:
            raise SystemExit(f"CLI failed: {result.stderr.strip()}")
        cli.append((wall, cpu))
    return {
        "audio_seconds": round(audio_seconds, 2),
        "peak": round(float(np.abs(audio).max()), 3),
        "in_process_new_synth": summary(audio_seconds, [tuple(cold)]),
        "in_process_pooled_synth": summary(audio_seconds, pooled),
        "cli": summary(audio_seconds, cli),
    }


def bench_settings(midi_path: Path, soundfont: Path, repeats: int) -> dict:
    """What the synth settings cost, in the same run: the defaults against no reverb and one
    fluidsynth thread, interleaved so that a busy moment hits all three alike."""
    variants = {"default": {}, "no_reverb": {"REVERB": False}, "cpu_cores_1": {"CPU_CORES": 1}}
    runs: dict[str, list] = {name: [] for name in variants}
    audio_seconds = 0.0
    for _ in range(repeats):
        for name, settings in variants.items():
            saved = {key: getattr(R, key) for key in settings}
            for key, value in settings.items():
                setattr(R, key, value)
            R.clear_synth_cache()
            try:
                R.render(midi_path, soundfont=soundfont, sample_rate=SAMPLE_RATE)  # loads the synth
                wall, cpu, audio = measured(lambda: R.render(midi_path, soundfont=soundfont, sample_rate=SAMPLE_RATE))
            finally:
                for key, value in saved.items():
                    setattr(R, key, value)
                R.clear_synth_cache()
            audio_seconds = len(audio) / SAMPLE_RATE
            runs[name].append((wall, cpu))
    return {name: summary(audio_seconds, measured_runs) for name, measured_runs in runs.items()}


def bench_pretty_midi_reference(pm, soundfont: Path) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wall, cpu, audio = measured(lambda: pm.fluidsynth(fs=SAMPLE_RATE, sf2_path=str(soundfont)))
    return summary(len(audio) / SAMPLE_RATE, [(wall, cpu)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median and best reported)")
    parser.add_argument("--settings", action="store_true", help="also measure no reverb and one fluidsynth thread")
    args = parser.parse_args()

    report = {
        "benchmark": "render",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {
            "nproc": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "fluidsynth_cpu_cores": R.CPU_CORES,
            "load_average_at_start": round(os.getloadavg()[0], 2),
        },
        "sample_rate": SAMPLE_RATE,
        "repeats": args.repeats,
        "results": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        piano = piano_performance()
        piano_path = workdir / "piano-5min.mid"
        piano.write(str(piano_path))
        pieces = {
            f"piano_5min ({sum(len(i.notes) for i in piano.instruments)} notes)": piano_path,
            "bach_bwv66.6 (music21 corpus)": bach_chorale_midi(workdir / "bwv66.6.mid"),
        }
        for font_name, font in soundfonts().items():
            results = report["results"].setdefault(font_name, {})
            for piece_name, path in pieces.items():
                results[piece_name] = bench_piece(path, font, args.repeats, workdir)
            results["pretty_midi.fluidsynth reference, piano_5min"] = bench_pretty_midi_reference(piano, font)
            if args.settings:
                results["settings, in process, piano_5min"] = bench_settings(piano_path, font, args.repeats)
    report["machine"]["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
