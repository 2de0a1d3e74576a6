"""Model families: load weights, run inference. Nothing about Ray or HTTP lives here.

Each family is one file (``diffusion.py``, ``matting.py``, ...). ``registry.py`` maps public
model names to a family and a weight source; ``zoo.py`` builds tiny seeded versions of every
family for offline use and tests, loaded through the same code path as real weights.
"""

from common.torchvision_compat import install_torchvision_guard

install_torchvision_guard()
