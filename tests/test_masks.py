"""MDI's four interaction masks against their definitions, written out element by element."""
from __future__ import annotations

import pytest
import torch

from m3ed.models.mdi import INTERACTIONS, interaction_masks


def brute_force(speakers: list[int], length: int, n: int, window: int) -> dict[str, list[list[bool]]]:
    """The definitions: real keys only; a padded query attends to itself only."""
    def allowed(kind: str, i: int, j: int) -> bool:
        if i >= length:                      # padded query
            return i == j
        if j >= length:                      # padded key
            return False
        same = speakers[i] == speakers[j]
        return {"global": True, "local": abs(i - j) < window, "intra": same,
                "inter": (not same) or i == j}[kind]
    return {kind: [[allowed(kind, i, j) for j in range(n)] for i in range(n)] for kind in INTERACTIONS}


@pytest.mark.parametrize("window", [1, 3, 5])
def test_masks_match_the_definitions(window: int) -> None:
    generator = torch.Generator().manual_seed(window)
    n = 9
    lengths = [9, 5, 1, 7]
    speakers = torch.randint(0, 2, (len(lengths), n), generator=generator)
    speakers[3, :7] = torch.tensor([0, 0, 0, 1, 2, 2, 0])          # a third speaker, long runs
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    speakers = speakers * mask                                     # padding carries speaker 0, as collate writes it
    masks = interaction_masks(speakers, mask, window)
    assert masks.shape == (len(lengths), 4, n, n) and masks.dtype == torch.bool
    for b, length in enumerate(lengths):
        expected = brute_force(speakers[b].tolist(), length, n, window)
        for k, kind in enumerate(INTERACTIONS):
            assert masks[b, k].tolist() == expected[kind], f"{kind} mask of dialogue {b} (length {length})"


def test_every_row_has_a_key_and_self_is_always_visible() -> None:
    speakers = torch.tensor([[0, 0, 0, 0, 0, 0]])                  # one speaker: inter-speaker = self only
    mask = torch.tensor([[True, True, True, True, False, False]])
    masks = interaction_masks(speakers, mask, window=3)
    assert masks.any(-1).all()
    assert torch.diagonal(masks, dim1=-2, dim2=-1).all()
    assert masks[0, INTERACTIONS.index("inter"), :4, :4].equal(torch.eye(4, dtype=torch.bool))
