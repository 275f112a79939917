"""Suite files: profiles, --set, sweep planning, the scenario hash, and the `show` / `list` commands."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lipbench.cli import main
from lipbench.suite import load_claim, parse_override

SUITES = sorted((Path(__file__).parent.parent / "suites").rglob("*.yaml"))
#: The paper's datasets (PAPER.md §3, §4): the MLP on MNIST, the ConvNet on CIFAR-10 (and CIFAR-100 in §7).
PAPER_DATASETS = {"mlp": {"mnist"}, "convnet": {"cifar10", "cifar100"}}


# ---------------------------------------------------------------- profiles


def test_profile_is_deep_merged(write_suite) -> None:
    path = write_suite(
        "merge",
        {
            "profiles": {
                "quick": {"scenario": {"optimizer": {"lr": 0.5}, "model": {"hidden": [4, 4]}}},
                "paper": {"scenario": {"dataset": {"name": "mnist"}, "steps": 7}, "seeds": {"init": 3}},
            }
        },
    )
    quick = load_claim(path, "quick").claim
    assert quick.scenario.optimizer.lr == 0.5
    assert quick.scenario.optimizer.batch_size == 8  # a sibling of the override survives
    assert quick.scenario.model.hidden == [4, 4]  # a list is replaced, not merged
    assert quick.scenario.model.init == "normal"
    assert quick.scenario.steps == 2

    paper = load_claim(path, "paper").claim
    assert paper.scenario.dataset.name == "mnist"
    assert paper.scenario.dataset.synthetic_size == 64
    assert (paper.scenario.steps, paper.seeds.init, paper.seeds.sampling) == (7, 3, 1)
    assert paper.scenario.optimizer.lr == 0.05

    base = load_claim(path).claim  # no profile: the file as written
    assert (base.scenario.steps, base.scenario.optimizer.lr) == (2, 0.05)


def test_unknown_profile_names_the_ones_there(write_suite) -> None:
    from lipbench.errors import SuiteError

    path = write_suite("profiles", {"profiles": {"quick": {}, "paper": {}}})
    with pytest.raises(SuiteError, match=r"no profile 'quik' \(did you mean 'quick'\?\); this file has: quick, paper"):
        load_claim(path, "quik")


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_every_shipped_suite_validates_quick_and_can_reach_its_verdict(path: Path) -> None:
    claim = load_claim(path, "quick")
    assert claim.profile == "quick"
    assert claim.design_problem() is None


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_paper_profile_uses_the_papers_dataset(path: Path) -> None:
    scenario = load_claim(path, "paper").claim.scenario
    assert scenario.dataset.name in PAPER_DATASETS[scenario.model.name]


def test_shipped_suites_exist() -> None:
    assert len(SUITES) >= 4


# ---------------------------------------------------------------- --set


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("scenario.steps=200", "scenario.steps", 200),
        ("scenario.optimizer.lr=0.05", "scenario.optimizer.lr", 0.05),
        ("sweep.values=[0.0, 0.2, 0.4]", "sweep.values", [0.0, 0.2, 0.4]),
        ("scenario.model.hidden=[512, 256]", "scenario.model.hidden", [512, 256]),
        ("scenario.model.dropout=true", "scenario.model.dropout", True),
        ("strict=false", "strict", False),
        ("scenario.dataset.name=mnist", "scenario.dataset.name", "mnist"),
        (" scenario.steps = 3", "scenario.steps", 3),
        ("claim=a=b", "claim", "a=b"),
        ("paper=", "paper", ""),
        ("claim=[unclosed", "claim", "[unclosed"),  # not YAML: kept as text
    ],
)
def test_parse_override(text: str, key: str, value: object) -> None:
    parsed = parse_override(text)
    assert parsed == (key, value)
    assert type(parsed[1]) is type(value)


def test_set_applies_after_the_profile_and_is_validated(write_suite) -> None:
    path = write_suite("sets", {"profiles": {"quick": {"scenario": {"steps": 10, "record_every": 5}}}})
    claim = load_claim(
        path,
        "quick",
        [
            "scenario.steps=40",
            "scenario.optimizer.lr=1e-3",  # YAML reads 1e-3 as text; the schema makes it a number
            "scenario.model.dropout=true",
            "sweep.values=[0.5, 1.0]",
        ],
    ).claim
    assert claim.scenario.steps == 40
    assert claim.scenario.record_every == 5
    assert claim.scenario.optimizer.lr == pytest.approx(1e-3)
    assert claim.scenario.model.dropout is True
    assert claim.sweep.values == [0.5, 1.0]


# ---------------------------------------------------------------- sweep planning


def test_runs_are_sweep_values_times_init_times_sampling_seeds(write_suite) -> None:
    path = write_suite(
        "plan",
        {
            "sweep": {"axis": "scenario.label_noise", "values": [0.0, 0.25, 0.5]},
            "seeds": {"init": 2, "sampling": 4},
        },
    )
    claim = load_claim(path, "quick")
    runs = claim.runs()
    assert len(runs) == 3 * 2 * 4
    assert len({r.run_id for r in runs}) == len(runs)
    assert {(r.sweep_value, r.init_seed, r.sampling_seed) for r in runs} == {
        (v, i, s) for v in (0.0, 0.25, 0.5) for i in (0, 1) for s in (0, 1, 2, 3)
    }
    for r in runs:
        assert r.scenario.label_noise == r.sweep_value
        assert r.claim == "plan"
    assert claim.model_steps() == len(runs) * 2
    assert claim.sweep_name == "label_noise"


def test_seeds_base_shifts_every_seed(write_suite) -> None:
    path = write_suite("base", {"seeds": {"init": 2, "sampling": 2, "base": 100}})
    runs = load_claim(path, "quick").runs()
    assert {r.init_seed for r in runs} == {100, 101}
    assert {r.sampling_seed for r in runs} == {100, 101}
    unshifted = load_claim(path, "quick", ["seeds.base=0"]).runs()
    assert {r.run_id for r in runs}.isdisjoint(r.run_id for r in unshifted)


def test_integer_sweep_reaches_the_scenario_as_an_integer(write_suite) -> None:
    path = write_suite("batch", {"sweep": {"axis": "scenario.optimizer.batch_size", "values": [8, 16, 32]}})
    runs = load_claim(path, "quick").runs()
    assert [r.scenario.optimizer.batch_size for r in runs[::2]] == [8, 16, 32]
    assert all(type(r.scenario.optimizer.batch_size) is int for r in runs)
    assert "batch_size=16-init0-samp0" in {r.run_id.split("-", 1)[1] for r in runs}


def test_without_sweep_there_is_one_run_per_seed_pair(write_suite) -> None:
    path = write_suite(
        "nosweep",
        {
            "sweep": None,
            "seeds": {"init": 2, "sampling": 3},
            "assertion": {"test": "invariance", "direction": None, "alpha": None},
        },
    )
    runs = load_claim(path, "quick").runs()
    assert len(runs) == 6
    assert all(r.sweep_value is None for r in runs)


# ---------------------------------------------------------------- scenario hash


def test_scenario_hash_follows_the_numbers_not_the_prose(write_suite) -> None:
    path = write_suite("hash", {"profiles": {"quick": {}, "paper": {"scenario": {"steps": 4}}}})
    reference = load_claim(path, "quick").scenario_hash()
    assert load_claim(path, "quick").scenario_hash() == reference
    assert load_claim(path, "quick", ["claim=Another sentence entirely."]).scenario_hash() == reference
    assert load_claim(path, "quick", ["paper=§9"]).scenario_hash() == reference
    assert load_claim(path, "quick", ["scenario.steps=3"]).scenario_hash() != reference
    assert load_claim(path, "quick", ["scenario.optimizer.lr=0.1"]).scenario_hash() != reference
    assert load_claim(path, "paper").scenario_hash() != reference


def test_scenario_hash_ignores_fields_left_at_their_defaults(write_suite) -> None:
    """A schema field added later with a default must not make every stored baseline incomparable."""
    path = write_suite("hash")
    reference = load_claim(path, "quick").scenario_hash()
    assert load_claim(path, "quick", ["scenario.label_noise=0.0"]).scenario_hash() == reference  # the default
    assert load_claim(path, "quick", ["scenario.label_noise=0.1"]).scenario_hash() != reference
    assert load_claim(path, "quick", ["scenario.sampling=without_replacement"]).scenario_hash() != reference


def test_scenario_hash_keeps_the_assertion_test_name(write_suite) -> None:
    """Two tests with all their parameters at the defaults still hash apart."""
    growth = write_suite("a", {"assertion": {"test": "growth_trend", "direction": None, "alpha": None}})
    invariance = write_suite("b", {"assertion": {"test": "invariance", "direction": None, "alpha": None}})
    assert load_claim(growth, "quick").scenario_hash() != load_claim(invariance, "quick").scenario_hash()


# ---------------------------------------------------------------- show and list


def test_show_prints_the_resolved_claim(write_suite, wide_console, capsys) -> None:
    path = write_suite("shown", {"profiles": {"quick": {"scenario": {"optimizer": {"lr": 0.2}}}}})
    assert main(["show", str(path), "--profile", "quick", "--set", "scenario.steps=9"]) == 0
    out = capsys.readouterr().out
    first, _, body = out.partition("\n")
    assert first.startswith(f"# {path}")
    assert load_claim(path, "quick", ["scenario.steps=9"]).scenario_hash() in first
    shown = yaml.safe_load(body)
    assert shown["scenario"]["steps"] == 9
    assert shown["scenario"]["optimizer"] == {"name": "sgd", "lr": 0.2, "batch_size": 8, "weight_decay": 0.0}
    assert shown["scenario"]["sampling"] == "with_replacement"  # defaults are shown too
    assert shown["assertion"]["test"] == "monotone_trend"


def test_list_prints_runs_and_model_steps(write_suite, wide_console, capsys) -> None:
    path = write_suite("listed", {"seeds": {"init": 2, "sampling": 2}, "scenario": {"steps": 5}})
    write_suite("other", {"sweep": {"values": [0.01, 0.1]}, "seeds": {"init": 4}})
    assert main(["list", str(path.parent), "--profile", "quick"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│" if "│" in line else "┃")]
        if len(cells) == 7:
            rows[cells[1]] = cells
    assert rows["claim"][5:] == ["runs", "model-steps"]
    assert rows["listed"][4:] == ["init_std x3", "12", "60"]
    assert rows["other"][4:] == ["init_std x2", "8", "16"]
