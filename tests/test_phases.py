import pytest

from nnunet_ext.training.phases import NETWORK, Phase, PhaseSchedule


def test_phases_resolve_ints_fractions_and_rest():
    s = PhaseSchedule([Phase("a", 10), Phase("b", 0.25, train=("gen",)), Phase("c", None, losses={"adv": 0.1})])
    r = s.resolve(100)
    assert [(p.name, p.start, p.end) for p in r] == [("a", 0, 10), ("b", 10, 35), ("c", 35, 100)]
    assert s.phase_at(0, 100).name == "a"
    assert s.phase_at(9, 100).name == "a"
    assert s.phase_at(10, 100).name == "b"
    assert s.phase_at(99, 100).name == "c"
    assert s.phase_at(150, 100).name == "c"  # past the end: stays in the last phase
    assert r[2].phase.loss_weight("adv") == 0.1
    assert r[2].phase.loss_weight("cycle") == 0.0
    assert r[1].phase.trains("gen") and not r[1].phase.trains(NETWORK)
    assert s.module_names() == {"network", "gen"}
    assert (s.resolved("b", 100).start, s.resolved("b", 100).end) == (10, 35)
    with pytest.raises(KeyError, match="no phase 'd' in \\['a', 'b', 'c'\\]"):
        s.resolved("d", 100)


def test_fractional_phases_scale_with_short_budgets():
    s = PhaseSchedule([Phase("loc", 0.3), Phase("seg", None)])
    assert [(p.start, p.end) for p in s.resolve(1000)] == [(0, 300), (300, 1000)]
    assert [(p.start, p.end) for p in s.resolve(2)] == [(0, 1), (1, 2)]


def test_schedule_that_does_not_fit_names_the_phases():
    s = PhaseSchedule([Phase("loc", 5), Phase("seg", 5), Phase("adv", None)])
    with pytest.raises(ValueError, match="do not fit into num_epochs=8"):
        s.resolve(8)
    with pytest.raises(ValueError, match="do not fit"):
        s.resolve(10)  # nothing left for the last phase


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "x", "epochs": 0}, "at least 1"),
    ({"name": "x", "epochs": 1.5}, r"\(0, 1\]"),
    ({"name": "x", "epochs": "10"}, "int, a float"),
    ({"name": "", "epochs": 1}, "needs a name"),
])
def test_invalid_phase(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Phase(**kwargs)


def test_invalid_schedules():
    with pytest.raises(ValueError, match="unique"):
        PhaseSchedule([Phase("a", 1), Phase("a", 1)])
    with pytest.raises(ValueError, match="only the last phase"):
        PhaseSchedule([Phase("a", None), Phase("b", 1)])
    with pytest.raises(ValueError, match="at least one"):
        PhaseSchedule([])
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        PhaseSchedule([Phase("a", None)]).phase_at(-1, 10)


def test_phase_is_immutable():
    p = Phase("a", 1, losses={"x": 1.0})
    with pytest.raises(TypeError):
        p.losses["x"] = 2.0
