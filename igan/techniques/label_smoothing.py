"""One-sided label smoothing (paper §3.4): D's real targets become alpha (default 0.9); fake targets stay 0.

Smoothing the fake targets too would let D reward samples where there is no data; one-sided smoothing
only stops D from becoming over-confident on real data. With it, the optimal D at the equilibrium
p_model = p_data is alpha/2 instead of 1/2. The generator's target is a choice:

- ``--ls-g-target one`` (default): G keeps the usual non-saturating loss -log D(G(z)), as the paper
  describes only D's targets;
- ``--ls-g-target half``: G's target is alpha/2, the reference ImageNet code's choice
  (``generator_target_prob = d_label_smooth_target / 2``), so a generator at the equilibrium gets no
  gradient from the loss (paper-notes §1.6; the reference uses alpha = 0.75, target 0.375).
"""

from __future__ import annotations

from igan.errors import UsageError
from igan.plugins import hookimpl

# Loss targets only: `igan sample`/`evaluate` rebuild the same models without this plugin.
affects_inference = False
from igan.techniques import require_enabled

DEFAULT_ALPHA = 0.9


@hookimpl
def igan_addoption(parser):
    parser.add("ls", bool, help="one-sided label smoothing of D's real targets (§3.4)")
    parser.add("ls_alpha", float, DEFAULT_ALPHA, help="real target alpha with --ls (the paper's example: 0.9)")
    parser.add("ls_g_target", str, "one", choices=("one", "half"),
               help="generator target with --ls: one (non-saturating) or half (alpha/2, reference ImageNet)")


@hookimpl
def igan_configure(config, pm):
    require_enabled(config, "ls", "--ls", ls_alpha=DEFAULT_ALPHA, ls_g_target="one")
    alpha = config.opt("ls_alpha", DEFAULT_ALPHA)
    if not 0.0 < alpha <= 1.0:
        raise UsageError(f"--ls-alpha must be in (0, 1], got {alpha}", hint="the paper's example is 0.9")
    if config.opt("ls") and config.command == "semisup":
        raise UsageError("--ls applies to the real/fake target of `igan train`",
                         hint="the K+1 semi-supervised loss has no smoothed targets; drop --ls")


@hookimpl
def igan_label_targets(config):
    from igan.train import LabelTargets

    if not config.opt("ls"):
        return None
    alpha = config.opt("ls_alpha", DEFAULT_ALPHA)
    return LabelTargets(real=alpha, generator=alpha / 2 if config.opt("ls_g_target") == "half" else 1.0)
