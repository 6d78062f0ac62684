import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import quadratic_objective
from vital.errors import VitalError
from vital.optimize import Settings, learning_rate, optimize, resolved, transparency
from vital.parametrizations import create
from vital.zoo import Preprocessing


def test_schedule_values_at_the_documented_steps():
    total, peak = 2000, 1.0
    assert learning_rate(0, total, peak) == pytest.approx(0.01)
    assert learning_rate(99, total, peak) == pytest.approx(1.0)
    assert learning_rate(100, total, peak) == pytest.approx(1.0)
    last = 0.5 * (1 + math.cos(math.pi * 1899 / 1900))
    assert learning_rate(1999, total, peak) == pytest.approx(last)
    assert learning_rate(1999, total, peak) < 1e-5
    assert learning_rate(1050, total, 2.0) == pytest.approx(1.0)  # half way down the cosine


def test_clamping_keeps_the_image_in_pixel_range():
    preprocessing = Preprocessing(input_size=16)
    # The objective pulls far outside [0, 1] pixels; clamping must hold the bounds.
    run = optimize(
        quadratic_objective(100.0),
        2,
        preprocessing,
        resolved(Settings(steps=20, jitter=2)),
        "cpu",
        False,
    )
    pixels = preprocessing.denormalize(run.images)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert pixels.max() > 0.99  # it did reach the bound


def test_without_clamping_the_image_leaves_the_range():
    preprocessing = Preprocessing(input_size=16)
    settings = resolved(Settings(steps=20, jitter=0, clamp=False))
    run = optimize(quadratic_objective(100.0), 1, preprocessing, settings, "cpu", False)
    assert preprocessing.denormalize(run.images).max() > 1.5


def test_history_and_gradients_are_kept():
    preprocessing = Preprocessing(input_size=16)
    settings = resolved(Settings(steps=15, half_resolution_steps=5, jitter=4))
    run = optimize(quadratic_objective(0.5), 3, preprocessing, settings, "cpu", False)
    assert run.history.shape == (20, 3)
    assert run.history[-1].mean() < run.history[0].mean()
    assert run.gradient_magnitude.shape == (3, 3, 16, 16)
    assert run.seeds == [0, 1, 2]
    assert (run.gradient_magnitude > 0).any()


def test_half_resolution_stage_feeds_pooled_images():
    seen = []

    def objective(model_input, factor):
        seen.append((model_input.shape[-1], factor))
        return {"zero": model_input.sum(dim=(1, 2, 3)) * 0}

    settings = resolved(Settings(steps=2, half_resolution_steps=3))
    optimize(objective, 1, Preprocessing(input_size=16), settings, "cpu", False)
    assert seen == [(8, 2)] * 3 + [(16, 1)] * 2


def test_a_coarse_start_runs_a_share_of_the_steps_at_half_resolution():
    """``coarse_start`` splits ``steps`` (the total stays ``steps``): 0.3 of 10 steps is 3
    half-resolution steps, then 7, the stages ``half_resolution_steps=3, steps=7`` give."""
    seen = []

    def objective(model_input, factor):
        seen.append((model_input.shape[-1], factor))
        return {"zero": model_input.sum(dim=(1, 2, 3)) * 0}

    settings = Settings(steps=10, coarse_start=0.3)
    assert settings.stages() == Settings(steps=7, half_resolution_steps=3).stages()
    run = optimize(objective, 1, Preprocessing(input_size=16), resolved(settings), "cpu", False)
    assert seen == [(8, 2)] * 3 + [(16, 1)] * 7 and run.history.shape == (10, 1)
    assert Settings(steps=1, coarse_start=0.3).stages() == [(1, 1)]  # never an empty full stage


def test_a_blurred_coarse_start_shows_the_model_low_passed_images_at_full_size():
    seen = []

    def objective(model_input, factor):
        # what 2x2 pooling keeps of the view the model sees: all of it at the coarse stage
        kept = F.interpolate(F.avg_pool2d(model_input, 2), scale_factor=2, mode="bilinear")
        lost = float((model_input - kept).detach().abs().max())
        seen.append((model_input.shape[-1], factor, lost))
        return {"sum": model_input.sum(dim=(1, 2, 3))}

    settings = resolved(Settings(steps=4, coarse_start=0.5, coarse_view="blurred", jitter=0))
    optimize(objective, 1, Preprocessing(input_size=16), settings, "cpu", False)
    assert [(side, factor) for side, factor, _ in seen] == [(16, 2)] * 2 + [(16, 1)] * 2
    coarse, full = max(s[2] for s in seen[:2]), min(s[2] for s in seen[2:])
    assert coarse < 0.35 * full  # the pixel noise of the start is gone only from the coarse views


