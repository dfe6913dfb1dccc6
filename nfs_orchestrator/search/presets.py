"""Named settings of the α/β optimizer, as dotted ``--set`` overrides of a campaign.

    from nfs_orchestrator.search.presets import arch_preset
    load_campaign(path, arch_preset("reference") + user_overrides)

``reference``: the PoseNFS reference code's first-order arch optimizer, exactly (POSENFS-SPEC
§3.1): Adam, lr 0.03, betas (0.9, 0.999), coupled L2 weight decay 1e-2, no warm-up. Kept
reachable for comparison; at small scale it does not move α/β: on the quickstart its α and β
entropy drops stay below 0.001 and no decision has a margin ≥ 0.05 (3 seeds; benchmarks/RESULTS.md
"Search signal"). The coupled decay adds wd·α to the gradient, so α stops at α* ≈ −ḡ/wd, a
few hundredths for the small mean gradients ḡ of a short search. The reference has no α
entropy pull (``search.alpha_entropy_weight`` 0).

``default``: ``SearchSpec``'s own defaults (Adam lr 0.05 without weight decay, a weight-only
warm-up of epochs // 6 epochs, no α entropy pull), spelled out, e.g. to undo a campaign file's
arch optimizer.

The same settings written in a campaign YAML::

    search:
      arch_optimizer: {name: adam, lr: 0.03, weight_decay: 0.01, betas: [0.9, 0.999]}
      arch_start_epoch: 0
      alpha_entropy_weight: 0

What this is not: a second place for defaults; ``specs.SearchSpec`` holds them.
"""

from __future__ import annotations

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.specs import SearchSpec
from nfs_orchestrator.strict import suggest


def _spelled_out(search: SearchSpec) -> tuple[str, ...]:
    o = search.arch_optimizer
    return (
        f"search.arch_optimizer.name={o.name}",
        f"search.arch_optimizer.lr={o.lr}",
        f"search.arch_optimizer.weight_decay={o.weight_decay}",
        f"search.arch_optimizer.betas=[{o.betas[0]}, {o.betas[1]}]",
        "search.arch_start_epoch="
        + ("null" if search.arch_start_epoch is None else str(search.arch_start_epoch)),
        f"search.alpha_entropy_weight={search.alpha_entropy_weight}",
    )


ARCH_PRESETS: dict[str, tuple[str, ...]] = {
    "reference": (
        "search.arch_optimizer.name=adam",
        "search.arch_optimizer.lr=0.03",
        "search.arch_optimizer.weight_decay=0.01",
        "search.arch_optimizer.betas=[0.9, 0.999]",
        "search.arch_start_epoch=0",
        "search.alpha_entropy_weight=0",
    ),
    "default": _spelled_out(SearchSpec()),
}


def arch_preset(name: str) -> tuple[str, ...]:
    """The ``--set`` overrides of preset ``name`` (put them before the user's own)."""
    if name not in ARCH_PRESETS:
        raise SpecError(
            f"arch preset {name!r}: unknown{suggest(name, ARCH_PRESETS)}; known: "
            f"{sorted(ARCH_PRESETS)}"
        )
    return ARCH_PRESETS[name]
