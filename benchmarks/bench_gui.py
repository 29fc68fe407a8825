"""napari's event loop through a whole first run, in the user's order (viewer first).

A fresh process opens a shown napari window under the X server, docks the widget, then runs
the `fast` preset on a 300x400 image: torch is imported and the model loaded in the worker,
the image segmented and the layers added. A 5 ms timer on the event loop records every gap;
the target is no gap above 250 ms (docs/performance.md has the figures).

    xvfb-run -a python benchmarks/bench_gui.py            # full-size ViT-B/16, random weights
    xvfb-run -a python benchmarks/bench_gui.py --tiny     # the test suite's tiny model
    xvfb-run -a python benchmarks/bench_gui.py --why 150  # and what ran at each gap > 150 ms

--why arms `faulthandler.dump_traceback_later` on every timer tick: a watchdog thread that
needs no GIL prints every thread's stack when the next tick is late, which shows what held
the GIL (or kept the GUI thread busy) during a stall.

The same scenario runs in tests/test_user_order.py with a loose bound that catches
regressions (a one-second freeze) without making the suite depend on machine load.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent.parent / "tests"


def weights_file(folder: Path, tiny: bool) -> Path:
    """Random weights saved as a state dict, in a process that opens no viewer."""
    import torch

    path = folder / ("tiny.pt" if tiny else "vit-b-16-random.pt")
    if tiny:
        sys.path.insert(0, str(TESTS))
        from conftest import build_tiny_clip

        model = build_tiny_clip()
    else:
        import open_clip

        model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True)
    state = {k: v for k, v in model.state_dict().items() if k != "attn_mask"}
    torch.save(state, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--why", type=float, metavar="MS", help="print the stacks at gaps > MS")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    from test_user_order import RESPONSIVENESS, run_script

    with tempfile.TemporaryDirectory() as folder:
        weights = weights_file(Path(folder), args.tiny)
        for round_ in range(1, args.rounds + 1):
            watchdog = f"WATCHDOG_S = {args.why / 1000 if args.why else None}\n"
            out = run_script(watchdog + "import napari\n" + RESPONSIVENESS, weights)
            if args.why:
                print(out.split("GAPS", 1)[0])
            gaps = np.array(json.loads(out.split("GAPS", 1)[1]))
            print(
                f"round {round_}: {len(gaps)} ticks, median {np.median(gaps):.1f} ms, "
                f"p99 {np.percentile(gaps, 99):.1f} ms, max {gaps.max():.1f} ms, "
                f"gaps over 100 ms: {int((gaps > 100).sum())}"
            )


if __name__ == "__main__":
    main()
