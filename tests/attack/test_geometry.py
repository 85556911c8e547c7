import pytest
import torch

from pandemonium.attack.stages.geometry import (
    apply_homography_to_points,
    box_to_quad,
    box_to_source_homography,
    focal_from_fov,
    homography_from_quads,
    homography_grid,
    invert_affine,
    luminance,
    quad_to_box,
    region_mean,
    rotation_shear_scale_matrix,
    tilt_quad,
    unit_quad,
    warp_composite,
)


def test_box_quad_round_trip():
    boxes = torch.tensor([[1.0, 2.0, 5.0, 9.0], [0.0, 0.0, 3.0, 3.0]])
    quads = box_to_quad(boxes)
    assert quads.shape == (2, 4, 2)
    assert quads[0].tolist() == [[1.0, 2.0], [5.0, 2.0], [5.0, 9.0], [1.0, 9.0]]
    assert torch.equal(quad_to_box(quads), boxes)


def test_box_homography_matches_dlt_solution():
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0], [10.0, 2.0, 26.0, 18.0]])
    closed = box_to_source_homography(boxes, (8, 8))
    solved = homography_from_quads(box_to_quad(boxes), unit_quad(8, 8, 2))
    assert torch.allclose(closed, solved, atol=1e-5)


def test_integer_placement_copies_patch_exactly():
    patch = torch.rand(2, 3, 8, 8)
    images = torch.zeros(2, 3, 32, 32)
    boxes = torch.tensor([[4.0, 4.0, 12.0, 12.0], [10.0, 2.0, 18.0, 10.0]])
    out, coverage = warp_composite(images, patch, None, box_to_source_homography(boxes, (8, 8)))
    assert torch.allclose(out[0, :, 4:12, 4:12], patch[0], atol=1e-6)
    assert torch.allclose(out[1, :, 2:10, 10:18], patch[1], atol=1e-6)
    assert coverage.sum().item() == pytest.approx(128.0)
    # nothing outside the box changed
    outside = out.clone()
    outside[0, :, 4:12, 4:12] = 0
    outside[1, :, 2:10, 10:18] = 0
    assert outside.abs().max() == 0


def test_scaled_placement_and_alpha():
    patch = torch.ones(1, 3, 4, 4)
    alpha = torch.zeros(4, 4)
    alpha[:, :2] = 1.0  # left half opaque
    images = torch.zeros(1, 3, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]])  # 2x upscaling
    out, coverage = warp_composite(images, patch, alpha, box_to_source_homography(boxes, (4, 4)))
    assert out[0, 0, 4, 1].item() == pytest.approx(1.0)
    assert out[0, 0, 4, 6].item() == pytest.approx(0.0)
    assert coverage[0, 0, :, 8:].abs().max() == 0
    gain_out, _ = warp_composite(images, patch, None, box_to_source_homography(boxes, (4, 4)), gain=torch.tensor([0.5]))
    assert gain_out[0, 0, 2, 2].item() == pytest.approx(0.5)


def test_grid_sends_points_behind_camera_outside():
    h = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]]])
    grid = homography_grid(h, (4, 4), (4, 4))
    assert (grid.abs() >= 2).all()


def test_rotation_about_centre_keeps_centre_fixed():
    centre = torch.tensor([[10.0, 5.0]])
    m = rotation_shear_scale_matrix(torch.tensor([90.0]), torch.tensor([2.0]), torch.tensor([0.0]), centre)
    pts = apply_homography_to_points(m, torch.tensor([[[10.0, 5.0], [11.0, 5.0]]]))
    assert torch.allclose(pts[0, 0], centre[0], atol=1e-5)
    assert torch.allclose(pts[0, 1], torch.tensor([10.0, 7.0]), atol=1e-5)


def test_invert_affine_matches_linalg_and_keeps_bottom_row():
    m = rotation_shear_scale_matrix(
        torch.tensor([30.0, -80.0]), torch.tensor([1.5, 0.7]), torch.tensor([10.0, 0.0]),
        torch.tensor([[3.0, 4.0], [0.0, 0.0]]), torch.tensor([[1.0, -2.0], [5.0, 5.0]]),
    )
    inv = invert_affine(m)
    assert torch.allclose(inv, torch.linalg.inv(m), atol=1e-5)
    assert inv[:, 2].tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]


