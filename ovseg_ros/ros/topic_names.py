"""Valid, unique ROS topic names: for class names (the per-class mask topics) and camera names."""

from __future__ import annotations

import re
import unicodedata


def mask_topic_names(class_names: list[str]) -> list[str]:
    """One topic name token per class, in order: ``"spill on floor"`` -> ``"spill_on_floor"``.

    Lower-case ASCII letters, digits and single underscores, starting with a letter
    (accents are dropped, other characters become ``_``); a name with nothing usable left
    becomes ``class_<id>``. Names that collide get ``_2``, ``_3``, ... in class order.
    """
    tokens = []
    taken: set[str] = set()
    for index, name in enumerate(class_names):
        ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
        token = re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")
        if not token:
            token = f"class_{index}"
        elif not token[0].isalpha():
            token = f"c_{token}"
        unique, suffix = token, 2
        while unique in taken:
            unique, suffix = f"{token}_{suffix}", suffix + 1
        taken.add(unique)
        tokens.append(unique)
    return tokens


_CAMERA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def camera_prefixes(cameras: list[str]) -> list[str]:
    """The topic prefix of each camera name of the ``cameras`` parameter: ``"front"`` ->
    ``"front/"`` (``front/image``, ``front/segmentation/label``), ``""`` -> ``""`` (the node's
    own ``image``). Raises ValueError for no camera, a repeated name, or one that is not a
    relative ROS name (letters, digits and ``_`` in ``/``-separated parts, none starting with a digit)."""
    if not cameras:
        raise ValueError("cameras is empty: give at least one camera name ('' = the node's own image topic)")
    repeated = sorted({name for name in cameras if cameras.count(name) > 1})
    if repeated:
        raise ValueError(f"cameras names a camera twice: {', '.join(map(repr, repeated))}")
    bad = [name for name in cameras if name and not _CAMERA_NAME.fullmatch(name)]
    if bad:
        raise ValueError(f"not a relative topic name for a camera: {', '.join(map(repr, bad))} (e.g. front, robot/left)")
    return [f"{name}/" if name else "" for name in cameras]
