"""MTCNN's three-stage cascade, as facenet-pytorch's ``detect_face`` runs it, with each frame's faces
computed from that frame alone.

**Why not facenet-pytorch's own function.** A network's output for one input changes in its last
bits with the *number* of inputs in the call (PyTorch picks other kernels and blockings; measured
on CPU for the P-, R- and O-nets at every size from 7 to 128), though never with the other inputs'
values or its position among them. facenet-pytorch calls the P-net on the frames given and the R-
and O-nets on all their candidates at once, and its non-maximum suppressions offset boxes by frame
(torchvision switches algorithms by box count): so a frame's faces depended on which frames shared
its call, and with them on the detection batch, the side-by-side workers and the ASD frame cache.
Here every network call has a fixed shape per device (:data:`PNET_FRAMES` frames, padded with black
frames; :data:`REFINE_ROWS` candidates, padded with zeros; the padding's results dropped), and each
suppression runs on one frame's boxes: a frame's faces depend on the frame, the parameters and the
machine's kernels only (tested: the same bytes alone and in any company, under two kernel sets).

**Crops.** facenet-pytorch resamples every candidate box of the R- and O-net stages in its own
``interpolate(mode="area")`` call: about 80 per frame. On CPU that loop is the fastest way and is
kept. On a GPU it is thousands of kernel launches per batch, so there all of a stage's crops come at
once from one integral image per frame (:func:`resized_crops`). Area resampling averages whole pixel
values, so each window's sum is an integer and exact in any order; divided as PyTorch's CPU kernel
divides (by the window's height, then by its width), the crops are the same bit for bit (tested).

Everything else (pyramid, thresholds, box regressions, the order of the faces) is facenet-pytorch's,
through its own helper functions.
"""
from __future__ import annotations

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import bbreg, generateBoundingBox, imresample, nms_numpy, pad, rerec
from torchvision.ops import nms

#: Frames per P-net call and candidates per R-/O-net call, by device type: fixed, so that no call's
#: shape depends on what else is detected (see the module docstring). Small on CPU, where padding
#: costs time and larger calls gain little; larger on a GPU, where each call should keep it busy.
PNET_FRAMES = {"cpu": 1, "cuda": 32}
REFINE_ROWS = {"cpu": 64, "cuda": 1024}


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


def _stage_crops(imgs: torch.Tensor, integral: torch.Tensor | None, boxes: torch.Tensor, image_inds: torch.Tensor,
                 width: int, height: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The next net's normalised inputs for ``boxes`` (clipped like facenet-pytorch's ``pad``): one
    area resampling per box on CPU, all at once from ``integral`` on a GPU. Boxes that are empty
    once clipped are dropped (facenet-pytorch would fail on them)."""
    y, ey, x, ex = pad(boxes, width, height)
    keep = (ey > y - 1) & (ex > x - 1)
    device = imgs.device
    kept = torch.as_tensor(np.flatnonzero(keep), device=device)
    if integral is None:
        inds = image_inds.tolist()
        crops = torch.cat([imresample(imgs[inds[k], :, y[k] - 1:ey[k], x[k] - 1:ex[k]].unsqueeze(0), (size, size))
                           for k in np.flatnonzero(keep)]) if keep.any() else imgs.new_zeros((0, 3, size, size))
    else:
        as_tensor = lambda a: torch.as_tensor(a[keep], dtype=torch.int64, device=device)  # noqa: E731
        crops = resized_crops(integral, image_inds[kept], as_tensor(y) - 1, as_tensor(ey), as_tensor(x) - 1,
                              as_tensor(ex), size)
    return (crops - 127.5) * 0.0078125, boxes[kept], image_inds[kept]


def _padded(inputs: torch.Tensor, size: int) -> torch.Tensor:
    """``inputs`` with zero rows appended up to ``size`` rows."""
    if len(inputs) == size:
        return inputs
    return torch.cat([inputs, inputs.new_zeros((size - len(inputs), *inputs.shape[1:]))])


def _in_fixed_calls(net, inputs: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """``net``'s outputs for ``inputs``, computed in calls of exactly ``size`` rows."""
    outs = [net(_padded(inputs[first:first + size], size)) for first in range(0, len(inputs), size)]
    return tuple(torch.cat(parts)[:len(inputs)] for parts in zip(*outs))


def _nms_per_frame(boxes: torch.Tensor, scores: torch.Tensor, image_inds: torch.Tensor, threshold: float,
                   method: str = "Union") -> torch.Tensor:
    """Indices kept by non-maximum suppression of each frame's boxes alone: frame by frame, each
    frame's by descending score. (torchvision's ``batched_nms`` offsets boxes by frame, so a
    frame's overlaps were rounded according to the others' coordinates.)"""
    kept = []
    for frame in torch.unique(image_inds).tolist():
        rows = torch.nonzero(image_inds == frame).flatten()
        if method == "Min":   # facenet-pytorch's last suppression: overlap over the smaller box
            pick = nms_numpy(boxes[rows].cpu().numpy(), scores[rows].cpu().numpy(), threshold, "Min")
            pick = torch.as_tensor(np.asarray(pick, np.int64), device=rows.device)
        else:
            pick = nms(boxes[rows], scores[rows], threshold)
        kept.append(rows[pick])
    return torch.cat(kept) if kept else image_inds.new_zeros(0)


