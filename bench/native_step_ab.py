"""The native step's C against edited copies of it, in one process (issue 13's kernel work).

    python bench/native_step_ab.py EDITED.c [EDITED.c ...] --threads 2 --rounds 30

On a noisy machine two runs minutes apart can differ by more than a kernel change does, so a
change is judged here against the shipped code in the same process, round by round. Each build
(perceiver_music/native/decode_step.c, then every edited copy; compiled as the app compiles it,
into a temporary folder) gets one decoder at 1 row and one at 4 variations, reset over the same
random primer of --context ids (bench/generate.py's bench_model: random weights of
default_config(), int8 weights and the native int8 caches). Then every round times a burst of
steps of every decoder, the builds' order rotated each round. The steps read all cached inputs
(or none: --no-cross) and the first --latents latent slots, and store nothing, so every step
reads the same caches.

Prints one JSON object: each build's median ms per step at 1 row and at 4 variations; for each
edited build its time over the shipped build's, round by round (quartiles), and the largest
difference of its logits from the shipped build's after the same step (0 when an edit changes
the speed only); and each build's 4-variation step over its 1-row step (the ratio issue 13 asks
to be at most 2), round by round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from generate import bench_model, machine  # noqa: E402
from native_step_parts import run_step  # noqa: E402

from perceiver_music import native_step  # noqa: E402
from perceiver_music.decode_onnx import NATIVE_INT8_CACHES, OnnxDecoder  # noqa: E402
from perceiver_music.generate import default_reset_latents  # noqa: E402
from perceiver_music.model import default_config  # noqa: E402

ROWS = (1, 4)
SHIPPED = "shipped"


@contextlib.contextmanager
def building_from(source: Path, folder: Path):
    """While open, the native steps made get a library built from `source` (native_step builds,
    and keys its build by, the module's SOURCE) in `folder`; the ONNX exports stay in the user's
    cache folder."""
    shipped, load = native_step.SOURCE, native_step.load_library
    native_step.SOURCE = source
    native_step.load_library = lambda cache_dir=None: load(folder)
    try:
        yield
    finally:
        native_step.SOURCE, native_step.load_library = shipped, load


def quartiles(values) -> list[float]:
    return [round(float(x), 3) for x in np.percentile(values, [25, 50, 75])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("edited", nargs="+", type=Path, help="edited copies of decode_step.c")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=448,
                        help="latent slots read (a decode runs 384 to 511 between resets: 448 on average)")
    parser.add_argument("--no-cross", action="store_true", help="read none of the cross-attend's inputs")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--burst", type=int, default=40)
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    names = [SHIPPED] + [path.stem for path in args.edited]
    if len(set(names)) != len(names):
        parser.error("every edited copy needs a file name of its own (they name the builds)")
    missing = [str(path) for path in args.edited if not path.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    torch.set_num_threads(args.threads)
    cfg = default_config()
    cfg.max_context = args.context
    if not 0 <= args.latents <= cfg.num_latents:
        parser.error(f"--latents must be between 0 and {cfg.num_latents}")
    model = bench_model(cfg, torch.device("cpu")).eval()
    primer = torch.randint(3, 300, (1, args.context - 1))
    cross = not args.no_cross
    decoders, logits = {}, {}
    with tempfile.TemporaryDirectory(prefix="native-ab-") as builds:
        for name, source in zip(names, [native_step.SOURCE, *args.edited]):
            with building_from(source.resolve(), Path(builds) / name):
                for rows in ROWS:
                    try:
                        decoder = OnnxDecoder(model, rows, precision="int8", threads=args.threads,
                                              native_step=True, cache_type=NATIVE_INT8_CACHES)
                    except native_step.Unavailable as error:  # an edit that does not compile, say
                        parser.exit(2, f"{source}: {error}\n")
                    with torch.inference_mode():
                        decoder.reset(primer.expand(rows, -1), default_reset_latents(cfg.num_latents))
                    run_step(decoder, cross, args.latents)
                    logits[name, rows] = decoder.logits.copy()
                    decoder.native.rest()
                    decoders[name, rows] = decoder
        times: dict = {key: [] for key in decoders}
        keys = list(decoders)
        for round_ in range(args.rounds):
            shift = round_ % len(keys)
            for key in keys[shift:] + keys[:shift]:
                decoder = decoders[key]
                run_step(decoder, cross, args.latents)  # once untimed: its worker wakes
                start = time.perf_counter()
                for _ in range(args.burst):
                    run_step(decoder, cross, args.latents)
                times[key].append((time.perf_counter() - start) / args.burst * 1e3)
                decoder.native.rest()  # its worker must not spin beside the next decoder's steps
    ms = {key: np.array(value) for key, value in times.items()}
    print(json.dumps({
        "command": "python bench/native_step_ab.py " + " ".join(sys.argv[1:]),
        "started": started,
        "machine": machine(),
        "context": args.context,
        "cross_inputs_read": decoders[SHIPPED, 1].cached if cross else 0,
        "latents_read": args.latents,
        "rounds": args.rounds,
        "byte_products": "vnni" if decoders[SHIPPED, 1].native.vnni else "avx2",
        "ms_median": {name: {f"{rows}_rows": round(float(np.median(ms[name, rows])), 3) for rows in ROWS}
                      for name in names},
        "over_shipped_by_round": {name: {f"{rows}_rows": quartiles(ms[name, rows] / ms[SHIPPED, rows])
                                         for rows in ROWS} for name in names[1:]},
        "logits_max_abs_diff_from_shipped": {
            name: {f"{rows}_rows": float(np.abs(logits[name, rows] - logits[SHIPPED, rows]).max()) for rows in ROWS}
            for name in names[1:]},
        "4_variations_over_1_row_by_round": {name: quartiles(ms[name, 4] / ms[name, 1]) for name in names},
        "threads": decoders[SHIPPED, 4].native.threads,
    }, indent=1))


if __name__ == "__main__":
    main()
