"""LoRA files in every format people share, read onto jaxdiff's UNet and CLIP text encoder:
each key lands on the right layer, in jaxdiff's layout, with diffusers' scale; bad files are
one-line errors naming the key. The models are abstract (no weights are made)."""

import json

import numpy as np
import pytest
from flax import nnx

from jaxdiff.convert.lora_files import read_lora
from jaxdiff.convert.safetensors_io import write_safetensors
from jaxdiff.errors import UserError
from jaxdiff.models import CLIP_TEXT_PRESETS, UNET_PRESETS, CLIPTextTransformer, UNet
from jaxdiff.models.abstract import eval_shape

ATTN = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
CONV = "down_blocks.0.resnets.0.conv1"  # 3x3, 32 -> 32
PROJ = "down_blocks.0.attentions.0.proj_in"  # 1x1 convolution, 32 -> 32
SHORTCUT = "up_blocks.1.resnets.0.conv_shortcut"  # 1x1, 96 -> 32
FF = "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj"  # Linear 32 -> 256
Q_PROJ = "encoder.layers.1.self_attn.q_proj"


@pytest.fixture(scope="module")
def models():
    """The tiny UNet and text encoder, abstract."""
    return {
        "unet": eval_shape(lambda: UNet(**UNET_PRESETS["tiny"], rngs=nnx.Rngs(0))),
        "text_encoder": eval_shape(
            lambda: CLIPTextTransformer(**CLIP_TEXT_PRESETS["tiny"], rngs=nnx.Rngs(0))
        ),
    }


def _pair(rank: int, out: int, inp: int, kernel: int | None = None, seed: int = 0):
    """(down, up) in the reference layout: [r, in] / [out, r], or [r, in, k, k] / [out, r, 1, 1]."""
    rng = np.random.RandomState(seed)
    if kernel is None:
        return rng.randn(rank, inp).astype(np.float32), rng.randn(out, rank).astype(np.float32)
    return (
        rng.randn(rank, inp, kernel, kernel).astype(np.float32),
        rng.randn(out, rank, 1, 1).astype(np.float32),
    )


def _write(tmp_path, tensors, metadata=None, name="lora.safetensors"):
    path = tmp_path / name
    write_safetensors(path, tensors, metadata)
    return path


def _read(path, models):
    fmt, adapters = read_lora(path, models)
    return fmt, {(a.component, a.path): a for a in adapters}


def test_peft_format_with_metadata(tmp_path, models):
    """diffusers / peft keys; alpha from `lora_adapter_metadata` (alpha_pattern per module),
    rank from the tensors: scale alpha / rank per module."""
    q_down, q_up = _pair(4, 32, 32)
    c_down, c_up = _pair(2, 32, 32, kernel=3)
    t_down, t_up = _pair(3, 32, 32)
    tensors = {
        f"unet.{ATTN}.to_q.lora_A.weight": q_down,
        f"unet.{ATTN}.to_q.lora_B.weight": q_up,
        f"unet.{CONV}.lora_A.weight": c_down,
        f"unet.{CONV}.lora_B.weight": c_up,
        f"text_encoder.{Q_PROJ}.lora_A.weight": t_down,
        f"text_encoder.{Q_PROJ}.lora_B.weight": t_up,
    }
    config = {
        "unet.r": 4,
        "unet.lora_alpha": 8,
        "unet.rank_pattern": {CONV: 2},
        "unet.alpha_pattern": {CONV: 3},
        "text_encoder.r": 3,
        "text_encoder.lora_alpha": 6,
    }
    path = _write(tmp_path, tensors, {"lora_adapter_metadata": json.dumps(config)})
    fmt, found = _read(path, models)
    assert fmt == "diffusers" and len(found) == 3
    q = found["unet", f"{ATTN}.to_q"]
    np.testing.assert_array_equal(q.down, q_down.T)  # [in, r]
    np.testing.assert_array_equal(q.up, q_up.T)  # [r, out]
    assert q.scale == 2.0
    conv = found["unet", CONV]
    np.testing.assert_array_equal(conv.down, c_down.transpose(2, 3, 1, 0))  # [kh, kw, in, r]
    np.testing.assert_array_equal(conv.up, c_up[:, :, 0, 0].T)
    assert conv.scale == 1.5
    assert found["text_encoder", Q_PROJ].scale == 2.0


