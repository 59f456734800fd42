"""The group index of a run: one attribute, its groups in a fixed order, and each case's position.

Built once when a run starts (from the cache's case table and `fairness.attribute`) and stored in
every checkpoint, so that everything that needs a case's group agrees on it: the sampler (RESM,
stratified batches), the dataset (each batch carries `group`, the position), the mitigations
(the fair-meta classifier's target, the DRO loss's groups, the dMoE router), and evaluate.py,
which routes each case exactly as training did.

The order is the attribute's natural one (male, female; the four age bins; intersections in
product order) or, for a free categorical field, the sorted groups of the case table. A case
whose group is not in the order (e.g. a group the model never saw) is a CaseError naming it.

Usage:
    index = GroupIndex.from_table(table, settings, "sex")
    index.groups                    # ("male", "female")
    index.position("case_00007")    # 1
    index.to_dict()                 # {"attribute": "sex", "groups": ["male", "female"]}: for checkpoints
    GroupIndex.from_table(table, settings, **ckpt["group_index"])   # the same positions later
"""
from __future__ import annotations

from dataclasses import dataclass

from data.errors import CaseError


@dataclass(frozen=True)
class GroupIndex:
    attribute: str
    groups: tuple[str, ...]
    by_case: dict          # case id -> group name (every case of the table)

    @classmethod
    def from_table(cls, table, settings, attribute: str, groups=None) -> "GroupIndex":
        """The index over a case table; `groups` fixes the order (a checkpoint's), else the attribute's."""
        from data.cache import groups_from_table
        from data.groups import parse_attribute

        by_case = groups_from_table(table, attribute, settings)
        if not groups:
            order = parse_attribute(attribute, age_edges=settings.age_edges, bmi_edges=settings.bmi_edges).order
            groups = order if order else sorted(set(by_case.values()))
        return cls(attribute=attribute, groups=tuple(groups), by_case=by_case)

    def position(self, case_id: str) -> int:
        if case_id not in self.by_case:
            raise CaseError(case_id, f"has no {self.attribute} value in the case table")
        group = self.by_case[case_id]
        if group not in self.groups:
            raise CaseError(case_id, f"its {self.attribute} group {group!r} is not one the run was trained "
                            f"with ({', '.join(self.groups)})")
        return self.groups.index(group)

    def known(self, case_id: str) -> bool:
        return self.by_case.get(case_id) in self.groups

    def positions(self, case_ids) -> list[int]:
        return [self.position(c) for c in case_ids]

    def group_of(self, case_id: str) -> str:
        if case_id not in self.by_case:
            raise CaseError(case_id, f"has no {self.attribute} value in the case table")
        return self.by_case[case_id]

    def to_dict(self) -> dict:
        return {"attribute": self.attribute, "groups": list(self.groups)}
