import math

import pytest
import torch
from tests.conftest import quadratic_objective, write_images

import vital
from vital.errors import VitalError
from vital.optimize import Settings, _warp, optimize, resolved
from vital.parametrizations import PARAMETRIZATIONS, FourierPixels, Pixels, PyramidPixels, create
from vital.zoo import Preprocessing

CPU = torch.device("cpu")


def fourier(seeds, resolution=16, **kwargs) -> FourierPixels:
    return FourierPixels(seeds, resolution, CPU, Preprocessing(input_size=resolution), **kwargs)


def test_fourier_starts_near_grey_with_a_smooth_texture():
    pixels = fourier([0], 32).pixels()
    assert (pixels - 0.5).abs().max() < 0.05
    assert pixels.std() > 0
    # 1/f scaling: neighbouring pixels are far more alike than white noise's would be
    neighbour = (pixels[..., 1:] - pixels[..., :-1]).pow(2).mean()
    assert neighbour < 0.5 * 2 * pixels.var()


def test_projection_clamps_the_image_to_valid_pixels():
    image = fourier([0, 1], 16)
    with torch.no_grad():
        image.coefficients.mul_(500)  # far outside [0, 1]
        wanted = image.pixels().clamp(0, 1)
    assert wanted.min() == 0 and wanted.max() == 1
    image.project()
    with torch.no_grad():
        after = image.pixels()
        normalised = image.images()
    assert torch.allclose(after, wanted, atol=1e-5)
    expected = (wanted - torch.tensor(Preprocessing().mean).view(1, 3, 1, 1)) / torch.tensor(
        Preprocessing().std
    ).view(1, 3, 1, 1)
    assert torch.allclose(normalised, expected, atol=1e-4)


def test_projection_leaves_a_valid_image_alone():
    image = fourier([3], 16)
    before = image.coefficients.detach().clone()
    image.project()
    assert torch.equal(image.coefficients.detach(), before)


def test_sigmoid_squashing_needs_no_projection():
    image = fourier([0], 16, squash="sigmoid")
    with torch.no_grad():
        image.coefficients.mul_(500)
    pixels = image.pixels()
    assert pixels.min() >= 0 and pixels.max() <= 1
    with pytest.raises(VitalError, match="squashing"):
        fourier([0], 16, squash="tanh")


def test_seeds_reproduce_and_a_batch_is_its_images_alone():
    batch = fourier([4, 9], 16).pixels()
    assert torch.equal(batch, fourier([4, 9], 16).pixels())
    assert torch.equal(batch[1:], fourier([9], 16).pixels())
    assert torch.equal(batch[:1], fourier([4], 16).pixels())
    assert not torch.equal(batch[0], batch[1])


def test_the_registry_builds_what_settings_name():
    assert {"pixels", "fourier"} <= set(PARAMETRIZATIONS)
    preprocessing = Preprocessing(input_size=16)
    pixels = create("pixels", [0], 16, CPU, preprocessing, clamp=True)
    assert isinstance(pixels, Pixels)
    made = create("fourier", [0, 1], 16, CPU, preprocessing, clamp=True)
    assert isinstance(made, FourierPixels)
    assert made.images().shape == (2, 3, 16, 16)
    with pytest.raises(VitalError, match="unknown parametrization 'wavelets'.*pixels"):
        Settings(parametrization="wavelets").validate()


def test_the_loop_builds_the_named_parametrization_and_keeps_pixels_valid():
    preprocessing = Preprocessing(input_size=16)
    settings = resolved(Settings(steps=30, jitter=2, lr=1.0, parametrization="fourier"))
    run = optimize(quadratic_objective(100.0), 2, preprocessing, settings, CPU, False)
    pixels = preprocessing.denormalize(run.images)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert pixels.max() > 0.9  # it moved towards the target, up to the bound
    assert run.history[-1].mean() < run.history[0].mean()


def test_setting_one_is_still_the_pixels_the_authors_optimise():
    # Default settings must build exactly today's Pixels: same start, same steps, same result.
    preprocessing = Preprocessing(input_size=16)
    settings = resolved(Settings(steps=8, jitter=3))
    by_name = optimize(quadratic_objective(0.3), 2, preprocessing, settings, CPU, False)
    given = Pixels([0, 1], 16, CPU, preprocessing)
    explicit = optimize(
        quadratic_objective(0.3), 2, preprocessing, settings, CPU, False, parametrization=given
    )
    assert torch.equal(by_name.images, explicit.images)
    assert Settings.setting(1) == Settings()
    assert Settings().parametrization == "pixels" and Settings().zoom == (1.0, 1.0)
    assert Settings().rotate == 0.0


