"""The three-way merge rules of `taskscale update`, path by path (pure: no disk)."""

from __future__ import annotations

from taskscale.scaffold import merge
from taskscale.scaffold.releases import RenderedFile


def f(text: str | bytes, executable: bool = False) -> RenderedFile:
    return RenderedFile(text.encode() if isinstance(text, str) else text, executable)


def decide(
    old: RenderedFile | None, new: RenderedFile | None, ours: merge.Ours
) -> merge.Change | None:
    base = {} if old is None else {"p": old}
    theirs = {} if new is None else {"p": new}
    changes = merge.plan(base, theirs, lambda path: ours, "template 9.9")
    return changes[0] if changes else None


def test_unchanged_template_leaves_whatever_the_user_did() -> None:
    assert decide(f("a\n"), f("a\n"), f("edited\n")) is None
    assert decide(f("a\n"), f("a\n"), None) is None


def test_untouched_file_is_replaced_with_the_new_mode() -> None:
    change = decide(f("a\n"), f("b\n", executable=True), f("a\n"))
    assert change is not None and change.action == merge.UPDATED
    assert change.writes == (("p", f("b\n", executable=True)),)


def test_new_template_file_is_added_and_a_users_file_there_conflicts() -> None:
    change = decide(None, f("new\n"), None)
    assert change is not None and change.action == merge.ADDED
    change = decide(None, f("new\n"), f("mine\n"))
    assert change is not None and change.action == merge.CONFLICT
    text = change.writes[0][1].data.decode()
    assert "<<<<<<< yours\nmine\n=======\nnew\n>>>>>>> template 9.9\n" in text
    assert decide(None, f("same\n"), f("same\n")) is None


def test_dropped_file_is_removed_only_when_untouched() -> None:
    change = decide(f("old\n"), None, f("old\n"))
    assert change is not None and change.action == merge.REMOVED and change.delete
    change = decide(f("old\n"), None, f("changed\n"))
    assert change is not None and change.action == merge.KEPT_CHANGED
    assert not change.changes_project
    assert decide(f("old\n"), None, None) is None


def test_a_file_the_user_deleted_stays_deleted() -> None:
    change = decide(f("v1\n"), f("v2\n"), None)
    assert change is not None and change.action == merge.KEPT_DELETED
    assert not change.changes_project


def test_separate_edits_merge_and_overlapping_ones_conflict() -> None:
    base = "one\ntwo\nthree\nfour\nfive\n"
    ours = "ONE\ntwo\nthree\nfour\nfive\n"
    theirs = "one\ntwo\nthree\nfour\nFIVE\n"
    change = decide(f(base), f(theirs), f(ours))
    assert change is not None and change.action == merge.MERGED
    assert change.writes[0][1].data.decode() == "ONE\ntwo\nthree\nfour\nFIVE\n"

    change = decide(f(base), f("one\ntwo\n3\nfour\nfive\n"), f("one\ntwo\nTHREE\nfour\nfive\n"))
    assert change is not None and change.action == merge.CONFLICT
    text = change.writes[0][1].data.decode()
    assert text == (
        "one\ntwo\n<<<<<<< yours\nTHREE\n=======\n3\n>>>>>>> template 9.9\nfour\nfive\n"
    )


def test_same_edit_on_both_sides_is_no_conflict() -> None:
    assert decide(f("a\nb\n"), f("a\nB\n"), f("a\nB\n")) is None


def test_missing_final_newline_and_crlf_survive() -> None:
    merged, conflicted = merge.merge_text("a\r\nb\r\nc", "A\r\nb\r\nc", "a\r\nb\r\nC", "t")
    assert not conflicted
    assert merged == "A\r\nb\r\nC"


def test_binary_conflict_keeps_yours_and_writes_the_template_beside_it() -> None:
    change = decide(f(b"\x00v1"), f(b"\x00v2"), f(b"\x00mine"))
    assert change is not None and change.action == merge.CONFLICT
    assert change.writes == (("p.template", f(b"\x00v2")),)
    # Not UTF-8 is binary too; untouched binaries are simply replaced.
    change = decide(f(b"\xff1"), f(b"\xff2"), f(b"\xff1"))
    assert change is not None and change.action == merge.UPDATED


def test_something_in_the_way_is_a_conflict_that_writes_nothing() -> None:
    change = decide(f("a\n"), f("b\n"), merge.InTheWay())
    assert change is not None and change.action == merge.CONFLICT
    assert not change.changes_project


def test_env_keeps_secrets_and_edits_follows_untouched_settings_and_adds_keys() -> None:
    ours = "# mine\nPASSWORD=secret-1\nBROKER=redis\nPORT=1234\nMY_KEY=x\n"
    base = "PASSWORD=other\nBROKER=redis\nPORT=1\n"
    new = "PASSWORD=other\nBROKER=kafka\nPORT=2\nNEW_KEY=n\n"
    merged = merge.merge_env(ours, base, new, secret_keys=("PASSWORD",), note="added by test")
    assert merged == (
        "# mine\nPASSWORD=secret-1\nBROKER=kafka\nPORT=1234\nMY_KEY=x\n# added by test\nNEW_KEY=n\n"
    )
    assert merge.merge_env(ours, base, base, secret_keys=("PASSWORD",), note="x") == ours


def test_mask_secrets() -> None:
    text = "URL=postgres://u:hunter22@h/db\nKEY=hunter22\n"
    assert merge.mask_secrets(text, {"P": "hunter22"}) == "URL=postgres://u:****@h/db\nKEY=****\n"
