"""Tests of igan.metrics.inception: weight layout, preprocessing, forward outputs and weight loading.

The real weights are not available here, so the network is checked structurally (its state dict must
be exactly the layout of pt_inception-2015-12-05-6726825d.pth) and with random weights; the resize is
checked against TF1's formula worked by hand.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from igan.errors import IganError
from igan.metrics import inception as inc
from igan.metrics.inception import (
    InceptionV3TF,
    download_inception_weights,
    inception_outputs,
    load_inception,
    tf1_bilinear_resize,
)

# --------------------------------------------------------------------------------------------------
# The layout of pt_inception-2015-12-05-6726825d.pth, restated from pytorch-fid's / torch-fidelity's
# architecture (torchvision's Inception3 with num_classes=1008, aux_logits=False): every convolution
# is (name, in, out, kh, kw); each one contributes conv.weight [out, in, kh, kw] and a batch norm with
# weight/bias/running_mean/running_var [out] and a 0-d num_batches_tracked (the file was saved from a
# torch >= 0.4.1 state dict, which has that buffer).


def _a(cin: int, pool: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1), ("branch5x5_2", 48, 64, 5, 5),
            ("branch3x3dbl_1", cin, 64, 1, 1), ("branch3x3dbl_2", 64, 96, 3, 3),
            ("branch3x3dbl_3", 96, 96, 3, 3), ("branch_pool", cin, pool, 1, 1)]


def _b(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch3x3", cin, 384, 3, 3), ("branch3x3dbl_1", cin, 64, 1, 1),
            ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)]


def _c(cin: int, c7: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 192, 1, 1),
            ("branch7x7_1", cin, c7, 1, 1), ("branch7x7_2", c7, c7, 1, 7), ("branch7x7_3", c7, 192, 7, 1),
            ("branch7x7dbl_1", cin, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1),
            ("branch7x7dbl_5", c7, 192, 1, 7), ("branch_pool", cin, 192, 1, 1)]


def _d(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch3x3_1", cin, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
            ("branch7x7x3_1", cin, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
            ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)]


def _e(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1),
            ("branch3x3_2a", 384, 384, 1, 3), ("branch3x3_2b", 384, 384, 3, 1),
            ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
            ("branch_pool", cin, 192, 1, 1)]


_STEM = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
         ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
_MIXED = [("Mixed_5b", _a(192, 32)), ("Mixed_5c", _a(256, 64)), ("Mixed_5d", _a(288, 64)),
          ("Mixed_6a", _b(288)), ("Mixed_6b", _c(768, 128)), ("Mixed_6c", _c(768, 160)),
          ("Mixed_6d", _c(768, 160)), ("Mixed_6e", _c(768, 192)), ("Mixed_7a", _d(768)),
          ("Mixed_7b", _e(1280)), ("Mixed_7c", _e(2048))]


def _expected_layout() -> list[tuple[str, tuple[int, ...]]]:
    convs = list(_STEM) + [(f"{block}.{name}", *rest) for block, convs in _MIXED for name, *rest in convs]
    layout: list[tuple[str, tuple[int, ...]]] = []
    for name, cin, cout, kh, kw in convs:
        layout.append((f"{name}.conv.weight", (cout, cin, kh, kw)))
        layout += [(f"{name}.bn.{b}", (cout,)) for b in ("weight", "bias", "running_mean", "running_var")]
        layout.append((f"{name}.bn.num_batches_tracked", ()))
    layout += [("fc.weight", (1008, 2048)), ("fc.bias", (1008,))]
    return layout


EXPECTED_LAYOUT = _expected_layout()


def test_state_dict_layout_is_exactly_the_weights_file() -> None:
    got = [(k, tuple(v.shape)) for k, v in InceptionV3TF().state_dict().items()]
    assert len(got) == len(EXPECTED_LAYOUT) == 94 * 6 + 2  # 94 conv+BN units, plus fc
    assert got == EXPECTED_LAYOUT


def test_layout_spot_checks_by_hand() -> None:
    sd = InceptionV3TF().state_dict()
    by_hand = {  # worked out from the block definitions: [out, in, kh, kw]
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
        "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_1.conv.weight": (448, 2048, 1, 1),
        "Mixed_7c.branch_pool.bn.running_var": (192,),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in by_hand.items():
        assert tuple(sd[key].shape) == shape, key
    assert sd["Conv2d_1a_3x3.bn.num_batches_tracked"].dtype == torch.int64
    # torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with AuxLogits).
    # AuxLogits: 1x1 conv 768->128 (98,304) + BN (256) + 5x5 conv 128->768 (2,457,600) + BN (1,536)
    # + fc 768->1000 (769,000) = 3,326,696. The TF graph's fc has 8 more classes: + 8 * 2049.
    model = InceptionV3TF()
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    assert all(m.eps == 0.001 for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def _randomised(seed: int) -> InceptionV3TF:
    """Random weights with O(1) activations (PyTorch's default init makes pool_3 vanish)."""
    gen = torch.Generator().manual_seed(seed)
    model = InceptionV3TF()
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=gen))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    model.fc.weight.copy_(0.02 * torch.randn(model.fc.weight.shape, generator=gen))
    model.fc.bias.copy_(torch.randn(model.fc.bias.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def model() -> InceptionV3TF:
    return _randomised(0)


def test_forward_outputs(model: InceptionV3TF) -> None:
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen)
    out = model(images)
    assert out.pool.shape == (2, 2048) and out.logits.shape == (2, 1008)
    assert out.logits_unbiased.shape == (2, 1008)
    assert out.pool.dtype == torch.float32 and not out.pool.requires_grad
    assert torch.isfinite(out.pool).all() and out.pool.abs().mean() > 1e-3
    torch.testing.assert_close(out.logits_unbiased, out.pool @ model.fc.weight.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, out.logits_unbiased + model.fc.bias, rtol=0, atol=0)
    assert not torch.allclose(out.pool[0], out.pool[1])  # the two images are scored independently


def test_batched_outputs_match_one_pass(model: InceptionV3TF) -> None:
    gen = torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (3, 3, 20, 24), dtype=torch.uint8, generator=gen)
    seen: list[tuple[int, int]] = []
    pool, logits = inception_outputs(model, images, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert pool.dtype == logits.dtype == torch.float64
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    assert seen == [(2, 3), (3, 3)]
    whole = model(images)
    torch.testing.assert_close(pool, whole.pool.double(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, whole.logits_unbiased.double(), rtol=1e-4, atol=1e-4)


def test_model_stays_frozen_and_rejects_bad_input(model: InceptionV3TF) -> None:
    model.train()
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="uint8"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        inception_outputs(model, torch.zeros(1, 1, 8, 8, dtype=torch.uint8))


def test_exact_float32_context_restores_precision_flags() -> None:
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None:
        pytest.skip("this torch has no per-operator precision flags")
    before = (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)
    with inc._exact_float32(torch.device("cuda")):
        assert conv.fp32_precision == "ieee" and torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision) == before


# --------------------------------------------------------------------------------------------------
# TF1 bilinear resize: src = dst * in / out (float32), lower = floor(src), upper = min(lower + 1, in - 1),
# weight = src - lower; top = tl + (tr - tl) * dx, bottom likewise, out = top + (bottom - top) * dy.


def test_resize_2x2_to_4x4_by_hand() -> None:
    x = torch.tensor([[0.0, 10.0], [20.0, 30.0]]).view(1, 1, 2, 2)
    # scale 2/4 = 0.5; src = 0, 0.5, 1, 1.5 -> (lower, upper, weight) = (0,1,0) (0,1,.5) (1,1,0) (1,1,.5)
    # row [0, 10] -> [0, 5, 10, 10]; row [20, 30] -> [20, 25, 30, 30]; rows then mix the same way.
    expected = torch.tensor([[0.0, 5.0, 10.0, 10.0],
                             [10.0, 15.0, 20.0, 20.0],
                             [20.0, 25.0, 30.0, 30.0],
                             [20.0, 25.0, 30.0, 30.0]])
    assert torch.equal(tf1_bilinear_resize(x, 4)[0, 0], expected)
    # PyTorch's align_corners=False uses half-pixel centres: src = (i + .5) * .5 - .5 = -.25, .25, .75, 1.25
    # -> row [0, 10] becomes [0, 2.5, 7.5, 10]; the two must differ.
    torch_half_pixel = F.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False)[0, 0]
    assert torch.equal(torch_half_pixel[0], torch.tensor([0.0, 2.5, 7.5, 10.0]))
    assert not torch.allclose(torch_half_pixel, expected)