def test_fast_preset_is_accepted_and_validated():
    fast = Settings.setting("fast")
    assert fast.parametrization == "fourier" and fast.steps == 300
    assert fast.coarse_start == 0.3 and fast.stages() == [(90, 2), (210, 1)]
    assert fast.coarse_view == "auto"  # fitted to each model by the driver
    assert fast.lr < Settings().lr
    fast.validate()
    assert Settings.setting("fast", steps=100).steps == 100
    assert Settings.setting("1") == Settings.setting(1)
    with pytest.raises(VitalError, match="choose 0, 1 or 2.*fast"):
        Settings.setting("slow")


@pytest.mark.parametrize("bad", [dict(zoom=(0.0, 1.0)), dict(zoom=(1.2, 1.1)), dict(rotate=-5)])
def test_bad_transforms_are_refused(bad):
    with pytest.raises(VitalError):
        Settings(**bad).validate()


def generators(count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(count)]


def test_warp_without_zoom_or_rotation_is_the_identity():
    x = torch.randn(2, 3, 8, 8)
    assert _warp(x, generators(2), (1.0, 1.0), 0.0) is x


def test_zoom_magnifies_the_centre():
    # A horizontal ramp zoomed 2x has twice the slope in the interior.
    ramp = torch.arange(16.0).view(1, 1, 1, 16).expand(1, 3, 16, 16).contiguous()
    zoomed = _warp(ramp, generators(1), (2.0, 2.0), 0.0)
    slope = zoomed[0, 0, 8, 5:11].diff()
    assert torch.allclose(slope, torch.full_like(slope, 0.5), atol=1e-4)
    assert zoomed[0, 0, 8, 7:9].mean() == pytest.approx(7.5, abs=1e-4)


def test_rotation_moves_an_off_centre_spot_but_not_a_centred_disc():
    side = 33
    ys, xs = torch.meshgrid(torch.arange(side) - 16.0, torch.arange(side) - 16.0, indexing="ij")
    disc = torch.exp(-(xs**2 + ys**2) / 40).expand(1, 3, side, side).contiguous()
    spot = torch.exp(-((xs - 10) ** 2 + ys**2) / 4).expand(1, 3, side, side).contiguous()
    rotated_disc = _warp(disc, generators(1), (1.0, 1.0), 30.0)
    rotated_spot = _warp(spot, generators(1), (1.0, 1.0), 30.0)
    assert (rotated_disc - disc).abs().max() < 0.05
    angle_drawn = rotated_spot[0, 0].argmax() != spot[0, 0].argmax()
    assert angle_drawn  # the seeded draw is not a zero angle
    assert float(rotated_spot.sum()) == pytest.approx(float(spot.sum()), rel=0.05)


def test_transforms_keep_runs_seeded():
    preprocessing = Preprocessing(input_size=16)
    settings = Settings(steps=5, jitter=2, zoom=(1.0, 1.3), rotate=10)
    first = optimize(quadratic_objective(0.2), 2, preprocessing, settings, CPU, False)
    second = optimize(quadratic_objective(0.2), 2, preprocessing, settings, CPU, False)
    assert torch.equal(first.images, second.images)


def test_a_fast_batch_gives_each_class_what_it_gets_alone(tiny_cnn, tmp_path):
    for index in (1, 2):
        write_images(tmp_path / "tree" / str(index), 2, seed=index)
    tiny_cnn.module.double()
    settings = Settings.setting("fast", steps=6, jitter=3, zoom=(1.0, 1.2), rotate=5)

    def run(targets, seed, **overrides):
        return vital.visualize(
            tiny_cnn,
            targets,
            tmp_path / "tree",
            settings=Settings.setting("fast", **{**settings.__dict__, "seed": seed, **overrides}),
            progress=False,
            reference_count=4,
        )

    # Without the coarse start: equal to float64 rounding. With fast's coarse start the
    # float32 FFTs of a batch and of one image round differently at half resolution (2e-7
    # after a step), which the chaotic loop grows; a leak between images would move pixels
    # by O(0.1).
    for overrides, tolerance in (({"coarse_start": 0.0}, 1e-9), ({}, 1e-3)):
        together = run([1, 2], 10, **overrides)
        for offset, target in enumerate([1, 2]):
            alone = run([target], 10 + offset, **overrides)[0]
            difference = (alone.pixels - together[offset].pixels).abs().max()
            assert difference <= tolerance
    assert together[0].record.settings["parametrization"] == "fourier"
    assert not math.isclose(
        float(together[0].pixels.std()), float(together[1].pixels.std()), rel_tol=1e-6
    )


COLORS = torch.tensor([[0.8, 0.3, 0.1], [0.2, 0.4, 0.9]])


@pytest.mark.parametrize("squash", ["clamp", "sigmoid"])
def test_a_color_start_moves_only_the_constant_term(squash):
    grey = fourier([0, 1], 32, squash=squash).pixels()
    colored = fourier([0, 1], 32, squash=squash, colors=COLORS).pixels()
    assert torch.allclose(colored.mean(dim=(2, 3)), COLORS, atol=2e-3)
    assert (grey.mean(dim=(2, 3)) - 0.5).abs().max() < 0.01
    # the seed's faint texture is kept (the sigmoid rescales it), and nothing else comes with
    # the colour: no layout
    texture = (colored - colored.mean(dim=(2, 3), keepdim=True)).flatten(2)
    seeded = (grey - grey.mean(dim=(2, 3), keepdim=True)).flatten(2)
    assert torch.nn.functional.cosine_similarity(texture, seeded, dim=-1).min() > 0.99


