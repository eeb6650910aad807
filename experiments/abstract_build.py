"""Building a module abstractly: `nnx.eval_shape` against `jaxdiff.models.abstract.eval_shape`.

Times both on SD 1.5's UNet and DiT-XL/2 in round-robin repeats (the order flipped each repeat)
and prints the medians and their ratio.

    python experiments/abstract_build.py --repeats 5
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flax import nnx  # noqa: E402

from jaxdiff.models import DIT_PRESETS, UNET_PRESETS, DiT, UNet  # noqa: E402
from jaxdiff.models.abstract import eval_shape  # noqa: E402

MODELS = {
    "SD 1.5 UNet": lambda: UNet(**UNET_PRESETS["sd15"], rngs=nnx.Rngs(0)),
    "DiT-XL/2": lambda: DiT(**DIT_PRESETS["DiT-XL/2"], out_channels=8, rngs=nnx.Rngs(0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    builders = {"nnx.eval_shape": nnx.eval_shape, "abstract.eval_shape": eval_shape}
    print("| model | nnx.eval_shape | abstract.eval_shape | ratio |\n|---|---|---|---|")
    for name, build in MODELS.items():
        times: dict[str, list[float]] = {b: [] for b in builders}
        for repeat in range(args.repeats):
            order = list(builders) if repeat % 2 == 0 else list(reversed(builders))
            for builder in order:
                start = time.perf_counter()
                builders[builder](build)
                times[builder].append(time.perf_counter() - start)
        plain, ours = (statistics.median(times[b]) for b in builders)
        print(f"| {name} | {plain:.2f} s | {ours:.2f} s | {plain / ours:.1f}x |")


if __name__ == "__main__":
    main()
