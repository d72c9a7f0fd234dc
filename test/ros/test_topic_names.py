"""Class names -> mask topic names; camera names -> topic prefixes."""

import pytest

from ovseg_ros.ros.topic_names import camera_prefixes, mask_topic_names


def test_names_become_valid_unique_topic_tokens():
    names = ["spill on floor", "Spill-on-floor", "spill on floor!", "3d printer", "café", "日本", "a/b", "__x__"]
    assert mask_topic_names(names) == ["spill_on_floor", "spill_on_floor_2", "spill_on_floor_3", "c_3d_printer", "cafe", "class_5", "a_b", "x"]


def test_camera_names_give_topic_prefixes_and_bad_ones_are_refused():
    assert camera_prefixes([""]) == [""]
    assert camera_prefixes(["front", "robot/left", "_rear2"]) == ["front/", "robot/left/", "_rear2/"]
    for cameras, message in (([], "empty"), (["a", "b", "a"], "twice: 'a'"), (["/front"], "'/front'"), (["2cam"], "'2cam'"), (["a b"], "'a b'"), (["a/"], "'a/'")):
        with pytest.raises(ValueError, match=message):
            camera_prefixes(cameras)
