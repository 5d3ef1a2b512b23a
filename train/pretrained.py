"""Where a timm backbone's starting weights come from: timm's pretrained weights (the Hugging Face Hub, or the copy
in its cache where the Hub cannot be reached), or a local safetensors file for machines without network."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import urlparse

from safetensors.torch import load_file
from torch import nn

from train.data import UsageError

HUB_TIMEOUT = 5.0  # seconds the Hugging Face Hub has to answer one request before --pretrained gives up on it
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a model's Hub repo, in order


def pretrained_overlay(backbone: str) -> dict | None:
    """What timm's `pretrained=True` needs to load `backbone`'s pretrained weights here: nothing where their source
    answers (timm fetches them, or checks its cached copy), the cached file where it does not. Where there is
    neither, UsageError at once, in one line: huggingface_hub would retry the Hub for about 50 s before its
    traceback."""
    source = hub_repo(backbone)
    if "://" in source:  # an older model's weights at a URL: timm takes its copy in torch's hub cache unasked
        if url_cache(source).is_file():
            return None
        unreachable, found = url_unreachable(source), None
    else:
        unreachable = hub_unreachable(source)
        found = None if unreachable is None else cached_weights(source)
    if unreachable is None:
        return None
    if found is None:
        raise UsageError(
            f"--pretrained: {backbone}'s pretrained weights ({source}) are not in the cache, and {unreachable}; "
            "without network, pass --weights FILE (the backbone's weights as a safetensors file)"
        )
    return {"file": found}


def pretrained_config(backbone: str):
    """timm's default pretrained config of `backbone`; UsageError where timm has no weights to download for it."""
    from timm.models import get_pretrained_cfg, is_model

    if not is_model(backbone):
        raise UsageError(f"--pretrained: timm has no model {backbone!r}")
    config = get_pretrained_cfg(backbone)
    if config is None or not (config.hf_hub_id or config.url):
        raise UsageError(f"--pretrained: timm has no pretrained weights of {backbone} to download")
    return config


def hub_repo(backbone: str) -> str:
    """Where timm loads `backbone`'s default pretrained weights from: its Hugging Face Hub repository, or for the
    few older models without one, the URL of the file."""
    config = pretrained_config(backbone)
    return config.hf_hub_id or config.url


def url_cache(url: str) -> Path:
    """Where timm keeps a file it downloaded from `url`: torch's hub cache, under the URL's file name."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def hub_unreachable(repo: str) -> str | None:
    """Why the Hub cannot serve `repo` now (offline mode, or no answer to one request within HUB_TIMEOUT), or None."""
    import huggingface_hub

    return url_unreachable(huggingface_hub.hf_hub_url(repo, WEIGHT_FILES[0]))


def url_unreachable(url: str) -> str | None:
    """Why `url` cannot be fetched now (offline mode, or no answer to one request within HUB_TIMEOUT), or None.

    One request without retries, waited for at most HUB_TIMEOUT, name lookup included: the system's resolver can
    take longer than that where no DNS server answers, so the request runs in a thread left behind on timeout."""
    import huggingface_hub

    if huggingface_hub.constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    failures: list[str | None] = []  # the request's error, or None where the server answered

    def ask() -> None:
        try:
            huggingface_hub.get_session().head(url, timeout=HUB_TIMEOUT)
        except Exception as error:  # whichever error the HTTP client raises, the server did not answer
            failures.append(str(error))
            return
        failures.append(None)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(HUB_TIMEOUT)
    host = urlparse(url).netloc
    if not failures:
        return f"{host} did not answer within {HUB_TIMEOUT:.0f} s"
    return None if failures[0] is None else f"{host} cannot be reached ({failures[0]})"


def cached_weights(repo: str) -> str | None:
    """The weights of `repo` in the Hugging Face cache, if a download put them there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def load_backbone_weights(backbone: nn.Module, path: Path) -> None:
    """Load a safetensors file of backbone keys, or of a whole timm model whose classifier keys are dropped; a ViT's
    position embeddings of another image size are resampled to the frames the backbone was built for.

    Missing `num_batches_tracked` buffers are allowed, since published timm checkpoints often lack them.
    """
    state = load_file(str(path))
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier")
    if classifier:
        state = {key: value for key, value in state.items() if not key.startswith(f"{classifier}.")}
    state = fit_position_embedding(backbone, state)
    expected = backbone.state_dict()
    missing = sorted(key for key in expected.keys() - state.keys() if not key.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(key for key in state.keys() & expected.keys() if state[key].shape != expected[key].shape)
    problems = [
        f"{len(keys)} {kind} keys (first: {', '.join(keys[:3])})"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", mismatched))
        if keys
    ]
    if problems:
        raise ValueError(f"{path} does not fit the backbone: {'; '.join(problems)}")
    backbone.load_state_dict(state, strict=False)


def fit_position_embedding(backbone: nn.Module, state: dict) -> dict:
    """`state` with a ViT's position embeddings, saved for another image size (224 px, as published), resampled to
    the backbone's patch grid, as timm resamples its own pretrained weights; any other state as it is."""
    embedding = getattr(backbone, "pos_embed", None)
    if embedding is None or "pos_embed" not in state or state["pos_embed"].shape == embedding.shape:
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(backbone, "no_embed_class", False) else backbone.num_prefix_tokens
    grid = list(backbone.patch_embed.grid_size)
    return {**state, "pos_embed": resample_abs_pos_embed(state["pos_embed"], grid, num_prefix_tokens=prefix)}
