import pytest

from lth_kernels.training.steps import Step, StepError, parse_step_list, parse_steps, split_step_string


@pytest.mark.parametrize("text,spe,expected", [
    ("160ep", 10, 1600), ("2000it", 10, 2000), ("2ep500it", 10, 520), ("0ep7it", 3, 7), ("1ep", 391, 391),
    (" 3ep 2it ", 5, 17), (42, 5, 42),
])
def test_parse(text, spe, expected):
    s = parse_steps(text, spe)
    assert s.iteration == expected
    assert s == Step(expected, spe)
    assert (s.epoch, s.it) == divmod(expected, spe)


def test_str_round_trip():
    s = parse_steps("2ep500it", 200)  # 900 = 4ep100it
    assert str(s) == "4ep100it"
    assert parse_steps(str(s), 200) == s


@pytest.mark.parametrize("bad", ["", "ep", "10", "5x", "1it2ep", "-1it", "1.5ep", "it"])
def test_bad_strings_name_the_flag(bad):
    with pytest.raises(StepError) as e:
        parse_steps(bad, 10, flag="--training.training_steps")
    msg = str(e.value)
    assert msg.startswith("--training.training_steps:") and "\n" not in msg and repr(bad) in msg


def test_split_and_list():
    assert split_step_string("3ep4it") == (3, 4)
    assert [s.iteration for s in parse_step_list("120ep, 80ep", 2)] == [160, 240]
    assert parse_step_list("", 7) == []
    with pytest.raises(StepError, match="--training.milestone_steps"):
        parse_step_list("80ep,x", 2, flag="--training.milestone_steps")