def test_peft_format_without_metadata_has_scale_one(tmp_path, models):
    down, up = _pair(4, 32, 32)
    path = _write(
        tmp_path, {f"unet.{ATTN}.to_k.lora_A.weight": down, f"unet.{ATTN}.to_k.lora_B.weight": up}
    )
    _, found = _read(path, models)
    assert found["unet", f"{ATTN}.to_k"].scale == 1.0


def test_older_diffusers_format(tmp_path, models):
    """Attention-processor keys (`processor.to_out_lora`), `.lora.` on a projection and the
    text encoder's `lora_linear_layer` / `to_q_lora`; scale 1."""
    o_down, o_up = _pair(2, 32, 32)
    p_down, p_up = _pair(2, 32, 32, kernel=1)
    t_down, t_up = _pair(2, 32, 32)
    m_down, m_up = _pair(2, 64, 32)
    tensors = {
        f"unet.{ATTN}.processor.to_out_lora.down.weight": o_down,
        f"unet.{ATTN}.processor.to_out_lora.up.weight": o_up,
        f"unet.{PROJ}.lora.down.weight": p_down,
        f"unet.{PROJ}.lora.up.weight": p_up,
        "text_encoder.text_model.encoder.layers.0.self_attn.to_v_lora.down.weight": t_down,
        "text_encoder.text_model.encoder.layers.0.self_attn.to_v_lora.up.weight": t_up,
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.down.weight": m_down,
        "text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_linear_layer.up.weight": m_up,
    }
    fmt, found = _read(_write(tmp_path, tensors), models)
    assert fmt == "diffusers (old)"
    assert set(found) == {
        ("unet", f"{ATTN}.to_out.0"),
        ("unet", PROJ),
        ("text_encoder", "encoder.layers.0.self_attn.v_proj"),
        ("text_encoder", "encoder.layers.0.mlp.fc1"),
    }
    np.testing.assert_array_equal(found["unet", f"{ATTN}.to_out.0"].up, o_up.T)
    assert {a.scale for a in found.values()} == {1.0}


def test_attention_processor_file_without_prefix_is_the_unets(tmp_path, models):
    down, up = _pair(2, 32, 32)
    tensors = {
        f"{ATTN}.processor.to_q_lora.down.weight": down,
        f"{ATTN}.processor.to_q_lora.up.weight": up,
    }
    _, found = _read(_write(tmp_path, tensors), models)
    assert set(found) == {("unet", f"{ATTN}.to_q")}


def _kohya(name: str, down, up, alpha=None) -> dict:
    tensors = {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}
    if alpha is not None:
        tensors[f"{name}.alpha"] = np.float32(alpha)
    return tensors


def test_kohya_format_with_locon_feed_forward_and_text_encoder(tmp_path, models):
    """kohya / A1111 names; LoCon on 3x3 and 1x1 convolutions; scale alpha / rank, no alpha: 1."""
    tensors = {
        **_kohya(f"lora_unet_{ATTN.replace('.', '_')}_to_q", *_pair(4, 32, 32), alpha=2),
        **_kohya(f"lora_unet_{CONV.replace('.', '_')}", *_pair(8, 32, 32, kernel=3), alpha=4),
        **_kohya(f"lora_unet_{SHORTCUT.replace('.', '_')}", *_pair(2, 32, 96, kernel=1)),
        **_kohya(f"lora_unet_{PROJ.replace('.', '_')}", *_pair(2, 32, 32, kernel=1), alpha=1),
        **_kohya(f"lora_unet_{FF.replace('.', '_')}", *_pair(4, 256, 32), alpha=1),
        **_kohya(
            "lora_te_text_model_encoder_layers_1_self_attn_q_proj", *_pair(4, 32, 32), alpha=8
        ),
        **_kohya("lora_te_text_model_encoder_layers_0_mlp_fc2", *_pair(2, 32, 64), alpha=1),
    }
    fmt, found = _read(_write(tmp_path, tensors), models)
    assert fmt == "kohya"
    scales = {key: adapter.scale for key, adapter in found.items()}
    assert scales == {
        ("unet", f"{ATTN}.to_q"): 0.5,
        ("unet", CONV): 0.5,
        ("unet", SHORTCUT): 1.0,
        ("unet", PROJ): 0.5,
        ("unet", FF): 0.25,
        ("text_encoder", Q_PROJ): 2.0,
        ("text_encoder", "encoder.layers.0.mlp.fc2"): 0.5,
    }
    assert found["unet", CONV].down.shape == (3, 3, 32, 8)
    assert found["unet", SHORTCUT].up.shape == (2, 32)


