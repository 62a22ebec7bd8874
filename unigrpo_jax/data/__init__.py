"""Prompt datasets (tensorflow-datasets builders over local files)."""
