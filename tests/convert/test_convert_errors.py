"""Bad input to the converters gives a one-line UserError; odd but valid checkpoints still load.

Every test works on a copy of a session fixture's folder (diffusers / transformers
`save_pretrained` output), edited in place: config options, renamed or removed tensors, cut or
garbage weight files, sharded and `.bin` weights, pickles that must not run.
"""

import contextlib
import json
import pickle
import shutil
import struct

import huggingface_hub.constants
import jax
import numpy as np
import pytest
import torch
from flax import nnx

from jaxdiff.convert import (
    convert,
    from_diffusers,
    load_pipeline_components,
    native,
    to_diffusers,
)
from jaxdiff.convert.safetensors_io import read_safetensors, write_safetensors
from jaxdiff.errors import UserError

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
CLIP_WEIGHTS = "model.safetensors"
_DROP = object()  # a config edit that removes the key


def _copy(folder, tmp_path, name="copy"):
    return shutil.copytree(folder, tmp_path / name)


def _edit_config(folder, changes: dict) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            del config[key]
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def _tensors(path) -> dict[str, np.ndarray]:
    """A safetensors file's tensors, copied out of the memory map (the file may be rewritten)."""
    return {key: np.array(value) for key, value in read_safetensors(path).items()}


def _rewrite(path, edit) -> None:
    """Replaces the tensors of a safetensors file by `edit(tensors)`."""
    write_safetensors(path, edit(_tensors(path)))


