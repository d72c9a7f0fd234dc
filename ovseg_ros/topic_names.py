"""Valid, unique ROS topic names for class names (the per-class mask topics)."""

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
