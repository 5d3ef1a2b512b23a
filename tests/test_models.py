"""The three classifiers: exact sizes, shapes, the backbone/head split and loading local backbone weights."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from train.models import DEFAULT_LR, MODEL_NAMES, ModelConfig, build_model, count_parameters

PARAMETERS = {"simple_cnn": 422_530, "resnet18": 11_603_650, "effnet_lstm": 5_619_966}
FEATURES = {"simple_cnn": 256, "resnet18": 512, "effnet_lstm": 1280}
INPUTS = {"simple_cnn": (2, 4, 3, 32, 32), "resnet18": (2, 3, 3, 64, 64), "effnet_lstm": (2, 3, 3, 64, 64)}


def quiet_build(config: ModelConfig) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_model(config)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sizes_shapes_and_split(name):
    torch.manual_seed(0)
    model = quiet_build(ModelConfig(name))
    assert count_parameters(model) == PARAMETERS[name]
    assert name in DEFAULT_LR

    clips = torch.randn(INPUTS[name])
    model.train()
    assert model(clips).shape == (2, 2)

    model.eval()
    with torch.no_grad():
        logits = model(clips)
        features = model.forward_features(clips)
        assert features.shape == (*INPUTS[name][:2], FEATURES[name])
        assert model.feature_dim == FEATURES[name]
        torch.testing.assert_close(model.forward_head(features), logits)
        # The backbone sees frames independently: frame t's features do not depend on the other frames.
        torch.testing.assert_close(model.forward_features(clips[:, :1]), features[:, :1], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(logits).all()


def test_dropout_and_lstm_hidden_are_used():
    model = quiet_build(ModelConfig("effnet_lstm", dropout=0.25, lstm_hidden=64))
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.25 for p in dropouts)
    assert model.head.lstm.hidden_size == 64
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 3, 32, 32)).shape == (1, 2)


def test_effnet_lstm_runs_its_lstm_in_fp32_under_mixed_precision():
    head = quiet_build(ModelConfig("effnet_lstm")).head.eval()
    seen = []
    head.lstm.register_forward_hook(lambda module, inputs, outputs: seen.append((inputs[0].dtype, outputs[0].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        logits = head(torch.randn(2, 3, FEATURES["effnet_lstm"]))
    assert seen == [(torch.float32, torch.float32)]
    assert logits.shape == (2, 2)


def test_unknown_model_and_simple_cnn_pretrained_are_refused():
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig("vit"))
    with pytest.raises(ValueError, match="no pretrained"):
        build_model(ModelConfig("simple_cnn", pretrained=True))


@pytest.mark.parametrize("name", ["resnet18", "effnet_lstm"])
def test_random_backbone_warns(name):
    with pytest.warns(UserWarning, match="random weights"):
        build_model(ModelConfig(name))


def test_simple_cnn_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model(ModelConfig("simple_cnn"))


def assert_same_backbone(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.backbone.state_dict(), b.backbone.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["resnet18", "simple_cnn"])
def test_weights_file_of_backbone_keys(tmp_path, name):
    torch.manual_seed(1)
    source = quiet_build(ModelConfig(name))
    path = tmp_path / "backbone.safetensors"
    save_file(source.backbone.state_dict(), str(path))

    torch.manual_seed(2)
    fresh = quiet_build(ModelConfig(name))
    first = next(iter(source.backbone.state_dict()))
    assert not torch.equal(source.backbone.state_dict()[first], fresh.backbone.state_dict()[first])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights given: no random-weights warning
        loaded = build_model(ModelConfig(name, weights=path))
    assert_same_backbone(source, loaded)


def test_weights_file_of_whole_timm_model_ignores_classifier(tmp_path):
    torch.manual_seed(3)
    full = timm.create_model("efficientnet_b0", num_classes=1000)
    state = full.state_dict()
    assert "classifier.weight" in state
    path = tmp_path / "effnet.safetensors"
    save_file(state, str(path))

    loaded = build_model(ModelConfig("effnet_lstm", weights=path))
    backbone = loaded.backbone.state_dict()
    assert "classifier.weight" not in backbone
    for key, value in backbone.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_weights_file_with_missing_or_foreign_keys_is_refused(tmp_path):
    source = quiet_build(ModelConfig("resnet18"))
    state = source.backbone.state_dict()

    missing = tmp_path / "missing.safetensors"
    save_file({key: value for key, value in state.items() if key != "layer1.0.conv1.weight"}, str(missing))
    with pytest.raises(ValueError, match="missing.*layer1.0.conv1.weight"):
        build_model(ModelConfig("resnet18", weights=missing))

    other = tmp_path / "effnet.safetensors"
    save_file(quiet_build(ModelConfig("effnet_lstm")).backbone.state_dict(), str(other))
    with pytest.raises(ValueError, match="does not fit"):
        build_model(ModelConfig("resnet18", weights=other))


def test_pretrained_and_weights_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        build_model(ModelConfig("resnet18", pretrained=True, weights=tmp_path / "w.safetensors"))
