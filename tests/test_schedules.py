"""The mitigations' warm-up schedules (mitigations/schedules.py): values at known progress, the
study's behaviour at warm-up 0, and the progress the trainer hands the hooks."""
import pytest
import torch

from config import DEFAULTS
from data.group_index import GroupIndex
from mitigations.base import TrainStep
from mitigations.dro import DRO
from mitigations.fairmeta import FairMeta
from mitigations.schedules import check_warmup, ramp, started

INDEX = GroupIndex(attribute="sex", groups=("male", "female"), by_case={})


def test_ramp_and_start_values():
    assert [ramp(p, 0.2) for p in (0.0, 0.05, 0.1, 0.2, 0.7)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert ramp(0.0, 0.0) == 1.0 and started(0.0, 0.0)          # warm-up 0: full strength at once
    assert not started(0.099, 0.1) and started(0.1, 0.1)
    for bad in (-0.1, 1.0, "half", True):
        with pytest.raises(ValueError, match="fairness.dro.warmup is a fraction of training in \\[0, 1\\)"):
            check_warmup("fairness.dro.warmup", bad)


def _step(progress: float, per_sample=(0.2, 0.9, 0.4, 0.7), group=(0, 0, 1, 1)) -> TrainStep:
    torch.manual_seed(0)
    per_sample = torch.tensor(per_sample, requires_grad=True)
    image = torch.randn(len(group), 1, 8, 16, 16)
    return TrainStep(image=image, label=torch.zeros(len(group), 8, 16, 16, dtype=torch.long),
                     group=torch.tensor(group), outputs=[torch.randn(len(group), 3, 8, 16, 16)],
                     per_sample=per_sample, plain=per_sample.mean, progress=progress)


def _fairmeta(**settings) -> FairMeta:
    s = dict(DEFAULTS["fairness"]["fairmeta"], classifier={"growth_rate": 4, "block_config": [1], "init_features": 4})
    s.update(settings)
    method = FairMeta(s, index=INDEX)
    method.module = method.build_module()
    return method


def test_fairmeta_cls_weight_ramps_over_the_warmup():
    method = _fairmeta(cls_warmup=0.2)
    for progress, weight in ((0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.2, 2.0), (0.9, 2.0)):
        step = _step(progress)
        loss, scalars = method.loss(None, step)
        assert scalars["cls_weight"] == pytest.approx(weight)
        assert loss.item() == pytest.approx(step.plain_loss.item() + weight * scalars["L_cls"], rel=1e-5)
    study = _fairmeta()
    assert study.loss(None, _step(0.0))[1]["cls_weight"] == 2.0        # the study: beta from step one


def test_fairmeta_classifier_lr_is_its_own_param_group():
    assert all("lr" not in g for g in _fairmeta().param_groups())
    groups = _fairmeta(classifier_lr=0.01).param_groups()
    assert groups and all(g["lr"] == 0.01 for g in groups)
    with pytest.raises(ValueError, match="classifier_lr must be a positive number or null"):
        _fairmeta(classifier_lr=-1)


def test_dro_waits_for_its_warmup_on_the_plain_loss():
    s = dict(DEFAULTS["fairness"]["dro"], cvar_level=0.5, warmup=0.3)
    method = DRO(s, index=INDEX)
    method.module = method.build_module()
    step = _step(0.1)
    loss, scalars = method.loss(None, step)
    assert scalars == {"dro_active": 0.0} and loss.item() == pytest.approx(0.55)   # the plain mean
    assert not method.module.seen.any() and torch.equal(method.module.q, torch.full((2,), 0.5))
    loss, scalars = method.loss(None, _step(0.3))
    assert scalars["dro_active"] == 1.0 and method.module.seen.all()
    # first DRO step: tau = each group's empirical 0.5-quantile (0.9 and 0.7); CVaR0.5 = the worst
    # sample of each group; weights q * n_g, q = softmax(eta * L_g) after this step's update
    q = torch.softmax(0.01 * torch.tensor([0.9, 0.7]), 0)
    assert loss.item() == pytest.approx(float(q[0] * 0.9 + q[1] * 0.7), rel=1e-6)
    study = DRO(DEFAULTS["fairness"]["dro"], index=INDEX)
    study.module = study.build_module()
    assert study.loss(None, _step(0.0))[1]["dro_active"] == 1.0


def test_the_trainer_hands_the_hooks_the_fraction_of_steps_done(tmp_path, monkeypatch):
    import train
    from tests.kits_fixtures import write_tiny_cohort
    from tests.test_training import TARGET, tiny_args
    write_tiny_cohort(tmp_path / "raw", n_cases=6, shape=(24, 40, 48), spacing=TARGET)
    seen = []
    original = DRO.loss

    def spy(self, loss, step):
        seen.append(step.progress)
        return original(self, loss, step)
    monkeypatch.setattr(DRO, "loss", spy)
    assert train.main(tiny_args(tmp_path, "sched", 2, ["fairness.method=dro", "fairness.dro.warmup=0.5"])) == 0
    n = len(seen)
    assert n >= 2 and n % 2 == 0
    assert seen == pytest.approx([i / n for i in range(n)])