def test_resize_3x3_to_2x2_by_hand() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)  # [[0,1,2],[3,4,5],[6,7,8]]
    # scale 3/2 = 1.5; src = 0, 1.5 -> (0, 1, 0) and (1, 2, .5)
    # out[0,0] = x[0,0] = 0; out[0,1] = (1 + 2) / 2 = 1.5; out[1,0] = (3 + 6) / 2 = 4.5
    # out[1,1] = ((4 + 5) / 2 + (7 + 8) / 2) / 2 = 6
    expected = torch.tensor([[0.0, 1.5], [4.5, 6.0]])
    assert torch.equal(tf1_bilinear_resize(x, 2)[0, 0], expected)
    # Half-pixel sampling (src = 0.25, 1.75) gives other values.
    assert not torch.allclose(F.interpolate(x, size=(2, 2), mode="bilinear", align_corners=False)[0, 0],
                              expected)


def test_resize_rectangular_and_identity() -> None:
    x = torch.tensor([[0.0, 10.0, 20.0], [40.0, 50.0, 60.0]]).view(1, 1, 2, 3)
    # width 3 -> 4: scale .75, src = 0, .75, 1.5, 2.25 -> row [0,10,20] = [0, 7.5, 15, 20]
    # height 2 -> 1: src = 0 -> the first row only.
    assert torch.equal(tf1_bilinear_resize(x, (1, 4))[0, 0], torch.tensor([[0.0, 7.5, 15.0, 20.0]]))
    y = torch.rand(2, 3, 5, 7)
    assert torch.equal(tf1_bilinear_resize(y, (5, 7)), y)