def _error(call, *words) -> str:
    """The one-line UserError message of `call()`, containing every one of `words`."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


def _assert_same_parameters(a: nnx.Module, b: nnx.Module) -> None:
    assert a.architecture == b.architecture
    same = jax.tree.map(
        lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
        nnx.state(a, nnx.Param),
        nnx.state(b, nnx.Param),
    )
    assert all(jax.tree.leaves(same))


@pytest.fixture
def unet_dir(saved_unets, tmp_path):
    """A copy of the small "options" UNet folder (per-level options, only cross attention)."""
    return _copy(saved_unets["options"][1], tmp_path)


@pytest.fixture
def vae_dir(saved_vaes, tmp_path):
    """A copy of the smallest VAE folder (three levels, no mid-block attention)."""
    return _copy(saved_vaes["no_mid_attention"][1], tmp_path)


@pytest.fixture
def clip_dir(saved_clips, tmp_path):
    """A copy of a CLIPTextModel folder, written by transformers 5 (keys without "text_model.")."""
    return _copy(saved_clips["quick_gelu"][1], tmp_path)


# -- the folder and its config.json ---------------------------------------------------------------


def test_missing_folder(tmp_path):
    _error(lambda: from_diffusers(tmp_path / "nope"), "nope", "is not a folder", "accepted")


def test_folder_without_config(tmp_path):
    _error(lambda: from_diffusers(tmp_path), str(tmp_path), "has no config.json", "accepted")


def test_model_folder_hints_load_pipeline_components(saved_pipeline):
    _error(lambda: from_diffusers(saved_pipeline), "has no config.json", "load_pipeline_components")


def test_config_that_is_not_json(unet_dir):
    (unet_dir / "config.json").write_text('{"_class_name": ')
    _error(lambda: from_diffusers(unet_dir), "config.json is not valid JSON")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"_class_name": "UNet2DModel"}, ["'UNet2DModel'", "accepted: UNet2DConditionModel"]),
        ({"_class_name": _DROP}, ["names no model class", "accepted: UNet2DConditionModel"]),
        (
            {"down_block_types": ["DownBlock2D", "AttnDownBlock2D"]},
            ["'AttnDownBlock2D'", "accepted: CrossAttnDownBlock2D, DownBlock2D"],
        ),
        ({"class_embed_type": "timestep"}, ["class_embed_type='timestep'", "accepted: None"]),
        (
            {"resnet_time_scale_shift": "scale_shift"},
            ["resnet_time_scale_shift='scale_shift'", "accepted: 'default'"],
        ),
        ({"act_fn": "gelu"}, ["act_fn='gelu'", "accepted: 'silu'"]),
        ({"conditioning_channels": 3}, ["conditioning_channels=3", "is not supported"]),
        (
            {"transformer_layers_per_block": [[1, 1], [2, 2]]},
            [
                "transformer_layers_per_block=((1, 1), (2, 2))",
                "accepted: one positive int, or one per",
            ],
        ),
        (
            {"reverse_transformer_layers_per_block": [[1], [1]]},
            ["reverse_transformer_layers_per_block=[[1], [1]]", "accepted: None"],
        ),
        ({"layers_per_block": [1, 2]}, ["layers_per_block=[1, 2]", "differs between levels"]),
        ({"norm_num_groups": None}, ["unsupported architecture"]),
        ({"layers_per_block": "2"}, ["unsupported architecture"]),
    ],
)
def test_unsupported_unet_config(unet_dir, changes, words):
    _edit_config(unet_dir, changes)
    _error(lambda: from_diffusers(unet_dir), *words)


def test_per_level_values_that_agree_are_accepted(unet_dir, saved_unets):
    _edit_config(unet_dir, {"layers_per_block": [1, 1], "transformer_layers_per_block": [2, 2]})
    assert (
        from_diffusers(unet_dir).architecture
        == from_diffusers(saved_unets["options"][1]).architecture
    )


def test_jaxdiff_folder_with_a_broken_config(saved_vaes, tmp_path):
    native.save(from_diffusers(saved_vaes["no_mid_attention"][1]), tmp_path / "native")
    (tmp_path / "native" / native.CONFIG).write_text("{not json")
    _error(lambda: native.load(tmp_path / "native"), "is not valid JSON")
    (tmp_path / "native" / native.CONFIG).write_text('{"class": "UNet"}')
    _error(lambda: native.load(tmp_path / "native"), "no architecture")


@pytest.mark.parametrize("key", ["down_block_types", "up_block_types"])
def test_unsupported_vae_block_type(vae_dir, key):
    block = "AttnDownEncoderBlock2D" if key.startswith("down") else "AttnUpDecoderBlock2D"
    default = "DownEncoderBlock2D" if key.startswith("down") else "UpDecoderBlock2D"
    _edit_config(vae_dir, {key: [default, block, default]})
    _error(lambda: from_diffusers(vae_dir), key, block, f"accepted: {default}")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"hidden_act": "gelu_new"}, ["'gelu_new'", "accepted: quick_gelu, gelu"]),
        ({"attention_dropout": 0.1}, ["attention_dropout=0.1", "accepted: 0.0"]),
        ({"architectures": ["CLIPVisionModel"]}, ["'CLIPVisionModel'", "accepted"]),
    ],
)
def test_unsupported_clip_config(clip_dir, changes, words):
    _edit_config(clip_dir, changes)
    _error(lambda: from_diffusers(clip_dir), *words)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"architectures": "CLIPTextModel"}, id="string"),
        pytest.param({"architectures": [["CLIPTextModel"]]}, id="nested-list"),
    ],
)
def test_class_name_of_the_wrong_type(clip_dir, changes):
    _edit_config(clip_dir, changes)
    _error(lambda: from_diffusers(clip_dir), "architectures", "accepted: UNet2DConditionModel")


# -- weights that do not fit the config -----------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "shapes"),
    [
        ({"cross_attention_dim": 32}, "has shape (32, 24), the config needs (32, 32)"),
        ({"block_out_channels": [16, 48]}, "has shape (32,), the config needs (48,)"),
    ],
)
def test_weights_of_other_shapes(unet_dir, changes, shapes):
    _edit_config(unet_dir, changes)
    message = _error(lambda: from_diffusers(unet_dir), str(unet_dir), shapes)
    key = message.split(": ")[1].split(" has shape")[0]
    assert key in read_safetensors(unet_dir / UNET_WEIGHTS), message


def test_missing_keys_are_listed(unet_dir):
    dropped = ["conv_in.weight", "mid_block.resnets.1.conv2.bias", "time_embedding.linear_1.weight"]
    _rewrite(unet_dir / UNET_WEIGHTS, lambda t: {k: v for k, v in t.items() if k not in dropped})
    message = _error(lambda: from_diffusers(unet_dir), str(unet_dir), "missing 3 keys")
    assert "unexpected" not in message
    for key in dropped:
        assert key in message


def test_unexpected_keys_are_listed(unet_dir):
    extra = {"class_embedding.linear_1.weight": np.zeros((4, 4), np.float32), "logit_scale": 1}
    _rewrite(unet_dir / UNET_WEIGHTS, lambda t: {**t, **extra})
    message = _error(lambda: from_diffusers(unet_dir), "unexpected 2 keys", *extra)
    assert "missing" not in message


def test_long_key_lists_are_cut(vae_dir):
    _rewrite(vae_dir / UNET_WEIGHTS, lambda t: {k: v for k, v in t.items() if "decoder" not in k})
    _error(lambda: from_diffusers(vae_dir), "missing ", "keys: decoder.", " more")


# -- weight files: cut, garbage, absent, sharded, pickled -----------------------------------------


@pytest.mark.parametrize(
    ("cut", "words"),
    [
        ("empty", ["0 bytes, shorter than a header"]),
        ("4 bytes", ["4 bytes, shorter than a header"]),
        ("in the header", ["is truncated or not a safetensors file"]),
        ("in the data", ["is truncated: tensor"]),
    ],
)
def test_truncated_weights(vae_dir, cut, words):
    path = vae_dir / UNET_WEIGHTS
    content = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", content[:8])[0]
    size = {"empty": 0, "4 bytes": 4, "in the header": header_end // 2}.get(
        cut, (header_end + len(content)) // 2
    )
    path.write_bytes(content[:size])
    _error(lambda: from_diffusers(vae_dir), str(path), *words)


@pytest.mark.parametrize(
    "content",
    [
        np.random.RandomState(0).bytes(4096),
        struct.pack("<Q", 16) + b"not json at all!",
        struct.pack("<Q", 8) + b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8",
    ],
)
def test_garbage_weights(vae_dir, content):
    (vae_dir / UNET_WEIGHTS).write_bytes(content)
    _error(lambda: from_diffusers(vae_dir), str(vae_dir / UNET_WEIGHTS))


def _with_header(header: bytes, data: bytes = bytes(8)) -> bytes:
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data


_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "header",
    [
        pytest.param([1, 2], id="list"),
        pytest.param("text", id="string"),
        pytest.param({"w": 1}, id="entry-not-object"),
        pytest.param({"w": {"dtype": "F32", "shape": [2]}}, id="no-offsets"),
        pytest.param({"w": {**_ENTRY, "shape": "two"}}, id="shape-string"),
        pytest.param({"w": {**_ENTRY, "data_offsets": [-8, 0]}}, id="negative-offset"),
        pytest.param({"w": {**_ENTRY, "dtype": "F8"}}, id="unknown-dtype"),
        pytest.param({"w": {**_ENTRY, "shape": [3]}}, id="size-mismatch"),
    ],
)
def test_malformed_safetensors_header(vae_dir, header):
    path = vae_dir / UNET_WEIGHTS
    path.write_bytes(_with_header(json.dumps(header).encode()))
    _error(lambda: read_safetensors(path), str(path))


def test_folder_without_weights(vae_dir):
    (vae_dir / UNET_WEIGHTS).unlink()
    _error(lambda: from_diffusers(vae_dir), f"no weights in {vae_dir}", f"accepted: {UNET_WEIGHTS}")


def _shard(folder, stem="diffusion_pytorch_model") -> list:
    """Splits `folder`'s single weights file into two shards and an index; returns the shards."""
    single = folder / f"{stem}.safetensors"
    tensors = _tensors(single)
    single.unlink()
    names = [f"{stem}-0000{i}-of-00002.safetensors" for i in (1, 2)]
    keys = sorted(tensors)
    parts = (keys[: len(keys) // 2], keys[len(keys) // 2 :])
    weight_map = {}
    for name, part in zip(names, parts, strict=True):
        write_safetensors(folder / name, {k: tensors[k] for k in part})
        weight_map |= dict.fromkeys(part, name)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index))
    return [folder / name for name in names]


