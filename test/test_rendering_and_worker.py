"""Palette, colour rendering and the latest-frame hand-off."""

import threading

import numpy as np

from ovseg_ros.rendering import UNLABELED_COLOR, class_color, colorize, overlay, palette
from ovseg_ros.worker import LatestFrameSlot


def test_class_colours_are_stable_and_distinct():
    assert class_color("person") == class_color(" Person ")
    colours = {class_color(name) for name in ("person", "forklift", "pallet", "floor", "wall", "spill on floor")}
    assert len(colours) == 6


def test_colorize_uses_the_palette_and_unlabeled_colour():
    table = palette(["a", "b"])
    labels = np.array([[0, 1], [255, 0]], np.uint8)
    image = colorize(labels, table, unlabeled_id=255)
    assert tuple(image[0, 0]) == class_color("a") and tuple(image[0, 1]) == class_color("b")
    assert tuple(image[1, 0]) == UNLABELED_COLOR
    assert overlay(np.full((2, 2, 3), 200, np.uint8), np.zeros((2, 2, 3), np.uint8), 0.25)[0, 0, 0] == 150


def test_slot_keeps_only_the_newest_frame_and_counts_drops():
    slot = LatestFrameSlot()
    for frame in range(5):
        slot.put(frame)
    assert slot.take(timeout=0) == 4
    assert (slot.received, slot.dropped) == (5, 4)
    assert slot.take(timeout=0.01) is None


def test_slot_wakes_a_waiting_worker():
    slot = LatestFrameSlot()
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=5)))
    worker.start()
    slot.put("frame")
    worker.join(2)
    assert got == ["frame"]
    slot.close()
    assert slot.take(timeout=5) is None
