"""program.md front matter: settings, overrides, errors that name the line."""

from __future__ import annotations

from pathlib import Path

import pytest

from population.program import ProgramError, load_program, parse_program

GOOD = """+++
budget_s = 30
population = 6
model = "openai/gpt-4o-mini"

[seeds]
root = 4
max = 6

[stop]
generations = 12
target_val_bpb = 0.95
max_cost_usd = 2.5
max_hours = 3

[constraints]
max_peak_mem_mb = 12000

[personas.architect]
model = "anthropic/claude-sonnet-4-5"
+++

# Program
Make it better.
"""


def test_front_matter_is_read_and_prose_kept():
    cfg = parse_program(GOOD)
    assert (cfg.budget_s, cfg.population, cfg.root_seeds, cfg.max_seeds) == (30, 6, 4, 6)
    assert (cfg.generations, cfg.target_val_bpb, cfg.max_cost_usd, cfg.max_hours) == (12, 0.95, 2.5, 3)
    assert cfg.max_peak_mem_mb == 12000
    assert cfg.prose.startswith("# Program")
    assert cfg.personas_config() == {"model": "openai/gpt-4o-mini",
                                     "personas": {"architect": {"model": "anthropic/claude-sonnet-4-5"}}}


def test_flags_override_the_front_matter():
    cfg = parse_program(GOOD).with_overrides(generations=2, budget_s=5.0, population=None, model="ollama/qwen")
    assert (cfg.generations, cfg.budget_s, cfg.population) == (2, 5.0, 6)
    assert cfg.model == "ollama/qwen"
    assert cfg.personas["architect"]["model"] == "ollama/qwen"
    with pytest.raises(ProgramError, match="population must be at least 1"):
        parse_program(GOOD).with_overrides(population=0)


def test_no_front_matter_means_defaults():
    cfg = parse_program("# just prose\n")
    assert cfg.population == 4 and cfg.prose == "# just prose\n"


@pytest.mark.parametrize("text, line, words", [
    ("+++\nbudget_s = 30\npopulation = = 3\n+++\n", 3, "invalid TOML"),
    ("+++\nbudget_s = \"fast\"\n+++\n", 2, "budget_s must be int or float"),
    ("+++\n[seeds]\nroot = 3\nfoo = 1\n+++\n", 4, "unknown key seeds.foo"),
    ("+++\npopulaton = 3\n+++\n", 2, "unknown key 'populaton'"),
    ("+++\n[seeds]\ninitial = 4\nmax = 2\n+++\n", 4, "seeds.max must be >= seeds.initial"),
    ("+++\nbudget_s = 1\n", 1, "never closed"),
    ("+++\n[personas.architect]\nmodel = 3\n+++\n", 3, "personas.architect.model must be a string"),
])
def test_malformed_front_matter_names_the_line(text, line, words):
    with pytest.raises(ProgramError) as err:
        parse_program(text, source="p.md")
    assert str(err.value).startswith(f"p.md:{line}:")
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_the_default_program_md_parses():
    cfg = load_program(Path(__file__).resolve().parent.parent / "program.md")
    assert cfg.generations >= 1 and cfg.root_seeds >= 2
    assert "val_bpb" in cfg.prose


def test_unreadable_file_is_a_program_error(tmp_path):
    with pytest.raises(ProgramError, match="cannot read"):
        load_program(tmp_path / "missing.md")
