"""Every bias mitigation fairkits offers, in one place: `fairness.method` in a config names them.

    fairness.method   stage            what it does                                    settings
    ---------------   --------------   ---------------------------------------------   -----------------
    none              -                the baseline: trained blind to sex and age      -
    resm              pre-processing   RESM: each group resampled to one size per      fairness.resm
                                       epoch (min / max / mean)  [samplers.py]
    stratified        pre-processing   every batch holds the same number of cases      -
                                       per group                 [samplers.py]
    fairmeta          in-processing    fair meta-learning: a DenseNet branch predicts  fairness.fairmeta
                                       the group from the softmax and the CT;
                                       seg_weight * L_seg + cls_weight * L_cls [fairmeta.py]
    dmoe              in-processing    FairDRO's dMoE: shared experts, a router per    fairness.dmoe
                                       group at the deep encoder stages  [dmoe.py]
    dro               in-processing    FairDRO's loss: CVaR inside each group, online  fairness.dro
                                       group-DRO weights across groups   [dro.py]
    (architecture)    in-processing    the study's fourth: swap the network            model.name
                                       (nnunet, unet, vnet, attention_unet; models/)

Several combine in a list (`method: [dmoe, dro]` is FairDRO; at most one sampler method). All of
them act on `fairness.attribute` through the run's group index (data/group_index.py). Each
in-processing method is one class with the hooks of mitigations/base.py; train.py calls those
hooks for whatever the config names and names no method itself. A new method is a class here
plus a registry entry and a config.

Usage:
    methods = build_mitigations(cfg["fairness"], index)     # in registry order
    names = method_names(cfg["fairness"]["method"])          # ["dmoe", "dro"]
"""
from __future__ import annotations

from mitigations.base import Mitigation, TrainStep
from mitigations.dmoe import DMoERouting
from mitigations.dro import DRO
from mitigations.fairmeta import FairMeta
from mitigations.samplers import Resm, Stratified

# registry order is the order the hooks run in: DRO aggregates the per-sample losses first, dMoE
# adds its load-balancing term, fair meta-learning weights the result against its classifier
MITIGATIONS = {cls.name: cls for cls in (Resm, Stratified, DRO, DMoERouting, FairMeta)}
SAMPLER_METHODS = ("resm", "stratified")
VALID = ("none", *MITIGATIONS)


def method_names(method) -> list[str]:
    """`fairness.method` (a name, a list of names, or none) as registry names in registry order."""
    names = [method] if isinstance(method, str) else list(method or [])
    names = [str(n) for n in names if str(n) != "none"]
    unknown = [n for n in names if n not in MITIGATIONS]
    if unknown:
        raise ValueError(f"unknown fairness.method {unknown[0]!r}; valid: {', '.join(VALID)}")
    if len(set(names)) != len(names):
        raise ValueError(f"fairness.method names a method twice: {names}")
    samplers = [n for n in names if n in SAMPLER_METHODS]
    if len(samplers) > 1:
        raise ValueError(f"fairness.method combines two samplers ({', '.join(samplers)}): choose one")
    return [n for n in MITIGATIONS if n in names]


def build_mitigations(fairness_cfg: dict, index) -> list[Mitigation]:
    """The run's mitigations, each built from its `fairness.<name>` section and the group index."""
    return [MITIGATIONS[name](fairness_cfg.get(name) or {}, index=index)
            for name in method_names(fairness_cfg["method"])]


__all__ = ["MITIGATIONS", "Mitigation", "TrainStep", "build_mitigations", "method_names"]