def _refine(net, imgs: torch.Tensor, integral: torch.Tensor | None, boxes: torch.Tensor, image_inds: torch.Tensor,
            size: int, threshold: float, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One refinement stage: the boxes whose crops ``net`` scores above ``threshold``, as rows
    ``x1, y1, x2, y2, score``, their frames and their box regressions."""
    height, width = imgs.shape[2:4]
    im_data, boxes, image_inds = _stage_crops(imgs, integral, boxes, image_inds, width, height, size)
    if len(boxes) == 0:
        return boxes[:, :5], image_inds, boxes.new_zeros((0, 4))
    out = _in_fixed_calls(net, im_data, rows)
    score = out[-1][:, 1]   # class probabilities come last (R-net: 2 outputs, O-net: 3)
    ipass = score > threshold
    return torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1), image_inds[ipass], out[0][ipass]


def _pyramid(height: int, width: int, minsize: int, factor: float) -> list[float]:
    scales, scale = [], 12.0 / minsize
    side = min(height, width) * scale
    while side >= 12:
        scales.append(scale)
        scale, side = scale * factor, side * factor
    return scales


def _pnet_candidates(pnet, imgs: torch.Tensor, scales: list[float], threshold: float,
                     frames_per_call: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The P-net's candidate rows (facenet-pytorch's ``generateBoundingBox`` layout) and their frames,
    each frame's suppressed per scale (IoU 0.5), then over its scales (0.7)."""
    height, width = imgs.shape[2:4]
    boxes, image_inds = [], []
    for first in range(0, len(imgs), frames_per_call):
        group = _padded(imgs[first:first + frames_per_call], frames_per_call)   # black frames: dropped below
        real = min(frames_per_call, len(imgs) - first)
        for scale in scales:
            im_data = imresample(group, (int(height * scale + 1), int(width * scale + 1)))
            reg, probs = pnet((im_data - 127.5) * 0.0078125)
            found, inds = generateBoundingBox(reg, probs[:, 1], scale, threshold)
            found, inds = found[inds < real], inds[inds < real] + first
            pick = _nms_per_frame(found[:, :4], found[:, 4], inds, 0.5)
            boxes.append(found[pick])
            image_inds.append(inds[pick])
    boxes, image_inds = torch.cat(boxes), torch.cat(image_inds)
    pick = _nms_per_frame(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    return boxes[pick], image_inds[pick]


def detect_face(frames: np.ndarray, minsize: int, pnet, rnet, onet, threshold, factor, device: torch.device,
                frames_per_call: int | None = None, rows_per_call: int | None = None) -> list[np.ndarray]:
    """facenet-pytorch's ``detect_face`` on ``[n,H,W,3]`` uint8 frames: per frame ``[k,5]`` float32
    rows ``x1, y1, x2, y2, probability``, largest first (facial landmarks are not computed).
    ``frames_per_call`` and ``rows_per_call`` default to the device's :data:`PNET_FRAMES` and
    :data:`REFINE_ROWS`; other values give the same faces up to rounding."""
    device = torch.device(device)
    kind = "cpu" if device.type == "cpu" else "cuda"
    frames_per_call = frames_per_call or PNET_FRAMES[kind]
    rows_per_call = rows_per_call or REFINE_ROWS[kind]
    frames_u8 = torch.as_tensor(np.ascontiguousarray(frames), device=device).permute(0, 3, 1, 2)
    imgs = frames_u8.type(next(pnet.parameters()).dtype)
    height, width = imgs.shape[2:4]
    scales = _pyramid(height, width, minsize, factor)

    # first stage: the P-net over the pyramid
    boxes, image_inds = _pnet_candidates(pnet, imgs, scales, threshold[0], frames_per_call)
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                         boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh,
                         boxes[:, 4]]).permute(1, 0)
    boxes = rerec(boxes)

    integral = integral_images(frames_u8) if kind == "cuda" and len(boxes) else None   # the crops of both stages
    if len(boxes) > 0:   # second stage: the R-net on 24x24 crops
        boxes, image_inds, mv = _refine(rnet, imgs, integral, boxes, image_inds, 24, threshold[1], rows_per_call)
        pick = _nms_per_frame(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = rerec(bbreg(boxes, mv))
    if len(boxes) > 0:   # third stage: the O-net on 48x48 crops
        boxes, image_inds, mv = _refine(onet, imgs, integral, boxes, image_inds, 48, threshold[2], rows_per_call)
        boxes = bbreg(boxes, mv)
        pick = _nms_per_frame(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds = boxes[pick], image_inds[pick]

    boxes = boxes.cpu().numpy()
    image_inds = image_inds.cpu().numpy()
    return [_largest_first(boxes[image_inds == i]) for i in range(len(frames))]


def _largest_first(boxes: np.ndarray) -> np.ndarray:
    """``MTCNN.detect``'s order with ``select_largest`` (its default): by box area, largest first
    (a stable sort, so that boxes of equal area keep the frame's own order)."""
    order = np.argsort(-((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), kind="stable")
    return np.asarray(boxes[order], np.float32).reshape(-1, 5)
