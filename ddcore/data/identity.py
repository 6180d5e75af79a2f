"""What a dataset's images are, as one small dict: the resume fingerprint and the caches that
must change when the images change compare it.

The content digest of a split is its source's ``digest`` (``ddcore.data.base``: path, size and
modification time of each file, so an image rewritten in place changes it and no file is read;
the uint8 pixels of in-memory sets) plus its labels, memoised per source object.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence

from ddcore.data.base import ImageClassificationData, ImageSource
from ddcore.files import short_hash

_digests: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()


def source_digest(source: ImageSource) -> str:
    """The digest of every image of a source, with its labels (memoised per source)."""
    if source in _digests:
        return _digests[source]
    digest = hashlib.sha256(source.digest(range(len(source))).encode())
    digest.update(source.labels.contiguous().numpy().tobytes())
    _digests[source] = digest.hexdigest()[:16]
    return _digests[source]


def data_identity(data: ImageClassificationData, splits: Sequence[str] = ("train",)) -> dict:
    """Name, description (it names the root of folder datasets), classes (in label order),
    resolution, channels and the content digest of each split in ``splits``."""
    identity = {
        "name": data.name,
        "description": data.description,
        "num_classes": data.num_classes,
        "classes": short_hash(list(data.class_ids)),  # a hash: 1000 wnids are long
        "resolution": data.resolution,
        "channels": data.channels,
    }
    for split in splits:
        identity[f"{split}_digest"] = source_digest(data.train if split == "train" else data.test)
    return identity