def _tf1_resize_reference(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """A loop-by-loop float32 restatement of TF1's ResizeBilinear kernel (one channel)."""
    f32 = np.float32
    in_h, in_w = img.shape
    sy, sx = f32(in_h) / f32(out_h), f32(in_w) / f32(out_w)
    out = np.zeros((out_h, out_w), dtype=f32)
    for i in range(out_h):
        yin = f32(i) * sy
        y0 = int(np.floor(yin))
        y1, dy = min(y0 + 1, in_h - 1), f32(yin - f32(y0))
        for j in range(out_w):
            xin = f32(j) * sx
            x0 = int(np.floor(xin))
            x1, dx = min(x0 + 1, in_w - 1), f32(xin - f32(x0))
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * dx
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * dx
            out[i, j] = top + (bottom - top) * dy
    return out


def test_resize_matches_float32_reference_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(3)
    img = torch.randint(0, 256, (1, 1, 7, 5), generator=gen).float()
    got = tf1_bilinear_resize(img, (23, 11))[0, 0].numpy()
    assert np.array_equal(got, _tf1_resize_reference(img[0, 0].numpy(), 23, 11))
    # 32 -> 299 (CIFAR-10 into Inception): scale 32/299 is not exact in float32, so this checks rounding.
    img = torch.randint(0, 256, (1, 1, 32, 32), generator=gen).float()
    got = tf1_bilinear_resize(img, 299)[0, 0].numpy()
    assert np.array_equal(got, _tf1_resize_reference(img[0, 0].numpy(), 299, 299))


# --------------------------------------------------------------------------------------------------
# Loading weights


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = _randomised(5).state_dict()
    path = tmp_path_factory.mktemp("weights") / "random-inception.pth"
    torch.save(state, path)
    return path, state


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No env var and an empty torch hub cache under tmp_path; returns the hub checkpoint path."""
    monkeypatch.delenv(inc.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    hub_file = inc.hub_weights_path()
    assert str(hub_file).startswith(str(tmp_path)), "torch.hub.set_dir() was called elsewhere"
    return hub_file


def _assert_same_weights(model: InceptionV3TF, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_load_from_path_round_trips(saved_weights, clean_env) -> None:
    path, state = saved_weights
    model = load_inception(path)
    _assert_same_weights(model, state)
    assert not model.training


def test_load_honours_env_var_and_hub_cache(saved_weights, clean_env, monkeypatch) -> None:
    path, state = saved_weights
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(path))
    _assert_same_weights(load_inception(), state)
    monkeypatch.delenv(inc.WEIGHTS_ENV)
    clean_env.parent.mkdir(parents=True)
    os.symlink(path, clean_env)
    _assert_same_weights(load_inception(), state)


def test_explicit_path_wins_over_env(saved_weights, clean_env, monkeypatch, tmp_path) -> None:
    path, state = saved_weights
    monkeypatch.setenv(inc.WEIGHTS_ENV, str(tmp_path / "nothing-here.pth"))
    _assert_same_weights(load_inception(path=path), state)
    with pytest.raises(IganError, match=inc.WEIGHTS_ENV):
        load_inception()


def test_missing_weights_names_all_places(clean_env, tmp_path) -> None:
    with pytest.raises(IganError) as info:
        load_inception()
    message = str(info.value)
    assert "--inception-weights PATH" in message and inc.WEIGHTS_ENV in message and str(clean_env) in message
    assert "--download" in info.value.hint
    with pytest.raises(IganError, match="not found"):
        load_inception(path=tmp_path / "absent.pth")


def test_wrong_architecture_is_reported(saved_weights, clean_env, tmp_path) -> None:
    _, state = saved_weights
    # The usual mistake: torchvision-style 1000-class classifier weights.
    wrong = dict(state, **{"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    path = tmp_path / "wrong.pth"
    torch.save(wrong, path)
    with pytest.raises(IganError) as info:
        load_inception(path)
    assert "wrong.pth" in str(info.value) and "fc.weight has shape [1000, 2048]" in str(info.value)
    # A different network altogether.
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(IganError, match=r"unexpected weight; unexpected bias; missing Conv2d_1a_3x3.*more"):
        load_inception(path)


def test_file_without_num_batches_tracked_loads(saved_weights, clean_env, tmp_path) -> None:
    _, state = saved_weights
    path = tmp_path / "no-counters.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    _assert_same_weights(load_inception(path), state)


def test_non_torch_files_are_refused(clean_env, tmp_path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(IganError, match="not a readable PyTorch weights file"):
        load_inception(text)
    zip_like = tmp_path / "broken.pth"
    zip_like.write_bytes(b"PK\x03\x04 and then nothing useful")
    with pytest.raises(IganError, match="broken.pth is not a readable PyTorch weights file"):
        load_inception(zip_like)
    tensor_only = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(IganError, match="does not hold a state dict"):
        load_inception(tensor_only)


class _RunsCode:
    """Unpickling this calls os.system: what weights_only=True exists to stop."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_code_running_pickles_are_refused(writer, clean_env, tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"fc.weight": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(IganError, match="evil.pth") as info:
        load_inception(path)
    assert not marker.exists()
    if writer == "torch.save":  # the blocked callable is named; a raw pickle fails earlier, on its opcodes
        assert "was refused" in str(info.value) and "system" in str(info.value)


def test_download_checks_the_digest(tmp_path) -> None:
    import hashlib

    source = tmp_path / "source.bin"
    source.write_bytes(b"pretend weights" * 1000)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "weights.pth"
    with pytest.raises(IganError, match="SHA-256"):
        download_inception_weights(dest, url=source.as_uri(), sha256="0" * 64)
    assert not dest.exists() and list(dest.parent.iterdir()) == []  # no partial file left behind
    assert download_inception_weights(dest, url=source.as_uri(), sha256=digest) == dest
    assert dest.read_bytes() == source.read_bytes()
    with pytest.raises(IganError, match="could not download"):
        download_inception_weights(dest, url=(tmp_path / "absent").as_uri(), sha256=digest)
    assert inc.WEIGHTS_SHA256.startswith(inc.WEIGHTS_FILENAME.split("-")[-1].removesuffix(".pth"))