def test_settings_presets_follow_the_paper():
    assert Settings.setting(1).steps == 2000 and Settings.setting(1).betas == (0.5, 0.9)
    zero = Settings.setting(0)
    assert (zero.half_resolution_steps, zero.steps) == (2000, 1000)
    two = Settings.setting(2)
    assert (two.steps, two.betas, two.clamp) == (20000, (0.9, 0.999), False)
    assert all(Settings.setting(n).coarse_start == 0 for n in (0, 1, 2))  # the authors' stages
    with pytest.raises(VitalError, match="choose 0, 1 or 2"):
        Settings.setting(3)


@pytest.mark.parametrize(
    "bad",
    [
        dict(steps=0),
        dict(lr=0.0),
        dict(jitter=-1),
        dict(resolution=4),
        dict(views=0),
        dict(coarse_start=1.0),
        dict(coarse_start=-0.1),
        dict(coarse_view="half"),
    ],
)
def test_bad_settings_are_refused(bad):
    with pytest.raises(VitalError):
        Settings(**bad).validate()


@pytest.mark.parametrize("parametrization", ["pixels", "fourier"])
def test_several_views_average_the_views_gradients(parametrization):
    """With V views a step's gradient is the mean of V jittered views' gradients: a linear
    objective's gradient does not depend on the image, so one step of 2 views gives half of
    what 2 steps of 1 view accumulate (the same two jitter draws), and the objective is
    called once per view."""
    weight = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    calls = []

    def linear(model_input, factor):
        calls.append(model_input.shape)
        return {"linear": (model_input * weight).flatten(1).sum(1)}

    def run(views, steps):
        settings = Settings(steps=steps, jitter=5, warmup=1, views=views, lr=1e-3)
        settings = resolved(replace(settings, parametrization=parametrization))
        return optimize(linear, 2, Preprocessing(input_size=16), settings, "cpu", False)

    one = run(1, 2)
    assert len(calls) == 2
    two = run(2, 1)
    assert len(calls) == 4
    assert two.history.shape == (1, 2)
    torch.testing.assert_close(two.gradient_magnitude, one.gradient_magnitude / 2)


@pytest.mark.parametrize("share, accumulated", [(0.0, 8), (0.75, 2), (0.5, 4)])
def test_the_transparency_accumulates_from_a_share_of_the_steps(share, accumulated):
    """A linear objective's gradient is the same at every step (no jitter), so the map holds
    that gradient once per step it accumulates: all 8, or those from the share on."""
    weight = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5)) - 0.5

    def linear(model_input, factor):
        return {"linear": (model_input * weight).flatten(1).sum(1)}

    settings = resolved(Settings(steps=8, jitter=0, warmup=1, lr=1e-3))
    run = optimize(
        linear, 1, Preprocessing(input_size=16), settings, "cpu", False, transparency_from=share
    )
    torch.testing.assert_close(run.gradient_magnitude, accumulated * weight.abs())


class _StandInObjective:
    """A linear term the picture follows and, while asked, a stand-in for it in the map only:
    the two depend on different pixels, so what moved and what was mapped can be told apart."""

    def __init__(self):
        generator = torch.Generator().manual_seed(6)
        self.picture_weight = torch.rand(1, 3, 16, 16, generator=generator) + 0.5
        self.map_weight = torch.rand(1, 3, 16, 16, generator=generator) + 0.5
        self.picture_weight[..., 8:] = 0  # the picture's loss sees the left half only
        self.map_weight[..., :8] = 0  # the map's loss the right half only
        self.map_terms, self.asked = False, []

    def __call__(self, model_input, factor):
        self.asked.append(self.map_terms)
        terms = {"linear": (model_input * self.picture_weight).flatten(1).sum(1)}
        if self.map_terms:
            terms["map:linear"] = (model_input * self.map_weight).flatten(1).sum(1)
        return terms