@pytest.mark.parametrize(
    ("kind", "name", "stem"),
    [("unets", "options", "diffusion_pytorch_model"), ("clips", "quick_gelu", "model")],
)
def test_sharded_weights_load_as_the_single_file(request, tmp_path, kind, name, stem):
    folder = request.getfixturevalue(f"saved_{kind}")[name][1]
    copy = _copy(folder, tmp_path)
    _shard(copy, stem)
    _assert_same_parameters(from_diffusers(copy), from_diffusers(folder))


def test_index_naming_a_missing_shard(vae_dir):
    _, second = _shard(vae_dir)
    second.unlink()
    _error(lambda: from_diffusers(vae_dir), "index.json names shards that are missing", second.name)


def test_tensor_in_two_shards(vae_dir):
    first, second = _shard(vae_dir)
    _rewrite(second, lambda t: {**t, **dict(list(_tensors(first).items())[:1])})
    _error(lambda: from_diffusers(vae_dir), str(second), "repeats tensors of another shard")


@pytest.mark.parametrize("weight_map", [["a.safetensors"], "a.safetensors"])
def test_index_whose_weight_map_is_not_an_object(vae_dir, weight_map):
    (vae_dir / UNET_WEIGHTS).unlink()
    (vae_dir / f"{UNET_WEIGHTS}.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _error(lambda: from_diffusers(vae_dir), "index.json")


@pytest.fixture
def vae_bin(vae_dir):
    """The VAE copy without its safetensors; returns the `.bin` path to write."""
    (vae_dir / UNET_WEIGHTS).unlink()
    return vae_dir / "diffusion_pytorch_model.bin"


def test_bin_weights_load_as_safetensors(saved_vaes, vae_bin):
    reference, folder = saved_vaes["no_mid_attention"]
    torch.save(reference.state_dict(), vae_bin)
    _assert_same_parameters(from_diffusers(vae_bin.parent), from_diffusers(folder))


class _WritesMarker:
    """Unpickling it would create the file `marker` (it must never be unpickled)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    "save",
    [
        lambda obj, path: torch.save({"conv_in.weight": obj}, path),
        lambda obj, path: path.write_bytes(pickle.dumps(obj)),
    ],
    ids=["torch.save", "pickle"],
)
def test_bin_with_code_is_refused_without_running_it(vae_bin, tmp_path, save):
    marker = tmp_path / "marker"
    save(_WritesMarker(marker), vae_bin)
    _error(lambda: from_diffusers(vae_bin.parent), str(vae_bin), "cannot be read safely")
    assert not marker.exists()
    with contextlib.suppress(Exception):  # the payload is live: an unsafe load runs it
        torch.load(vae_bin, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "content",
    [{"conv_in.weight": 3}, [torch.zeros(2)], {"state_dict": {"conv_in.weight": torch.zeros(2)}}],
    ids=["int-value", "list", "nested"],
)
def test_bin_that_is_not_a_state_dict(vae_bin, content):
    torch.save(content, vae_bin)
    _error(lambda: from_diffusers(vae_bin.parent), str(vae_bin))


# -- accepted naming variants ---------------------------------------------------------------------

_LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _legacy_name(key: str) -> str:
    module, _, leaf = key.rpartition(".")
    head, _, last = module.partition("mid_block.attentions.0.")
    return f"{head}mid_block.attentions.0.{_LEGACY.get(last, last)}.{leaf}" if last else key


def test_legacy_vae_attention_names(saved_vaes, tmp_path):
    folder = saved_vaes["sd"][1]
    copy = _copy(folder, tmp_path)
    _rewrite(copy / UNET_WEIGHTS, lambda t: {_legacy_name(k): v for k, v in t.items()})
    renamed = [k for k in read_safetensors(copy / UNET_WEIGHTS) if k.endswith("query.weight")]
    assert sorted(renamed) == [
        "decoder.mid_block.attentions.0.query.weight",
        "encoder.mid_block.attentions.0.query.weight",
    ]
    _assert_same_parameters(from_diffusers(copy), from_diffusers(folder))


_POSITION_IDS = np.arange(16, dtype=np.int64)[None]  # [1, max_position_embeddings]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda t: {f"text_model.{k}": v for k, v in t.items()}, id="hub-prefix"),
        pytest.param(
            lambda t: {
                **{f"text_model.{k}": v for k, v in t.items()},
                "text_model.embeddings.position_ids": _POSITION_IDS,
            },
            id="hub-prefix-position-ids",
        ),
        pytest.param(
            lambda t: {**t, "embeddings.position_ids": _POSITION_IDS},
            id="position-ids-without-prefix",
        ),
    ],
)
def test_clip_key_styles(saved_clips, clip_dir, edit):
    _rewrite(clip_dir / CLIP_WEIGHTS, edit)
    _assert_same_parameters(from_diffusers(clip_dir), from_diffusers(saved_clips["quick_gelu"][1]))


def test_clip_with_projection_without_prefix(saved_clips, tmp_path):
    folder = saved_clips["projection"][1]
    copy = _copy(folder, tmp_path)
    _rewrite(
        copy / CLIP_WEIGHTS, lambda t: {k.removeprefix("text_model."): v for k, v in t.items()}
    )
    _assert_same_parameters(from_diffusers(copy), from_diffusers(folder))


# -- whole model folders and hub ids --------------------------------------------------------------


def test_pipeline_folder_without_model_index(saved_unets):
    folder = saved_unets["options"][1]
    _error(lambda: load_pipeline_components(folder), "has no model_index.json", "accepted")


def test_pipeline_folder_without_vae(saved_pipeline, tmp_path):
    copy = _copy(saved_pipeline, tmp_path)
    shutil.rmtree(copy / "vae")
    _error(lambda: load_pipeline_components(copy), "lacks the component folders vae")


@pytest.mark.parametrize("source", ["not a hub id!", "a/b/c", "{missing}"])
def test_neither_folder_nor_hub_id(tmp_path, source):
    source = source.format(missing=tmp_path / "missing")
    _error(lambda: load_pipeline_components(source), source, "is not a folder or a hub id")


def test_hub_id_offline_and_not_cached(monkeypatch, tmp_path):
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    hub_id = "jaxdiff-tests/no-such-model"
    _error(lambda: load_pipeline_components(hub_id), f"hub id {hub_id} could not be fetched")


# -- writing never overwrites ---------------------------------------------------------------------


@pytest.mark.parametrize("save", [to_diffusers, native.save], ids=["to_diffusers", "native.save"])
def test_writing_into_a_non_empty_folder_is_refused(saved_vaes, tmp_path, save):
    model = from_diffusers(saved_vaes["no_mid_attention"][1])
    target = tmp_path / "target"
    target.mkdir()
    (target / "config.json").write_text("mine")
    _error(lambda: save(model, target), str(target), "exists and is not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    assert [p.name for p in target.iterdir()] == ["config.json"]
    assert (target / "config.json").read_text() == "mine"


def test_bfloat16_bin_weights_stay_bfloat16(saved_vaes, vae_bin):
    import ml_dtypes

    from jaxdiff.convert.conversion import stored_dtype

    reference = saved_vaes["no_mid_attention"][0]
    torch.save({k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}, vae_bin)
    assert stored_dtype(vae_bin.parent, None) == np.dtype(ml_dtypes.bfloat16)
    model = from_diffusers(vae_bin.parent, param_dtype=ml_dtypes.bfloat16)
    kernel = np.asarray(model.decoder.conv_out.kernel[...])
    expected = reference.decoder.conv_out.weight.detach().to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(kernel.astype(np.float32), expected.transpose(2, 3, 1, 0))


def test_zero_groups_is_a_one_line_error(unet_dir):
    _edit_config(unet_dir, {"norm_num_groups": 0})
    _error(lambda: from_diffusers(unet_dir), "unsupported architecture")


def test_model_index_that_is_not_an_object(saved_pipeline, tmp_path):
    folder = _copy(saved_pipeline, tmp_path)
    (folder / "model_index.json").write_text("[1, 2]")
    _error(lambda: load_pipeline_components(folder), "model_index.json holds a list")


def test_jaxdiff_folder_with_an_unknown_dtype(saved_vaes, tmp_path):
    native.save(from_diffusers(saved_vaes["no_mid_attention"][1]), tmp_path / "native")
    config = json.loads((tmp_path / "native" / native.CONFIG).read_text())
    config["param_dtype"] = "foo"
    (tmp_path / "native" / native.CONFIG).write_text(json.dumps(config))
    _error(
        lambda: native.load(tmp_path / "native"),
        "param_dtype='foo' is not supported; accepted: float32",
    )


@pytest.mark.parametrize("where", ["inside", "under-a-file"])
def test_output_folders_that_cannot_be_used(saved_vaes, tmp_path, where):
    folder = _copy(saved_vaes["no_mid_attention"][1], tmp_path)
    (tmp_path / "a_file").write_text("")
    out = folder / "out" if where == "inside" else tmp_path / "a_file" / "out"
    words = "is inside" if where == "inside" else "cannot be created"
    _error(lambda: convert(folder, out, "jaxdiff"), words)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", UNET_WEIGHTS]
