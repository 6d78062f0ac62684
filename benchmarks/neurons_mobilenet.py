"""Inner neurons of the real MobileNetV2: three channels of a late layer, visualised with VITAL.

The default layer is ``features.18``, the last convolution (ReLU6 output, like the ReLU outputs
of the authors' ResNet-50 ``layer4`` targets). ``features.16``/``features.17`` end in a linear
bottleneck whose channels are near zero or negative on most inputs; try them with ``--layer``.

References: the embedded photos and crops of them (the best 64 px and 112 px patch of each photo,
resized to 224), ranked by each channel's spatially averaged activation; the top ones are the
channel's references. The three channels are the ones these photos activate most (each with a
different best photo, so the three differ). All three are optimised in one batch with ``lrp``
relevance. Reported per channel: its activation on the visualisation, on the initial noise and
the mean over its references. A grid (visualisation, RGBA with the transparency map, top
references) goes to benchmarks/figures/.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/neurons_mobilenet.py --steps 300
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import torch

from vital import Channel, from_samples, load_model, visualize
from vital.grids import display_pixels, grid, to_image
from vital.methods.vital_neuron import target_score
from vital.parametrizations import initial_images
from vital.references import SAMPLE_PHOTOS, ReferenceSet, center_crop, open_rgb, top_references
from vital.taps import tapped

HERE = Path(__file__).parent


def channel_peaks(model, layer: str, photos: ReferenceSet) -> torch.Tensor:
    """(photos, channels) mean activation of each photo's 224 crop."""
    crops = torch.stack([center_crop(open_rgb(s), 224) for s in photos.sources])
    with torch.no_grad(), tapped(model.module, [layer], stop_early=True) as tap:
        return tap(model.preprocessing.normalize(crops))[layer].mean(dim=-1)


def choose_channels(activations: torch.Tensor, count: int) -> list[int]:
    """Channels with the highest activation on some photo, each with a different best photo."""
    best_value, best_photo = activations.max(dim=0)
    chosen, photos = [], set()
    for channel in best_value.argsort(descending=True).tolist():
        if int(best_photo[channel]) not in photos:
            chosen.append(channel)
            photos.add(int(best_photo[channel]))
        if len(chosen) == count:
            break
    return chosen


def references_for(model, layer, channel, photos, count):
    direction = torch.zeros(model_channels(model, layer))
    direction[channel] = 1
    score = target_score(model, layer, direction)
    ranked = []
    for side in (None, 112, 64):
        chosen, scores = top_references(photos, score, 224, len(photos.sources), side)
        ranked += list(zip(scores, chosen.sources, strict=True))
    ranked.sort(key=lambda pair: -pair[0])
    top = ranked[:count]
    description = f"top {count} of the embedded photos and their 64/112 px crops"
    return ReferenceSet(tuple(s for _, s in top), count, 0, description), [v for v, _ in top]


def noise_activations(model, layer, channels, seeds: int = 16) -> torch.Tensor:
    """(channels,) mean activation over ``seeds`` starting noise images (the runs' N(0, 1))."""
    noise = initial_images(range(1000, 1000 + seeds), 224, model.device)
    with torch.no_grad(), tapped(model.module, [layer], stop_early=True) as tap:
        tap(noise)
        return tap.outputs[layer][:, channels].mean(dim=(0, 2, 3))


def model_channels(model, layer):
    with torch.no_grad(), tapped(model.module, [layer], stop_early=True) as tap:
        return tap(torch.zeros(1, 3, 224, 224))[layer].shape[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layer", default="features.18")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--references", type=int, default=12)
    parser.add_argument("--relevance", default="lrp")
    parser.add_argument("--channels", type=int, nargs="*", help="default: chosen as described")
    parser.add_argument("--jitter", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the first channel's image")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "neurons_mobilenet")
    arguments = parser.parse_args()
    started = time.perf_counter()
    model = load_model("mobilenet_v2")
    photos = from_samples(list(SAMPLE_PHOTOS), count=len(SAMPLE_PHOTOS))
    channels = arguments.channels or choose_channels(
        channel_peaks(model, arguments.layer, photos), 3
    )
    targets = [Channel(arguments.layer, k) for k in channels]
    references, scores = {}, {}
    for target in targets:
        references[target], scores[target] = references_for(
            model, arguments.layer, target.index, photos, arguments.references
        )
    settings = {  # over the inner-neuron defaults (priors 3e-7)
        "steps": arguments.steps,
        "jitter": arguments.jitter,
        "lr": arguments.lr,
        "seed": arguments.seed,
    }
    results = visualize(
        model,
        targets,
        references,
        setting=1,  # the authors' setting, as the RESULTS sections of this script report
        settings=settings,
        relevance=arguments.relevance,
        out=arguments.out,
        batch_size=len(targets),
    )
    noise_mean = noise_activations(model, arguments.layer, channels)
    images, captions, labels = [], [], []
    lines = []
    for result, noise in zip(results, noise_mean.tolist(), strict=True):
        target = result.target
        evaluation = result.record.evaluation
        images += [result.image, to_image(display_pixels(result.pixels), result.alpha)]
        captions += [f"VITAL act {evaluation['activation']:.2f}", "RGBA (transparency)"]
        views = list(references[target].views(224))[:4]
        images += [to_image(v) for v in views]
        captions += [f"ref act {s:.2f}" for s in scores[target][:4]]
        labels.append(f"channel {target.index}")
        lines.append(
            f"| {target.index} | {evaluation['activation']:.3f} | "
            f"{evaluation['reference_activation']:.3f} | {evaluation['initial_activation']:.3f} | "
            f"{noise:.3f} | "
            f"{evaluation['activation'] / evaluation['reference_activation']:.2f} |"
        )
    sheet = grid(images, captions, columns=6, cell=160, row_labels=labels)
    figure = (
        HERE / "figures" / f"neurons_mobilenet_{arguments.layer.replace('.', '_')}"
        f"{'_' + '_'.join(map(str, channels)) if arguments.channels else ''}"
        f"{'' if arguments.relevance == 'lrp' else '_' + arguments.relevance}"
        f"{'' if arguments.jitter == 30 else f'_jitter{arguments.jitter}'}"
        f"{'' if arguments.lr == 1 else f'_lr{arguments.lr:g}'}"
        f"{'' if arguments.seed == 0 else f'_seed{arguments.seed}'}"
        f"_{arguments.steps}steps.jpg"
    )
    figure.parent.mkdir(exist_ok=True)
    sheet.save(figure, quality=88)
    seconds = time.perf_counter() - started
    report = [
        f"MobileNetV2 (embedded ImageNet weights), {arguments.layer}, relevance "
        f"{arguments.relevance}, {arguments.steps} steps (the authors use 2000), lr "
        f"{arguments.lr:g}, jitter {arguments.jitter}, seed {arguments.seed}, batch of "
        f"{len(targets)}, "
        f"{arguments.references} references each; {seconds / 60:.1f} min in all; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Grid: {figure.name}.",
        "",
        "| channel | activation (visualisation) | mean over references | its initial noise | "
        "mean over 16 noise images | visualisation / references |",
        "|---|---|---|---|---|---|",
        *lines,
        "",
        "Activation over the run (step: activation on that step's jittered input):",
        *(
            f"- channel {r.target.index}: "
            + ", ".join(f"{step}: {value:.2f}" for step, value in r.record.activation_trace[::5])
            for r in results
        ),
    ]
    print("\n".join(report))


if __name__ == "__main__":
    main()
