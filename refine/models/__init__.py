"""`import refine.models` registers every model of the project with the HF Auto classes.

Usable as verl's `actor_rollout_ref.model.external_lib=refine.models`. It imports fla's models (fla registers them
on import; refine gives each family's config the attention-style head names verl reads and, when CUDA is absent,
switches fla's Triton ops to the pure-PyTorch CPU kernels, as the family table `refine.models.families` says) and
registers LaCT.
"""

from refine.models import fla_models  # noqa: F401
from refine.models import lact  # noqa: F401