@pytest.mark.parametrize("views", [1, 2])
def test_an_objectives_map_terms_make_the_map_and_not_the_picture(views):
    objective = _StandInObjective()
    settings = resolved(Settings(steps=8, jitter=0, warmup=1, lr=1e-2, views=views))
    preprocessing = Preprocessing(input_size=16)
    pixels = create("pixels", [0], 16, "cpu", preprocessing, clamp=False)
    start = pixels.images().detach().clone()
    run = optimize(
        objective, 1, preprocessing, settings, "cpu", False,
        parametrization=pixels, transparency_from=0.75,
    )  # fmt: skip
    # asked for the stand-ins only while the map accumulates: the last 2 steps of 8
    assert objective.asked == [False] * 6 * views + [True] * 2 * views
    # the map holds the stand-in's gradient (linear: the same each step) and nothing else …
    torch.testing.assert_close(run.gradient_magnitude, 2 * objective.map_weight.abs())
    # … which never moved the picture: only the picture's own half changed
    moved = (run.images - start).abs()
    assert (moved[..., :8] > 0).all() and (moved[..., 8:] == 0).all()
    assert set(run.final_terms) == {"linear"}  # the record keeps the picture's terms
    assert objective.map_terms is False  # and the objective is left as it was found


def test_several_views_reach_the_parametrisation():
    """The views' summed gradient flows through the parametrisation (the Fourier coefficients
    are not the images): the loss falls as with one view."""
    settings = resolved(Settings(steps=20, jitter=2, views=3, parametrization="fourier", lr=0.1))
    preprocessing = Preprocessing(input_size=16)
    run = optimize(quadratic_objective(0.5), 2, preprocessing, settings, "cpu", False)
    assert run.history[-1].mean() < 0.5 * run.history[0].mean()


def test_transparency_clips_and_normalises():
    gradients = torch.zeros(1, 3, 10, 10)
    gradients[0, :, 0, 0] = 1000.0  # one outlier above the 98th percentile
    gradients[0, :, 5:, :] = 1.0
    alpha = transparency(gradients)
    assert alpha.shape == (1, 10, 10)
    assert alpha.max().item() == pytest.approx(1.0)
    assert alpha[0, 0, 0].item() == pytest.approx(1.0)  # clipped, not 1000x the rest
    assert alpha[0, 7, 3].item() == pytest.approx(1.0)
    assert alpha[0, 2, 3].item() == 0.0


@pytest.mark.parametrize("kind", ["class", "channel"])
def test_bfloat16_and_channels_last_keep_the_picture(kind, tmp_path):
    """The GPU options run on the CPU too: bfloat16 autocast (float32 sorts and losses) and the
    channels-last memory format give nearly the float32 picture, and the record says so."""
    import vital
    from conftest import tiny_cnn_model, write_images

    for index in (1, 2):
        write_images(tmp_path / str(index), 2, seed=index)
    model = tiny_cnn_model()
    targets = [1] if kind == "class" else [vital.Channel("stage3", 2)]
    common = {"steps": 8, "jitter": 2, "warmup": 2}

    def picture(**options):
        (result,) = vital.visualize(
            model,
            targets,
            tmp_path,
            setting=1,
            settings={**common, **options},
            progress=False,
            reference_count=2,
        )  # fmt: skip  (setting 1: the tolerances below were measured on its pixels)
        return result

    plain = picture()
    for options in ({"precision": "bfloat16"}, {"channels_last": True}):
        other = picture(**options)
        assert all(other.record.settings[k] == v for k, v in options.items())
        assert torch.isfinite(other.pixels).all()
        difference = float((other.pixels - plain.pixels).abs().mean())
        if kind == "class" or "channels_last" in options:
            assert difference < 0.02
        else:  # relevance through bfloat16 activations moves a neuron's picture more
            assert other.record.final_total < 3 * plain.record.final_total
    assert not any(p.is_contiguous(memory_format=torch.channels_last) and p.dim() == 4
                   and p.shape[-1] > 1 for p in model.module.parameters())  # fmt: skip
    with pytest.raises(VitalError, match="precision 'float16'"):
        picture(precision="float16")


