"""SED on inputs the parity fixtures do not cover: a panoramic strip, and a batch.

Uses the ``sed_b_seed1`` case's seeded weights and stored text features (the text encoder
is covered by the parity tests; this is about what happens to the image).
"""

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ovseg_ros.models.sed import build_sed
from ovseg_ros.engine.segmenter import Segmenter, resized_shape
from ovseg_ros.commands.check_parity import seeded_state_dict


@pytest.fixture(scope="module")
def case(fixtures_dir):
    case_dir = fixtures_dir / "sed_b_seed1"
    case = json.loads((case_dir / "case.json").read_text())
    with np.load(case_dir / "arrays.npz") as arrays:
        text = torch.from_numpy(arrays["text_features"])
    rgb = cv2.cvtColor(cv2.imread(str(case_dir / "image.png")), cv2.COLOR_BGR2RGB)
    segmenter = Segmenter(build_sed("convnext_base", state_dict=seeded_state_dict(case, case_dir)))
    return segmenter, text, rgb


def sem_seg_postprocess(result, img_size, output_height, output_width):
    """detectron2's semantic post-processing, written out from its documentation: crop the
    (C, H, W) prediction to the unpadded input image's size, then resize it bilinearly
    (align_corners False) to the output resolution."""
    cropped = result[:, : img_size[0], : img_size[1]]
    return F.interpolate(cropped[None], size=(output_height, output_width), mode="bilinear", align_corners=False)[0]


def test_panoramic_strip_follows_the_authors_postprocessing(case):
    """A 40 x 2400 strip: capped at a 2560 long side it reaches the model as 43 x 2560, below
    SED's 192 x 192 output, so the authors' crop keeps the map's top 43 rows. The authors pad
    nothing at test time (size_divisibility -1), so image_size is the resized image's size."""
    segmenter, text, image = case
    strip = cv2.resize(image[200:232], (2400, 40), interpolation=cv2.INTER_AREA)
    assert resized_shape(40, 2400) == (43, 2560)

    with torch.inference_mode():
        model_input = segmenter.preprocess(torch.from_numpy(strip))
        scores = segmenter.scores(model_input, text)
        confidence, labels = scores.best((40, 2400))
        probs = segmenter.model.predict(model_input, text).probs
    assert tuple(model_input.shape[-2:]) == (43, 2560) and tuple(probs.shape[-2:]) == (192, 192)
    reference = sem_seg_postprocess(probs, (43, 2560), 40, 2400)
    uncropped = F.interpolate(probs[None], size=(40, 2400), mode="bilinear", align_corners=False)[0]

    reference_labels = reference.argmax(0).numpy()
    agreement = float(np.mean(labels.numpy() == reference_labels))
    uncropped_agreement = float(np.mean(uncropped.argmax(0).numpy() == reference_labels))
    print(f"40x2400 strip: labels agree with the authors' post-processing on {agreement:.4f} of the pixels; "
          f"without the crop on {uncropped_agreement:.4f}")
    assert agreement == 1.0
    assert float((scores.full((40, 2400)) - reference).abs().max()) < 1e-6
    assert torch.equal(confidence, reference.max(0).values)
    assert uncropped_agreement < 0.9  # the crop matters here: the check above can fail


def test_ordinary_image_is_not_cropped(case):
    """On the fixture's 480 x 640 image (model input 640 x 853) the crop keeps the whole map."""
    segmenter, text, image = case
    with torch.inference_mode():
        model_input = segmenter.preprocess(torch.from_numpy(image))
        prediction = segmenter.model.predict(model_input, text)
        probs, final = prediction.probs, prediction.scores().full((480, 640))
    assert torch.equal(final, F.interpolate(probs[None], size=(480, 640), mode="bilinear", align_corners=False)[0])


def test_batch_of_two_is_refused_clearly(case):
    segmenter, text, _ = case
    images = torch.zeros(2, 3, 64, 96)
    with pytest.raises(ValueError, match=r"SED takes one image.*got \(2, 3, 64, 96\)"):
        segmenter.model(images, text)
