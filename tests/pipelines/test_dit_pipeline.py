"""The DiT pipeline against diffusers' DiTPipeline on the same tiny learned-variance model, labels
and noise: latents within 3e-4 of their scale and images within 1e-3, with guidance (on the noise
half of the output, as diffusers) and without, on two samplers; 5% more noise and guidance x 1.1
miss by more than 10x both. Class names, negative classes and bad labels."""

import json

import numpy as np
import pytest
import torch
from reference_models import PIPELINE_VAE, build_dit, build_vae
from sd_parity import assert_close, assert_misses

from jaxdiff.errors import UserError
from jaxdiff.pipelines import DiT

LABELS = [207, 3, 999]
ID2LABEL = {"3": "tiger shark, Galeocerdo cuvieri", "207": "golden retriever"}
STEPS = 5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A DiTPipeline folder (DDIM scheduler without x0 clipping, as the released models') with
    the released models' `id2label` in its model_index.json."""
    from diffusers import DDIMScheduler, DiTPipeline

    path = tmp_path_factory.mktemp("dit_pipeline")
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=True)
    DiTPipeline(
        transformer=build_dit(), vae=build_vae(PIPELINE_VAE), scheduler=scheduler
    ).save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps({**index, "id2label": ID2LABEL}))
    return path


@pytest.fixture(scope="module")
def pipe(folder) -> DiT:
    return DiT.from_pretrained(folder)


def noise() -> torch.Tensor:
    return torch.randn(len(LABELS), 4, 8, 8, generator=torch.Generator().manual_seed(0))  # NCHW


def diffusers_run(folder, scheduler: str, monkeypatch, **kwargs):
    """DiTPipeline's latents (caught on their way to the VAE) and images, from `noise()`."""
    import diffusers
    from diffusers.pipelines.dit import pipeline_dit

    reference = diffusers.DiTPipeline.from_pretrained(folder)
    reference.scheduler = getattr(diffusers, scheduler).from_config(reference.scheduler.config)
    monkeypatch.setattr(pipeline_dit, "randn_tensor", lambda *args, **kw: noise())
    latents = []
    decode = reference.vae.decode
    scale = reference.vae.config.scaling_factor

    def caught(z, *args, **kw):
        latents.append(z * scale)
        return decode(z, *args, **kw)

    monkeypatch.setattr(reference.vae, "decode", caught)
    images = reference(LABELS, num_inference_steps=STEPS, output_type="np", **kwargs).images
    return latents[0].permute(0, 2, 3, 1).numpy(), images


def jaxdiff_run(pipe, labels=LABELS, latents=None, **kwargs):
    start = noise().permute(0, 2, 3, 1).numpy() if latents is None else latents
    out = pipe(labels, num_inference_steps=STEPS, latents=start, output_type="latent", **kwargs)
    return out, pipe.decode(out)


@pytest.mark.parametrize(
    ("sampler", "scheduler", "guidance"),
    [("ddim", "DDIMScheduler", 4.0), ("dpmpp_2m", "DPMSolverMultistepScheduler", 1.0)],
)
def test_matches_diffusers_dit_pipeline(folder, pipe, monkeypatch, sampler, scheduler, guidance):
    want = diffusers_run(folder, scheduler, monkeypatch, guidance_scale=guidance)
    options = dict(sampler=sampler, guidance_scale=guidance)
    assert_close(jaxdiff_run(pipe, **options), want)
    more_noise = 1.05 * noise().permute(0, 2, 3, 1).numpy()
    assert_misses(jaxdiff_run(pipe, latents=more_noise, **options), want)
    if guidance > 1:
        assert_misses(jaxdiff_run(pipe, **{**options, "guidance_scale": 1.1 * guidance}), want)


def test_class_names_and_negative_classes(pipe):
    assert pipe.get_label_ids(["golden retriever", "Galeocerdo cuvieri"]) == [207, 3]
    by_id, _ = jaxdiff_run(pipe)
    by_name, _ = jaxdiff_run(pipe, labels=["golden retriever", "tiger shark", np.int64(999)])
    np.testing.assert_array_equal(by_name, by_id)
    one, _ = jaxdiff_run(pipe, labels=np.array(207), latents=noise().permute(0, 2, 3, 1)[:1])
    np.testing.assert_array_equal(one, by_id[:1])
    # away from class 3 instead of the null class; class 999 as its own negative is unguided
    away, _ = jaxdiff_run(pipe, negative_prompt=[3, 3, 999])
    assert np.abs(away[:2] - by_id[:2]).max() > 0.1 * np.abs(by_id).max()
    unguided, _ = jaxdiff_run(pipe, guidance_scale=1.0)
    np.testing.assert_allclose(away[2], unguided[2], rtol=0, atol=1e-4 * np.abs(unguided).max())


def test_bad_labels_are_one_line_errors(pipe, tmp_path):
    with pytest.raises(UserError, match=r"class_labels 1000; accepted: class ids in \[0, 1000\)"):
        pipe([1, 1000])
    with pytest.raises(UserError, match=r"'otter' names none of this model's classes; accepted: "):
        pipe("otter")
    with pytest.raises(UserError, match=r"2 negative classes for 3 class labels"):
        pipe(LABELS, negative_prompt=[1, 2])
    with pytest.raises(UserError, match=r"is not a DiT model folder \(it lacks transformer"):
        DiT.from_pretrained(tmp_path)