def test_affine_and_projective_grids_agree_on_affine_input():
    m = rotation_shear_scale_matrix(torch.tensor([20.0]), torch.tensor([1.2]), None, torch.tensor([[8.0, 8.0]]))
    fast = homography_grid(m, (6, 7), (16, 16))
    nudged = m.clone()
    nudged[:, 2, 2] = 1.0 + 1e-6  # forces the general (dividing) path
    slow = homography_grid(nudged, (6, 7), (16, 16))
    assert torch.allclose(fast, slow, atol=1e-4)


def test_tilt_quad_zero_is_identity_and_tilt_foreshortens():
    quad = box_to_quad(torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    centre = torch.tensor([[10.0, 10.0]])
    same = tilt_quad(quad, torch.tensor([0.0]), torch.tensor([0.0]), 50.0, centre)
    assert torch.allclose(same, quad, atol=1e-5)
    tilted = tilt_quad(quad, torch.tensor([0.0]), torch.tensor([40.0]), focal_from_fov(20, 60.0), centre)
    # rotating about the x axis leaves x of the axis points alone and shrinks the vertical extent
    box = quad_to_box(tilted)[0]
    assert (box[3] - box[1]) < 20.0


def test_luminance_and_region_mean():
    img = torch.ones(2, 3, 4, 4) * torch.tensor([0.2, 0.8]).view(2, 1, 1, 1)
    lum = luminance(img)
    assert lum.shape == (2, 1, 4, 4)
    w = torch.zeros(2, 1, 4, 4)
    w[:, :, :2] = 1
    assert torch.allclose(region_mean(lum, w), torch.tensor([0.2, 0.8]), atol=1e-6)


def _grid_pixelwise(m, origin, out_hw):
    """window_grid's per-pixel formula (a*x + b*y) + c [/ w], written out in the (B, H, W, 2) layout."""
    height, width = out_hw
    xs = torch.arange(width, dtype=m.dtype).view(1, 1, -1, 1) + 0.5 + origin[:, 0].to(m.dtype).view(-1, 1, 1, 1)
    ys = torch.arange(height, dtype=m.dtype).view(1, -1, 1, 1) + 0.5 + origin[:, 1].to(m.dtype).view(-1, 1, 1, 1)
    rows = m[:, :2].view(-1, 1, 1, 2, 3)
    grid = rows[..., 0] * xs + rows[..., 1] * ys + rows[..., 2]
    den = m[:, 2, 0].view(-1, 1, 1, 1) * xs + m[:, 2, 1].view(-1, 1, 1, 1) * ys + m[:, 2, 2].view(-1, 1, 1, 1)
    return grid, den


@pytest.mark.parametrize("projective", [False, True])
def test_window_grid_equals_the_pixelwise_formula_and_samples_like_a_contiguous_grid(projective):
    from pandemonium.attack.stages.geometry import window_grid

    generator = torch.Generator().manual_seed(0)
    h = torch.eye(3).repeat(5, 1, 1)
    h[:, :2] += 0.2 * torch.randn(5, 2, 3, generator=generator)
    if projective:
        h[:, 2, :2] = 0.01 * torch.randn(5, 2, generator=generator)
    origin = torch.randint(0, 9, (5, 2), generator=generator)
    grid = window_grid(h, origin, (12, 10), (16, 16), None)
    to_unit = torch.tensor([[2.0 / 16, 0.0, -1.0], [0.0, 2.0 / 16, -1.0], [0.0, 0.0, 1.0]])  # grid_sample's [-1, 1]
    expected, den = _grid_pixelwise(to_unit @ h, origin, (12, 10))
    if projective:
        expected = torch.where(den > 1e-8, expected / den.clamp_min(1e-8), torch.full_like(den, 2.0))
    assert grid.shape == (5, 12, 10, 2)
    assert torch.equal(grid, expected)
    # the (B, 2, H, W) storage read through its (B, H, W, 2) view: grid_sample and its backward give the
    # same bits as with a contiguous grid
    source = torch.rand(5, 3, 16, 16, generator=generator, requires_grad=True)
    out = torch.nn.functional.grid_sample(source, grid, align_corners=False)
    again = torch.nn.functional.grid_sample(source, grid.contiguous(), align_corners=False)
    assert torch.equal(out, again)
    weights = torch.rand_like(out)
    (first,) = torch.autograd.grad((out * weights).sum(), source)
    (second,) = torch.autograd.grad((again * weights).sum(), source)
    assert first.abs().sum() > 0 and torch.equal(first, second)
