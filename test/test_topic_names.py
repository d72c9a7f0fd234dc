"""Class names -> mask topic names."""

from ovseg_ros.topic_names import mask_topic_names


def test_names_become_valid_unique_topic_tokens():
    names = ["spill on floor", "Spill-on-floor", "spill on floor!", "3d printer", "café", "日本", "a/b", "__x__"]
    assert mask_topic_names(names) == ["spill_on_floor", "spill_on_floor_2", "spill_on_floor_3", "c_3d_printer", "cafe", "class_5", "a_b", "x"]
