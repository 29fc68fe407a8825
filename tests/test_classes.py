"""Class lists and auxiliary texts (docs/method.md §3.1, §3.4): parsing and validation."""

import pytest

from napari_itaclip.engine.classes import (
    BUILTIN_CLASS_SETS,
    MAX_CLASSES,
    parse_aux_text,
    parse_class_list,
)


def test_variants_split_on_comma_space_only():
    cl = parse_class_list(["sky, wall,tree", "cat"], background=False)
    assert cl.variants == (("sky", "wall,tree"), ("cat",))
    assert cl.queries == ["sky", "wall,tree", "cat"]
    assert cl.query_class == [0, 0, 1]
    assert cl.class_names == ["sky", "cat"]


def test_text_block_file_and_inline_forms(tmp_path):
    block = "background, sky\ncat\n\ndog\n"
    path = tmp_path / "classes.txt"
    path.write_text(block)
    for source in (block, path, str(path)):
        cl = parse_class_list(source, background=True)
        assert cl.variants == (("background", "sky"), ("cat",), ("dog",))
        assert cl.background
    assert parse_class_list("a, b; c", False).variants == (("a", "b"), ("c",))


@pytest.mark.parametrize(
    ("name", "n_classes", "n_queries"),
    [
        ("voc21", 21, 80),
        ("context60", 60, 75),
        ("coco_object", 81, 119),
        ("coco_stuff", 171, 183),
        ("cityscapes", 19, 26),
    ],
)
def test_builtin_class_sets(name, n_classes, n_queries):
    assert name in BUILTIN_CLASS_SETS
    cl = parse_class_list(name, background=True)
    assert len(cl) == n_classes and len(cl.queries) == n_queries


@pytest.mark.parametrize(
    ("classes", "background", "message"),
    [
        ([], False, "empty"),
        ("\n  \n", True, "empty"),
        (["cat", "Cat"], False, "duplicate class name 'Cat' on line 2"),
        (["cat, dog", "dog"], False, "duplicate"),
        (["sky, sky", "dog"], True, "duplicate"),
        (["sky", "dog", "DOG "], True, "duplicate class name 'DOG' on line 3"),
        (["cat, , dog"], False, "empty name"),
        (["only background"], True, "at least one more class"),
        # Classes typed with commas on one line are the names of one class: say so.
        ("cell, nucleus, background", True, "separate classes with '; '"),
        ("person, bicycle, road", False, "separate classes with '; '"),
    ],
)
def test_bad_class_lists(classes, background, message):
    with pytest.raises(ValueError, match=message):
        parse_class_list(classes, background=background)


def test_a_background_word_may_also_be_a_class():
    # The authors' COCO-Object list has "bed" both on the background line and as a class.
    cl = parse_class_list(["sky, bed", "bed", "cat"], background=True)
    assert cl.queries == ["sky", "bed", "bed", "cat"]
    assert parse_aux_text("bed >=furniture\ncat >=pet", cl) == ["furniture", "pet"]
    with pytest.raises(ValueError, match="duplicate"):
        parse_class_list(["sky, bed", "bed"], background=False)


def test_too_many_classes_and_wrong_types(tmp_path):
    with pytest.raises(ValueError, match="too many classes"):
        parse_class_list([f"c{i}" for i in range(MAX_CLASSES + 1)], background=False)
    with pytest.raises(TypeError, match="class 1 must be a string"):
        parse_class_list(["cat", 3], background=False)
    with pytest.raises(TypeError):
        parse_class_list(42, background=False)
    with pytest.raises(ValueError, match="not found"):
        parse_class_list(tmp_path / "missing.txt", background=False)


CLASSES = ["background, sky", "cat, kitten", "dog"]


def test_aux_text_matched_by_name_any_order_and_variant():
    cl = parse_class_list(CLASSES, background=True)
    texts = parse_aux_text("dog >=a barking pet\nkitten >= a young cat\n", cl)
    assert texts == ["a young cat", "a barking pet"]
    assert parse_aux_text({"cat": "feline", "dog": "canine"}, cl) == ["feline", "canine"]


def test_aux_text_from_file(tmp_path):
    path = tmp_path / "defs.txt"
    path.write_text("cat >=feline\ndog >=canine\n")
    cl = parse_class_list(CLASSES, background=True)
    assert parse_aux_text(path, cl) == ["feline", "canine"]
    assert parse_aux_text(str(path), cl) == ["feline", "canine"]


def test_without_background_every_class_needs_a_line():
    cl = parse_class_list(["cat", "dog"], background=False)
    assert parse_aux_text("cat >=x\ndog >=y", cl) == ["x", "y"]
    with pytest.raises(ValueError, match="no line for 1 class"):
        parse_aux_text("cat >=x", cl)


@pytest.mark.parametrize(
    ("aux", "message"),
    [
        ("cat >=feline", r"no line for 1 class\(es\): dog"),
        ("cat >=feline\ndog >=canine\nbird >=flies", "line 3: 'bird' matches no class"),
        ("cat >=feline\ndog canine", "line 2 .* not of the form"),
        ("cat >=feline\ndog >=", "line 2: the text after '>=' is empty"),
        ("sky >=blue\ncat >=feline\ndog >=canine", "line 1: 'sky' is a background word"),
        ("cat >=feline\nkitten >=young\ndog >=canine", "line 2: a second line for class 'cat'"),
    ],
)
def test_bad_aux_texts_name_the_line(aux, message):
    cl = parse_class_list(CLASSES, background=True)
    with pytest.raises(ValueError, match=message):
        parse_aux_text(aux, cl)


@pytest.mark.parametrize("classes", ["cells", ["cells"], "cells\n\n"])
def test_one_class_without_background_is_refused(classes):
    # Every pixel would get the one class; "cells" is most often a forgotten file name.
    with pytest.raises(ValueError, match="only one class, 'cells'") as error:
        parse_class_list(classes, background=False)
    assert ("class-list file" in str(error.value)) == isinstance(classes, str)


def test_one_class_with_background_line_is_fine():
    assert len(parse_class_list("background\ncells", background=True)) == 2