def test_no_scalar_reads_inside_the_step(tmp_path):
    """Reading a tensor's value on the host waits for a GPU: the loop does it only every tenth
    step (progress and the non-finite check), never per step, also for inner neurons (checked
    with the profiler on the CPU, where the same reads would show)."""
    import vital
    from conftest import tiny_cnn_model, write_images

    write_images(tmp_path, 2)
    model = tiny_cnn_model()

    def scalar_reads(steps: int) -> int:
        settings = {"steps": steps, "jitter": 2, "warmup": 1}
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            # setting 1 (pixels): what this was written for; fast's Fourier loop is not checked
            # (no cache: both runs summarise their references, the reads there included)
            vital.visualize(model, [vital.Channel("stage3", 1)], tmp_path, setting=1,
                            settings=settings, progress=False, reference_count=2,
                            cache_dir=False)  # fmt: skip
        reads = 0
        for event in profile.events():
            if event.name != "aten::_local_scalar_dense":
                continue
            parent, adam = event.cpu_parent, False
            while parent is not None:  # Adam reads its step count, a CPU tensor: no GPU wait
                adam = adam or parent.name.startswith("Optimizer.step")
                parent = parent.cpu_parent
            reads += not adam
        return reads

    # 20 more steps: two more progress reads (steps 11 and 21 of 30), nothing per step
    assert scalar_reads(30) - scalar_reads(10) <= 2


@pytest.mark.parametrize(
    "make",
    [lambda: Settings(stepz=1), lambda: Settings.setting("fast", stepz=1, lr=0.2)],
    ids=["constructor", "named setting"],
)
def test_an_unknown_setting_names_the_nearest_real_one(make):
    with pytest.raises(VitalError, match=r"stepz \(did you mean steps\?\); settings have") as error:
        make()
    assert isinstance(error.value, TypeError)  # code that caught Python's own error still does


def test_known_settings_still_construct_by_name_and_position():
    assert Settings(steps=3).steps == 3 and Settings(7).steps == 7
    assert Settings.setting("fast", steps=5).steps == 5


@pytest.mark.parametrize("falls", [False, True])
def test_the_rotation_falls_to_zero_over_the_full_resolution_steps(monkeypatch, falls):
    import vital.optimize

    drawn = []
    warp = vital.optimize._warp

    def recording(x, generators, zoom, degrees):
        drawn.append((x.shape[-1], degrees))
        return warp(x, generators, zoom, degrees)

    monkeypatch.setattr(vital.optimize, "_warp", recording)
    settings = resolved(
        Settings(steps=10, coarse_start=0.3, rotate=10.0, rotate_falls=falls, jitter=2, warmup=1)
    )
    preprocessing = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=16)
    optimize(quadratic_objective(0.5), 1, preprocessing, settings, "cpu", False)
    coarse, full = drawn[:3], drawn[3:]
    assert len(full) == 7 and all(degrees == 10.0 for _, degrees in coarse)
    expected = [10.0 * (1 - k / 7) for k in range(7)] if falls else [10.0] * 7
    assert [degrees for _, degrees in full] == pytest.approx(expected)


def test_rotate_falls_is_a_bool():
    with pytest.raises(VitalError, match="rotate_falls is True or False"):
        Settings(rotate_falls="yes").validate()


class _Cycle:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self):
        self.me = self


def test_the_heap_is_frozen_during_the_loop_and_the_run_s_own_cycles_still_collected():
    import gc
    import weakref

    gc.disable()  # no collection but the test's own until the loop starts
    before_run = _Cycle()
    watched_before = weakref.ref(before_run)
    del before_run  # garbage already, but alive until a collection
    seen = []

    def objective(model_input, factor):
        made = _Cycle()
        watched = weakref.ref(made)
        del made
        gc.collect()
        seen.append((gc.get_freeze_count() > 0, watched() is None, watched_before() is None))
        return {"distance": ((model_input - 0.5) ** 2).flatten(1).mean(1)}

    settings = resolved(Settings(steps=3, jitter=0))
    try:
        optimize(objective, 1, Preprocessing(input_size=8), settings, "cpu", False)
    finally:
        gc.enable()
    # frozen while it ran, the run's own cycle freed, the older one left alone until the end
    assert seen == [(True, True, False)] * 3
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert watched_before() is None


def test_a_heap_the_caller_froze_stays_frozen():
    import gc

    gc.freeze()
    try:
        count = gc.get_freeze_count()
        settings = resolved(Settings(steps=2, jitter=0))
        optimize(quadratic_objective(0.5), 1, Preprocessing(input_size=8), settings, "cpu", False)
        # An unfreeze would empty the permanent generation; a frozen object that an earlier
        # test let go of may leave it meanwhile (the count fell by 2 in a full run).
        assert gc.get_freeze_count() > count - 100
    finally:
        gc.unfreeze()
