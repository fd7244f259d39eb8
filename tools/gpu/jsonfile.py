"""The JSON files the GPU check's stages write, read by its Python helpers: a stage that failed
or was cut off may have left none, or half of one."""
import json


def load(path):
    """The file's value, or None when it is missing or not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
