"""The mutation list stays applicable (so `make mutation` cannot silently test nothing): every
mutation's text occurs exactly once in today's source, its catching tests exist, and the
applier refuses a mutation whose text is gone."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from tests.mutation.apply import REPO, MutationError, applied, make_scratch, mutated_text
from tests.mutation.mutations import MUTATIONS


@pytest.mark.parametrize("m", MUTATIONS, ids=lambda m: m.name)
def test_mutation_applies_once_and_names_existing_tests(m):
    source = (REPO / m.file).read_text()
    mutated = mutated_text(source, m)
    assert mutated != source
    for node in m.tests:
        path, _, name = node.partition("::")
        func = name.split("[")[0]
        assert re.search(rf"^def {func}\(", (REPO / path).read_text(), re.M), node


def test_names_are_unique():
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))


def test_a_mutation_whose_text_is_gone_is_an_error_not_a_skip(tmp_path):
    gone = replace(MUTATIONS[0], old="text that is in no file\n")
    with pytest.raises(MutationError, match="mutation no longer applies"):
        mutated_text((REPO / gone.file).read_text(), gone)
    twice = replace(MUTATIONS[0], old="\n")
    with pytest.raises(MutationError, match="found .* times"):
        mutated_text((REPO / twice.file).read_text(), twice)


def test_applied_mutates_the_copy_only_and_restores_it(tmp_path):
    m = MUTATIONS[0]
    root = make_scratch(tmp_path / "repo")
    original = (root / m.file).read_text()
    with applied(root, m) as path:
        assert m.new in path.read_text()
        assert m.new not in (REPO / m.file).read_text()
    assert (root / m.file).read_text() == original


def test_the_runner_counts_a_stale_mutation_as_a_failure(tmp_path, capsys):
    from tests.mutation.run import check_mutation, report

    root = make_scratch(tmp_path / "repo")
    gone = replace(MUTATIONS[0], old="text that is in no file\n")
    result, detail, _ = check_mutation(root, gone, tmp_path / "report.json")
    assert result == "NO LONGER APPLIES" and "mutation no longer applies" in detail
    assert report([(gone, result, detail, 0.0)], []) == 1
    assert "0/1 mutations caught" in capsys.readouterr().out
