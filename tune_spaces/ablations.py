"""Named ablation grids: Tab. 4 (components of VLSA) and Tab. 5 (SSFT objectives).

Defined in ``vlsa.tune.grids`` (where ``python -m vlsa.tune.ablate`` finds them); listed here with the
other spaces.
"""

from vlsa.tune.grids import tab4, tab5

__all__ = ["tab4", "tab5"]
