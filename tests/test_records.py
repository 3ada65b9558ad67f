from instructmining.records import Record, content_id, make_record, normalize_text


def test_content_id_ignores_spacing_and_unicode_form():
    a = content_id("Say hi", "", "Hello  there\n")
    b = content_id("  Say hi ", "", "Hello there")
    assert a == b
    assert content_id("Caf\u00e9", "", "x") == content_id("Cafe\u0301", "", "x")
    assert len(a) == 16


def test_content_id_separates_fields():
    # moving text between fields must change the id
    assert content_id("a b", "", "c") != content_id("a", "b", "c")
    assert content_id("a", "", "b") != content_id("a", "b", "")


def test_own_id_wins_and_fields_are_kept():
    rec = make_record("Do x", "", "Done", id="task-7", category="qa")
    assert rec.id == "task-7"
    assert rec.fields["category"] == "qa"
    assert Record("Do x", "", "Done").id == content_id("Do x", "", "Done")


def test_prompt_joins_input_only_when_present():
    assert make_record("Do x").prompt == "Do x"
    assert make_record("Do x", "data").prompt == "Do x\n\ndata"


def test_normalize_text():
    assert normalize_text(" a\t\nb  ") == "a b"
