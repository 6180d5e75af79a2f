"""Class lists shipped with the package (see class_lists/SOURCES.md). Line order = label order."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

SUBSETS = (
    "imagenette",
    "imagewoof",
    "imageidc",
    "imagenet100",
    "imagenet_a",
    "imagenet_b",
    "imagenet_c",
    "imagenet_d",
    "imagenet_e",
)


def _read(name: str) -> list[str]:
    text = resources.files("ddcore.data").joinpath("class_lists").joinpath(name).read_text()
    return [line for line in text.splitlines() if line.strip()]


@lru_cache(maxsize=None)
def imagenet1k_table() -> tuple[tuple[str, str], ...]:
    """(wnid, short name) for the 1000 ImageNet classes in the standard (sorted wnid) order."""
    rows = [line.split("\t") for line in _read("imagenet1k.tsv")]
    return tuple((wnid, name.replace("_", " ")) for _, wnid, name in rows)


def imagenet1k_wnids() -> list[str]:
    return [wnid for wnid, _ in imagenet1k_table()]


@lru_cache(maxsize=None)
def imagenet1k_prompt_names() -> tuple[str, ...]:
    """The full WordNet lemma line per class, which MGD^3's SD script passes as the prompt."""
    return tuple(_read("sd_prompt_names_imagenet1k.txt"))


def subset_wnids(subset: str) -> list[str]:
    if subset == "imagenet1k":
        return imagenet1k_wnids()
    if subset not in SUBSETS:
        raise ValueError(f"unknown ImageNet subset {subset!r}; known: imagenet1k, {', '.join(SUBSETS)}")
    return _read(f"{subset}.txt")


def wnid_names(wnids: list[str]) -> tuple[list[str], list[str]]:
    """(short names, SD prompt names) for a list of wnids."""
    table = imagenet1k_table()
    position = {wnid: i for i, (wnid, _) in enumerate(table)}
    prompts = imagenet1k_prompt_names()
    return ([table[position[w]][1] for w in wnids], [prompts[position[w]] for w in wnids])
