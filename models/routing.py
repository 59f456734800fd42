"""The group of each case, as the dMoE router index a network needs (FairDRO).

A network with group routers (models/moe.py) is called as net(x, groups=index_per_sample). The
index is the position of the case's group in the model's group list, which train.py fixes once
(the attribute's known order, e.g. male, female; the four age bins) and stores in the
checkpoint's `model_config`, so evaluation maps groups exactly as training did.

Usage:
    model_cfg, index = resolve_routing(cfg["model"], default_attribute="sex", table=table, settings=settings)
    index["case_00007"]                     # 1 (female)
    net = WithGroup(model, 1)               # a plain x -> y network for the sliding window
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from data.errors import CaseError


def resolve_routing(model_cfg: dict, *, default_attribute: str, table, settings, order=None):
    """(model config with moe.attribute and moe.groups filled in, {case_id: router index} or None).

    Without group routers (no moe, or router: shared) the index is None. Groups already listed in
    the config (a checkpoint's) are kept as they are; a case whose group is not among them is a
    CaseError naming it.
    """
    from data.groups import parse_attribute
    from data.preprocessing import groups_from_table

    moe = model_cfg.get("moe")
    if not moe or moe.get("router", "group") != "group":
        return model_cfg, None
    model_cfg = copy.deepcopy(model_cfg)
    moe = model_cfg["moe"]
    attribute = moe.get("attribute") or default_attribute
    by_case = groups_from_table(table, attribute, settings)
    if not moe.get("groups"):
        known = order or parse_attribute(attribute, age_edges=settings.age_edges, bmi_edges=settings.bmi_edges).order
        moe["groups"] = list(known) if known else sorted(set(by_case.values()))
    moe["attribute"] = attribute
    position = {g: i for i, g in enumerate(moe["groups"])}
    index = {}
    for case_id, group in by_case.items():
        if group in position:
            index[case_id] = position[group]
    return model_cfg, _Index(index, by_case, attribute, moe["groups"])


class _Index(dict):
    """{case_id: router index}; a missing case raises a CaseError that names its group."""

    def __init__(self, index, by_case, attribute, groups):
        super().__init__(index)
        self.by_case, self.attribute, self.groups = by_case, attribute, groups

    def __missing__(self, case_id):
        if case_id in self.by_case:
            raise CaseError(case_id, f"its {self.attribute} group {self.by_case[case_id]!r} is not one the model "
                            f"was trained with ({', '.join(map(str, self.groups))})")
        raise CaseError(case_id, f"has no {self.attribute} value in the case table")


class WithGroup(nn.Module):
    """A group-routed network seen as x -> y for one case's group (every tile of a case shares it)."""

    def __init__(self, net: nn.Module, group: int):
        super().__init__()
        self.net, self.group = net, int(group)

    def forward(self, x):
        return self.net(x, groups=torch.full((x.shape[0],), self.group, dtype=torch.long, device=x.device))