def test_pixels_start_as_the_same_noise_around_the_color():
    preprocessing = Preprocessing(input_size=16)
    noise = Pixels([0, 1], 16, CPU, preprocessing).x
    colored = Pixels([0, 1], 16, CPU, preprocessing, colors=COLORS).x
    shift = colored - noise
    assert shift.flatten(2).std(dim=-1).max() < 1e-6
    expected = preprocessing.normalize(COLORS[:, :, None, None])
    assert torch.allclose(shift[:, :, :1, :1], expected, atol=1e-6)


def test_fast_starts_at_the_references_colour_and_the_authors_settings_do_not(tiny_cnn, tmp_path):
    from PIL import Image

    for index, color in ((1, (230, 40, 20)), (2, (20, 60, 220))):
        folder = tmp_path / "tree" / str(index)
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (40 + 4 * i, 40), color).save(folder / f"{i}.png")
    assert Settings.setting("fast").color_start
    assert not any(Settings.setting(n).color_start for n in (0, 1, 2))

    def first_pictures(setting, **overrides):
        settings = Settings.setting(setting, steps=1, lr=1e-6, jitter=0, **overrides)
        results = vital.visualize(
            tiny_cnn, [1, 2], tmp_path / "tree", settings=settings, progress=False,
            reference_count=2,
        )  # fmt: skip
        assert results[0].record.settings["color_start"] is settings.color_start
        return torch.stack([r.pixels for r in results]).mean(dim=(2, 3))

    red, blue = first_pictures("fast")
    assert red[0] > 0.85 and red[2] < 0.15 and blue[2] > 0.8 and blue[0] < 0.15
    assert first_pictures("fast", color_start=False).sub(0.5).abs().max() < 0.05


def pyramid(seeds, resolution=16, **kwargs) -> PyramidPixels:
    return PyramidPixels(seeds, resolution, CPU, Preprocessing(input_size=resolution), **kwargs)


def test_a_pyramid_starts_near_grey_or_at_its_colour_with_coarse_levels():
    image = pyramid([0, 1], 32)
    assert [tuple(level.shape[-2:]) for level in image.parameters()] == [
        (32, 32), (16, 16), (8, 8), (4, 4)
    ]  # fmt: skip
    pixels = image.pixels()
    assert (pixels - 0.5).abs().max() < 0.05 and pixels.std() > 0
    colored = pyramid([0, 1], 32, colors=COLORS).pixels()
    assert torch.allclose(colored.mean(dim=(2, 3)), COLORS, atol=2e-3)
    # only a constant came with the colour: the seed's texture is the grey start's
    assert torch.allclose(colored - colored.mean(dim=(2, 3), keepdim=True),
                          pixels - pixels.mean(dim=(2, 3), keepdim=True), atol=1e-5)  # fmt: skip


def test_a_pyramid_projects_to_the_clamped_image_and_is_seeded_per_image():
    image = pyramid([0, 1], 16)
    with torch.no_grad():
        for level in image.parameters():
            level.mul_(300)
        wanted = image.pixels().clamp(0, 1)
    assert wanted.min() == 0 and wanted.max() == 1
    image.project()
    with torch.no_grad():
        assert torch.allclose(image.pixels(), wanted, atol=1e-5)
    batch = pyramid([4, 9], 16).pixels()
    assert torch.equal(batch[1:], pyramid([9], 16).pixels())
    assert not torch.equal(batch[0], batch[1])


def test_a_coarse_pyramid_level_moves_a_region_in_one_step():
    """The point of the pyramid: a gradient on one pixel moves only that pixel's value in the
    finest level but a whole block through the coarse levels."""
    image = pyramid([0], 16)
    image.pixels()[0, 0, 5, 5].backward()
    finest, *_, coarsest = image.parameters()
    assert int((finest.grad != 0).sum()) == 3  # the pixel's three decorrelated colours
    assert (coarsest.grad != 0).any()


def test_the_loop_runs_a_pyramid():
    preprocessing = Preprocessing(input_size=16)
    settings = resolved(Settings(steps=30, jitter=2, lr=0.05, parametrization="pyramid"))
    made = create("pyramid", [0, 1], 16, CPU, preprocessing, clamp=True)
    assert isinstance(made, PyramidPixels)
    run = optimize(quadratic_objective(100.0), 2, preprocessing, settings, CPU, False)
    pixels = preprocessing.denormalize(run.images)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.max() > 0.9
    assert run.history[-1].mean() < run.history[0].mean()
