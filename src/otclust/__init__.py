"""otclust: deep clustering of images with optimal-transport pseudo-labels.

The flagship method is CLOT; DRC, OT k-means, SeLa, SwAV, DeepCluster and DeeperCluster share its
data, training engine, metrics and command line. Start with `otclust fit --help` or `OTClust`.
"""

__version__ = "0.1.0"

from otclust.errors import OTClustWarning  # noqa: E402
from otclust.estimator import OTClust  # noqa: E402

__all__ = ["OTClust", "OTClustWarning", "__version__"]
