"""The knobs of `projection`, gathered in one frozen record: every stage reads the same settings,
and a stage that needs a variant (no margin, more candidates) makes one with `dataclasses.replace`."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    margin: float = 2.0  # DCT units the float result keeps inside each interval (room for 8-bit rounding)
    float_passes: int = 200  # most alternating projections per float solve (and L-BFGS iterations)
    relaxation: float = 1.5  # over-relaxation of the step towards the RGB cube
    widenings: int = 32  # most coefficients a tile outside the cube gives up, one at a time
    search_rounds: int = 3  # rounds of the lattice search (exact check, then moves per component)
    search_steps: int = 32  # most moves per block in a round (and steps of the pixel search)
    candidates: int = 8  # single-sample moves compared per step (4x more each later round, at most 64)
    search_inset: float = 1.0  # DCT units (at most) the lattice search aims inside each interval


CHECK_EVERY = 4  # passes or steps between convergence checks (each check is one host synchronisation)
_ESCALATE_SHARE = 0.1  # share of the blocks still failing above which no further round (nor retry) runs
_FEW_BLOCKS = 256  # ... unless they are this few


def worth_escalating(failing_blocks, total_blocks: int):
    """Whether `failing_blocks` of `total_blocks` are few enough for a costlier search: where most
    blocks fail (steps of 1 all over: quality 98-100) more moves buy little at a high price."""
    return failing_blocks <= max(_ESCALATE_SHARE * total_blocks, _FEW_BLOCKS)
