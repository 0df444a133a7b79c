"""The original's layers in MatConvNet's layouts (``vl_nn*``), forward and backward, and ``verify``.

``layers`` holds the layers (re-exported here: ``jax3dmmstn.matconvnet.vl_nnr2R``);
``verify`` compares them with a dump from MATLAB/Octave (the ``verify`` command).
"""

from jax3dmmstn.matconvnet.layers import *  # noqa: F401,F403
from jax3dmmstn.matconvnet.layers import __all__  # noqa: F401
