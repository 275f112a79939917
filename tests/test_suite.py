"""Suite files: profiles, --set, strict input, include, sweep planning, the scenario hash, `show` / `list`."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from lipbench.cli import main
from lipbench.design import design_check
from lipbench.discovery import is_base_file, suite_files
from lipbench.errors import SuiteError
from lipbench.suite import load_claim, parse_override

#: The shipped claims, as `lipbench run suites` finds them (base files only meant to be included are not claims).
SUITES = suite_files([Path(__file__).parent.parent / "suites"])
#: The paper's datasets (§8, appendix): the MLP on MNIST, the ConvNet on CIFAR-10 (and CIFAR-100 in §7).
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
    assert design_check(claim).problem is None


@pytest.mark.parametrize("path", SUITES, ids=[p.stem for p in SUITES])
def test_paper_profile_uses_the_papers_dataset(path: Path) -> None:
    scenario = load_claim(path, "paper").claim.scenario
    assert scenario.dataset.name in PAPER_DATASETS[scenario.model.name]


def test_shipped_suites_exist() -> None:
    assert len(SUITES) >= 4


#: The scenario hashes of every shipped claim, per profile, recorded before the families were built
#: from shared base files: stored baselines stay comparable only while these do not move.
#: (The quick hashes of batch_size and both variance_prediction files moved afterwards with their
#: sampling-seed counts, and those of seed_invariance (5 x 6 runs) and initialization (13 init draws)
#: with theirs; initialization_width's (widths 16-128, 4 init draws), seed_invariance's (6 x 6), the
#: decompositions' (10 or 20 runs) and sde_agreement's (8 runs) when the design check sized them on the fitted
#: model: design changes for power that come with new baselines.)
SHIPPED_HASHES: dict[str, dict[str, str]] = json.loads(
    (Path(__file__).parent / "fixtures/scenario_hashes.json").read_text()
)
ROOT = Path(__file__).parent.parent


def test_shipped_suites_are_the_recorded_ones() -> None:
    assert sorted(p.relative_to(ROOT).as_posix() for p in SUITES) == sorted(SHIPPED_HASHES)


@pytest.mark.parametrize("name", sorted(SHIPPED_HASHES), ids=[Path(n).stem for n in sorted(SHIPPED_HASHES)])
def test_shipped_suite_keeps_its_scenario_hashes(name: str) -> None:
    found = {p or "default": load_claim(ROOT / name, p).scenario_hash() for p in (None, "quick", "paper")}
    assert found == SHIPPED_HASHES[name]


@pytest.mark.parametrize(
    ("family", "base"), [("decomposition_*", "_decomposition"), ("noisy_gradient*", "_noisy_gradient")]
)
def test_suite_families_include_their_base(family: str, base: str) -> None:
    members = [p for p in SUITES if p.match(f"{family}.yaml")]
    assert len(members) >= 3
    for path in members:
        assert yaml.safe_load(path.read_text())["include"] == f"{base}.yaml", path


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


# ---------------------------------------------------------------- strict input: keys given twice, numbers not finite


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("name: a\nname: b\n", "name", (1, 2)),
        ("scenario:\n  steps: 3\n  optimizer: {lr: 0.1, lr: 0.2}\n", "scenario.optimizer.lr", (3, 3)),
        ("profiles:\n  quick:\n    seeds:\n      init: 2\n      init: 3\n", "profiles.quick.seeds.init", (4, 5)),
        ("sweep:\n  values:\n    - {a: 1, a: 2}\n", "sweep.values.0.a", (3, 3)),
    ],
)
def test_key_given_twice_is_refused_with_its_path_and_lines(
    text: str, key: str, lines: tuple[int, int], tmp_path: Path
) -> None:
    path = _write(tmp_path / "twice.yaml", text)
    with pytest.raises(SuiteError) as raised:
        load_claim(path)
    assert (raised.value.file, raised.value.key) == (str(path), key)
    assert raised.value.message == f"key given twice (lines {lines[0]} and {lines[1]}); remove one of the two"


def test_yaml_merge_keys_may_still_override(write_suite) -> None:
    """`<<: *anchor` then a key of the anchor is an override YAML defines, not a key given twice."""
    path = write_suite("anchors", {"profiles": None})
    with path.open("a") as f:
        f.write("profiles:\n  quick: &quick\n    scenario: {steps: 3}\n    seeds: {init: 3}\n")
        f.write("  paper:\n    <<: *quick\n    scenario: {steps: 5}\n")
    paper = load_claim(path, "paper").claim
    assert (paper.scenario.steps, paper.seeds.init) == (5, 3)


@pytest.mark.parametrize(
    ("changes", "key", "shown"),
    [
        ({"scenario": {"optimizer": {"lr": float("nan")}}}, "scenario.optimizer.lr", ".nan"),
        ({"scenario": {"steps": float("inf")}}, "scenario.steps", ".inf"),
        (
            {"scenario": {"dataset": {"synthetic_shape": [1, 8, float("-inf")]}}},
            "scenario.dataset.synthetic_shape.2",
            "-.inf",
        ),
        ({"sweep": {"values": [0.01, float("inf")]}}, "sweep.values.1", ".inf"),
        ({"seeds": {"base": float("nan")}}, "seeds.base", ".nan"),
        ({"assertion": {"alpha": float("nan")}}, "assertion.alpha", ".nan"),
        (
            {"profiles": {"quick": {"scenario": {"label_noise": float("nan")}}}},
            "profiles.quick.scenario.label_noise",
            ".nan",
        ),
    ],
)
def test_number_not_finite_is_refused_at_load(changes: dict[str, Any], key: str, shown: str, write_suite) -> None:
    path = write_suite("notfinite", changes)
    assert ".nan" in path.read_text() or ".inf" in path.read_text()  # as a user writes it
    with pytest.raises(SuiteError) as raised:
        load_claim(path)
    assert (raised.value.file, raised.value.key) == (str(path), key)
    assert raised.value.message == f"must be a finite number, got {shown}; replace it with a finite value"


def test_number_not_finite_is_refused_where_the_schema_has_no_bound(write_suite) -> None:
    """An assertion parameter with only a lower bound still refuses .inf (assertions forbid inf and nan)."""
    path = write_suite(
        "unbounded", {"assertion": {"test": "invariance", "direction": None, "alpha": None, "min_effect": None}}
    )
    assert load_claim(path, "quick", ["assertion.max_relative_spread=10"]).claim.assertion.max_relative_spread == 10
    for value, shown in ((".inf", r"\.inf"), ("inf", "'inf'")):
        with pytest.raises(
            SuiteError, match=rf"--set assertion.max_relative_spread: must be a finite number, got {shown}"
        ):
            load_claim(path, "quick", [f"assertion.max_relative_spread={value}"])


# ---------------------------------------------------------------- include


@pytest.fixture
def claim_data(write_suite) -> dict[str, Any]:
    """The tiny suite of conftest as a mapping, to split between a base file and the files including it."""
    return yaml.safe_load(write_suite("tiny").read_text())


def _dump(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_include_is_merged_under_the_files_own_keys(claim_data: dict[str, Any], tmp_path: Path) -> None:
    base = {k: v for k, v in claim_data.items() if k not in ("name", "claim")}
    base["profiles"] = {"quick": {"scenario": {"steps": 3}}, "paper": {"seeds": {"init": 3}}}
    _dump(tmp_path / "suites" / "_base" / "common.yaml", base)
    path = _write(
        tmp_path / "suites" / "child.yaml",
        """
        include: _base/common.yaml
        name: child
        claim: The base claim with a larger learning rate.
        scenario:
          optimizer: {lr: 0.2}
          model: {hidden: [4, 4]}
        profiles:
          quick:
            scenario: {record_every: 3}
        """,
    )
    claim = load_claim(path).claim
    assert (claim.name, claim.claim) == ("child", "The base claim with a larger learning rate.")
    assert claim.scenario.optimizer.lr == 0.2  # the file's own key wins
    assert claim.scenario.optimizer.batch_size == 8  # a sibling from the base survives
    assert claim.scenario.model.hidden == [4, 4]  # a list is replaced, not merged
    assert claim.scenario.model.init == "normal"
    assert claim.sweep.axis == "scenario.model.init_std"
    quick = load_claim(path, "quick")
    assert quick.profiles == ("quick", "paper")  # profiles merge like any other mapping
    assert (quick.claim.scenario.steps, quick.claim.scenario.record_every) == (3, 3)
    assert load_claim(path, "paper").claim.seeds.init == 3


def test_includes_nest_and_a_later_include_wins(claim_data: dict[str, Any], tmp_path: Path) -> None:
    _dump(tmp_path / "_base" / "common.yaml", {k: v for k, v in claim_data.items() if k != "scenario"})
    _dump(tmp_path / "_base" / "scenario.yaml", {"include": "common.yaml", "scenario": claim_data["scenario"]})
    _write(tmp_path / "_base" / "fast.yaml", "scenario: {optimizer: {lr: 0.5}, steps: 4}\n")
    _write(tmp_path / "_base" / "slow.yaml", "scenario: {optimizer: {lr: 0.01}}\n")
    path = _write(tmp_path / "nested.yaml", "include: [_base/scenario.yaml, _base/fast.yaml, _base/slow.yaml]\n")
    scenario = load_claim(path).claim.scenario
    assert scenario.optimizer.lr == 0.01  # slow.yaml comes last
    assert scenario.steps == 4  # fast.yaml still sets what slow.yaml leaves alone
    assert scenario.record_every == 1  # from scenario.yaml
    assert load_claim(path).claim.name == "tiny"  # from common.yaml, two includes down


def test_include_cycle_is_refused_with_the_chain(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.yaml", "include: b.yaml\nname: a\n")
    b = _write(tmp_path / "b.yaml", "include: [c.yaml, a.yaml]\n")
    _write(tmp_path / "c.yaml", "seeds: {init: 2}\n")
    with pytest.raises(SuiteError) as raised:
        load_claim(a)
    assert (raised.value.file, raised.value.key) == (str(b), "include")
    assert raised.value.message == "includes form a cycle: a.yaml -> b.yaml -> a.yaml; remove one of these includes"
    itself = _write(tmp_path / "itself.yaml", "include: ./itself.yaml\n")
    with pytest.raises(SuiteError, match=r"include: includes form a cycle: itself.yaml -> itself.yaml;"):
        load_claim(itself)


@pytest.mark.parametrize(
    ("include", "message"),
    [
        ("_base/missing.yaml", "'_base/missing.yaml' is not a file ("),
        ("[]", "must be a path relative to this file, or a list of such paths"),
        ("3", "must be a path relative to this file, or a list of such paths"),
        ("{a: b.yaml}", "must be a path relative to this file, or a list of such paths"),
    ],
)
def test_bad_include_names_the_including_file(include: str, message: str, tmp_path: Path) -> None:
    path = _write(tmp_path / "child.yaml", f"include: {include}\nname: child\n")
    with pytest.raises(SuiteError) as raised:
        load_claim(path)
    assert (raised.value.file, raised.value.key) == (str(path), "include")
    assert raised.value.message.startswith(message)


def test_strict_input_applies_to_included_files(claim_data: dict[str, Any], tmp_path: Path) -> None:
    base = _dump(tmp_path / "_base" / "common.yaml", claim_data)
    path = _write(tmp_path / "child.yaml", "include: _base/common.yaml\nname: child\n")
    assert load_claim(path).claim.name == "child"

    base.write_text(base.read_text() + "name: again\n")  # `name` given twice in the base
    with pytest.raises(SuiteError) as raised:
        load_claim(path)
    assert (raised.value.file, raised.value.key) == (str(base), "name")
    assert raised.value.message.startswith("key given twice (lines 2 and ")
    assert raised.value.message.endswith(f"; remove one of the two (included by {path})")

    _dump(base, {**claim_data, "seeds": {"init": float("inf")}})
    with pytest.raises(SuiteError) as raised:
        load_claim(path)
    assert (raised.value.file, raised.value.key) == (str(path), "seeds.init")
    assert raised.value.message == (
        "must be a finite number, got .inf; replace it with a finite value "
        "(set in _base/common.yaml, included by this file)"
    )

    _dump(base, {**claim_data, "seeds": {"init": 2, "bases": 3}})  # any schema error names the file to fix
    with pytest.raises(SuiteError, match=r"^.*child.yaml: seeds.bases: unknown key .*\(set in _base/common.yaml, "):
        load_claim(path)


def test_base_files_are_not_collected_as_claims(claim_data: dict[str, Any], tmp_path: Path, capsys) -> None:
    folder = tmp_path / "_checkout" / "suites"  # a `_` above the searched folder does not count
    base = {k: v for k, v in claim_data.items() if k != "name"}
    _dump(folder / "_base" / "common.yaml", base)
    _dump(folder / "deeper" / "_base" / "other.yaml", {"seeds": {"init": 2}})
    _dump(folder / "_partial.yaml", {"seeds": {"init": 2}})
    one = _write(folder / "one.yaml", "include: _base/common.yaml\nname: one\n")
    two = _write(folder / "deeper" / "two.yaml", "include: [../_base/common.yaml, _base/other.yaml]\nname: two\n")
    assert suite_files([folder]) == [two, one]
    assert is_base_file(folder / "_base" / "common.yaml", folder)
    assert is_base_file(folder / "_partial.yaml", folder)
    assert not is_base_file(one, folder)
    assert main(["validate", str(folder)]) == 0
    assert "2 suite files are valid" in capsys.readouterr().out


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
            "assertion": {"test": "invariance", "direction": None, "alpha": None, "min_effect": None},
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


def test_set_free_hash_is_computed_when_the_claim_is_loaded(write_suite) -> None:
    path = write_suite("hashes")
    plain = load_claim(path, "quick")
    changed = load_claim(path, "quick", ["scenario.steps=3"])
    assert plain.file_hash == plain.scenario_hash() and plain.file_claim == plain.claim
    assert changed.file_hash == plain.scenario_hash() != changed.scenario_hash()
    assert changed.file_claim == plain.claim and changed.claim.scenario.steps == 3


def test_scenario_hash_ignores_fields_left_at_their_defaults(write_suite) -> None:
    """A schema field added later with a default must not make every stored baseline incomparable."""
    path = write_suite("hash")
    reference = load_claim(path, "quick").scenario_hash()
    assert load_claim(path, "quick", ["scenario.label_noise=0.0"]).scenario_hash() == reference  # the default
    assert load_claim(path, "quick", ["scenario.label_noise=0.1"]).scenario_hash() != reference
    assert load_claim(path, "quick", ["scenario.sampling=without_replacement"]).scenario_hash() != reference


def test_scenario_hash_keeps_the_assertion_test_name(write_suite) -> None:
    """Two tests with all their parameters at the defaults still hash apart."""
    growth = write_suite(
        "a", {"assertion": {"test": "growth_trend", "direction": None, "alpha": None, "min_effect": None}}
    )
    invariance = write_suite(
        "b", {"assertion": {"test": "invariance", "direction": None, "alpha": None, "min_effect": None}}
    )
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
    optimizer = shown["scenario"]["optimizer"]
    assert {k: optimizer[k] for k in ("name", "lr", "batch_size", "weight_decay", "momentum")} == {
        "name": "sgd",
        "lr": 0.2,
        "batch_size": 8,
        "weight_decay": 0.0,
        "momentum": 0.0,
    }
    assert optimizer["schedule"]["name"] == "constant"
    assert shown["scenario"]["sampling"] == "with_replacement"  # defaults are shown too
    assert shown["assertion"]["test"] == "monotone_trend"


def test_list_prints_runs_and_model_steps(write_suite, wide_console, capsys) -> None:
    path = write_suite("listed", {"seeds": {"init": 2, "sampling": 2}, "scenario": {"steps": 5}})
    write_suite("other", {"sweep": {"values": [0.01, 0.1]}, "seeds": {"init": 4}})
    assert main(["list", str(path.parent), "--profile", "quick"]) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│" if "│" in line else "┃")]
        if len(cells) == 8:
            rows[cells[1]] = cells
    assert rows["claim"][2:3] + rows["claim"][6:] == ["profile", "runs", "model-steps"]
    assert rows["listed"][2:3] + rows["listed"][5:] == ["quick", "init_std x3", "12", "60"]
    assert rows["other"][5:] == ["init_std x2", "8", "16"]
