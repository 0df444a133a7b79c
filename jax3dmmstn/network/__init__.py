"""The network: localisers (image -> features), the Flax STN (features -> theta -> chain), VGG-Face import.

``localisers`` (``SmallCNN``, ``VGG16``), ``model`` (``ThetaHead``, ``STN3DMM``, ``build_stn``),
``vggface`` (MatConvNet VGG-Face weights -> Flax parameters).
"""

from jax3dmmstn.network.localisers import VGG16, SmallCNN, make_localiser
from jax3dmmstn.network.model import STN3DMM, ThetaHead, build_stn

__all__ = ["SmallCNN", "VGG16", "make_localiser", "ThetaHead", "STN3DMM", "build_stn"]
