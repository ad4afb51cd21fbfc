"""eP-ALM: frozen vision and language model joined by linear connectors and a soft prompt (:mod:`.model`), and the
official-checkpoint converter (:mod:`.convert`)."""

from __future__ import annotations

from zoo.models.epalm.convert import convert_official_state_dict
from zoo.models.epalm.model import EPALM, PromptModule

__all__ = ["EPALM", "PromptModule", "convert_official_state_dict"]
