"""The Bad-GAN terms (Dai et al. 2017) as plugins: the maths against hand-computed values, the density
model, and each plugin end to end (with the paper's techniques, resumed, and under --parallel)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY
from igan import losses
from igan.density import DensityModel, fit_density

# ---- the maths --------------------------------------------------------------------------------------


def test_pull_away_term_by_hand():
    """Rows (1,0), (1,1), (0,2): cosines 1/sqrt2 (pairs 1-2 and 2-3) and 0 (1-3); each unordered pair
    counts twice, so PT = 2 (1/2 + 1/2 + 0) / (3 * 2) = 1/3."""
    f = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    assert losses.pull_away_term(f).item() == pytest.approx(1 / 3)
    # identical directions: every cos^2 is 1; orthogonal ones: 0; a zero row counts as orthogonal
    assert losses.pull_away_term(torch.tensor([[1.0, 2.0], [2.0, 4.0]])).item() == pytest.approx(1.0)
    assert losses.pull_away_term(torch.eye(4)).item() == 0.0
    assert losses.pull_away_term(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="at least 2"):
        losses.pull_away_term(torch.ones(1, 3))


def test_pull_away_term_matches_the_definition_on_random_features():
    torch.manual_seed(0)
    f = torch.randn(7, 5, dtype=torch.float64)
    want = sum(torch.nn.functional.cosine_similarity(f[i], f[j], dim=0) ** 2
               for i in range(7) for j in range(7) if i != j) / (7 * 6)
    assert losses.pull_away_term(f).item() == pytest.approx(want.item())


def test_conditional_entropy_by_hand():
    k = 10
    assert losses.conditional_entropy(torch.zeros(3, k)).item() == pytest.approx(math.log(k))  # uniform
    assert losses.conditional_entropy(torch.tensor([[50.0, 0.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-12)
    # two classes with p = (0.25, 0.75): logits (0, log 3)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])
    assert losses.conditional_entropy(logits).item() == pytest.approx((h + math.log(2)) / 2)


def test_low_density_penalty_by_hand():
    """Excess over eps = 2 of (1, 5, 3) is (0, 3, 1): summed 4 over the 2 samples above -> 2; none above -> 0."""
    assert losses.low_density_penalty(torch.tensor([1.0, 5.0, 3.0]), 2.0).item() == pytest.approx(2.0)
    assert losses.low_density_penalty(torch.tensor([1.0, 0.0]), 2.0).item() == 0.0
    logp = torch.tensor([1.0, 5.0, 3.0], requires_grad=True)
    losses.low_density_penalty(logp, 2.0).backward()
    assert logp.grad.tolist() == [0.0, 0.5, 0.5]  # only the samples above eps are pushed down


# ---- the density model ------------------------------------------------------------------------------


def test_density_log_prob_is_the_formula():
    """A hand-built model against torch.distributions: a 2-component diagonal mixture in the first two
    coordinates of R^3 (axes = e1, e2) times an isotropic Gaussian on the third."""
    from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

    mean = torch.tensor([0.5, -1.0, 2.0])
    axes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    w = torch.tensor([0.3, 0.7])
    centres = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    var = torch.tensor([[1.0, 0.25], [0.5, 2.0]])
    model = DensityModel(mean, axes, w.log(), centres, var, torch.tensor(0.09))
    x = torch.tensor([[0.1, 0.2, 2.3], [1.5, -3.0, 1.5], [0.5, -1.0, 2.0]])
    mix = MixtureSameFamily(Categorical(w), Independent(Normal(centres, var.sqrt()), 1))
    want = mix.log_prob(x[:, :2] - mean[:2]) + Normal(0.0, 0.3).log_prob(x[:, 2] - mean[2])
    torch.testing.assert_close(model.log_prob(x), want)


def test_fit_density_recovers_clusters_and_is_deterministic():
    torch.manual_seed(1)
    a = torch.randn(400, 3) * 0.1 + torch.tensor([2.0, 0.0, 0.0])
    b = torch.randn(400, 3) * 0.1 + torch.tensor([-2.0, 0.0, 0.0])
    x = torch.cat([a, b]).view(800, 1, 1, 3)
    model = fit_density(x, dims=2, components=2, iters=30)
    again = fit_density(x, dims=2, components=2, iters=30)
    assert all(torch.equal(u, v) for u, v in zip(model.state().values(), again.state().values()))
    centres = (model.centres @ model.axes.t() + model.mean)[:, 0].sort().values
    torch.testing.assert_close(centres, torch.tensor([-2.0, 2.0]), atol=0.05, rtol=0)
    assert model.log_weights.exp().tolist() == pytest.approx([0.5, 0.5], abs=0.02)
    near, far = model.log_prob(torch.tensor([[2.0, 0.0, 0.0]])), model.log_prob(torch.tensor([[0.0, 0.0, 0.0]]))
    assert near.item() > far.item() + 50  # the gap between the clusters is low density
    restored = DensityModel.from_state(model.state())
    torch.testing.assert_close(restored.log_prob(x), model.log_prob(x))


# ---- the plugins end to end -------------------------------------------------------------------------


def _semisup(run_cli, out, *flags, steps=4):
    code, stdout, err = run_cli(["semisup", "--steps", str(steps), *TINY, "--no-baseline", "--out", out, *flags])
    assert code == 0, err
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_each_term_is_logged_and_changes_training(run_cli, tmp_path, single_thread):
    plain = _semisup(run_cli, tmp_path / "plain")
    # (the low-density term is 0 until G's samples reach the data's density: tests/test_hooks.py
    # test_hook_igan_density_model checks it with a density model under the test's control)
    runs = {"pt": ("--pull-away", "loss/G/pt"), "ent": ("--cond-entropy", "loss/D/ent")}
    for name, (flag, key) in runs.items():
        records = _semisup(run_cli, tmp_path / name, flag)
        values = [r[key] for r in records if key in r]
        assert values and all(math.isfinite(v) and v >= 0 for v in values), name
        assert any(v > 0 for v in values), name
        other = "loss/G" if name == "pt" else "loss/D"
        assert [r.get(other) for r in records] != [r.get(other) for r in plain], f"{name} changed nothing"
    assert "loss/G/pt" not in plain[0] and "loss/D/ent" not in plain[0]


def test_weights_scale_the_terms(run_cli, tmp_path, single_thread):
    """--pt-weight 0.4 gives half the logged term of 0.8 at step 1 (same seed, same first batch)."""
    a = _semisup(run_cli, tmp_path / "a", "--pull-away", "--pt-weight", "0.8", steps=1)
    b = _semisup(run_cli, tmp_path / "b", "--pull-away", "--pt-weight", "0.4", steps=1)
    assert b[0]["loss/G/pt"] == pytest.approx(a[0]["loss/G/pt"] / 2, rel=1e-5)


def test_options_without_their_flag_and_wrong_command_are_refused(run_cli, tmp_path):
    code, _, err = run_cli(["semisup", "--steps", "1", *TINY, "--ent-weight", "0.5", "--out", tmp_path / "a"])
    assert code == 2 and "--ent-weight given without --cond-entropy" in err
    code, _, err = run_cli(["semisup", "--steps", "1", *TINY, "--ld-weight", "0.5", "--out", tmp_path / "b"])
    assert code == 2 and "--ld-weight given without --low-density" in err
    code, _, err = run_cli(["train", "--steps", "1", *TINY, "--cond-entropy", "--out", tmp_path / "c"])
    assert code == 2 and "--cond-entropy" in err  # semi-supervised only: a plain D has one logit


def test_terms_combine_with_the_papers_techniques(run_cli, tmp_path, single_thread):
    records = _semisup(run_cli, tmp_path / "ss", "--pull-away", "--cond-entropy", "--low-density", "--mbd", "--ha",
                       "--vbn")
    last = [r for r in records if "loss/G" in r][-1]
    assert {"loss/G/pt", "loss/G/ld", "loss/D/ent", "loss/G/ha", "loss/D/ha"} <= set(last)
    code, _, err = run_cli(["train", "--steps", "3", *TINY, "--out", tmp_path / "gan", "--pull-away", "--fm", "--mbd",
                            "--ha", "--ls", "--vbn"])
    assert code == 0, err
    first = json.loads((tmp_path / "gan" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss/G/pt"] > 0


def test_low_density_resumes_exactly(run_cli, tmp_path, single_thread):
    flags = ["--low-density", "--ld-weight", "0.01", "--pull-away", "--cond-entropy"]
    _semisup(run_cli, tmp_path / "straight", *flags, steps=6)
    _semisup(run_cli, tmp_path / "split", *flags, steps=3)
    ckpt = tmp_path / "split" / "checkpoints" / "last.safetensors"
    tensors = load_file(str(ckpt))
    assert {"plugin.low_density.run.threshold", "plugin.low_density.run.model.axes"} <= set(tensors)
    code, _, err = run_cli(["semisup", "--steps", "6", *TINY, "--no-baseline", "--resume", ckpt, *flags])
    assert code == 0, err
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "last.safetensors"))
    b = load_file(str(ckpt))
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(params=["batched", "interleaved"])
def mode(request, monkeypatch):
    monkeypatch.setenv("IGAN_PARALLEL", request.param)
    return request.param


def test_parallel_seeds_equal_single_runs(run_cli, tmp_path, single_thread, mode):
    flags = ["--pull-away", "--cond-entropy", "--low-density", "--ld-weight", "0.01"]
    code, _, err = run_cli(["semisup", "--steps", "3", *TINY, "--no-baseline", "--out", tmp_path / "par", "--seeds", "2",
                            "--parallel", *flags])
    assert code == 0, err
    for seed in (0, 1):
        _semisup(run_cli, tmp_path / f"one{seed}", "--seed", str(seed), "--label-seed", str(seed + 1), *flags, steps=3)
        a = load_file(str(tmp_path / "par" / f"seed{seed}" / "checkpoints" / "last.safetensors"))
        b = load_file(str(tmp_path / f"one{seed}" / "checkpoints" / "last.safetensors"))
        for key in a:
            if a[key].is_floating_point():
                torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
            else:
                assert torch.equal(a[key], b[key]), key


def test_checkpoints_evaluate_without_the_bad_gan_plugins(run_cli, tmp_path, single_thread):
    """The three terms change losses only (affects_inference = False): a checkpoint trained with them
    samples and reports its test error where they are disabled, and resumes only where they are not."""
    run = tmp_path / "run"
    _semisup(run_cli, run, "--pull-away", "--cond-entropy", "--low-density", steps=3)
    env = {"IGAN_DISABLE_PLUGINS": "pull_away,cond_entropy,low_density"}
    code, out, err = run_cli(["evaluate", run, "--metric", "error", "--json"], env=env)
    assert code == 0, err
    assert json.loads(out)["test_errors"] >= 0
    code, out, err = run_cli(["semisup", "--resume", run, "--steps", "4"], env=env)
    assert code == 1 and "low_density" in err  # training needs them: the resume refuses
