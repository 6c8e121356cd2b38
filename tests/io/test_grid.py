"""The reconstruction grid: layout, enlargement, colours and the shape check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlsa.io.grid import side_by_side, to_uint8


def test_each_image_sits_left_of_its_reconstruction():
    inputs = torch.full((3, 3, 16, 16), -1.0)  # black
    outputs = torch.ones(3, 3, 16, 16)  # white
    outputs[1, 0] = -1.0  # cyan
    grid = np.asarray(side_by_side(inputs, outputs, min_side=32, gap=2))
    assert grid.shape == (3 * 32 + 4 * 2, 2 * 32 + 3 * 2, 3)
    assert (grid[2:34, 2:34] == 0).all() and (grid[2:34, 36:68] == 255).all()  # input | reconstruction, 2x
    assert (grid[36:68, 36:68] == [0, 255, 255]).all()  # the second row's reconstruction
    assert (grid[:2] == 255).all() and (grid[:, 34:36] == 255).all()  # white gaps


def test_large_images_keep_their_size_and_values_round_to_uint8():
    x = torch.linspace(-1, 1, 3 * 8 * 8).view(1, 3, 8, 8)
    grid = np.asarray(side_by_side(x, x, min_side=4, gap=1))
    assert grid.shape == (8 + 2, 2 * 8 + 3, 3)
    assert np.array_equal(grid[1:9, 1:9], to_uint8(x[0])) and np.array_equal(grid[1:9, 10:18], to_uint8(x[0]))
    assert to_uint8(torch.tensor([-2.0, 0.0, 1.0]).view(3, 1, 1)).tolist() == [[[0, 128, 255]]]


def test_mismatched_shapes_are_refused_with_both_shapes():
    inputs = torch.zeros(3, 3, 8, 8)
    with pytest.raises(ValueError, match=r"one \(N, 3, S, S\) shape, got \(3, 3, 8, 8\) and \(2, 3, 8, 8\)"):
        side_by_side(inputs, inputs[:2])
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\)"):
        side_by_side(inputs[0], inputs[0])
