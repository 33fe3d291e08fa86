"""scripts/mutants.py: its faults still fit the code, and it tells a caught fault from a missed one."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT, load_script

mutants = load_script("mutants")


def test_every_fault_is_a_line_the_code_still_has():
    """A line changed since its fault was listed would be skipped as stale: the list is kept up to date."""
    for fault in mutants.MUTANTS:
        assert (ROOT / fault.path).read_text().count(fault.line) == 1, fault
        assert fault.mutated != fault.line and fault.tests, fault
        for test in fault.tests:
            file, _, name = test.partition("::")
            assert f"def {name}(" in (ROOT / file).read_text(), test


def test_a_fault_the_tests_catch_is_killed_and_one_they_cannot_see_survives(tmp_path: Path):
    """Only failing tests kill a fault: a test that is not there says nothing of it."""
    copy = tmp_path / "copy"
    mutants.copy_checkout(copy)
    caught = mutants.Mutant("diraccodec/container/drc.py", "if tag in sections:", "if False:",
                            ("tests/test_container.py::test_a_repeated_section_is_corrupt_and_an_empty_last_one_is_read",))
    unseen = caught._replace(line="if TAG_LATENTS not in sections:", mutated="if TAG_LATENTS not in sections:  # x")
    stale = caught._replace(line="no such line")
    not_run = caught._replace(tests=("tests/test_container.py::test_that_is_not_there",))  # pytest's status 4
    assert [mutants.outcome(fault, copy) for fault in (caught, unseen, stale, not_run)] == [
        "killed", "survived", "stale", "error"]
    assert (copy / caught.path).read_text() == (ROOT / caught.path).read_text()  # each fault taken back
