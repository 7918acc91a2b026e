"""MTCNN's three-stage cascade, as facenet-pytorch's ``detect_face`` runs it, with its candidate crops batched.

facenet-pytorch (2.5.3) resamples every candidate box of the R- and O-net stages in its own
``interpolate(mode="area")`` call: about 80 candidates per frame, each a few tiny kernels. On a GPU
that is thousands of kernel launches and Python steps per batch of frames while the GPU waits, so
there :class:`m3ed.asd.detect.FaceDetector` runs :func:`detect_face`, which computes all of a
stage's crops at once from one integral image per frame (:func:`resized_crops`). Area resampling
averages whole pixel values, so each window's sum is an integer and exact in any order; divided as
PyTorch's CPU kernel divides (by the window's height, then by its width), the crops are the same bit
for bit, and so are the detections (``tests/test_mtcnn.py`` checks both against facenet-pytorch's
own function, on CPU). On CPU the per-box loop is faster (four gathers per output value cost more
than 1,300 small resamplings: 90-490 ms against 64-158 ms), so the CPU keeps facenet-pytorch's.

Everything else (pyramid, thresholds, non-maximum suppressions, box regressions, the order of the
faces) is facenet-pytorch's, through its own helper functions.
"""
from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (batched_nms_numpy, bbreg, fixed_batch_process,
                                                      generateBoundingBox, imresample, pad, rerec)
from torchvision.ops.boxes import batched_nms


def integral_images(frames: torch.Tensor) -> torch.Tensor:
    """``[n,3,H+1,W+1]`` int32 sums of ``[n,3,H,W]`` whole-valued pixels above and left of each point.
    Past 2**31 (frames over about 8 megapixels) the sums wrap around, but a window's sum, a
    difference of four of them, is still exact: it is far smaller, and wrapping is modulo 2**32."""
    n, c, h, w = frames.shape
    out = torch.zeros((n, c, h + 1, w + 1), dtype=torch.int32, device=frames.device)
    out[:, :, 1:, 1:] = frames.to(torch.int32).cumsum(2, dtype=torch.int32).cumsum(3, dtype=torch.int32)
    return out


def resized_crops(integral: torch.Tensor, image: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor,
                  left: torch.Tensor, right: torch.Tensor, size: int) -> torch.Tensor:
    """``[N,3,size,size]``: ``interpolate(frame[image, :, top:bottom, left:right], (size, size),
    mode="area")`` of N boxes at once (frames given by their :func:`integral_images`)."""
    steps = torch.arange(size, device=integral.device)

    def windows(first: torch.Tensor, stop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # adaptive pooling's windows: [floor(i*L/size), ceil((i+1)*L/size)) from the box's start
        length = (stop - first)[:, None]
        return first[:, None] + steps * length // size, first[:, None] - (-(steps + 1) * length // size)

    row0, row1 = windows(top, bottom)
    col0, col1 = windows(left, right)
    image = image[:, None, None, None]
    channel = torch.arange(integral.shape[1], device=integral.device)[None, :, None, None]

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return integral[image, channel, rows[:, None, :, None], cols[:, None, None, :]]

    sums = (at(row1, col1) - at(row0, col1) - at(row1, col0) + at(row0, col0)).float()
    return sums / (row1 - row0).float()[:, None, :, None] / (col1 - col0).float()[:, None, None, :]


def _stage_crops(integral: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, width: int,
                 height: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next net's normalised inputs for ``boxes`` (clipped like facenet-pytorch's ``pad``); boxes
    that are empty once clipped are dropped (facenet-pytorch would fail on them)."""
    y, ey, x, ex = pad(boxes, width, height)
    keep = (ey > y - 1) & (ex > x - 1)
    device = integral.device
    as_tensor = lambda a: torch.as_tensor(a[keep], dtype=torch.int64, device=device)  # noqa: E731
    kept = torch.as_tensor(np.flatnonzero(keep), device=device)
    crops = resized_crops(integral, image_inds[kept], as_tensor(y) - 1, as_tensor(ey), as_tensor(x) - 1,
                          as_tensor(ex), size)
    return (crops - 127.5) * 0.0078125, boxes[kept], image_inds[kept]


def _refine(net, integral: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, width: int, height: int,
            size: int, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One refinement stage: the boxes whose crops ``net`` scores above ``threshold``, as rows
    ``x1, y1, x2, y2, score``, their frames and their box regressions."""
    im_data, boxes, image_inds = _stage_crops(integral, boxes, image_inds, width, height, size)
    if len(boxes) == 0:
        return boxes[:, :5], image_inds, boxes.new_zeros((0, 4))
    out = fixed_batch_process(im_data, net)
    score = out[-1].permute(1, 0)[1, :]   # class probabilities come last (R-net: 2 outputs, O-net: 3)
    ipass = score > threshold
    regression = out[0].permute(1, 0)[:, ipass].permute(1, 0)
    return torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1), image_inds[ipass], regression


def detect_face(frames: np.ndarray, minsize: int, pnet, rnet, onet, threshold, factor,
                device: torch.device) -> list[np.ndarray]:
    """facenet-pytorch's ``detect_face`` on ``[n,H,W,3]`` uint8 frames: per frame ``[k,5]`` float32
    rows ``x1, y1, x2, y2, probability`` in its order (facial landmarks are not computed)."""
    frames_u8 = torch.as_tensor(np.ascontiguousarray(frames), device=device).permute(0, 3, 1, 2)
    imgs = frames_u8.type(next(pnet.parameters()).dtype)
    batch_size = len(imgs)
    h, w = imgs.shape[2:4]
    m = 12.0 / minsize
    minl = min(h, w) * m
    scales = []
    scale = m
    while minl >= 12:
        scales.append(scale)
        scale = scale * factor
        minl = minl * factor

    # first stage: the P-net over the pyramid
    boxes, image_inds, scale_picks, offset = [], [], [], 0
    for scale in scales:
        im_data = imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
        reg, probs = pnet((im_data - 127.5) * 0.0078125)
        boxes_scale, image_inds_scale = generateBoundingBox(reg, probs[:, 1], scale, threshold[0])
        boxes.append(boxes_scale)
        image_inds.append(image_inds_scale)
        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
        scale_picks.append(pick + offset)
        offset += boxes_scale.shape[0]
    boxes, image_inds = torch.cat(boxes, dim=0), torch.cat(image_inds, dim=0)
    scale_picks = torch.cat(scale_picks, dim=0)
    boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                         boxes[:, 4]]).permute(1, 0)
    boxes = rerec(boxes)

    if len(boxes) > 0:   # second stage: the R-net on 24x24 crops
        integral = integral_images(frames_u8)   # the crops of both stages come from it
        boxes, image_inds, mv = _refine(rnet, integral, boxes, image_inds, w, h, 24, threshold[1])
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))
    if len(boxes) > 0:   # third stage: the O-net on 48x48 crops
        boxes, image_inds, mv = _refine(onet, integral, boxes, image_inds, w, h, 48, threshold[2])
        boxes = bbreg(boxes, mv)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds = boxes[pick], image_inds[pick]

    boxes = boxes.cpu().numpy()
    image_inds = image_inds.cpu().numpy()
    return [_largest_first(boxes[image_inds == i]) for i in range(batch_size)]


def _largest_first(boxes: np.ndarray) -> np.ndarray:
    """``MTCNN.detect``'s order with ``select_largest`` (its default): by box area, largest first."""
    order = np.argsort((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[::-1]
    return np.asarray(boxes[order], np.float32).reshape(-1, 5)
