"""A LoRA for the shapes text-to-image model, trained only on the combinations its base run held
out.

The base is a trained run of ``configs/shapes_t2i.py`` (the demo's, ``runs/demo/t2i``), frozen:
the config repeats its architecture and noise process (checked against the run's). The data are
the embedded ``shapes`` restricted to the six (shape, colour, position) combinations the base
never saw; rank-8 adapters on the UNet's attention projections and feed-forward layers train. At
the last step they are written to ``WORKDIR/pytorch_lora_weights.safetensors``. The ``tiny``
variant adapts ``shapes_t2i.py:tiny`` (pixels, no autoencoder) in the tests.

    make demo
    jaxdiff train --config configs/shapes_lora.py --workdir runs/demo/lora \\
        --config.base_workdir=runs/demo/t2i
    jaxdiff sample --workdir runs/demo/lora --prompt "a blue circle in the center"
"""

from __future__ import annotations

import ml_collections

from jaxdiff.data.shapes import combinations, parse_holdout, prompt

from . import common, shapes_t2i


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = shapes_t2i.adapting(arg, "lora")
    tiny = arg == "tiny"
    # The base run's held-out combinations alone: every other one is held out here.
    unseen = set(parse_holdout(common.SHAPES_HOLDOUT))
    seen = "; ".join(" ".join(c) for c in combinations() if c not in unseen)
    config.data = common.shapes_data(image_size=config.data.image_size, holdout=seen)
    config.lora = ml_collections.ConfigDict(
        {
            "rank": 4 if tiny else 8,
            "alpha": 4.0 if tiny else 8.0,
            "dropout": 0.0,
            "unet_targets": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
            "text_encoder_targets": (),
            "save_format": "peft",  # or "kohya"
        }
    )
    config.train = common.training(
        steps=4 if tiny else 300,
        batch_size=8 if tiny else 32,
        learning_rate=1e-3 if tiny else 5e-4,
    )
    config.train.update(
        {"warmup_steps": 1 if tiny else 20, "ema_rate": 0.0, "caption_dropout": 0.1}
    )
    previews = tuple(prompt(*combination) for combination in sorted(unseen))
    config.sample.preview_prompts = previews[: len(config.sample.preview_prompts)]
    return config
