"""The toy arithmetic task: answers, the held-out split, knobs and the warm-up target."""

from __future__ import annotations

import pytest

from sfpo_lab.data.records import Problem
from sfpo_lab.data.templates import render_prompt
from sfpo_lab.data.toy import ToyArithmetic, evaluate, sft_target, split_score
from sfpo_lab.rewards.verify import grade


def test_default_task_enumerates_every_problem():
    task = ToyArithmetic()  # 2 operands in 0..29, "+"
    assert task.space_size == 900
    assert len(task.problems()) == 900
    assert {p.problem for p in task.problems()} == {
        f"{a}+{b}" for a in range(30) for b in range(30)
    }


def test_split_is_disjoint_complete_and_seed_independent():
    task = ToyArithmetic(heldout_frac=0.2, seed=0)
    train, held = task.train(), task.heldout()
    train_set, held_set = {p.problem for p in train}, {p.problem for p in held}
    assert not train_set & held_set
    assert train_set | held_set == {p.problem for p in task.problems()}
    assert 0.15 < len(held) / 900 < 0.25
    other = ToyArithmetic(heldout_frac=0.2, seed=7)
    assert [p.problem for p in other.heldout()] == [p.problem for p in held]
    assert all(p.id == p.problem and p.source == "toy" for p in held)


def test_held_out_membership_depends_only_on_the_problem_text():
    small = ToyArithmetic(max_operand=9)
    big = ToyArithmetic(max_operand=29)
    big_held = {p.problem for p in big.heldout()}
    assert all(p.problem in big_held for p in small.heldout())
    assert split_score("37+45") == split_score("37+45")
    assert 0.0 <= split_score("37+45") < 1.0


def test_heldout_limit_takes_a_fixed_prefix():
    task = ToyArithmetic()
    assert task.heldout(limit=5) == task.heldout()[:5]
    assert len(task.heldout(limit=10_000)) == len(task.heldout())


@pytest.mark.parametrize(
    ("operands", "ops", "value"),
    [
        ((37, 45), ("+",), 82),
        ((3, 7), ("-",), -4),
        ((6, 7), ("*",), 42),
        ((2, 3, 4), ("+", "*"), 14),
        ((2, 3, 4), ("*", "-"), 2),
        ((10, 2, 3, 4), ("-", "*", "+"), 8),
    ],
)
def test_evaluate_uses_operator_precedence(operands, ops, value):
    assert evaluate(operands, ops) == value


def test_answers_are_right_for_every_op_mix():
    task = ToyArithmetic(ops="+-*", num_operands=3, max_operand=5)
    assert task.space_size == 6**3 * 3**2
    for p in task.problems():
        assert int(p.answer) == eval(p.problem)  # noqa: S307 - digits and +-* only


def test_large_spaces_are_sampled_reproducibly():
    task = ToyArithmetic(ops="+*", num_operands=4, max_operand=99, size=2_000, seed=3)
    problems = task.problems()
    assert len(problems) == len({p.problem for p in problems}) == 2_000
    assert (
        problems
        == ToyArithmetic(ops="+*", num_operands=4, max_operand=99, size=2_000, seed=3).problems()
    )
    assert (
        problems
        != ToyArithmetic(ops="+*", num_operands=4, max_operand=99, size=2_000, seed=4).problems()
    )


def test_min_operand_and_size_knobs():
    task = ToyArithmetic(min_operand=10, max_operand=19, size=50)
    assert len(task.problems()) == 50
    assert all(all(10 <= int(x) <= 19 for x in p.problem.split("+")) for p in task.problems())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ops": "/"}, "ops"),
        ({"ops": ""}, "ops"),
        ({"num_operands": 1}, "num_operands"),
        ({"max_operand": -1}, "max_operand"),
        ({"min_operand": 5, "max_operand": 3}, "min_operand"),
        ({"heldout_frac": 0.0}, "heldout_frac"),
        ({"heldout_frac": 1.0}, "heldout_frac"),
        ({"size": 0}, "size"),
    ],
)
def test_bad_knobs_fail_fast(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ToyArithmetic(**kwargs)


def test_prompt_target_and_reward_path():
    problem = Problem(id="37+45", problem="37+45", answer="82", source="toy")
    assert render_prompt(problem.problem, "toy") == "37+45="
    assert sft_target(problem) == "\\boxed{82}"
    assert ToyArithmetic.sft_target(problem) == sft_target(problem)
    assert grade(sft_target(problem), problem.answer).correct
    negative = ToyArithmetic(ops="-", max_operand=9).heldout(limit=20)
    assert all(grade(sft_target(p), p.answer).correct for p in negative)
    assert not grade("\\boxed{83}", "82").correct


def test_terms_key_is_the_multiset_of_signed_terms():
    from sfpo_lab.data.toy import terms_key

    assert terms_key("3+5-2") == terms_key("5+3-2") == terms_key("5-2+3") == "+3 +5 -2"
    assert terms_key("3+5-2") != terms_key("3-5+2")
    assert terms_key("7-0+1") == terms_key("7+0+1")  # a zero term has no sign
    assert terms_key("2*3+4") == terms_key("4+3*2") != terms_key("2+3*4")


def test_terms_split_holds_out_every_reordering_of_the_confirmation_task():
    """data=toy_3op_heldout: no held-out problem shares its multiset of signed terms with a
    training problem, over the whole split (the committed text split fails this)."""
    from sfpo_lab.data.toy import terms_key

    def twins(split: str) -> tuple[int, int]:
        task = ToyArithmetic(ops="+-", num_operands=3, max_operand=9, split=split)
        train = {terms_key(p.problem) for p in task.train()}
        held = task.heldout()
        assert len(held) + len(task.train()) == 4000
        return len(held), sum(terms_key(p.problem) in train for p in held)

    assert twins("terms") == (728, 0)
    held, shared = twins("text")  # the committed runs' split: reachable, unchanged
    assert held == 792 and shared > 700


def test_the_default_split_is_the_committed_one():
    assert ToyArithmetic().split == "text"
    with pytest.raises(ValueError, match=r"data\.toy\.split='hash'"):
        ToyArithmetic(split="hash")


def test_the_configured_split_reaches_the_training_and_held_out_sets():
    """`data=toy_3op_heldout` must give the runner's train/held-out sets the terms split (the
    warm-up's task builder once dropped data.toy.split: the confirmation would have trained and
    validated on the text split); the base key changes with it, the text default keeps its key."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from sfpo_lab.config import register_schema, to_run_config
    from sfpo_lab.data.toy import terms_key
    from sfpo_lab.model.warmup import base_key, toy_task

    register_schema()
    conf = Path(__file__).resolve().parents[2] / "conf"
    runs = {}
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        for data in ("toy_3op", "toy_3op_heldout"):
            over = [f"data={data}", "paths.output_dir=/tmp/x"]
            runs[data] = to_run_config(compose("train", overrides=over))
    task = toy_task(runs["toy_3op_heldout"])
    train = {terms_key(p.problem) for p in task.train()}
    assert len(task.heldout()) == 728 and not any(
        terms_key(p.problem) in train for p in task.heldout()
    )
    assert len(toy_task(runs["toy_3op"]).heldout()) == 792
    assert base_key(runs["toy_3op"]) != base_key(runs["toy_3op_heldout"])
