"""Student evaluation protocols (hard labels, soft labels), students, teachers, reference points.

``ddcore`` is imported first: it makes torchvision importable where its compiled ops cannot load,
before lightning/timm/torchvision are imported by any module here (worker processes included).
"""

import ddcore  # noqa: F401
