"""The sampler benchmark: samplers compared by their error at each budget of denoiser calls.

- `mixtures`: Gaussian mixtures, whose denoiser and probability-flow ODE are exact, and the
  float64 reference solution of that ODE.
- `metrics`: distances between generated samples and the data (coupled RMSE, sliced W2, MMD,
  mode-weight error).
- `runs`: what one run is (sampler spec, schedule, NFE budget -> steps, counted calls) and the
  plan of every run of a comparison config.
- `diffusers_reference`: diffusers' schedulers driven by the exact denoiser, the reference a
  jaxdiff sampler is compared with (torch and diffusers, from the `test` extra, are imported only
  when one runs).
- `on_mixtures`: the comparison on mixtures: exact coupled starts, metrics, noise floors.
- `on_model`: the comparison on a trained text-to-image workdir: coupled error to a high-NFE
  reference, prompt adherence.
- `report`: the CSV, Markdown report and log-log plot of a comparison.

`jaxdiff compare-samplers` runs them; model metrics (FID, CLIP score, likelihood, adherence) live
in `jaxdiff.evaluation`.
"""