def test_a_folder_is_read_through_its_lora_file(tmp_path, models):
    down, up = _pair(2, 32, 32)
    _write(
        tmp_path,
        {f"unet.{ATTN}.to_q.lora_A.weight": down, f"unet.{ATTN}.to_q.lora_B.weight": up},
        name="pytorch_lora_weights.safetensors",
    )
    _, found = _read(tmp_path, models)
    assert set(found) == {("unet", f"{ATTN}.to_q")}


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            {"model.weight": np.zeros((2, 2), np.float32)},
            "no known LoRA format in its keys (model.weight); accepted: diffusers/peft",
        ),
        (
            {
                f"unet.{ATTN}.to_q.lora_A.weight": np.zeros((2, 32), np.float32),
                f"unet.{ATTN}.to_q.lora_B.weight": np.zeros((32, 2), np.float32),
                f"unet.{ATTN}.to_q.lora_magnitude_vector": np.zeros(32, np.float32),
            },
            "1 keys of no diffusers LoRA layer: unet.down_blocks",
        ),
        (
            {
                f"unet.{ATTN}.to_q.lora_A.weight": np.zeros((2, 48), np.float32),
                f"unet.{ATTN}.to_q.lora_B.weight": np.zeros((32, 2), np.float32),
            },
            f"unet.{ATTN}.to_q.lora_A.weight has shape (2, 48); the unet's {ATTN}.to_q of "
            "weight shape (32, 32) needs (2, 32)",
        ),
        (
            {
                **_kohya(f"lora_unet_{CONV.replace('.', '_')}", *_pair(2, 32, 32)),
            },
            f"lora_unet_{CONV.replace('.', '_')}.lora_down.weight has shape (2, 32); the unet's "
            f"{CONV} of weight shape (32, 32, 3, 3) needs (2, 32, 3, 3)",
        ),
        (
            _kohya("lora_unet_down_blocks_0_attentions_0_to_z", *_pair(2, 32, 32)),
            "lora_unet_down_blocks_0_attentions_0_to_z.lora_down.weight targets no Linear or Conv "
            "layer of the unet",
        ),
        (
            {
                f"unet.{ATTN}.norm1.lora_A.weight": np.zeros((2, 32), np.float32),
                f"unet.{ATTN}.norm1.lora_B.weight": np.zeros((32, 2), np.float32),
            },
            "targets no Linear or Conv layer of the unet",
        ),
        (
            _kohya("lora_te2_text_model_encoder_layers_0_mlp_fc1", *_pair(2, 64, 32)),
            "targets the text_encoder_2, which this pipeline does not have; accepted "
            "components: unet, text_encoder",
        ),
        (
            {f"unet.{ATTN}.to_q.lora_A.weight": np.zeros((2, 32), np.float32)},
            f"unet.{ATTN}.to_q.lora_A.weight has no matching up weight",
        ),
        (
            {
                f"unet.{ATTN}.to_q.lora_A.weight": np.full((2, 32), np.nan, np.float32),
                f"unet.{ATTN}.to_q.lora_B.weight": np.zeros((32, 2), np.float32),
            },
            f"unet.{ATTN}.to_q.lora_A.weight holds NaN or Inf values",
        ),
    ],
    ids=[
        "unknown",
        "dora",
        "shape",
        "conv-shape",
        "no-module",
        "not-a-layer",
        "te2",
        "no-up",
        "nan",
    ],
)
def test_bad_files_are_one_line_errors(tmp_path, models, tensors, message):
    path = _write(tmp_path, tensors)
    with pytest.raises(UserError) as error:
        read_lora(path, models)
    assert message in str(error.value) and "\n" not in str(error.value)
